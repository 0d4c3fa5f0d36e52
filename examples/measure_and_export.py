"""Drive odnas's pieces by hand: a profile, the cost lane, training, the artifact.

    python examples/measure_and_export.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from odnas.cost.lane import measure_candidate
from odnas.data import load_data
from odnas.export import export_artifact
from odnas.profiles import load_profile
from odnas.spaces import get_space
from odnas.jobs.train import fit

profile = load_profile("cpu-mobile")
space = get_space("mobile-cnn")
data = load_data("digits")
# mobile-cnn's parameters: kernel, expansion and squeeze-excite are shared by the stages
# (mobile-cnn-xl has them per stage, s1_kernel, ...); stage 3 is absent (depth 0).
params = {"stem_width": 8, "s1_depth": 1, "s1_width": 16, "s2_depth": 1, "s2_width": 24,
          "s3_depth": 0, "s3_width": 8, "kernel": 3, "expand": 2, "se": 0,
          "hardswish": 0, "lr": 0.01, "epochs": 3, "batch_size": 64}

cost = measure_candidate(space, params, data.input_shape, data.num_classes, profile)
print(cost.arch_id, cost.metrics, "over budget:", profile.over_budget(cost.metrics) or "no")

out = Path(tempfile.mkdtemp())
torch.manual_seed(0)
model = space.build(params, data.input_shape, data.num_classes)
res = fit(model, data, params["lr"], params["epochs"], params["batch_size"], out / "trial")
card = export_artifact(model, out / "model.onnx", space=space.name, params=params, arch_id=cost.arch_id,
                       data=data, profile=profile, metrics={**cost.metrics, "val_acc": res["val_acc"]})
print(f"wrote {out / 'model.onnx'}: val_acc {card.metrics['val_acc_onnx']:.3f}, parity {card.parity}")
