"""INT8 with ONNX Runtime: static (QDQ, calibrated on training inputs) and dynamic, on a trained mobile-cnn."""

import json
import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from odnas.cost.lane import measure_candidate
from odnas.cost.onnx import export_onnx
from odnas.data import load_data
from odnas.cost.quantize import (
    ArrayCalibrationReader, QuantizeError, calibration_inputs, quantize_model, random_calibration_inputs,
)
from odnas.spaces import get_space

#: A small mobile-cnn with squeeze-excite and hard-swish, so float-only ops are in the graph too.
PARAMS = {"stem_width": 8, "s1_depth": 1, "s1_width": 8, "s2_depth": 1, "s2_width": 16, "s3_depth": 0,
          "s3_width": 8, "kernel": 3, "expand": 1, "se": 1, "hardswish": 1, "lr": 1e-2, "epochs": 1,
          "batch_size": 64}


def train_briefly(model, data, steps: int = 120, lr: float = 1e-2):
    """A few hundred Adam steps on the training split (plain torch: faster than Lightning here)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    opt = torch.optim.Adam(model.parameters(), lr)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(x), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    data = load_data("digits")
    space = get_space("mobile-cnn")
    torch.manual_seed(0)
    model = train_briefly(space.build(PARAMS, data.input_shape, data.num_classes), data)
    fp32 = export_onnx(model, data.input_shape, d / "fp32.onnx")
    return d, data, fp32, _logits(fp32, data.x_val)


def _logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _ops(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_static_quantization_keeps_accuracy(cnn):
    d, data, fp32, ref = cnn
    acc_fp32 = float(np.mean(ref.argmax(1) == data.y_val))
    assert acc_fp32 > 0.85, acc_fp32  # trained enough for agreement to mean something
    rec = quantize_model(fp32, d / "static.onnx", calibration_inputs(data.x_train))
    assert (rec.mode, rec.format, rec.calibration, rec.calibrate_method) == ("static", "QDQ", "training split",
                                                                             "MinMax")
    assert rec.calibration_samples == 256 and rec.activation_type == "uint8" and rec.weight_type == "int8"
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(fp32)).graph.node)
    assert rec.op_types_quantized["Conv"] == convs and rec.op_types_quantized["Gemm"] == 1
    # per-channel was decided by measuring both forms against fp32 on the calibration inputs
    trial = rec.per_channel_trial
    assert trial["n"] == 256 and {"per_tensor_top1_agreement", "per_channel_top1_agreement"} <= set(trial)
    assert rec.reduce_range == rec.per_channel
    onnx.checker.check_model(onnx.load(str(d / "static.onnx")), full_check=True)
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(d / "static.onnx")
    got = _logits(d / "static.onnx", data.x_val)
    acc = float(np.mean(got.argmax(1) == data.y_val))
    agreement = float(np.mean(got.argmax(1) == ref.argmax(1)))
    print(f"static int8: val_acc {acc:.4f} (fp32 {acc_fp32:.4f}), top-1 agreement {agreement:.4f}")
    assert agreement >= 0.95 and abs(acc - acc_fp32) <= 0.03
    json.dumps(rec.to_dict())


def test_dynamic_quantization_without_calibration_data(cnn):
    d, data, fp32, ref = cnn
    rec = quantize_model(fp32, d / "dynamic.onnx")  # no calibration inputs: dynamic
    assert rec.mode == "dynamic" and rec.why == "no calibration inputs" and rec.calibration_samples == 0
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(fp32)).graph.node)
    assert rec.op_types_quantized == {"ConvInteger": convs, "MatMulInteger": 1}
    assert rec.op_types_float.get("HardSigmoid", 0) > 0  # what it cannot quantize is reported
    assert "ConvInteger" in _ops(d / "dynamic.onnx")
    got = _logits(d / "dynamic.onnx", data.x_val)
    agreement = float(np.mean(got.argmax(1) == ref.argmax(1)))
    acc = float(np.mean(got.argmax(1) == data.y_val))
    print(f"dynamic int8: val_acc {acc:.4f}, top-1 agreement {agreement:.4f}")
    assert agreement >= 0.95 and abs(acc - float(np.mean(ref.argmax(1) == data.y_val))) <= 0.03
    explicit = quantize_model(fp32, d / "dynamic2.onnx", calibration_inputs(data.x_train), mode="dynamic")
    assert explicit.mode == "dynamic" and explicit.calibration == "none"


def test_calibration_inputs_come_from_the_training_split():
    data = load_data("digits")
    x = calibration_inputs(data.x_train, 300, seed=0)
    assert x.shape == (300, 1, 8, 8) and x.dtype == np.float32
    rows = {r.tobytes() for r in data.x_train}
    assert all(r.tobytes() in rows for r in x)
    assert np.array_equal(x, calibration_inputs(data.x_train, 300, seed=0))  # fixed by its seed
    assert len(calibration_inputs(data.x_train[:10], 300)) == 10
    from onnxruntime.quantization import CalibrationDataReader

    reader = ArrayCalibrationReader(x, "input", batch=128)
    assert isinstance(reader, CalibrationDataReader) and len(reader) == 3
    sizes = []
    while (b := reader.get_next()) is not None:
        sizes.append(len(b["input"]))
    assert sizes == [128, 128, 44]


def test_user_errors_are_one_line(cnn, tmp_path):
    d, data, fp32, _ = cnn
    cases = [
        (lambda: quantize_model(tmp_path / "nope.onnx", tmp_path / "q.onnx"), "no such ONNX file"),
        (lambda: quantize_model(fp32, tmp_path / "q.onnx", np.zeros((4, 1, 9, 9), np.float32)),
         r"calibration inputs have shape \(4, 1, 9, 9\), but fp32.onnx takes \(batch, 1, 8, 8\)"),
        (lambda: quantize_model(fp32, tmp_path / "q.onnx", np.full((4, 1, 8, 8), np.nan, np.float32)), "NaN"),
        (lambda: quantize_model(fp32, tmp_path / "q.onnx", mode="fast"), "choose from auto, static, dynamic"),
        (lambda: quantize_model(fp32, tmp_path / "q.onnx", mode="static"), "needs calibration inputs"),
        (lambda: calibration_inputs(data.x_train, 0), "at least 1"),
    ]
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx")
    cases.append((lambda: quantize_model(bad, tmp_path / "q.onnx"), "not a readable ONNX file"))
    cases.append((lambda: quantize_model(fp32, fp32, calibration_inputs(data.x_train)), "would overwrite"))
    relu = export_onnx(torch.nn.ReLU(), (1, 8, 8), tmp_path / "relu.onnx")
    cases.append((lambda: quantize_model(relu, tmp_path / "q.onnx", calibration_inputs(data.x_train)),
                  "no operator ONNX Runtime can quantize"))
    for call, msg in cases:
        with pytest.raises(QuantizeError, match=msg) as e:
            call()
        assert "\n" not in str(e.value)
    assert isinstance(QuantizeError("x"), ValueError)  # the CLI's exit-2 family
    assert not (tmp_path / "q.onnx").exists()


def test_cost_lane_times_the_int8_file_under_an_int8_profile(short_profile):
    space = get_space("mobile-cnn")
    params = space.sample(random.Random(5))
    int8 = short_profile("cpu-mobile-int8")
    assert int8.precision == "int8"
    rec = measure_candidate(space, params, (1, 8, 8), 10, int8)
    q = rec.quantization
    assert rec.precision == "int8" and q["mode"] == "static" and q["format"] == "QDQ"
    assert q["calibration"] == "random-normal" and q["calibration_samples"] == 32
    assert rec.metrics["model_bytes"] == q["model_bytes"] != q["model_bytes_fp32"]  # the int8 file's size
    assert rec.metrics["latency_ms"] > 0 and q["op_types_quantized"]["Conv"] > 0
    x = load_data("digits").x_train
    rec2 = measure_candidate(space, params, (1, 8, 8), 10, int8, calib_x=x)
    assert rec2.quantization["calibration"] == "training split"
    assert rec2.quantization["calibration_samples"] == 32
    fp32 = measure_candidate(space, params, (1, 8, 8), 10, short_profile("cpu-mobile"))
    assert fp32.precision == "fp32" and fp32.quantization is None
    assert fp32.metrics["model_bytes"] == q["model_bytes_fp32"]
    json.dumps(rec.to_dict())


def test_random_calibration_inputs_have_the_data_scale():
    x = random_calibration_inputs((1, 8, 8), 64)
    assert x.shape == (64, 1, 8, 8) and abs(float(x.std()) - 1) < 0.1
