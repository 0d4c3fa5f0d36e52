"""A host check a user can run (``odnas doctor``): can this machine time latency well?

It reports, for a profile: whether the host switches speed modes (from the reference
model's calibration), the harness floor (a one-op model timed the plain way), and the
protocol's retest spread: a few fixed candidates timed in two fresh processes, once
with the profile's protocol and once the plain way, for contrast. Then what a user
can do about what it found.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from odnas.cost.latency import OrtLatencyBackend, cpu_model
from odnas.cost.quiet import measurement_window
from odnas.profiles import HardwareProfile, profile_from_dict

#: Retest spread above this (median |difference| between processes) is worth acting on.
SPREAD_TOLERANCE = 0.05
#: A model whose two timings differ by more standard errors than this did not time reproducibly.
RETEST_Z = 3.0


def floor_model(path: Path, input_shape: Sequence[int]) -> Path:
    """A one-Reshape ONNX model: what timing costs when the model costs nothing."""
    import onnx
    from onnx import TensorProto, helper

    n = int(np.prod(input_shape))
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, n])
    graph = helper.make_graph([helper.make_node("Reshape", ["input", "shape"], ["logits"])], "floor",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *input_shape])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n])],
                              initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _candidates(folder: Path, n: int, input_shape: Sequence[int]) -> list[Path]:
    import random

    import torch

    from odnas.cost.onnx import export_onnx
    from odnas.spaces import get_space

    space = get_space("mobile-cnn")
    rng = random.Random(0)
    out = []
    for i in range(n):
        torch.manual_seed(0)
        out.append(export_onnx(space.build(space.sample(rng), input_shape, 10), input_shape, folder / f"c{i}.onnx"))
    return out


def _retest(paths: Sequence[Path], profile: HardwareProfile, method: str) -> list[dict[str, Any]]:
    """Time ``paths`` in a fresh process under ``profile`` with ``method``."""
    spec = json.dumps({"paths": [str(p) for p in paths], "profile": profile.to_dict(), "method": method})
    out = subprocess.run([sys.executable, "-m", "odnas.cost.doctor", spec], capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(out.stdout)


def _worker(spec: dict[str, Any]) -> list[dict[str, Any]]:
    import dataclasses

    profile = profile_from_dict(spec["profile"], source="odnas doctor")
    profile = dataclasses.replace(profile, protocol=dataclasses.replace(profile.protocol, method=spec["method"]))
    backend = OrtLatencyBackend()
    return [backend.measure(p, profile).to_dict() for p in spec["paths"]]


def retest_spread(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """How two timings of the same models agree: the median and largest relative
    difference, the largest difference in standard errors, and the seconds a timing took."""
    diffs = [abs(x["latency_ms"] / y["latency_ms"] - 1.0) for x, y in zip(a, b)]
    z = [abs(x["latency_ms"] - y["latency_ms"]) / max(1e-12, np.hypot(x["latency_ms_sem"], y["latency_ms_sem"]))
         for x, y in zip(a, b)]
    return {"median_abs_diff": float(np.median(diffs)), "max_abs_diff": float(max(diffs)), "max_z": float(max(z)),
            "seconds_per_candidate": float(np.mean([x["measure_s"] for x in a])),
            "latency_ms": [[x["latency_ms"], y["latency_ms"]] for x, y in zip(a, b)]}


def check_host(profile: HardwareProfile, input_shape: Sequence[int] = (1, 8, 8), models: int = 3) -> dict[str, Any]:
    """Everything ``odnas doctor`` reports, as JSON-able data."""
    import dataclasses

    import onnxruntime as ort

    t0 = time.perf_counter()
    shape = tuple(int(d) for d in input_shape)
    out: dict[str, Any] = {"profile": profile.name, "input_shape": list(shape),
                           "host": {"cpu_model": cpu_model(), "cores": os.cpu_count(), "onnxruntime": ort.__version__,
                                    "load_average": round(os.getloadavg()[0], 2)}}
    with tempfile.TemporaryDirectory() as tmp, measurement_window("lock"):
        folder = Path(tmp)
        backend = OrtLatencyBackend()
        if profile.protocol.method == "reference":
            base = backend.baseline(profile, shape)
            out["reference"] = {"baseline_ms": base.ms, "calibration_s": base.seconds,
                                "modes": dataclasses.asdict(base.modes), "cache": base.path}
        plain = dataclasses.replace(profile, protocol=dataclasses.replace(profile.protocol, method="plain"))
        out["floor_ms"] = backend.measure(floor_model(folder / "floor.onnx", shape), plain).latency_ms
        paths = _candidates(folder, models, shape)
        retest = {}
        for method in (profile.protocol.method, "plain") if profile.protocol.method != "plain" else ("plain",):
            retest[method] = retest_spread(_retest(paths, profile, method), _retest(paths, profile, method))
        out["retest"] = retest
    out["advice"] = advice(out)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def check_device(profile: HardwareProfile, input_shape: Sequence[int] = (1, 8, 8), models: int = 3,
                 backend=None) -> dict[str, Any]:
    """The link to ``profile.device`` and its timings: the agent's identity and ONNX
    Runtime, the link's round trip, and the retest spread of a few fixed candidates
    timed twice on the device under the profile's protocol (each timing opens fresh
    sessions there). ``DeviceError`` if the agent cannot be reached or refuses."""
    from odnas.cost.device import DeviceLatencyBackend

    t0 = time.perf_counter()
    backend = backend or DeviceLatencyBackend.of(profile)
    info = backend.check(profile)
    trips = []
    for _ in range(5):
        a = time.perf_counter()
        backend.client.info()
        trips.append((time.perf_counter() - a) * 1e3)
    shape = tuple(int(d) for d in input_shape)
    out: dict[str, Any] = {"profile": profile.name, "input_shape": list(shape), "device": info,
                           "url": profile.device.url if profile.device else None,
                           "round_trip_ms": float(np.median(trips))}
    with tempfile.TemporaryDirectory() as tmp:
        paths = _candidates(Path(tmp), models, shape)
        a = [backend.measure(p, profile).to_dict() for p in paths]
        b = [backend.measure(p, profile).to_dict() for p in paths]
    out["retest"] = retest_spread(a, b)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def format_device_report(r: dict[str, Any]) -> str:
    d, s = r["device"], r["retest"]
    lines = [f"odnas doctor --device {r['url']}: {d['device']} ({d['cpu_model']}, {d['cores']} cores, "
             f"{d['machine']}), onnxruntime {d['ort_version']} ({', '.join(d['providers'])}), "
             f"odnas-device {d['version']}",
             f"  link:            round trip {r['round_trip_ms']:.1f} ms (median of 5)",
             f"  retest:          median |diff| {s['median_abs_diff']:.1%}, max {s['max_abs_diff']:.1%} between two "
             f"timings of {len(s['latency_ms'])} models (max |diff|/SE {s['max_z']:.1f}, "
             f"{s['seconds_per_candidate']:.2f} s per candidate on the device)"]
    if s["median_abs_diff"] > SPREAD_TOLERANCE:
        lines.append(f"  - The retest spread is over {SPREAD_TOLERANCE:.0%}: raise protocol.sessions in the profile, "
                     "or stop other work on the device.")
    elif s["max_z"] > RETEST_Z:
        lines.append(f"  - The median retest is within {SPREAD_TOLERANCE:.0%}, but a model's two timings are "
                     f"{s['max_z']:.1f} standard errors apart (the largest move {s['max_abs_diff']:.1%}): the device "
                     "was interrupted or switches speed. Run doctor again; if it repeats, raise protocol.sessions or "
                     "stop other work on the device.")
    else:
        lines.append("  The device times reproducibly under this profile.")
    return "\n".join(lines)


def advice(r: dict[str, Any]) -> list[str]:
    """What a user can do about what the check found."""
    tips = []
    modes = (r.get("reference") or {}).get("modes") or {}
    method = next(iter(r["retest"]))
    spread = r["retest"][method]["median_abs_diff"]
    if modes.get("present"):
        tips.append(f"This host switches speed modes (reference p90/p10 {modes['spread']:.2f}, fast "
                    f"{modes['fast_share']:.0%} of the time): plain timings here move by "
                    f"{r['retest'].get('plain', {}).get('median_abs_diff', float('nan')):.0%} between processes. "
                    "Keep protocol.method: reference (odnas's default); it reports the fast mode.")
    else:
        tips.append("No speed modes seen: timings on this host are stable.")
    if spread > SPREAD_TOLERANCE:
        tips.append(f"The protocol's retest spread is {spread:.1%}: raise protocol.sessions (and rounds) in the "
                    "profile, or stop other work on this machine while searching.")
    base = (r.get("reference") or {}).get("baseline_ms")
    if base and r["floor_ms"] > 0.3 * base:
        tips.append(f"The harness floor ({r['floor_ms']:.4f} ms) is {r['floor_ms'] / base:.0%} of the reference "
                    "model's time: small models are timed mostly as overhead. Rank them by the ratio, or time a "
                    "larger batch (batch_size) if the target batches.")
    if r["host"]["load_average"] > 1.5:
        tips.append(f"Load average {r['host']['load_average']}: other work is running; odnas pauses its own "
                    "jobs while timing, not other programs.")
    tips.append("For figures in a device's milliseconds, calibrate against it: odnas calibrate (docs/calibration.md).")
    return tips


def format_report(r: dict[str, Any]) -> str:
    h = r["host"]
    lines = [f"odnas doctor: {h['cpu_model']}, {h['cores']} cores, onnxruntime {h['onnxruntime']}, "
             f"load {h['load_average']} · profile {r['profile']}, input {'x'.join(map(str, r['input_shape']))}"]
    ref = r.get("reference")
    if ref:
        m = ref["modes"]
        lines.append(f"  speed modes:     {'YES' if m['present'] else 'no'} (reference p90/p10 {m['spread']:.2f}, "
                     f"fast {m['fast_share']:.0%} of {m['bursts']} bursts over {ref['calibration_s']:.0f} s)")
        lines.append(f"  reference model: {ref['baseline_ms']:.4f} ms in the fast mode (the baseline every figure "
                     "is scaled by)")
    lines.append(f"  harness floor:   {r['floor_ms']:.4f} ms (a one-op model, plain timing)")
    for method, s in r["retest"].items():
        lines.append(f"  retest, {method + ':':<10} median |diff| {s['median_abs_diff']:.1%}, "
                     f"max {s['max_abs_diff']:.1%} "
                     f"between two fresh processes ({len(s['latency_ms'])} models, max |diff|/SE {s['max_z']:.1f}, "
                     f"{s['seconds_per_candidate']:.2f} s per candidate)")
    lines.append("What to do:")
    lines += [f"  - {t}" for t in r["advice"]]
    return "\n".join(lines)


if __name__ == "__main__":  # the retest worker: a fresh process per retest
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
