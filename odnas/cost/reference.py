"""The fixed reference model every latency is normalised to.

The reference is a mid-size ``mobile-cnn`` member (squeeze-excite, hard-swish, 5x5
depthwise): candidate-like, so a host's speed mode slows it as it slows candidates
(it cancelled modes better than a tiny model or a one-op graph; docs/benchmarks.md).
It is exported once per input shape into the cache folder.

The baseline (the reference's time in the host's fast mode, calibrated once per host
and kept under the cache folder) is ``odnas_device.timing.baseline``: a device agent
keeps its own the same way.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Sequence

from odnas_device.timing import cache_root

#: Bump when the reference's architecture changes: baselines of another version never mix.
REFERENCE_VERSION = "odnas-latref-1"
REFERENCE_PARAMS = dict(stem_width=16, s1_depth=2, s1_width=16, s2_depth=1, s2_width=24, s3_depth=1,
                        s3_width=32, kernel=5, expand=2, se=1, hardswish=1, lr=0.01, epochs=1, batch_size=32)
REFERENCE_CLASSES = 10

__all__ = ["REFERENCE_CLASSES", "REFERENCE_PARAMS", "REFERENCE_VERSION", "cache_root", "reference_onnx"]


def reference_onnx(input_shape: Sequence[int]) -> Path:
    """The reference model for inputs of ``input_shape`` (C, H, W), exported on first use."""
    shape = tuple(int(d) for d in input_shape)
    path = cache_root() / "reference" / f"{REFERENCE_VERSION}-{'x'.join(map(str, shape))}.onnx"
    if path.is_file():
        return path
    with _EXPORTING:  # torch's ONNX export is not thread-safe
        if path.is_file():
            return path
        return _export_reference(shape, path)


_EXPORTING = threading.Lock()


def _export_reference(shape: tuple[int, ...], path: Path) -> Path:
    import torch

    from odnas.cost.onnx import export_onnx
    from odnas.spaces import get_space

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = get_space("mobile-cnn").build(REFERENCE_PARAMS, shape, REFERENCE_CLASSES)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        export_onnx(model, shape, Path(tmp) / path.name)
        os.replace(Path(tmp) / path.name, path)  # another process may have raced us: same bytes
    return path
