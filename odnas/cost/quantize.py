"""INT8 models with ONNX Runtime's quantization tool, for profiles that say ``precision: int8``.

``quantize_model`` turns an fp32 ONNX file into the int8 file a target would run
and returns a ``QuantizeRecord`` of what was done. Static quantization (QDQ,
calibrated on inputs from the training split) is the default; dynamic quantization
is the fallback where static does not apply (see ``quantize_model``). Measured on
this project's spaces (docs in the profile ``cpu-mobile-int8.yaml``): at batch 1 on
8x8 or 28x28 inputs the int8 file is smaller but *not* faster than fp32, because
quantize/dequantize steps cost more than the tiny convolutions save. That is why
an int8 profile has its own, measured, latency budget.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from odnas.errors import QuantizeError

MODES = ("auto", "static", "dynamic")
#: Calibration inputs drawn from the training split by default ("a few hundred").
CALIB_SAMPLES = 256
#: Inputs per calibration batch (the exported models have a dynamic batch axis).
CALIB_BATCH = 32
#: Ops whose weights static (QDQ) quantization turns into int8.
STATIC_WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: Ops dynamic quantization turns into integer ops (Gemm becomes MatMulInteger).
DYNAMIC_OPS = frozenset({"Conv", "Gemm", "MatMul", "Gather", "LSTM", "Attention", "EmbedLayerNormalization"})
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
#: Ops that move or reshape data and compute nothing; left out of the float-op count.
_SHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Gather", "Concat", "Cast",
                        "Transpose", "Identity"})




@dataclass(frozen=True)
class QuantizeRecord:
    """What ``quantize_model`` did, JSON-able via ``to_dict``.

    ``op_types_quantized`` counts the nodes that run on int8 inputs (QDQ: fed by a
    DequantizeLinear; dynamic: the integer ops, under the op they replace);
    ``op_types_float`` counts compute nodes left in float (for example HardSwish,
    which ONNX Runtime cannot quantize), so nothing is silently dropped.
    """

    mode: str  # static | dynamic
    format: str  # QDQ (static) | QOperator (dynamic: integer ops in the graph)
    calibration: str  # where calibration inputs came from: training split | random-normal | none
    calibration_samples: int
    calibrate_method: str | None
    per_channel: bool
    reduce_range: bool
    activation_type: str  # uint8 (static, calibrated) | uint8-dynamic (scale computed per run)
    weight_type: str
    op_types_quantized: Mapping[str, int]
    op_types_float: Mapping[str, int]
    preprocess: str  # what quant_pre_process ran
    model_bytes_fp32: int
    model_bytes: int
    seconds: float
    ort_version: str
    why: str = ""  # why this mode (and per-channel setting) was chosen
    per_channel_trial: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op_types_quantized"] = dict(self.op_types_quantized)
        d["op_types_float"] = dict(self.op_types_float)
        d["per_channel_trial"] = dict(self.per_channel_trial)
        return d


class ArrayCalibrationReader:
    """Feeds ``x`` (N, C, H, W) float32 to ORT's calibrator in batches.

    ORT's ``CalibrationDataReader`` is an ABC whose ``__subclasshook__`` accepts any
    class with ``get_next``, so this plain class is one (no ORT import at module load).
    """

    def __init__(self, x: np.ndarray, input_name: str, batch: int = CALIB_BATCH) -> None:
        self.x, self.input_name, self.batch = x, input_name, batch
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.x):
            return None
        chunk = self.x[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self.pos = 0

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch)


def calibration_inputs(x_train: np.ndarray, n: int = CALIB_SAMPLES, seed: int = 0) -> np.ndarray:
    """A fixed random subset of ``n`` training inputs (all of them if fewer), in data order.

    Calibration comes from the training split so the validation figures of the
    int8 model stay an honest held-out estimate.
    """
    x = np.asarray(x_train)
    if len(x) == 0:
        raise QuantizeError("no training inputs to calibrate on")
    if n < 1:
        raise QuantizeError(f"calibration samples must be at least 1, got {n}")
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=min(n, len(x)), replace=False))
    return np.ascontiguousarray(x[idx], dtype=np.float32)


def random_calibration_inputs(input_shape, n: int = 32, seed: int = 0) -> np.ndarray:
    """Standard-normal stand-ins for calibration when no data is at hand (the cost lane).

    odnas normalises inputs to mean 0 and std 1 on the training split, so N(0, 1)
    has the right scale. The values move the quantization scales only, not the
    graph, so the latency of the file is that of the calibrated one.
    """
    return np.random.default_rng(seed).standard_normal((n, *input_shape)).astype(np.float32)


def quantize_model(fp32_path: str | Path, out_path: str | Path, calib_x: np.ndarray | None = None, *,
                   mode: str = "auto", per_channel: bool | None = None,
                   calibration: str = "training split") -> QuantizeRecord:
    """Write an int8 version of ``fp32_path`` to ``out_path`` and say what was done.

    Static quantization (QDQ format, MinMax calibration over ``calib_x``, uint8
    activations and int8 weights, the pairing ONNX Runtime's x86 kernels are fastest
    at) is used when ``calib_x`` is given and the graph has a Conv, Gemm or MatMul.
    Dynamic quantization (int8 weights, activation scales computed at run time) is
    used when no calibration inputs are given, or when the graph has no op static
    quantization supports but dynamic does (Gather, LSTM, Attention). Note that for
    convolutional models dynamic quantization's ConvInteger is much slower on CPU
    than static (about 8 ms against 0.26 ms measured for one mobile-cnn on 28x28),
    so it is a last resort there.

    ``per_channel=None`` decides by measurement: both per-tensor and per-channel
    weights are calibrated and the one whose top-1 agrees more with fp32 on the
    calibration inputs is kept (ties go to the smaller logit error). Per-channel
    weights come with ``reduce_range`` (7-bit weights), because uint8 x int8 products
    saturate on AVX2/AVX-512 CPUs without VNNI otherwise (ORT's documented caveat;
    seen here as top-1 agreement falling from 0.99 to 0.95).
    ``calibration`` only labels where ``calib_x`` came from, for the record.
    """
    import onnx
    import onnxruntime as ort

    t0 = time.perf_counter()
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if mode not in MODES:
        raise QuantizeError(f"quantization mode {mode!r}: choose from {', '.join(MODES)}")
    if not fp32_path.is_file():
        raise QuantizeError(f"{fp32_path}: no such ONNX file to quantize")
    if out_path.resolve() == fp32_path.resolve():
        raise QuantizeError(f"{out_path}: the int8 file would overwrite the fp32 file; give another path")
    try:
        graph = onnx.load(str(fp32_path))
    except Exception:
        raise QuantizeError(f"{fp32_path}: not a readable ONNX file") from None
    ops = {n.op_type for n in graph.graph.node}
    input_name = graph.graph.input[0].name
    if calib_x is not None:
        calib_x = _check_calib(calib_x, graph, fp32_path)
    if mode == "auto":
        if calib_x is not None and ops & STATIC_WEIGHT_OPS:
            mode = "static"
            why = f"calibration inputs given and the graph has {', '.join(sorted(ops & STATIC_WEIGHT_OPS))}"
        elif ops & DYNAMIC_OPS:
            mode = "dynamic"
            why = ("no calibration inputs" if calib_x is None
                   else f"no op static quantization supports; dynamic quantizes {', '.join(sorted(ops & DYNAMIC_OPS))}")
        else:
            raise QuantizeError(f"{fp32_path}: no operator ONNX Runtime can quantize (it needs Conv, Gemm or MatMul "
                                f"weights; the graph has {', '.join(sorted(ops))}); use an fp32 profile")
    else:
        why = f"mode {mode!r} asked for"
        needed = STATIC_WEIGHT_OPS if mode == "static" else DYNAMIC_OPS
        if not ops & needed:
            raise QuantizeError(f"{fp32_path}: {mode} quantization finds nothing to quantize "
                                f"(the graph has {', '.join(sorted(ops))})")
    if mode == "static" and calib_x is None:
        raise QuantizeError("static quantization needs calibration inputs; pass calib_x or use mode='dynamic'")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    trial: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="odnas-quant-") as tmp:
        pre, preprocess = _preprocess(fp32_path, Path(tmp) / "pre.onnx")
        if mode == "dynamic":
            _dynamic(pre, out_path, per_channel=bool(per_channel))
            pc, rr = bool(per_channel), False
        elif per_channel is None:
            ref = _run(fp32_path, calib_x)
            scores = {}
            for pc_try in (False, True):
                path = Path(tmp) / f"q{int(pc_try)}.onnx"
                _static(pre, path, calib_x, input_name, per_channel=pc_try)
                got = _run(path, calib_x)
                scores[pc_try] = (float(np.mean(got.argmax(1) == ref.argmax(1))),
                                  float(np.mean(np.abs(got - ref)) / (np.mean(np.abs(ref)) + 1e-12)))
            pc = scores[True][0] > scores[False][0] or (
                scores[True][0] == scores[False][0] and scores[True][1] < scores[False][1])
            rr = pc
            shutil.move(str(Path(tmp) / f"q{int(pc)}.onnx"), str(out_path))  # tmp may be another filesystem
            trial = {"n": int(len(calib_x)), "data": "calibration inputs",
                     **{f"{'per_channel' if k else 'per_tensor'}_{m}": v for k, s in scores.items()
                        for m, v in zip(("top1_agreement", "rel_logit_error"), s)}}
            why += f"; per-channel {'kept' if pc else 'dropped'}: it agreed with fp32 " + (
                "better" if pc else "no better") + " on the calibration inputs"
        else:
            pc = rr = bool(per_channel)
            _static(pre, out_path, calib_x, input_name, per_channel=pc)
        q = onnx.load(str(out_path))
        onnx.checker.check_model(q)
        quantized, floating = _op_accounting(onnx.load(str(pre)), q, mode)
    return QuantizeRecord(
        mode=mode, format="QDQ" if mode == "static" else "QOperator",
        calibration=calibration if mode == "static" else "none",
        calibration_samples=int(len(calib_x)) if mode == "static" else 0,
        calibrate_method="MinMax" if mode == "static" else None,
        per_channel=pc, reduce_range=rr,
        activation_type="uint8" if mode == "static" else "uint8-dynamic", weight_type="int8",
        op_types_quantized=quantized, op_types_float=floating, preprocess=preprocess,
        model_bytes_fp32=fp32_path.stat().st_size, model_bytes=out_path.stat().st_size,
        seconds=time.perf_counter() - t0, ort_version=ort.__version__, why=why, per_channel_trial=trial,
    )


def _check_calib(x: np.ndarray, graph, path: Path) -> np.ndarray:
    x = np.asarray(x)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    want = [d.dim_value if d.HasField("dim_value") else None for d in dims][1:]
    if x.ndim != len(want) + 1 or any(w is not None and w != s for w, s in zip(want, x.shape[1:])):
        raise QuantizeError(f"calibration inputs have shape {tuple(x.shape)}, but {path.name} takes "
                            f"(batch, {', '.join(str(w) for w in want)})")
    if len(x) == 0:
        raise QuantizeError("calibration inputs are empty; give at least one sample")
    if not np.all(np.isfinite(x)):
        raise QuantizeError("calibration inputs contain NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


def _preprocess(src: Path, dst: Path) -> tuple[Path, str]:
    """ORT's recommended pre-processing (symbolic shape inference, graph optimisation,
    ONNX shape inference); symbolic inference is skipped if it fails on the graph."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
        return dst, "quant_pre_process"
    except Exception:  # symbolic shape inference does not know every op; the rest still helps
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst, "quant_pre_process (symbolic shape inference skipped: it failed on this graph)"


def _static(src: Path, dst: Path, x: np.ndarray, input_name: str, per_channel: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(str(src), str(dst), ArrayCalibrationReader(x, input_name), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, reduce_range=per_channel, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)


def _dynamic(src: Path, dst: Path, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _op_accounting(pre, q, mode: str) -> tuple[dict[str, int], dict[str, int]]:
    """(quantized op types, op types left in float) of quantized graph ``q`` made from ``pre``.

    Static (QDQ): a node fed by a DequantizeLinear runs on int8 inputs (ORT fuses the
    pattern into QLinear* kernels); other compute nodes stay float. Dynamic: the
    integer ops (ConvInteger, MatMulInteger) are counted under their own names, and
    the other compute ops of ``pre`` stay float (not the rescaling ops ORT adds).
    """
    quantized: Counter = Counter()
    floating: Counter = Counter()
    if mode == "static":
        producer = {o: n.op_type for n in q.graph.node for o in n.output}
        for n in q.graph.node:
            if n.op_type in _QDQ_OPS:
                continue
            if n.input and producer.get(n.input[0]) == "DequantizeLinear":
                quantized[n.op_type] += 1
            elif n.op_type not in _SHAPE_OPS:
                floating[n.op_type] += 1
    else:
        quantized.update(n.op_type for n in q.graph.node if n.op_type.endswith("Integer"))
        weight_ops = Counter(n.op_type for n in pre.graph.node if n.op_type in ("Conv", "Gemm", "MatMul"))
        left = sum(weight_ops.values()) - sum(quantized.values())
        floating.update(n.op_type for n in pre.graph.node
                        if n.op_type not in _SHAPE_OPS and n.op_type not in weight_ops)
        if left > 0:
            floating["Conv/Gemm/MatMul"] = left
    return dict(sorted(quantized.items())), dict(sorted(floating.items()))
