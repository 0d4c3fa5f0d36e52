"""ONNX export with a dynamic batch axis, checked by ``onnx.checker``.

The TorchScript-based exporter is used (``dynamo=False``): on the spaces here it
takes ~0.2 s a model where the dynamo exporter takes ~10 s, which matters in a
cost lane that exports every candidate.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Sequence

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model, input_shape: Sequence[int], path: str | Path, opset: int = OPSET) -> Path:
    """Write ``model`` (its current weights) to ``path`` as ONNX and check it."""
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = torch.zeros(1, *input_shape)
    with warnings.catch_warnings(), torch.no_grad(), _no_onnx_log(torch):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


@contextlib.contextmanager
def _no_onnx_log(torch):
    """The TorchScript exporter turns its log on whatever the setting (its
    ``setup_onnx_logging`` tests the function ``_jit_is_onnx_log_enabled``, not its
    result), so a failed export printed the whole IR graph to stdout, into ``--json``
    output, beside the one-line error odnas gives. The log is muted for the export, and
    put back."""
    log = getattr(torch._C, "_jit_onnx_log", None)
    if log is None:
        yield
        return
    torch._C._jit_onnx_log = lambda *args: None
    try:
        yield
    finally:
        torch._C._jit_onnx_log = log
