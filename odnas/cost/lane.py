"""Measure one candidate's costs, and cache them by arch id.

Costs depend on the architecture only, so the model is built untrained, counted,
exported and timed once per arch id on the driver's host. The cache is a folder of
JSON files, one per arch id, so a resumed search never measures twice.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from odnas.cost.count import count
from odnas.cost.latency import LatencyBackend, measure_latency
from odnas.cost.onnx import export_onnx
from odnas.profiles import HardwareProfile


def measure_candidate(space, params: Mapping[str, Any], input_shape: Sequence[int], num_classes: int,
                      profile: HardwareProfile, backend: LatencyBackend | None = None) -> dict[str, Any]:
    """Build, count, export and time one candidate. Returns a JSON-able record."""
    import torch

    torch.manual_seed(0)
    model = space.build(params, input_shape, num_classes)
    counts = count(model, input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{space.arch_id(params)}.onnx"
        export_onnx(model, input_shape, path)
        lat = measure_latency(path, profile, backend)
        model_bytes = path.stat().st_size
    return {
        "arch_id": space.arch_id(params),
        "space": space.name,
        "profile": profile.name,
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


class CostCache:
    """``DIR/ARCH_ID.json`` records; writes are atomic so a kill never leaves half a file."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def get(self, arch_id: str) -> dict[str, Any] | None:
        p = self.folder / f"{arch_id}.json"
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def put(self, record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / f"{record['arch_id']}.json", record)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)
