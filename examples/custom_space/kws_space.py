"""A user's own search space, outside odnas: a tiny keyword-spotting CNN over 16x16
spectrogram patches. odnas finds it by reference, ``--space path/to/kws_space.py:TinyKws``
(or ``my_pkg.kws_space:TinyKws`` once it is an installed package).

A space says which parameters it has (``specs``), how to build a network from them
(``build``), and the canonical name of that network (``arch_id``: equal ids must mean
equal networks, since costs are cached by it). ``training`` reads lr, epochs and
batch_size from the parameters by default.
"""

from __future__ import annotations

from odnas.spaces import Space
from odnas.spaces.base import Choice, Range


class TinyKws(Space):
    name = "tiny-kws"
    description = "keyword spotting: conv blocks over a spectrogram patch, then a linear head"
    specs = (
        Choice("width", (8, 12, 16, 24)),
        Range("depth", 1, 3, "int"),
        Choice("kernel", (3, 5)),
        Choice("pool", ("avg", "max")),
        Range("lr", 1e-3, 3e-2, "float", log=True),
        Range("epochs", 1, 4, "int"),
        Choice("batch_size", (32, 64)),
    )

    def build(self, params, input_shape, num_classes):
        from torch import nn

        c_in, layers = input_shape[0], []
        w, k = int(params["width"]), int(params["kernel"])
        for i in range(int(params["depth"])):
            layers += [nn.Conv2d(c_in if i == 0 else w, w, k, padding=k // 2), nn.BatchNorm2d(w), nn.ReLU()]
        # Pool to 4x4, not 1x1: which frequencies light up, and when, is the word.
        pool = nn.AdaptiveAvgPool2d(4) if params["pool"] == "avg" else nn.AdaptiveMaxPool2d(4)
        return nn.Sequential(*layers, pool, nn.Flatten(), nn.Linear(w * 16, num_classes))

    def arch_id(self, params):
        return f"kws_w{int(params['width'])}d{int(params['depth'])}k{int(params['kernel'])}{params['pool']}"
