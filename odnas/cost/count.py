"""Static counts of an untrained model: parameters and FLOPs.

FLOPs follow fvcore's convention: **one fused multiply-add counts as one flop**
(so a ``Linear(a, b)`` on one sample is ``a * b`` flops, not ``2 * a * b``).
Element-wise ops fvcore has no handle for (``add``, ``mul``, activations) are not
counted; they are reported in ``uncounted_ops`` instead of being dropped silently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence


@dataclass(frozen=True)
class Counts:
    num_params: int
    flops: int
    #: ops fvcore could not count, with how often each was called (for batch 1)
    uncounted_ops: Mapping[str, int] = field(default_factory=dict)


def count(model, input_shape: Sequence[int]) -> Counts:
    """Parameters and fvcore FLOPs for one sample of shape ``input_shape`` (C, H, W)."""
    import logging

    import torch
    from fvcore.nn import FlopCountAnalysis

    model = model.eval()
    x = torch.zeros(1, *input_shape)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        fca = FlopCountAnalysis(model, x)
        fca.unsupported_ops_warnings(False)
        fca.uncalled_modules_warnings(False)
        flops = int(fca.total())
        unsupported = dict(sorted(fca.unsupported_ops().items()))
    return Counts(
        num_params=int(sum(p.numel() for p in model.parameters())),
        flops=flops,
        uncounted_ops=unsupported,
    )
