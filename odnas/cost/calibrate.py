"""Calibration: turn a latency measured on this host into an estimate for the real device.

The search times candidates here; the target is a phone or a board. A fixed set of
reference models is exported (``export_references``) and timed on the device by the
user; ``fit_calibration`` times the same models here under the same profile, fits
``log(device_ms) = a + b * log(host_ms)`` through the pairs and reports how well the
fit predicts references it did not see. ``apply_calibration`` maps any host latency.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from odnas.errors import CalibrationError
from odnas.records import CostRecord, LatencyKey
from odnas.profiles import CALIBRATION_MODELS, HardwareProfile, profiles_dir

#: Version of the reference set. Names below are stable for a given version; a change
#: to any reference model's architecture makes a new version.
REFERENCE_SET = "odnas-ref-1"
DEFAULT_INPUT_SHAPE = (1, 8, 8)  # the bundled ``digits`` data
DEFAULT_NUM_CLASSES = 10
#: Device table columns: the first two are required, the others optional.
REQUIRED_COLUMNS = ("model", "latency_ms")
OPTIONAL_COLUMNS = ("latency_ms_p90", "runs", "notes")
#: Fewest device rows a fit accepts: leave-one-out still leaves a few points per fit.
MIN_ROWS = {"loglinear": 5, "ratio": 3}
#: Keys on which a host latency and a calibration must agree to be combined.
HOST_KEYS = tuple(f.name for f in dataclasses.fields(LatencyKey)) + ("statistic",)
MANIFEST = "manifest.json"
TEMPLATE_CSV = "device_latency.csv"
BENCH_SCRIPT = "bench_device.py"
PERF_SCRIPT = "run_perf_test.sh"




# ---------------------------------------------------------------- the reference set


def _mcnn(stem: int, depths: tuple[int, int, int], widths: tuple[int, int, int], kernel: int,
          expand: int, se: int, hardswish: int) -> tuple[tuple[str, Any], ...]:
    p: dict[str, Any] = {"stem_width": stem, "kernel": kernel, "expand": expand, "se": se,
                         "hardswish": hardswish}
    for i in range(3):
        p[f"s{i + 1}_depth"], p[f"s{i + 1}_width"] = depths[i], widths[i]
    return tuple(sorted(p.items()))


@dataclass(frozen=True)
class Reference:
    """One reference model: a floor model, or a member of a registered space with fixed
    parameters (fixed, not sampled, so the set does not move when a space's sampler does)."""

    name: str
    space: str  # "floor" | a registered space name
    params: tuple[tuple[str, Any], ...] = ()
    why: str = ""

    def build(self, input_shape: Sequence[int], num_classes: int):  # -> nn.Module
        if self.space == "floor":
            from torch import nn

            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
        from odnas.spaces import get_space

        return get_space(self.space).build(dict(self.params), input_shape, num_classes)

    def arch_id(self) -> str:
        if self.space == "floor":
            return "floor_gemm"
        from odnas.spaces import get_space

        return get_space(self.space).arch_id(dict(self.params))


#: ``odnas-ref-1``: 15 models from a one-Gemm floor (session overhead) to a deep
#: MobileNet (host 1x8x8: ~0.02 to ~0.9 ms under cpu-mobile), mixing the operators the
#: spaces use: Gemm, Conv, depthwise Conv (k3/5/7), HardSwish, squeeze-excite, residual Add.
REFERENCES: tuple[Reference, ...] = (
    Reference("floor", "floor", (), "one Gemm: per-call overhead"),
    Reference("mlp_16x16", "mlp", (("hidden_size_1", 16), ("hidden_size_2", 16)), "small MLP"),
    Reference("mlp_64x64", "mlp", (("hidden_size_1", 64), ("hidden_size_2", 64)), "medium MLP"),
    Reference("mlp_128x128", "mlp", (("hidden_size_1", 128), ("hidden_size_2", 128)), "largest MLP"),
    Reference("mcnn_01", "mobile-cnn", _mcnn(8, (1, 0, 0), (8, 8, 8), 3, 1, 0, 0), "smallest CNN"),
    Reference("mcnn_02", "mobile-cnn", _mcnn(8, (1, 1, 0), (8, 12, 8), 3, 1, 0, 0), "two stages"),
    Reference("mcnn_03", "mobile-cnn", _mcnn(16, (1, 1, 1), (12, 16, 24), 3, 2, 0, 0), "inverted residual"),
    Reference("mcnn_04", "mobile-cnn", _mcnn(16, (2, 1, 1), (16, 16, 24), 5, 1, 1, 0), "k5, SE"),
    Reference("mcnn_05", "mobile-cnn", _mcnn(16, (1, 2, 1), (16, 24, 32), 3, 2, 0, 1), "hard-swish"),
    Reference("mcnn_06", "mobile-cnn", _mcnn(24, (2, 2, 1), (24, 24, 32), 5, 2, 1, 0), "k5, e2, SE"),
    Reference("mcnn_07", "mobile-cnn", _mcnn(24, (2, 3, 2), (24, 24, 32), 7, 1, 0, 0), "depthwise k7, deep"),
    Reference("mcnn_08", "mobile-cnn", _mcnn(24, (2, 2, 2), (24, 32, 32), 3, 4, 0, 1), "e4, hard-swish"),
    Reference("mcnn_09", "mobile-cnn", _mcnn(32, (3, 2, 2), (32, 32, 32), 7, 2, 1, 1), "k7, SE, hard-swish"),
    Reference("mcnn_10", "mobile-cnn", _mcnn(32, (3, 3, 3), (32, 32, 32), 5, 4, 1, 1), "wide, e4, SE"),
    Reference("mcnn_11", "mobile-cnn", _mcnn(32, (4, 4, 4), (32, 32, 32), 7, 4, 1, 1), "the space's largest"),
)
_BY_NAME = {r.name: r for r in REFERENCES}


def reference_names() -> list[str]:
    return [r.name for r in REFERENCES]


def parse_input_shape(text: str | Sequence[int] | None) -> tuple[int, ...]:
    """``"1x28x28"`` or ``[1, 28, 28]`` -> ``(1, 28, 28)``; ``None`` -> the default."""
    if text is None or text == "" or (not isinstance(text, str) and len(text) == 0):
        return DEFAULT_INPUT_SHAPE
    parts = text.lower().replace(",", "x").split("x") if isinstance(text, str) else list(text)
    try:
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise CalibrationError(f"input shape {text!r}: expected C x H x W, e.g. 1x8x8") from None
    if len(shape) != 3 or any(d < 1 for d in shape):  # the references include CNNs: channels, height, width
        raise CalibrationError(f"input shape {text!r}: expected C x H x W, three positive sizes, e.g. 1x8x8")
    return shape


# ---------------------------------------------------------------- step 1: export


def export_references(out_dir: str | Path, profile: HardwareProfile,
                      input_shape: Sequence[int] | str | None = None,
                      num_classes: int = DEFAULT_NUM_CLASSES) -> dict[str, Any]:
    """Write the reference models to ``out_dir`` for timing on the device.

    Writes ``NAME.onnx`` per reference, ``manifest.json`` (set version, input shape, the
    profile's runtime and protocol, counts and hashes), ``device_latency.csv`` (the
    template to fill in), ``bench_device.py`` (times the models with the ONNX Runtime
    Python package, the profile's protocol, and writes the CSV) and ``run_perf_test.sh``
    (the same with ``onnxruntime_perf_test``, one log per model). Returns the manifest.
    """
    import torch

    from odnas.cost.count import count
    from odnas.cost.onnx import OPSET, export_onnx
    from odnas import __version__

    shape = parse_input_shape(input_shape)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = []
    for ref in REFERENCES:
        torch.manual_seed(0)
        model = ref.build(shape, num_classes)
        path = export_onnx(model, shape, out / f"{ref.name}.onnx")
        counts = count(model, shape)
        models.append({
            "name": ref.name, "file": path.name, "space": ref.space, "params": dict(ref.params),
            "arch_id": ref.arch_id(), "why": ref.why, "num_params": counts.num_params, "flops": counts.flops,
            "model_bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        })
    manifest = {
        "reference_set": REFERENCE_SET, "odnas_version": __version__, "profile": profile.name,
        "input_shape": list(shape), "num_classes": num_classes, "batch_size": profile.batch_size,
        "input_name": "input", "opset": OPSET,
        "runtime": dataclasses.asdict(profile.runtime), "protocol": dataclasses.asdict(profile.protocol),
        "models": models,
        "csv": {"file": TEMPLATE_CSV, "required": list(REQUIRED_COLUMNS), "optional": list(OPTIONAL_COLUMNS),
                "units": "milliseconds per batch of batch_size", "latency_ms": f"the {profile.protocol.statistic}"},
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _write_json(out / MANIFEST, manifest)
    kept = write_template(out / TEMPLATE_CSV)
    if kept:
        manifest["csv"]["kept"] = kept
    (out / BENCH_SCRIPT).write_text(_BENCH_SCRIPT)
    (out / PERF_SCRIPT).write_text(perf_test_script(profile))
    os.chmod(out / PERF_SCRIPT, 0o755)
    return {**manifest, "dir": str(out.resolve())}


def write_template(path: str | Path) -> str:
    """Write the empty device table, unless ``path`` already holds measurements (or
    cannot be read: the user should look at it), so exporting again loses nothing.
    Returns why the file was kept, or "" when the template was written."""
    path = Path(path)
    if path.is_file():
        try:
            filled = len(read_device_table(path))
        except CalibrationError as e:
            return f"{path.name} was left as it was (it does not read as a device table: {e})"
        if filled:
            return f"{path.name} already had {filled} device latencies; it was left as it was"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
        for name in reference_names():
            w.writerow([name, "", "", "", ""])
    return ""


# ONNX Runtime's provider names -> onnxruntime_perf_test's -e values; levels -> -o values.
_PERF_EP = {"CPUExecutionProvider": "cpu", "XnnpackExecutionProvider": "xnnpack", "NnapiExecutionProvider": "nnapi",
            "CoreMLExecutionProvider": "coreml", "QNNExecutionProvider": "qnn",
            "OpenVINOExecutionProvider": "openvino", "CUDAExecutionProvider": "cuda",
            "TensorrtExecutionProvider": "tensorrt"}
_PERF_OPT = {"disable": 0, "basic": 1, "extended": 2, "all": 99}


def perf_test_flags(profile: HardwareProfile, runs: int | str = 1000) -> list[str]:
    """``onnxruntime_perf_test`` flags that match the profile's runtime settings."""
    rt = profile.runtime
    flags = ["-I", "-m", "times", "-r", str(runs), "-e", _PERF_EP[rt.provider], "-x", str(rt.intra_op_threads),
             "-y", str(rt.inter_op_threads), "-o", str(_PERF_OPT[rt.graph_optimization]), "-s"]
    if rt.intra_op_threads == 1:
        flags.append("-D")  # as session_options(): a one-thread target does not spin
    if profile.batch_size != 1:
        flags += ["-f", f"batch:{profile.batch_size}"]  # -I alone treats the free batch axis as 1
    return flags


def perf_test_script(profile: HardwareProfile) -> str:
    flags = " ".join(perf_test_flags(profile, '"$RUNS"'))
    names = " ".join(reference_names())
    return f"""#!/bin/sh
# Times every odnas reference model in this folder with onnxruntime_perf_test, one log per
# model in logs/. Written by odnas for profile {profile.name!r}; the flags match its runtime
# (provider, threads, graph optimisation, batch {profile.batch_size}). Run it on the device:
#   PERF_TEST=/path/to/onnxruntime_perf_test sh {PERF_SCRIPT}
# then bring logs/ back and run:  odnas calibrate perf-logs logs -o {TEMPLATE_CSV}
set -e
cd "$(dirname "$0")"
PERF_TEST="${{PERF_TEST:-./onnxruntime_perf_test}}"
RUNS="${{RUNS:-1000}}"
mkdir -p logs
for m in {names}; do
  if ! "$PERF_TEST" {flags} "$m.onnx" "logs/$m.runs.csv" > "logs/$m.txt" 2>&1; then
    echo "onnxruntime_perf_test failed on $m; see logs/$m.txt" >&2
    exit 1
  fi
  echo "$m: $(grep -E 'P50 Latency|Average inference time cost' "logs/$m.txt" | tr '\\n' ' ')"
done
"""


# ---------------------------------------------------------------- the device table


@dataclass(frozen=True)
class DeviceRow:
    """One device measurement of a reference model (milliseconds per batch)."""

    model: str
    latency_ms: float
    latency_ms_p90: float | None = None
    runs: int | None = None
    notes: str = ""
    where: str = ""  # "FILE:LINE" or "profile"


def read_device_table(path: str | Path) -> dict[str, DeviceRow]:
    """Read and check a device CSV. Rows with an empty ``latency_ms`` (the unfilled
    template) are skipped; lines starting with ``#`` are comments."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: device latency table not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{path}: cannot read the table ({e.__class__.__name__})") from None
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise CalibrationError(f"{path}: empty table; expected a header '{','.join(REQUIRED_COLUMNS)}' and one row "
                               "per reference model")
    reader = csv.reader([ln for _, ln in lines])
    header = [h.strip().lower() for h in next(reader)]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CalibrationError(f"{path}: line {lines[0][0]}: missing column(s) {', '.join(missing)}; the header must "
                               f"name {', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})")
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise CalibrationError(f"{path}: line {lines[0][0]}: unknown column(s) {', '.join(unknown)}; allowed: "
                               f"{', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}")
    if len(set(header)) != len(header):
        raise CalibrationError(f"{path}: line {lines[0][0]}: a column is named twice")
    rows: dict[str, DeviceRow] = {}
    for (lineno, _), cells in zip(lines[1:], reader):
        where = f"{path}: line {lineno}"
        if len(cells) > len(header):
            raise CalibrationError(f"{where}: {len(cells)} cells for {len(header)} columns (a comma in notes? "
                                   "quote it)")
        rec = {h: (cells[i].strip() if i < len(cells) else "") for i, h in enumerate(header)}
        name = rec["model"]
        _check_name(name, where)
        if name in rows:
            raise CalibrationError(f"{where}: model {name!r} appears twice (first at {rows[name].where})")
        if not rec["latency_ms"]:
            continue
        rows[name] = DeviceRow(
            model=name, latency_ms=_positive(rec["latency_ms"], "latency_ms", where),
            latency_ms_p90=_positive(rec["latency_ms_p90"], "latency_ms_p90", where) if rec.get("latency_ms_p90")
            else None,
            runs=_runs(rec["runs"], where) if rec.get("runs") else None,
            notes=rec.get("notes", ""), where=f"{path}:{lineno}",
        )
    return rows


def _check_name(name: str, where: str) -> None:
    if name not in _BY_NAME:
        close = [n for n in _BY_NAME if n.split("_")[0] == name.split("_")[0]] or reference_names()
        raise CalibrationError(f"{where}: model {name!r} is not in reference set {REFERENCE_SET} "
                               f"(e.g. {', '.join(close[:4])}; all: odnas calibrate export)")


def _positive(text: Any, col: str, where: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise CalibrationError(f"{where}: {col} = {text!r} is not a number of milliseconds") from None
    if not math.isfinite(v) or v <= 0:
        raise CalibrationError(f"{where}: {col} = {text!r} must be a positive number of milliseconds")
    return v


def _runs(text: str, where: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise CalibrationError(f"{where}: runs = {text!r} is not a whole number") from None
    if v < 1:
        raise CalibrationError(f"{where}: runs = {text!r} must be at least 1")
    return v


def write_device_table(rows: Iterable[DeviceRow], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
        for r in rows:
            w.writerow([r.model, repr(r.latency_ms), "" if r.latency_ms_p90 is None else repr(r.latency_ms_p90),
                        "" if r.runs is None else r.runs, r.notes])
    return path


# ---------------------------------------------------------------- step 2, from a device agent


def time_on_device(out_dir: str | Path, profile: HardwareProfile, input_shape: Sequence[int] | str | None = None,
                   num_classes: int = DEFAULT_NUM_CLASSES, *, backend=None,
                   progress: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """Export the reference set to ``out_dir`` and time every model on the device agent of
    ``profile.device`` (or ``backend``), under the profile's protocol: the device table
    ``odnas calibrate fit`` reads, filled with no hand-timing. Returns the table's path
    and what the device calls itself. Each model's full latency record is kept beside
    it (``device_latency.json``)."""
    from odnas.cost.device import DeviceLatencyBackend

    step = progress or (lambda _text: None)
    if backend is None:
        if profile.device is None:
            raise CalibrationError("no device agent to time on: pass --device URL or give the profile a "
                                   "device: section")
        backend = DeviceLatencyBackend.of(profile)
        info = backend.check(profile)
        step(f"timing on {info['device']} ({info['cpu_model']}, onnxruntime {info['ort_version']})")
    step(f"exporting the {len(REFERENCES)} reference models")
    man = export_references(out_dir, profile, input_shape, num_classes)
    rows, records = [], {}
    for i, m in enumerate(man["models"]):
        step(f"timing {m['name']} on the device ({i + 1} of {len(man['models'])})")
        lat = backend.measure(Path(out_dir) / m["file"], profile)
        records[m["name"]] = lat.to_dict()
        rows.append(DeviceRow(model=m["name"], latency_ms=lat.latency_ms, latency_ms_p90=lat.latency_ms_p90,
                              runs=lat.runs, notes=f"odnas-device on {lat.device or lat.host}"))
    table = write_device_table(rows, Path(out_dir) / TEMPLATE_CSV)
    _write_json(Path(out_dir) / "device_latency.json", records)
    first = next(iter(records.values()))
    return table, str(first.get("device") or first.get("host"))


# ---------------------------------------------------------------- onnxruntime_perf_test logs

_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
# "Average inference time cost: 0.05 ms" (1.1x-1.22), "... cost total: 0.05 ms" (newer),
# "Average time cost:0.05 ms" (oldest). Percentiles: "P50 Latency: 5e-05 s" or "P50 Latency is 5e-05sec".
_PERF_AVG = re.compile(r"Average (?:inference )?time cost(?: total)?:\s*" + _NUM + r"\s*ms")
_PERF_PCT = {p: re.compile(rf"{p} Latency(?::| is)\s*" + _NUM + r"\s*s") for p in ("P50", "P90")}
_PERF_RUNS = re.compile(r"(?:Total inference requests|Total iterations):\s*(\d+)")


def parse_perf_test_output(text: str, statistic: str = "median") -> dict[str, Any]:
    """Latency figures from one ``onnxruntime_perf_test`` run's stdout.

    ``latency_ms`` is the P50 line (``-s``) for a median profile, the average for a mean
    one; ``latency_ms_p90`` is the P90 line. Percentiles are printed in seconds, the
    average in milliseconds. Raises CalibrationError when the lines are missing.
    """
    avg = _PERF_AVG.search(text)
    p50, p90 = (_PERF_PCT[p].search(text) for p in ("P50", "P90"))
    runs = _PERF_RUNS.search(text)
    if avg is None and p50 is None:
        tail = " ".join(text.strip().splitlines()[-2:])[:160]
        raise CalibrationError("no 'Average inference time cost' or 'P50 Latency' line; did the run fail? "
                               f"last output: {tail!r}")
    notes = "onnxruntime_perf_test"
    if statistic == "median" and p50 is not None:
        ms, notes = float(p50.group(1)) * 1e3, notes + " P50"
    elif avg is not None:
        ms = float(avg.group(1))
        notes += " average" + (" (no P50 line: run with -s for the median)" if statistic == "median" else "")
    else:
        ms, notes = float(p50.group(1)) * 1e3, notes + " P50 (no average line)"
    return {"latency_ms": ms, "latency_ms_p90": float(p90.group(1)) * 1e3 if p90 else None,
            "runs": int(runs.group(1)) if runs else None, "notes": notes}


def perf_logs_to_csv(log_dir: str | Path, out_csv: str | Path | None = None,
                     statistic: str | None = None) -> Path:
    """Turn ``LOG_DIR/NAME.txt`` (stdout of ``onnxruntime_perf_test`` on reference NAME,
    as ``run_perf_test.sh`` writes them) into the device CSV, by default
    ``LOG_DIR/../device_latency.csv``. Other files are ignored. ``statistic`` defaults to
    the profile's, read from the export's ``manifest.json`` beside ``LOG_DIR``, else median."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise CalibrationError(f"{log_dir}: no such folder of onnxruntime_perf_test logs")
    if statistic is None:
        try:
            statistic = json.loads((log_dir.parent / MANIFEST).read_text())["protocol"]["statistic"]
        except (OSError, ValueError, KeyError, TypeError):
            statistic = "median"
    rows = []
    for name in reference_names():
        f = log_dir / f"{name}.txt"
        if f.is_file():
            try:
                rec = parse_perf_test_output(f.read_text(errors="replace"), statistic)
            except CalibrationError as e:
                raise CalibrationError(f"{f}: {e}") from None
            rows.append(DeviceRow(model=name, **rec))
    if not rows:
        raise CalibrationError(f"{log_dir}: no NAME.txt log for any reference model (expected e.g. "
                               f"{REFERENCES[0].name}.txt, written by {PERF_SCRIPT})")
    return write_device_table(rows, out_csv or log_dir.parent / TEMPLATE_CSV)


# ---------------------------------------------------------------- host measurements


def default_cache_dir() -> Path:
    base = os.environ.get("ODNAS_CACHE_DIR") or Path.home() / ".cache" / "odnas"
    return Path(base) / "calibration"


def host_identity(profile: HardwareProfile) -> dict[str, Any]:
    """What a host latency under ``profile`` depends on, as ``LatencyResult`` records it."""
    from odnas.cost.latency import host_key, statistic_of

    return {**dataclasses.asdict(host_key(profile)), "statistic": statistic_of(profile)}


def measure_references(profile: HardwareProfile, input_shape: Sequence[int] | str | None = None,
                       num_classes: int = DEFAULT_NUM_CLASSES, *, names: Iterable[str] | None = None,
                       cache_dir: str | Path | None = None, refresh: bool = False,
                       backend=None, onnx_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Host latency of each reference model under ``profile`` (``LatencyResult`` dicts).

    Measured once per host, ONNX Runtime version, runtime settings, protocol and input
    shape, then read from a JSON cache (``default_cache_dir()``). ``refresh`` measures
    again; a custom ``backend`` (tests) bypasses the cache. ``onnx_dir`` (an export
    folder for the same input shape) times the very files the device timed.
    """
    import tempfile

    from odnas.cost.latency import measure_latency

    shape = parse_input_shape(input_shape)
    wanted = list(names) if names is not None else reference_names()
    cache = None
    if backend is None:
        ident = host_identity(profile)
        key = {"reference_set": REFERENCE_SET, "input_shape": list(shape), "num_classes": num_classes, **ident,
               "runtime": dataclasses.asdict(profile.runtime), "protocol": dataclasses.asdict(profile.protocol)}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache = cache / f"{REFERENCE_SET}-{ident['host']}-{digest}.json"
        if not refresh:
            try:
                stored = json.loads(cache.read_text())
                if stored.get("key") == key and all(n in stored["measured"] for n in wanted):
                    return {n: stored["measured"][n] for n in wanted}
            except (OSError, ValueError, KeyError, TypeError):
                pass
    measured: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in wanted:
            path = Path(onnx_dir) / f"{name}.onnx" if onnx_dir is not None else None
            if path is None or not path.is_file():
                import torch

                from odnas.cost.onnx import export_onnx

                torch.manual_seed(0)
                model = _BY_NAME[name].build(shape, num_classes)
                path = export_onnx(model, shape, Path(tmp) / f"{name}.onnx")
            measured[name] = measure_latency(path, profile, backend).to_dict()
    if cache is not None:
        try:
            old = json.loads(cache.read_text()) if not refresh and cache.is_file() else {}
            merged = {**(old.get("measured", {}) if old.get("key") == key else {}), **measured}
        except (OSError, ValueError):
            merged = measured
        cache.parent.mkdir(parents=True, exist_ok=True)
        _write_json(cache, {"key": key, "measured": merged, "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    return measured


# ---------------------------------------------------------------- the fit


@dataclass(frozen=True)
class Calibration:
    """A fitted host -> device latency mapping: ``device = exp(a) * host ** b`` (ms).

    ``a_p90``/``b_p90`` map p90s when the table had ``latency_ms_p90`` for every row;
    otherwise the p90 uses ``a``/``b``. Held-out figures are leave-one-out: each
    reference predicted by a fit on the others; relative error = predicted / measured - 1.
    ``host`` says where the host side was measured; a latency from elsewhere is refused.
    """

    model: str
    a: float
    b: float
    n: int
    loo_median_rel_err: float
    loo_max_rel_err: float
    fit_max_rel_err: float
    spearman: float
    host_range_ms: tuple[float, float]
    device_range_ms: tuple[float, float]
    host: Mapping[str, Any]
    a_p90: float | None = None
    b_p90: float | None = None
    rows: tuple[Mapping[str, Any], ...] = ()
    missing: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    reference_set: str = REFERENCE_SET
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE
    num_classes: int = DEFAULT_NUM_CLASSES
    profile: str = ""
    device: str = ""
    table: str = ""
    created: str = ""

    @property
    def calibration_id(self) -> str:
        blob = json.dumps([self.model, self.a, self.b, self.a_p90, self.b_p90, dict(self.host)], sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(host_range_ms=list(self.host_range_ms), device_range_ms=list(self.device_range_ms),
                 rows=[dict(r) for r in self.rows], missing=list(self.missing), warnings=list(self.warnings),
                 input_shape=list(self.input_shape), host=dict(self.host), calibration_id=self.calibration_id,
                 formula="device_ms = exp(a) * host_ms ** b")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("host_range_ms", "device_range_ms", "missing", "warnings", "input_shape"):
            if k in kw:
                kw[k] = tuple(kw[k])
        kw["rows"] = tuple(dict(r) for r in kw.get("rows", ()))
        try:
            return cls(**kw)
        except TypeError as e:
            raise CalibrationError(f"not a calibration record: {e}") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, self.to_dict())
        return path


def load_calibration(path: str | Path) -> Calibration:
    try:
        return Calibration.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as e:
        if isinstance(e, CalibrationError):
            raise CalibrationError(f"{path}: {e}") from None
        raise CalibrationError(f"{path}: cannot read a calibration record ({e.__class__.__name__})") from None


def fit_loglog(host_ms: Sequence[float], device_ms: Sequence[float], model: str = "loglinear") -> tuple[float, float]:
    """``(a, b)`` of ``log(device) = a + b * log(host)``; Theil-Sen, so one bad row of n
    moves it little. ``model="ratio"`` holds ``b = 1`` (one constant speed ratio)."""
    import numpy as np

    x, y = np.log(np.asarray(host_ms, float)), np.log(np.asarray(device_ms, float))
    if model == "ratio":
        return float(np.median(y - x)), 1.0
    i, j = np.triu_indices(len(x), 1)
    dx = x[j] - x[i]
    keep = np.abs(dx) > 1e-9
    if not keep.any():
        raise CalibrationError("all host latencies are equal; the slope cannot be fitted (use model: ratio)")
    b = float(np.median((y[j] - y[i])[keep] / dx[keep]))
    return float(np.median(y - b * x)), b


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    import numpy as np

    rx, ry = (np.argsort(np.argsort(v)).astype(float) for v in (x, y))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def fit_calibration(profile: HardwareProfile, table_csv: str | Path | None = None, *,
                    references: Mapping[str, float] | None = None, model: str | None = None,
                    input_shape: Sequence[int] | str | None = None, num_classes: int = DEFAULT_NUM_CLASSES,
                    device: str | None = None, cache_dir: str | Path | None = None, refresh: bool = False,
                    backend=None, out: str | Path | None = None) -> Calibration:
    """Fit the host -> device mapping for ``profile``.

    Device latencies come from ``table_csv`` and/or ``references`` (``{model: ms}``),
    defaulting to the profile's ``calibration`` section. The table is checked before
    anything is measured. If a ``manifest.json`` sits beside the table it must be for
    this reference set and match the profile's runtime. The references are then timed
    here (cached, see ``measure_references``), the mapping fitted and checked by
    leave-one-out. Writes the record to ``out`` when given.
    """
    spec = profile.calibration
    if table_csv is None and references is None and spec is not None:
        table_csv, references = spec.table or None, spec.references
    model = model or (spec.model if spec else "loglinear")
    if model not in CALIBRATION_MODELS:
        raise CalibrationError(f"model {model!r}: choose from {', '.join(CALIBRATION_MODELS)}")
    rows: dict[str, DeviceRow] = dict(read_device_table(table_csv)) if table_csv else {}
    for name, ms in (references or {}).items():
        where = f"{profile.source or profile.name}: calibration.references"
        _check_name(name, where)
        if name in rows:
            raise CalibrationError(f"{where}: model {name!r} is also in the table ({rows[name].where}); keep one")
        rows[name] = DeviceRow(model=name, latency_ms=_positive(ms, name, where), where="profile")
    if table_csv is None and not rows:
        raise CalibrationError(f"profile {profile.name!r} has no calibration section; pass a device table "
                               "(odnas calibrate fit --table device_latency.csv)")
    need = MIN_ROWS[model]
    if len(rows) < need:
        raise CalibrationError(f"{table_csv or 'references'}: {len(rows)} reference model(s) with a device latency; "
                               f"model {model} needs at least {need} (fill latency_ms for more rows)")
    shape, export_dir = _resolve_shape(profile, table_csv, input_shape, spec.input_shape if spec else ())
    names = [n for n in reference_names() if n in rows]
    host = measure_references(profile, shape, num_classes, names=names, cache_dir=cache_dir, refresh=refresh,
                              backend=backend, onnx_dir=export_dir)
    cal = _fit(profile, rows, host, model, shape, num_classes)
    cal = dataclasses.replace(cal, device=device if device is not None else (spec.device if spec else ""),
                              table=str(Path(table_csv).resolve()) if table_csv else "")
    if out is not None:
        cal.save(out)
    return cal


def _resolve_shape(profile: HardwareProfile, table_csv, explicit, from_profile) -> tuple[tuple[int, ...], Path | None]:
    """The references' input shape, and the export folder beside the table if there is one
    (checked against this reference set, the shape and the profile's runtime)."""
    manifest_path = Path(table_csv).parent / MANIFEST if table_csv else None
    manifest = None
    if manifest_path is not None and manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            raise CalibrationError(f"{manifest_path}: not valid JSON; export the references again") from None
    chosen = explicit or from_profile or (manifest or {}).get("input_shape") or None
    shape = parse_input_shape(chosen)
    if manifest is None:
        return shape, None
    where = f"{manifest_path}"
    if manifest.get("reference_set") != REFERENCE_SET:
        raise CalibrationError(f"{where}: reference set {manifest.get('reference_set')!r}, but this odnas uses "
                               f"{REFERENCE_SET}; export the references again and re-time them on the device")
    if tuple(manifest.get("input_shape", ())) != shape:
        raise CalibrationError(f"{where}: the references were exported for input shape "
                               f"{'x'.join(map(str, manifest.get('input_shape', [])))}, "
                               f"not {'x'.join(map(str, shape))}")
    want = {**dataclasses.asdict(profile.runtime), "batch_size": profile.batch_size}
    got = {**manifest.get("runtime", {}), "batch_size": manifest.get("batch_size")}
    diff = [f"{k} {got.get(k)!r} (profile: {v!r})" for k, v in want.items() if got.get(k) != v]
    if diff:
        raise CalibrationError(f"{where}: the device was timed with different settings: {'; '.join(diff)}; "
                               "threads, provider and batch size must match the profile")
    return shape, manifest_path.parent


def _fit(profile: HardwareProfile, rows: Mapping[str, DeviceRow], host: Mapping[str, Mapping[str, Any]],
         model: str, shape: tuple[int, ...], num_classes: int) -> Calibration:
    import numpy as np

    names = [n for n in reference_names() if n in rows]
    h = np.array([host[n]["latency_ms"] for n in names])
    d = np.array([rows[n].latency_ms for n in names])
    warnings: list[str] = []
    spread = float(h.max() / h.min())
    if model == "loglinear" and spread < 2.0:
        raise CalibrationError(f"the {len(names)} references span only x{spread:.2f} in host latency; a slope "
                               "cannot be fitted from that: time more of them, or use model: ratio")
    a, b = fit_loglog(h, d, model)
    if b <= 0:
        raise CalibrationError(f"device latencies do not grow with host latencies (fitted exponent b = {b:.3g}); "
                               "is the table for these reference models, timed with the profile's settings?")
    pred = np.exp(a + b * np.log(h))
    loo = np.empty(len(names))
    for k in range(len(names)):
        mask = np.arange(len(names)) != k
        ak, bk = fit_loglog(h[mask], d[mask], model)
        loo[k] = math.exp(ak + bk * math.log(h[k]))
    loo_err = loo / d - 1.0
    fit_err = pred / d - 1.0
    a90 = b90 = None
    if all(rows[n].latency_ms_p90 is not None for n in names):
        a90, b90 = fit_loglog([host[n]["latency_ms_p90"] for n in names], [rows[n].latency_ms_p90 for n in names],
                              model)
        if b90 <= 0:
            a90 = b90 = None
            warnings.append("the p90 columns do not track each other; p90s are mapped with the median's fit")
    rho = _spearman(h, d)
    if float(np.max(np.abs(loo_err))) > 0.25:
        warnings.append(f"a held-out reference is off by {float(np.max(np.abs(loo_err))):.0%}: the mapping is "
                        "rough; check that row, or that threads and provider match")
    if rho < 0.9:
        warnings.append(f"host and device rank the references differently (Spearman {rho:.2f}); a monotone "
                        "mapping cannot fix ranking, so host-side search may prefer the wrong models")
    if model == "loglinear" and not 0.5 <= b <= 1.5:
        warnings.append(f"exponent b = {b:.2f} is far from 1: the device/host ratio changes strongly with model "
                        "size, so latencies outside the references' range are unreliable")
    if profile.precision != "fp32":
        warnings.append(f"the references are fp32 models but profile {profile.name!r} measures "
                        f"{profile.precision}; the mapping is untested for {profile.precision} candidates")
    ratio = float(np.median(d / h))
    if not 1e-2 <= ratio <= 1e3:
        warnings.append(f"the device is x{ratio:.3g} the host's latency: are the table's figures milliseconds?")
    ident = {k: host[names[0]].get(k) for k in HOST_KEYS}
    table_rows = tuple({
        "model": n, "host_ms": float(h[i]), "device_ms": float(d[i]), "fit_ms": float(pred[i]),
        "loo_ms": float(loo[i]), "loo_rel_err": float(loo_err[i]),
        "host_p90_ms": host[n].get("latency_ms_p90"), "device_p90_ms": rows[n].latency_ms_p90,
        "source": rows[n].where,
    } for i, n in enumerate(names))
    return Calibration(
        model=model, a=a, b=b, n=len(names),
        loo_median_rel_err=float(np.median(np.abs(loo_err))), loo_max_rel_err=float(np.max(np.abs(loo_err))),
        fit_max_rel_err=float(np.max(np.abs(fit_err))), spearman=rho,
        host_range_ms=(float(h.min()), float(h.max())), device_range_ms=(float(d.min()), float(d.max())),
        host=ident, a_p90=a90, b_p90=b90, rows=table_rows,
        missing=tuple(n for n in reference_names() if n not in rows), warnings=tuple(warnings),
        input_shape=tuple(shape), num_classes=num_classes, profile=profile.name,
        created=time.strftime("%Y-%m-%d %H:%M:%S"),
    )


# ---------------------------------------------------------------- using a calibration


def _as_calibration(cal: Calibration | Mapping[str, Any]) -> Calibration:
    return cal if isinstance(cal, Calibration) else Calibration.from_dict(cal)


def apply_calibration(host_latency_ms: float, calibration: Calibration | Mapping[str, Any]) -> float:
    """Estimated device milliseconds for a host latency (median or mean, as fitted).
    NaN stays NaN, so a failed measurement still breaks its budget."""
    cal = _as_calibration(calibration)
    h = float(host_latency_ms)
    if math.isnan(h):
        return h
    if h <= 0:
        raise ValueError(f"host latency {h!r} ms must be positive")
    return math.exp(cal.a + cal.b * math.log(h))


def apply_calibration_p90(host_p90_ms: float, calibration: Calibration | Mapping[str, Any]) -> float:
    """Estimated device p90 from the host p90: the p90 fit when the table had p90s, else
    the median's mapping (which assumes the tail scales like the median)."""
    cal = _as_calibration(calibration)
    if cal.a_p90 is None or cal.b_p90 is None:
        return apply_calibration(host_p90_ms, cal)
    h = float(host_p90_ms)
    return h if math.isnan(h) else math.exp(cal.a_p90 + cal.b_p90 * math.log(h))


def check_host(latency: Mapping[str, Any], calibration: Calibration | Mapping[str, Any]) -> None:
    """Refuse to map a latency measured on another host or with other settings."""
    cal = _as_calibration(calibration)
    diff = [f"{k} {latency.get(k)!r} vs {cal.host.get(k)!r}" for k in HOST_KEYS
            if not LatencyKey.same(k, latency.get(k), cal.host.get(k))]
    if diff:
        raise CalibrationError(f"calibration {cal.calibration_id} was fitted with other host settings "
                               f"({'; '.join(diff)}); fit it again here: odnas calibrate fit")


def calibrate_latency(latency, calibration: Calibration | Mapping[str, Any]) -> dict[str, Any]:
    """Device estimates for one host ``LatencyResult`` (or its dict): ``latency_ms``,
    ``latency_ms_p90`` and ``latency_ms_sem`` (delta method), the host figures beside
    them, and whether the host latency lies outside the references' range."""
    lat = latency.to_dict() if hasattr(latency, "to_dict") else dict(latency)
    cal = _as_calibration(calibration)
    check_host(lat, cal)
    h, h90 = float(lat["latency_ms"]), float(lat["latency_ms_p90"])
    dev = apply_calibration(h, cal)
    sem = float(lat.get("latency_ms_sem", float("nan")))
    lo, hi = cal.host_range_ms
    return {"latency_ms": dev, "latency_ms_p90": apply_calibration_p90(h90, cal),
            "latency_ms_sem": cal.b * dev / h * sem if h > 0 else float("nan"),
            "host_latency_ms": h, "host_latency_ms_p90": h90,
            "extrapolated": not lo <= h <= hi, "calibration_id": cal.calibration_id,
            "loo_max_rel_err": cal.loo_max_rel_err}


def apply_to_record(record: CostRecord, calibration: Calibration | Mapping[str, Any]) -> CostRecord:
    """A cost-lane record with device latencies in ``metrics`` and ``sem``; the host
    ones move to ``host_metrics``. Idempotent: a record already calibrated is recomputed
    from its host figures, so cache host records only."""
    host_metrics = record.host_metrics or {k: record.metrics[k] for k in ("latency_ms", "latency_ms_p90")}
    host_sem = float(record.latency.get("latency_ms_sem", record.sem.get("latency_ms", float("nan"))))
    lat = {**record.latency, "latency_ms": host_metrics["latency_ms"],
           "latency_ms_p90": host_metrics["latency_ms_p90"], "latency_ms_sem": host_sem}
    c = calibrate_latency(lat, calibration)
    return dataclasses.replace(
        record, host_metrics=dict(host_metrics),
        metrics={**record.metrics, "latency_ms": c["latency_ms"], "latency_ms_p90": c["latency_ms_p90"]},
        sem={**record.sem, "latency_ms": c["latency_ms_sem"]},
        calibration={k: c[k] for k in ("calibration_id", "extrapolated", "loo_max_rel_err")})


def profile_calibration(profile: HardwareProfile, *, cache_dir: str | Path | None = None, refresh: bool = False,
                        backend=None) -> Calibration | None:
    """The fitted mapping for a profile with a ``calibration`` section (else None; also
    None when the profile times on a device, whose own figures need no mapping). The
    host side is measured once per host and cached, so this is cheap after the first call."""
    if profile.calibration is None or profile.device is not None:
        return None
    return fit_calibration(profile, cache_dir=cache_dir, refresh=refresh, backend=backend)


def run_calibration(run_dir: str | Path, profile: HardwareProfile, *, cache_dir: str | Path | None = None,
                    backend=None, keep: bool = True) -> Calibration | None:
    """The calibration a run uses, kept in ``RUN_DIR/calibration.json``: read back when it
    was fitted on this host with these settings, else fitted (from the profile's table)
    and, with ``keep`` (the driver's), written there. None when the profile has no
    calibration section, or times on a device."""
    if profile.calibration is None or profile.device is not None:
        return None
    path = Path(run_dir) / "calibration.json"
    if path.is_file():
        cal = load_calibration(path)
        here = host_identity(profile) if backend is None else None
        if here is None or all(LatencyKey.same(k, cal.host.get(k), here.get(k)) for k in HOST_KEYS):
            return cal
    cal = profile_calibration(profile, cache_dir=cache_dir, backend=backend)
    if cal is not None and keep:
        cal.save(path)
    return cal


def default_record_path(profile: HardwareProfile, table_csv: str | Path | None) -> Path:
    """Where ``odnas calibrate fit`` writes the record: beside the table, else beside the
    profile file, else the current folder."""
    if table_csv:
        return Path(table_csv).resolve().parent / "calibration.json"
    if profile.calibration and profile.calibration.table:
        return Path(profile.calibration.table).parent / "calibration.json"
    src = Path(profile.source) if profile.source else None
    if src is not None and src.is_file() and src.parent.resolve() != _shipped_dir():
        return src.with_name(f"{src.stem}.calibration.json")
    return Path("calibration.json")


def _shipped_dir() -> Path:
    return profiles_dir().resolve()


def format_calibration(cal: Calibration) -> str:
    """A short human report: the formula, the held-out error and one line per reference."""
    lines = [f"Calibration {cal.calibration_id} ({cal.model}, {cal.n} references of {REFERENCE_SET}, "
             f"input {'x'.join(map(str, cal.input_shape))}, profile {cal.profile})",
             f"  device_ms = {math.exp(cal.a):.4g} * host_ms ^ {cal.b:.4f}"
             + (f"   (p90: {math.exp(cal.a_p90):.4g} * host_p90 ^ {cal.b_p90:.4f})" if cal.a_p90 is not None else ""),
             f"  held-out (leave-one-out) relative error: median {cal.loo_median_rel_err:.1%}, "
             f"max {cal.loo_max_rel_err:.1%}; in-sample max {cal.fit_max_rel_err:.1%}; "
             f"Spearman(host, device) {cal.spearman:.3f}",
             f"  valid for host latencies {cal.host_range_ms[0]:.4g}-{cal.host_range_ms[1]:.4g} ms "
             f"(device {cal.device_range_ms[0]:.4g}-{cal.device_range_ms[1]:.4g} ms); beyond that it extrapolates",
             f"  host: {cal.host.get('cpu_model')} ({cal.host.get('host')}), ORT {cal.host.get('ort_version')}, "
             f"{cal.host.get('provider')}, {cal.host.get('intra_op_threads')} thread(s)"
             + (f"; device: {cal.device}" if cal.device else ""),
             "",
             f"  {'model':<12} {'host_ms':>9} {'device_ms':>10} {'fit_ms':>9} {'held_out_ms':>11} {'error':>7}"]
    for r in cal.rows:
        lines.append(f"  {r['model']:<12} {r['host_ms']:>9.4g} {r['device_ms']:>10.4g} {r['fit_ms']:>9.4g} "
                     f"{r['loo_ms']:>11.4g} {r['loo_rel_err']:>+7.1%}")
    if cal.missing:
        lines.append(f"  not in the table: {', '.join(cal.missing)}")
    lines += [f"  warning: {w}" for w in cal.warnings]
    return "\n".join(lines)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=float))
    os.replace(tmp, path)


# ---------------------------------------------------------------- device-side script
# Standalone: needs only Python 3, numpy and onnxruntime on the device. It times the plain
# way (``method: plain``: warm-ups, then min_runs and min_time_s) with the runtime settings
# and protocol fields in manifest.json; a device agent runs the reference protocol instead.

_BENCH_SCRIPT = '''#!/usr/bin/env python3
"""Time the odnas reference models in this folder with ONNX Runtime and write device_latency.csv.

Run it on the target (a Linux board, or Python on a phone):  python3 bench_device.py [--out FILE]
It needs numpy and onnxruntime, and uses the runtime settings and the plain protocol's fields
(warm-ups, min_runs, min_time_s, max_time_s) that manifest.json copied from the odnas profile.
"""
import argparse, csv, json, math, os, platform, time
from pathlib import Path

import numpy as np
import onnxruntime as ort

here = Path(__file__).resolve().parent
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--out", default=str(here / "device_latency.csv"))
args = ap.parse_args()
man = json.loads((here / "manifest.json").read_text())
rt, pr, batch = man["runtime"], man["protocol"], man["batch_size"]
if rt["provider"] not in ort.get_available_providers():
    raise SystemExit(f"this onnxruntime has no {rt['provider']} (it has {ort.get_available_providers()})")
so = ort.SessionOptions()
so.intra_op_num_threads, so.inter_op_num_threads = rt["intra_op_threads"], rt["inter_op_threads"]
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                               "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                               "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                               "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[rt["graph_optimization"]]
so.log_severity_level = 3
if rt["intra_op_threads"] == 1:
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
rows = []
for m in man["models"]:
    sess = ort.InferenceSession(str(here / m["file"]), sess_options=so, providers=[rt["provider"]])
    inp = sess.get_inputs()[0]
    feed = {inp.name: np.random.default_rng(0).standard_normal([batch, *man["input_shape"]]).astype(np.float32)}
    for _ in range(pr["warmup_runs"]):
        sess.run(None, feed)
    samples, t0 = [], time.perf_counter()
    while True:
        a = time.perf_counter_ns()
        sess.run(None, feed)
        samples.append((time.perf_counter_ns() - a) / 1e6)
        el = time.perf_counter() - t0
        if ((len(samples) >= pr["min_runs"] and el >= pr["min_time_s"])
                or (el >= pr["max_time_s"] and len(samples) >= 3)):
            break
    s = np.asarray(samples)
    stat = float(np.median(s)) if pr["statistic"] == "median" else float(s.mean())
    rows.append([m["name"], repr(stat), repr(float(np.percentile(s, 90))), len(s),
                 f"bench_device.py ORT {ort.__version__} {platform.machine()}"])
    print(f"{m['name']:<12} {stat:.4f} ms  ({len(s)} runs)", flush=True)
with open(args.out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["model", "latency_ms", "latency_ms_p90", "runs", "notes"])
    w.writerows(rows)
print(f"wrote {args.out}")
'''
