"""The Ax "Multi-Objective NAS" tutorial's space: a two-hidden-layer MLP."""

from __future__ import annotations

import math

from odnas.spaces.base import Choice, Params, Range, Space


class MLPSpace(Space):
    name = "mlp"
    description = "Ax tutorial MLP: two hidden widths, lr, dropout, epochs, batch size"
    specs = (
        Range("lr", 1e-4, 1e-2, "float", log=True),
        Range("dropout", 0.0, 0.5, "float"),
        Range("hidden_size_1", 16, 128, "int", log=True),
        Range("hidden_size_2", 16, 128, "int", log=True),
        Range("epochs", 1, 4, "int"),
        Choice("batch_size", (32, 64, 128, 256), ordered=True),
    )

    def build(self, params: Params, input_shape, num_classes: int):
        from torch import nn

        d_in = math.prod(input_shape)
        h1, h2 = int(params["hidden_size_1"]), int(params["hidden_size_2"])
        p = float(params.get("dropout", 0.0))
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(d_in, h1), nn.ReLU(), nn.Dropout(p),
            nn.Linear(h1, h2), nn.ReLU(), nn.Dropout(p),
            nn.Linear(h2, num_classes),
        )

    def smallest(self, fixed=None) -> dict:
        return self.lowest(fixed)  # each width grows the model with its value; nothing else changes it

    def arch_id(self, params: Params) -> str:
        # Dropout is absent from the exported graph, so it is not part of the architecture.
        return f"mlp_{int(params['hidden_size_1'])}x{int(params['hidden_size_2'])}"
