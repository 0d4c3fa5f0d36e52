"""The deployable artifact: ``NAME.onnx`` with trained weights, checked, plus ``NAME.json``.

``export_artifact`` exports a trained model, runs ``onnx.checker``, compares ONNX
Runtime against PyTorch on real validation inputs (max abs difference and top-1
agreement; past the tolerance it fails loudly), re-measures the file's latency
under the profile and writes the model card. The card tells a deployer everything
needed to feed the file: input name, shape, dtype and normalisation, and labels.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from odnas.profiles import HardwareProfile


class ParityError(RuntimeError):
    """The exported ONNX file does not compute what the PyTorch model computes."""


def check_parity(model, onnx_path: str | Path, x: np.ndarray, atol: float = 1e-3,
                 min_agreement: float = 0.999) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime on ``x`` (N, C, H, W) and compare logits.

    Raises ``ParityError`` when the max abs difference exceeds ``atol`` or top-1
    agreement falls below ``min_agreement``.
    """
    import onnxruntime as ort
    import torch

    model = model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    diff = float(np.max(np.abs(ref - got)))
    agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
    result = {"max_abs_diff": diff, "top1_agreement": agree, "n": int(len(x)), "atol": atol}
    if not diff <= atol or agree < min_agreement:
        raise ParityError(f"{onnx_path}: ONNX Runtime disagrees with PyTorch "
                          f"(max abs diff {diff:.3g} > {atol:g} or top-1 agreement {agree:.4f} < {min_agreement})")
    return result


def onnx_accuracy(onnx_path: str | Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float(np.mean(logits.argmax(1) == y))


def export_artifact(model, out: str | Path, *, space: str, params: Mapping[str, Any], arch_id: str,
                    data, profile: HardwareProfile, metrics: Mapping[str, Any],
                    extra: Mapping[str, Any] | None = None, atol: float = 1e-3) -> dict[str, Any]:
    """Write ``out`` (.onnx) and its card ``out.with_suffix('.json')``; return the card."""
    import onnx
    import onnxruntime as ort
    import torch

    from odnas import __version__
    from odnas.cost.count import count
    from odnas.cost.latency import measure_latency
    from odnas.cost.onnx import INPUT_NAME, OPSET, export_onnx

    out = Path(out)
    if out.suffix != ".onnx":
        out = out.with_name(out.name + ".onnx")
    export_onnx(model, data.input_shape, out)
    parity = check_parity(model, out, data.x_val, atol=atol)
    acc = onnx_accuracy(out, data.x_val, data.y_val)
    lat = measure_latency(out, profile)
    counts = count(model, data.input_shape)
    # The search's figures win where given (the budgets were enforced on them); the
    # artifact's own counts and a fresh latency measurement fill in and sit beside them.
    merged = {"num_params": counts.num_params, "flops": counts.flops, "model_bytes": out.stat().st_size,
              "latency_ms": lat.latency_ms, "latency_ms_p90": lat.latency_ms_p90, **metrics,
              "val_acc_onnx": acc, "latency_ms_artifact": lat.latency_ms,
              "latency_ms_artifact_p90": lat.latency_ms_p90}
    card = {
        "arch_id": arch_id,
        "space": space,
        "params": dict(params),
        "metrics": merged,
        "budgets": {m: {"limit": lim, "value": float(merged[m]), "met": float(merged[m]) <= lim}
                    for m, lim in profile.budgets.items()},
        "profile": profile.to_dict(),
        "input": {
            "name": INPUT_NAME, "shape": ["batch", *data.input_shape], "dtype": "float32",
            "layout": "NCHW",
            "normalize": {**data.normalize,
                          "formula": "x = (raw / scale - mean) / std, raw = the data set's pixel values"},
        },
        "output": {"name": "logits", "shape": ["batch", data.num_classes], "meaning": "unnormalised class scores"},
        "labels": list(data.labels),
        "data": data.describe(),
        "parity": parity,
        "latency": lat.to_dict(),
        "onnx": {"opset": OPSET, "ir_version": onnx.load(str(out)).ir_version, "checker": "passed"},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                        "platform": platform.platform()},
        "odnas_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "onnx_sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "artifact": str(out),
        **(dict(extra) if extra else {}),
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=2, default=float))
    return card


def export_trial(run_dir: str | Path, out: str | Path, trial: int | None = None) -> dict[str, Any]:
    """Export a trained trial of a run (the pick by default) as an artifact."""
    import torch

    from odnas.data import load_data
    from odnas.search import SearchError, load_run
    from odnas.select import feasible, pick
    from odnas.spaces import get_space

    settings, profile, rows = load_run(run_dir)
    if trial is None:
        row = pick(rows, profile)
        if row is None:
            raise SearchError(f"{run_dir} has no trained model within every budget yet; nothing to export")
    else:
        match = [r for r in rows if r["trial"] == trial]
        if not match:
            raise SearchError(f"{run_dir} has no trial {trial}")
        row = match[0]
        if row["state"] == "over_budget":
            raise SearchError(f"trial {trial} is over budget ({', '.join(row['over_budget'])}); it was never trained"
                              " and cannot be exported")
        if not feasible(row, profile):
            raise SearchError(f"trial {trial} is {row['state']} and not within every budget and threshold; "
                              "odnas exports only feasible models")
    ckpt_path = Path(row["trial_dir"]) / "model.pt"
    if not ckpt_path.is_file():
        raise SearchError(f"trial {row['trial']} has no checkpoint at {ckpt_path}")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    space = get_space(settings["space"])
    data = load_data(settings["data"], settings.get("data_dir"), seed=settings.get("data_seed", 0))
    model = space.build(row["params"], data.input_shape, data.num_classes)
    model.load_state_dict(ckpt["state_dict"])
    return export_artifact(
        model, out, space=space.name, params=row["params"], arch_id=row["arch_id"], data=data,
        profile=profile, metrics=row["metrics"],
        extra={"run": {"run_dir": str(Path(run_dir).resolve()), "trial": row["trial"]}},
    )
