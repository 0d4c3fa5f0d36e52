"""Timing an ONNX file with ONNX Runtime: the one implementation the host and the device share.

The search's host (``odnas.cost.latency``) and the device agent (``odnas_device.agent``)
both time through this module, so a figure from a device is taken exactly as one from
the host: the same session options, the same protocol (``odnas_device.protocol``), the
same reference baseline kept per host. Settings come in as plain mappings (the
profile's ``runtime`` and ``protocol`` sections), so nothing here needs odnas itself:
this module imports only the standard library, numpy and onnxruntime.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import platform
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from odnas_device import protocol as proto
from odnas_device.protocol import Modes, Run

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def cache_root() -> Path:
    """odnas's per-user cache (``ODNAS_CACHE_DIR``, else ``~/.cache/odnas``)."""
    return Path(os.environ.get("ODNAS_CACHE_DIR") or Path.home() / ".cache" / "odnas")


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first value of each field of ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            fields.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return fields


#: The ``/proc/cpuinfo`` fields that tell one CPU generation from another where the name
#: does not (a VM's "AMD EPYC" is any of several).
SIGNATURE_FIELDS = ("vendor_id", "cpu family", "model", "stepping", "cache size", "CPU implementer",
                    "CPU architecture", "CPU variant", "CPU part", "CPU revision")


@lru_cache(maxsize=1)
def cpu_signature() -> str:
    """A short hash of the CPU's family, model, stepping and cache size (ARM: implementer,
    part, variant, revision): two hosts of the same name and CPU name on different
    hardware differ here, so one's reference baseline is never taken for the other's."""
    fields = _cpuinfo()
    parts = [f"{k}={fields[k]}" for k in SIGNATURE_FIELDS if fields.get(k)]
    return sha12("\n".join(parts or [platform.processor() or platform.machine()]).encode())


@lru_cache(maxsize=1)
def cpu_flags() -> str:
    """The CPU's instruction-set flags (``flags`` on x86, ``Features`` on ARM): what code
    compiled with ``-march=native`` may use. A hypervisor can hide some (AVX-512) on a
    CPU of the same model and stepping, so the signature alone does not say it."""
    fields = _cpuinfo()
    return fields.get("flags") or fields.get("Features") or ""


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's name: ``model name`` on x86, ``Hardware``/``Model`` or the core part on ARM."""
    fields = _cpuinfo()
    for k in ("model name", "Hardware", "Model", "cpu model"):
        if fields.get(k):
            return fields[k]
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def device_model() -> str:
    """What the device calls itself: the board's name from the device tree (Raspberry Pi,
    Jetson), the DMI product name (x86 boxes), else the CPU. Read from files only."""
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model",
                 "/sys/class/dmi/id/product_name"):
        try:
            text = Path(path).read_bytes().decode(errors="replace").strip("\x00 \n")
        except OSError:
            continue
        if text:
            return text
    return cpu_model()


def identity() -> dict[str, Any]:
    """This machine as a latency depends on it: host name, CPU, ONNX Runtime build, cores."""
    import onnxruntime as ort

    return {"host": socket.gethostname(), "cpu_model": cpu_model(), "cpu_signature": cpu_signature(),
            "ort_version": ort.__version__, "cores": os.cpu_count() or 1}


def environment(runtime: Mapping[str, Any], batch_size: int,
                machine: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a latency taken under ``runtime`` depends on: host, CPU (its name and
    signature), ONNX Runtime build and session settings (the fields of
    ``odnas.records.LatencyKey``), on this machine or on the one ``machine`` (an
    ``identity()``, as a device agent reports it; an older agent's has no signature)
    describes."""
    m = machine or identity()
    return {"host": m["host"], "cpu_model": m["cpu_model"], "cpu_signature": m.get("cpu_signature"),
            "ort_version": m["ort_version"], "provider": runtime["provider"],
            "intra_op_threads": int(runtime["intra_op_threads"]) or int(m["cores"]),
            "inter_op_threads": int(runtime["inter_op_threads"]), "batch_size": int(batch_size),
            "graph_optimization": runtime["graph_optimization"]}


def session_options(runtime: Mapping[str, Any]):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(runtime["intra_op_threads"])
    so.inter_op_num_threads = int(runtime["inter_op_threads"])
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[runtime["graph_optimization"]]
    so.log_severity_level = 3
    if int(runtime["intra_op_threads"]) == 1:
        # A single-threaded target should not spin a thread pool it does not use.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def make_session(model, runtime: Mapping[str, Any]):
    """An ONNX Runtime session of ``model`` (a path or the file's bytes)."""
    import onnxruntime as ort

    src = bytes(model) if isinstance(model, (bytes, bytearray, memoryview)) else str(model)
    return ort.InferenceSession(src, sess_options=session_options(runtime), providers=[runtime["provider"]])


def feed_for(sess, batch_size: int) -> dict[str, np.ndarray]:
    """Random standard-normal inputs of ``batch_size`` for a one-input model (seeded)."""
    inp = sess.get_inputs()[0]
    shape = [batch_size] + [int(d) for d in inp.shape[1:]]
    return {inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def opener(model, runtime: Mapping[str, Any], batch_size: int) -> Callable[[], Run]:
    """A function that opens a fresh session of ``model`` and returns "run once"."""
    def open_session() -> Run:
        sess = make_session(model, runtime)
        feed = feed_for(sess, batch_size)
        return lambda: sess.run(None, feed)

    return open_session


def summarize(samples_ms: np.ndarray, statistic: str) -> tuple[float, float, float, float]:
    """(statistic, p90, mean, standard error of the statistic) of timed runs."""
    s = np.asarray(samples_ms, dtype=np.float64)
    med, p90, mean = float(np.median(s)), float(np.percentile(s, 90)), float(s.mean())
    n = len(s)
    if statistic == "median":
        # Asymptotic SE of the median, with a robust spread so one hiccup does not dominate.
        spread = 1.4826 * float(np.median(np.abs(s - med)))
        sem = 1.2533 * spread / math.sqrt(n)
        return med, p90, mean, sem
    return mean, p90, mean, float(s.std(ddof=1) / math.sqrt(n))


def plain_samples(run: Run, warmup_runs: int, min_runs: int, min_time_s: float, max_time_s: float) -> np.ndarray:
    """Per-run milliseconds of one session: warm-ups discarded, then runs until both
    ``min_runs`` and ``min_time_s`` are met (or ``max_time_s`` passes)."""
    for _ in range(warmup_runs):
        run()
    samples: list[float] = []
    t0 = time.perf_counter()
    while True:
        a = time.perf_counter_ns()
        run()
        samples.append((time.perf_counter_ns() - a) / 1e6)
        elapsed = time.perf_counter() - t0
        if (len(samples) >= min_runs and elapsed >= min_time_s) or (elapsed >= max_time_s and len(samples) >= 3):
            return np.array(samples)


# ---------------------------------------------------------------- the reference baseline


@dataclass(frozen=True)
class Baseline:
    """The reference's fast-mode time on this host (ms per batch) and what it came from."""

    ms: float
    reference_id: str  # the reference file's sha256, first 12 hex digits
    seconds: float  # calibration time behind it
    modes: Modes
    path: str  # the cache file

    def to_dict(self) -> dict:
        return {"ms": self.ms, "reference_id": self.reference_id, "seconds": self.seconds,
                "modes": dataclasses.asdict(self.modes)}


def sha12(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _baseline_entry(key: Mapping[str, Any], reference: bytes, burst_runs: int,
                    signature: str | None = None) -> tuple[dict[str, Any], Path]:
    """What a baseline is cached under, and the cache file that holds it: the timing
    environment, the reference, the burst length and the CPU's signature (this
    machine's, or ``signature``: another's, as its agent reports it). The cache outlives
    a host: a disk kept across machines of the same name must not carry a baseline
    from one to the other."""
    ident = {**dict(key), "reference": sha12(reference), "burst_runs": burst_runs,
             "cpu_signature": signature or cpu_signature()}
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return ident, cache_root() / "reference" / f"baseline-{key['host']}-{digest}.json"


def _cached(ident: dict[str, Any], path: Path) -> dict[str, Any]:
    """The cached baseline record for ``ident``, or an empty one."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        rec = None
    return rec if isinstance(rec, dict) and rec.get("key") == ident else {"key": ident, "bursts": [], "seconds": 0.0}


def _seconds(rec: Mapping[str, Any]) -> float:
    """Seconds of calibration a cached record holds (0 without bursts)."""
    return float(rec["seconds"]) if rec.get("bursts") else 0.0


def _due(seconds: float, calibration_s: float) -> float:
    """Seconds of calibration still needed on top of ``seconds`` held (0: enough)."""
    missing = calibration_s - seconds
    return max(missing, 0.05) if missing > 0.05 or seconds <= 0 else 0.0


def calibration_due(key: Mapping[str, Any], reference: bytes, *, calibration_s: float, burst_runs: int,
                    calibrated: Mapping[str, float] | None = None, signature: str | None = None) -> float:
    """Seconds ``baseline`` would calibrate for before it returns (0 when the per-host
    cache holds enough): for a note before a first run on a host waits. ``calibrated``
    and ``signature``: another machine's cache as ``calibrated()`` lists it there and its
    CPU's signature (a device agent's info), in place of this one's."""
    ident, path = _baseline_entry(key, reference, burst_runs, signature)
    if calibrated is None:
        return _due(_seconds(_cached(ident, path)), calibration_s)
    return _due(calibrated.get(path.name, 0.0), calibration_s)


def calibrated() -> dict[str, float]:
    """This machine's cached reference baselines: file name -> seconds of calibration."""
    out = {}
    for path in sorted((cache_root() / "reference").glob("baseline-*.json")):
        try:
            rec = json.loads(path.read_text())
            out[path.name] = _seconds(rec) if isinstance(rec, dict) else 0.0
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def baseline(key: Mapping[str, Any], reference: bytes, open_reference: Callable[[], Run], *, calibration_s: float,
             burst_runs: int, warmup_runs: int, clock: Callable[[], int] = time.perf_counter_ns) -> Baseline:
    """The reference's baseline for ``key`` (an ``environment()``) and this reference file,
    calibrated (or extended) to at least ``calibration_s`` seconds first if the per-host
    cache holds less. A file lock keeps two processes from calibrating at once."""
    ref_id = sha12(reference)
    ident, path = _baseline_entry(key, reference, burst_runs)
    with _locked(path):
        rec = _cached(ident, path)
        due = _due(_seconds(rec), calibration_s)
        if due:
            rec["bursts"] += proto.calibrate(open_reference, due, burst_runs=burst_runs,
                                             warmup_runs=warmup_runs, clock=clock)
            rec["seconds"] = float(rec["seconds"]) + due
            rec["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
            _write_json_atomic(path, rec)
    return Baseline(ms=proto.baseline_ms(rec["bursts"]), reference_id=ref_id, seconds=float(rec["seconds"]),
                    modes=proto.modes(rec["bursts"]), path=str(path))


# ---------------------------------------------------------------- one measurement


def measure(open_candidate: Callable[[], Run], protocol: Mapping[str, Any],
            reference: tuple[Callable[[], Run], Baseline] | None) -> dict[str, Any]:
    """Time a candidate under ``protocol`` (a profile's ``protocol`` section): the fields of
    a latency record but its environment. ``reference`` (its opener and this host's
    baseline) is needed by ``method: reference``."""
    t_start = time.perf_counter()
    p = protocol
    if p["method"] == "plain":
        samples = plain_samples(open_candidate(), p["warmup_runs"], p["min_runs"], p["min_time_s"], p["max_time_s"])
        stat, p90, mean, sem = summarize(samples, p["statistic"])
        return dict(latency_ms=stat, latency_ms_p90=p90, latency_ms_mean=mean, latency_ms_sem=sem,
                    runs=len(samples), warmup_runs=p["warmup_runs"], measure_s=time.perf_counter() - t_start,
                    statistic=p["statistic"], method="plain")
    if reference is None:
        raise ValueError("protocol method 'reference' needs the reference model")
    open_reference, base = reference
    r = proto.rounds(open_candidate, open_reference, sessions=p["sessions"], rounds=p["rounds"],
                     burst_runs=p["burst_runs"], warmup_runs=p["warmup_runs"], clock=time.perf_counter_ns,
                     budget_s=p["max_time_s"], max_sessions=3 * p["sessions"],
                     modes=base.modes.present)
    ms = r.ratio * base.ms
    return dict(
        latency_ms=ms, latency_ms_p90=ms * r.tail, latency_ms_mean=ms, latency_ms_sem=r.ratio_sem * base.ms,
        runs=r.runs, warmup_runs=p["warmup_runs"], measure_s=time.perf_counter() - t_start,
        statistic="reference-ratio", method="reference", ratio=r.ratio, ratio_sem=r.ratio_sem,
        baseline_ms=base.ms, reference_id=base.reference_id, raw_ms=r.raw_ms,
        sessions=r.sessions, rounds=p["rounds"], burst_runs=r.runs // (r.sessions * p["rounds"]),
        session_ratios=[round(x, 5) for x in r.session_ratios], fast_only=r.fast_only)
