"""Latency of an ONNX file under a profile, measured with ONNX Runtime.

A measurement is an immutable ``LatencyResult``: the figure, its p90 and standard
error, how it was taken (the reference-normalised protocol of ``odnas_device.protocol``
by default: the ratio to the reference model, the baseline it was scaled by, the
sessions, rounds and bursts), the warm-up count kept apart, and the environment it
was taken in. Records from different hosts refuse to be compared. Backends are a
tiny protocol: ``measure(onnx_path, profile) -> LatencyResult``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from odnas_device import timing
from odnas_device.timing import cpu_model  # noqa: F401  (odnas's name for it: benchmarks and doctor use it)

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
    ratio: float | None = None  # candidate / reference, mean over the sessions counted (trimmed from six on)
    ratio_sem: float | None = None
    baseline_ms: float | None = None  # the reference's fast-mode time on this host
    reference_id: str | None = None  # sha256 prefix of the reference file
    raw_ms: float | None = None  # the candidate's own median burst time, not normalised (mode-dependent)
    sessions: int | None = None
    rounds: int | None = None
    burst_runs: int | None = None  # after shortening for a slow candidate
    session_ratios: tuple[float, ...] | None = None  # per fresh session counted: median over its rounds
    fast_only: bool | None = None  # the ratios are of fast-mode rounds alone (odnas_device.protocol)
    device: str | None = None  # timed by a device agent: what the device calls itself
    device_id: str | None = None  # ... its machine id, part of the comparability key
    agent: str | None = None  # ... and the agent's address; None: timed on the search's own host
    cpu_signature: str | None = None  # the CPU's family/model/stepping hash (None: not recorded)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyResult":
        """A record from ``to_dict`` (or a device agent's answer); unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("session_ratios") is not None:
            kw["session_ratios"] = tuple(kw["session_ratios"])
        return cls(**kw)

    @property
    def source(self) -> str:
        """Where the figure came from, in words."""
        if self.agent:
            return f"device {self.device or self.host} via the odnas device agent at {self.agent}"
        return f"this search's host {self.host}"

    @property
    def how(self) -> str:
        """The protocol in a sentence, for a reader who wants the figure back: a card's
        latency is not one plain median, and a loaded machine gives more."""
        setting = (f"batch {self.batch_size}, {self.intra_op_threads} intra-op thread"
                   f"{'s' if self.intra_op_threads != 1 else ''}, {self.provider}, graph optimisation "
                   f"{self.graph_optimization}, ONNX Runtime {self.ort_version}")
        if self.method != "reference" or self.ratio is None or self.baseline_ms is None:
            return (f"{self.statistic} of {self.runs} runs after {self.warmup_runs} warm-up runs in one session "
                    f"({setting})")
        rounds = "its fast-mode rounds" if self.fast_only else "its rounds"
        raw = f"; the model's own median burst time then was {self.raw_ms:.4g} ms" if self.raw_ms else ""
        return (f"{self.ratio:.4g} x {self.baseline_ms:.4g} ms = {self.latency_ms:.4g} ms: the model's time as a "
                f"ratio to a fixed reference model ({self.reference_id}) timed in alternating bursts of "
                f"{self.burst_runs} runs, {self.rounds} rounds in each of {self.sessions} fresh sessions, the ratio "
                f"taken over {rounds}, times the "
                f"reference's fast-mode time on this machine ({setting}){raw}. It is the machine's figure when "
                "nothing else runs: timed beside other work, a plain median reads higher")

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


def statistic_of(profile: HardwareProfile) -> str:
    """What a latency under ``profile`` is a statistic of, as ``LatencyResult.statistic`` records it."""
    return "reference-ratio" if profile.protocol.method == "reference" else profile.protocol.statistic


def host_key(profile: HardwareProfile) -> LatencyKey:
    """The comparability key of a latency this host would measure under ``profile``."""
    return LatencyKey(**timing.environment(dataclasses.asdict(profile.runtime), profile.batch_size))


def check_runnable(profile: HardwareProfile) -> None:
    """A profile this host can measure under: its provider exists, and int8 files can be
    made when it asks for int8. Raises ``ProfileError`` with what to do."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    # A device's providers are its own: the device agent's link check asks for them.
    if profile.device is None and profile.runtime.provider not in available:
        raise ProfileError(f"profile {profile.name!r} asks for {profile.runtime.provider}, which this onnxruntime "
                           f"does not have (it has {', '.join(available)})")
    if profile.precision == "int8":
        try:
            import onnxruntime.quantization  # noqa: F401  (the cost lane quantizes every candidate)
        except ImportError as e:
            raise ProfileError(f"profile {profile.name!r} asks for precision int8, but onnxruntime's "
                               f"quantization tool does not import ({e}); use an fp32 profile") from None


class OrtLatencyBackend:
    """Times ``session.run`` on random inputs of the profile's batch size, under the
    profile's protocol (``odnas_device.timing``, the code a device agent times with too):
    reference-normalised rounds (default) or one plain session."""

    def __init__(self) -> None:
        self._baselines: dict[tuple, Any] = {}

    def measure(self, onnx_path: str | Path, profile: HardwareProfile) -> LatencyResult:
        check_runnable(profile)
        ref = None
        if profile.protocol.method == "reference":
            shape = input_shape(onnx_path)
            ref = (_opener(reference_onnx(shape), profile), self.baseline(profile, shape))
        fields = timing.measure(_opener(onnx_path, profile), dataclasses.asdict(profile.protocol), ref)
        # The record's environment is its comparability key.
        return LatencyResult.from_dict({**fields, **dataclasses.asdict(self.key(profile))})

    def key(self, profile: HardwareProfile) -> LatencyKey:
        """The comparability key of a figure this host would give under ``profile``."""
        return host_key(profile)

    def calibration_due(self, profile: HardwareProfile, shape: tuple[int, ...]) -> float:
        """Seconds the first timing under ``profile`` on inputs of ``shape`` will first
        spend calibrating this host's reference (0: cached, or no reference protocol)."""
        p = profile.protocol
        env, memo = _baseline_key(profile, shape)
        if p.method != "reference" or memo in self._baselines:
            return 0.0
        return timing.calibration_due(env, reference_onnx(shape).read_bytes(), calibration_s=p.calibration_s,
                                      burst_runs=p.burst_runs)

    def baseline(self, profile: HardwareProfile, shape: tuple[int, ...]) -> timing.Baseline:
        """This host's reference baseline for ``profile`` and inputs of ``shape``
        (calibrated on first use on a host, then read from the cache)."""
        p = profile.protocol
        env, memo = _baseline_key(profile, shape)
        if memo not in self._baselines:
            check_runnable(profile)
            path = reference_onnx(shape)
            self._baselines[memo] = timing.baseline(env, path.read_bytes(), _opener(path, profile),
                                                    calibration_s=p.calibration_s, burst_runs=p.burst_runs,
                                                    warmup_runs=p.warmup_runs)
        return self._baselines[memo]


def _baseline_key(profile: HardwareProfile, shape: tuple[int, ...]) -> tuple[dict[str, Any], tuple]:
    """The timing environment a baseline is kept under (as a device keys its own), and
    the backend's in-memory key for it."""
    p = profile.protocol
    env = timing.environment(dataclasses.asdict(profile.runtime), profile.batch_size)
    return env, (tuple(sorted(env.items())), shape, p.burst_runs, p.calibration_s)


def input_shape(onnx_path: str | Path) -> tuple[int, ...]:
    """An ONNX file's input shape without the batch dimension."""
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims[1:])


def _opener(onnx_path: str | Path, profile: HardwareProfile) -> Callable[[], Callable[[], object]]:
    """A function that opens a fresh session of ``onnx_path`` and returns "run once"."""
    return timing.opener(onnx_path, dataclasses.asdict(profile.runtime), profile.batch_size)


def measure_latency(onnx_path: str | Path, profile: HardwareProfile,
                    backend: LatencyBackend | None = None) -> LatencyResult:
    return (backend or OrtLatencyBackend()).measure(onnx_path, profile)
