"""The deployable artifact: trained weights, parity with PyTorch, a card that is enough to deploy."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from odnas.data import load_data
from odnas.export import ParityError, check_parity, export_artifact
from odnas.spaces import get_space
from odnas.train import fit

PARAMS = {"hidden_size_1": 64, "hidden_size_2": 32, "dropout": 0.1, "lr": 5e-3, "epochs": 3, "batch_size": 64}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("artifact")
    data = load_data("digits")
    space = get_space("mlp")
    torch.manual_seed(0)
    model = space.build(PARAMS, data.input_shape, data.num_classes)
    res = fit(model, data, PARAMS["lr"], PARAMS["epochs"], PARAMS["batch_size"], d / "trial")
    return d, data, space, model, res


def test_export_artifact_and_card(trained, short_profile):
    d, data, space, model, res = trained
    assert (d / "trial" / "progress.jsonl").read_text().count("\n") == 3
    assert list((d / "trial" / "tensorboard").glob("events.*"))
    card = export_artifact(model, d / "m.onnx", space="mlp", params=PARAMS, arch_id=space.arch_id(PARAMS),
                           data=data, profile=short_profile(), metrics={"val_acc": res["val_acc"]})
    on_disk = json.loads((d / "m.json").read_text())
    assert on_disk["onnx_sha256"] == card["onnx_sha256"]
    for key in ("arch_id", "space", "params", "metrics", "profile", "input", "labels", "data",
                "environment", "odnas_version", "onnx_sha256", "parity"):
        assert key in on_disk, key
    assert on_disk["input"]["normalize"]["scale"] == 16.0 and on_disk["input"]["dtype"] == "float32"
    assert on_disk["parity"]["top1_agreement"] == 1.0 and on_disk["parity"]["max_abs_diff"] < 1e-4
    assert abs(on_disk["metrics"]["val_acc_onnx"] - res["val_acc"]) < 1e-6
    assert res["val_acc"] > 0.8


def test_parity_catches_a_wrong_export(trained, tmp_path):
    d, data, space, model, _ = trained
    from odnas.cost.onnx import export_onnx

    other = space.build(PARAMS, data.input_shape, data.num_classes)  # untrained: different weights
    path = export_onnx(other, data.input_shape, tmp_path / "wrong.onnx")
    with pytest.raises(ParityError, match="disagrees"):
        check_parity(model, path, data.x_val)


def test_artifact_runs_without_torch_as_the_card_says(trained, short_profile, tmp_path):
    """A fresh process with only onnxruntime and numpy: torch and odnas are made unimportable."""
    d, data, space, model, res = trained
    export_artifact(model, tmp_path / "a.onnx", space="mlp", params=PARAMS, arch_id=space.arch_id(PARAMS),
                    data=data, profile=short_profile(), metrics={"val_acc": res["val_acc"]})
    from sklearn.datasets import load_digits

    dg = load_digits()
    np.save(tmp_path / "raw.npy", dg.images.astype(np.float32))
    np.save(tmp_path / "y.npy", dg.target)
    idx = np.sort(_val_index())
    np.save(tmp_path / "val_idx.npy", idx)
    script = textwrap.dedent(f"""
        import sys
        for banned in ("torch", "odnas", "sklearn"):
            sys.modules[banned] = None
        import json, numpy as np, onnxruntime as ort
        card = json.load(open({str(tmp_path / 'a.json')!r}))
        n = card["input"]["normalize"]
        raw = np.load({str(tmp_path / 'raw.npy')!r}); y = np.load({str(tmp_path / 'y.npy')!r})
        idx = np.load({str(tmp_path / 'val_idx.npy')!r})
        x = ((raw[idx] / n["scale"] - n["mean"]) / n["std"])[:, None].astype(card["input"]["dtype"])
        s = ort.InferenceSession({str(tmp_path / 'a.onnx')!r}, providers=["CPUExecutionProvider"])
        acc = float((s.run(None, {{card["input"]["name"]: x}})[0].argmax(1) == y[idx]).mean())
        print(json.dumps({{"acc": acc, "card": card["metrics"]["val_acc"]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    # The card's normalisation is rounded to 6 digits; accuracy must match to within one sample.
    assert abs(got["acc"] - got["card"]) <= 1 / 360 + 1e-9, got


def _val_index():
    from sklearn.model_selection import train_test_split
    from sklearn.datasets import load_digits

    y = load_digits().target
    _, va = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    return va
