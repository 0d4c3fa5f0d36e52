"""Latency of an ONNX file under a profile, measured with ONNX Runtime.

A measurement is an immutable ``LatencyResult``: the figure, its p90 and standard
error, how it was taken (the reference-normalised protocol of ``odnas.cost.protocol``
by default: the ratio to the reference model, the baseline it was scaled by, the
sessions, rounds and bursts), the warm-up count kept apart, and the environment it
was taken in. Records from different hosts refuse to be compared. Backends are a
tiny protocol: ``measure(onnx_path, profile) -> LatencyResult``.
"""

from __future__ import annotations

import math
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from odnas.cost import protocol as proto
from odnas.cost.reference import baseline as reference_baseline
from odnas.cost.reference import reference_onnx
from odnas.errors import ProfileError
from odnas.profiles import HardwareProfile
from odnas.records import LatencyKey


@dataclass(frozen=True)
class LatencyResult:
    """One latency measurement. Times are milliseconds per batch of ``batch_size``."""

    latency_ms: float  # the profile's statistic (median by default)
    latency_ms_p90: float
    latency_ms_mean: float
    latency_ms_sem: float  # standard error of ``latency_ms``
    runs: int
    warmup_runs: int
    measure_s: float  # wall time of the whole protocol, warm-ups included
    statistic: str
    batch_size: int
    provider: str
    intra_op_threads: int
    inter_op_threads: int
    graph_optimization: str
    ort_version: str
    cpu_model: str
    host: str
    method: str = "plain"  # "reference" (ratio x baseline) or "plain" (the statistic of one session)
    ratio: float | None = None  # candidate / reference, mean over sessions
    ratio_sem: float | None = None
    baseline_ms: float | None = None  # the reference's fast-mode time on this host
    reference_id: str | None = None  # sha256 prefix of the reference file
    raw_ms: float | None = None  # the candidate's own median burst time, not normalised (mode-dependent)
    sessions: int | None = None
    rounds: int | None = None
    burst_runs: int | None = None  # after shortening for a slow candidate
    session_ratios: tuple[float, ...] | None = None  # per fresh session: median over its rounds

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["session_ratios"] is not None:
            d["session_ratios"] = list(d["session_ratios"])  # as JSON gives it back
        return d

    @property
    def key(self) -> LatencyKey:
        return LatencyKey.of(self.to_dict())

    def ratio_to(self, other: "LatencyResult") -> float:
        """``self / other``; refuses records taken on different hosts or settings."""
        diff = self.key.differs(other.key)
        if diff:
            raise ValueError(f"latency records differ in {', '.join(diff)}; they cannot be compared")
        return self.latency_ms / other.latency_ms


class LatencyBackend(Protocol):
    def measure(self, onnx_path: str | Path, profile: HardwareProfile) -> LatencyResult: ...


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def statistic_of(profile: HardwareProfile) -> str:
    """What a latency under ``profile`` is a statistic of, as ``LatencyResult.statistic`` records it."""
    return "reference-ratio" if profile.protocol.method == "reference" else profile.protocol.statistic


def host_key(profile: HardwareProfile) -> LatencyKey:
    """The comparability key of a latency this host would measure under ``profile``."""
    import onnxruntime as ort

    rt = profile.runtime
    return LatencyKey(host=socket.gethostname(), cpu_model=cpu_model(), ort_version=ort.__version__,
                      provider=rt.provider, intra_op_threads=rt.intra_op_threads or (os.cpu_count() or 1),
                      inter_op_threads=rt.inter_op_threads, batch_size=profile.batch_size,
                      graph_optimization=rt.graph_optimization)


def session_options(profile: HardwareProfile):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = profile.runtime.intra_op_threads
    so.inter_op_num_threads = profile.runtime.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[profile.runtime.graph_optimization]
    so.log_severity_level = 3
    if profile.runtime.intra_op_threads == 1:
        # A single-threaded target should not spin a thread pool it does not use.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def check_runnable(profile: HardwareProfile) -> None:
    """A profile this host can measure under: its provider exists, and int8 files can be
    made when it asks for int8. Raises ``ProfileError`` with what to do."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if profile.runtime.provider not in available:
        raise ProfileError(f"profile {profile.name!r} asks for {profile.runtime.provider}, which this onnxruntime "
                           f"does not have (it has {', '.join(available)})")
    if profile.precision == "int8":
        try:
            import onnxruntime.quantization  # noqa: F401  (the cost lane quantizes every candidate)
        except ImportError as e:
            raise ProfileError(f"profile {profile.name!r} asks for precision int8, but onnxruntime's "
                               f"quantization tool does not import ({e}); use an fp32 profile") from None


def make_session(onnx_path: str | Path, profile: HardwareProfile):
    import onnxruntime as ort

    check_runnable(profile)
    return ort.InferenceSession(str(onnx_path), sess_options=session_options(profile),
                                providers=[profile.runtime.provider])


def summarize(samples_ms: np.ndarray, statistic: str) -> tuple[float, float, float, float]:
    """(statistic, p90, mean, standard error of the statistic) of timed runs."""
    s = np.asarray(samples_ms, dtype=np.float64)
    med, p90, mean = float(np.median(s)), float(np.percentile(s, 90)), float(s.mean())
    n = len(s)
    if statistic == "median":
        # Asymptotic SE of the median, with a robust spread so one hiccup does not dominate.
        spread = 1.4826 * float(np.median(np.abs(s - med)))
        sem = 1.2533 * spread / math.sqrt(n)
        return med, p90, mean, sem
    return mean, p90, mean, float(s.std(ddof=1) / math.sqrt(n))


class OrtLatencyBackend:
    """Times ``session.run`` on random inputs of the profile's batch size, under the
    profile's protocol: reference-normalised rounds (default) or one plain session."""

    def __init__(self) -> None:
        self._baselines: dict[tuple, Any] = {}

    def measure(self, onnx_path: str | Path, profile: HardwareProfile) -> LatencyResult:
        t_start = time.perf_counter()
        p = profile.protocol
        key = host_key(profile)
        env = asdict(key)  # the record's environment is its comparability key
        if p.method == "plain":
            samples = plain_samples(_opener(onnx_path, profile)(), p.warmup_runs, p.min_runs, p.min_time_s,
                                    p.max_time_s)
            stat, p90, mean, sem = summarize(samples, p.statistic)
            return LatencyResult(latency_ms=stat, latency_ms_p90=p90, latency_ms_mean=mean, latency_ms_sem=sem,
                                 runs=len(samples), warmup_runs=p.warmup_runs,
                                 measure_s=time.perf_counter() - t_start, statistic=p.statistic, **env)
        base = self.baseline(profile, input_shape(onnx_path))
        r = proto.rounds(_opener(onnx_path, profile), _opener(base.reference_path, profile),
                         sessions=p.sessions, rounds=p.rounds, burst_runs=p.burst_runs, warmup_runs=p.warmup_runs,
                         clock=time.perf_counter_ns, budget_s=p.max_time_s, max_sessions=3 * p.sessions)
        ms = r.ratio * base.ms
        return LatencyResult(
            latency_ms=ms, latency_ms_p90=ms * r.tail, latency_ms_mean=ms, latency_ms_sem=r.ratio_sem * base.ms,
            runs=r.runs, warmup_runs=p.warmup_runs, measure_s=time.perf_counter() - t_start,
            statistic=statistic_of(profile), method="reference", ratio=r.ratio, ratio_sem=r.ratio_sem,
            baseline_ms=base.ms, reference_id=base.reference_id, raw_ms=r.raw_ms,
            sessions=len(r.session_ratios), rounds=p.rounds, burst_runs=r.runs // (len(r.session_ratios) * p.rounds),
            session_ratios=tuple(round(x, 5) for x in r.session_ratios), **env)

    def baseline(self, profile: HardwareProfile, shape: tuple[int, ...]):
        """This host's reference baseline for ``profile`` and inputs of ``shape``
        (calibrated on first use on a host, then read from the cache)."""
        p = profile.protocol
        key = host_key(profile)
        memo = (key, shape, p.burst_runs, p.calibration_s)
        if memo not in self._baselines:
            path = reference_onnx(shape)
            self._baselines[memo] = reference_baseline(key, path, _opener(path, profile),
                                                       calibration_s=p.calibration_s, burst_runs=p.burst_runs,
                                                       warmup_runs=p.warmup_runs)
        return self._baselines[memo]


def input_shape(onnx_path: str | Path) -> tuple[int, ...]:
    """An ONNX file's input shape without the batch dimension."""
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims[1:])


def _opener(onnx_path: str | Path, profile: HardwareProfile) -> Callable[[], Callable[[], object]]:
    """A function that opens a fresh session of ``onnx_path`` and returns "run once"."""
    def open_session() -> Callable[[], object]:
        sess = make_session(onnx_path, profile)
        inp = sess.get_inputs()[0]
        shape = [profile.batch_size] + [int(d) for d in inp.shape[1:]]
        feed = {inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        return lambda: sess.run(None, feed)

    return open_session


def plain_samples(run: Callable[[], object], warmup_runs: int, min_runs: int, min_time_s: float,
                  max_time_s: float) -> np.ndarray:
    """Per-run milliseconds of one session: warm-ups discarded, then runs until both
    ``min_runs`` and ``min_time_s`` are met (or ``max_time_s`` passes)."""
    for _ in range(warmup_runs):
        run()
    samples: list[float] = []
    t0 = time.perf_counter()
    while True:
        a = time.perf_counter_ns()
        run()
        samples.append((time.perf_counter_ns() - a) / 1e6)
        elapsed = time.perf_counter() - t0
        if (len(samples) >= min_runs and elapsed >= min_time_s) or (elapsed >= max_time_s and len(samples) >= 3):
            return np.array(samples)


def measure_latency(onnx_path: str | Path, profile: HardwareProfile,
                    backend: LatencyBackend | None = None) -> LatencyResult:
    return (backend or OrtLatencyBackend()).measure(onnx_path, profile)
