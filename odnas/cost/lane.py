"""Measure one candidate's costs, and cache them by arch id.

Costs depend on the architecture only, so the model is built untrained, counted,
exported and timed once per arch id on the driver's host. The cache is a folder of
JSON files, one per arch id, so a resumed search never measures twice. Under an
int8 profile the file timed (and sized) is the int8 one a target would run, since
budgets apply to the deployed precision.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from odnas.cost.count import count
from odnas.cost.latency import LatencyBackend, measure_latency
from odnas.cost.onnx import export_onnx
from odnas.profiles import HardwareProfile
from odnas.util import read_json, write_json_atomic


#: Calibration inputs the lane quantizes with: few, because only the graph matters for latency.
LANE_CALIB_SAMPLES = 32


def measure_candidate(space, params: Mapping[str, Any], input_shape: Sequence[int], num_classes: int,
                      profile: HardwareProfile, backend: LatencyBackend | None = None,
                      calib_x: np.ndarray | None = None, window=None) -> dict[str, Any]:
    """Build, count, export and time one candidate. Returns a JSON-able record.

    Under ``precision: int8`` the untrained model is quantized statically (QDQ, as
    ``odnas.export`` deploys it) before it is timed and sized. ``calib_x`` (N, C, H, W)
    are training inputs to calibrate on (the first ``LANE_CALIB_SAMPLES`` are used);
    without them, standard-normal inputs stand in and the record's
    ``quantization.calibration`` says ``random-normal``. Calibration values move
    quantization scales, not the graph, so either gives the deployed file's latency.
    ``window`` is a context-manager factory the timing runs inside (``odnas.cost.quiet``),
    so only the timing, not the export, holds the machine quiet.
    """
    import torch

    torch.manual_seed(0)
    model = space.build(params, input_shape, num_classes)
    counts = count(model, input_shape)
    quant = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{space.arch_id(params)}.onnx"
        export_onnx(model, input_shape, path)
        if profile.precision == "int8":
            from odnas.quantize import quantize_model, random_calibration_inputs

            if calib_x is None:
                x, source = random_calibration_inputs(input_shape, LANE_CALIB_SAMPLES), "random-normal"
            else:
                x, source = np.asarray(calib_x)[:LANE_CALIB_SAMPLES], "training split"
            # Export picks per-tensor or per-channel weights by accuracy once trained; the lane
            # takes per-channel, the larger file of the two (more scales) and as fast within ~2%.
            int8 = path.with_name(f"{path.stem}.int8.onnx")
            quant = quantize_model(path, int8, x, mode="static", per_channel=True, calibration=source)
            path = int8
        with window() if window is not None else contextlib.nullcontext():
            lat = measure_latency(path, profile, backend)
        model_bytes = path.stat().st_size
    rec = {
        "arch_id": space.arch_id(params),
        "space": space.name,
        "profile": profile.name,
        "precision": profile.precision,
        "metrics": {
            "num_params": counts.num_params,
            "flops": counts.flops,
            "model_bytes": model_bytes,
            "latency_ms": lat.latency_ms,
            "latency_ms_p90": lat.latency_ms_p90,
        },
        "sem": {"latency_ms": lat.latency_ms_sem},
        "uncounted_ops": dict(counts.uncounted_ops),
        "latency": lat.to_dict(),
    }
    if quant is not None:
        rec["quantization"] = quant.to_dict()
    return rec


class CostCache:
    """``DIR/ARCH_ID.json`` records; writes are atomic so a kill never leaves half a file."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def get(self, arch_id: str) -> dict[str, Any] | None:
        return read_json(self.folder / f"{arch_id}.json")

    def put(self, record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / f"{record['arch_id']}.json", record)
