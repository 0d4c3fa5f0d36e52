"""Fakes for tests, shipped in the package (as Optuna does): never used by a feature.

``FakeLatencyBackend`` returns a deterministic latency derived from the ONNX
graph's size in microseconds, so tests of the loop need no timing.
"""

from __future__ import annotations

import socket
from pathlib import Path

from odnas.cost.latency import LatencyResult
from odnas.profiles import HardwareProfile


class FakeLatencyBackend:
    """Latency = 1 us per graph node + 1 us per 10 kB of file, plus a fixed 10 us."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.calls = 0

    def measure(self, onnx_path: str | Path, profile: HardwareProfile) -> LatencyResult:
        import onnx

        self.calls += 1
        nodes = len(onnx.load(str(onnx_path)).graph.node)
        ms = self.scale * (0.010 + 0.001 * nodes + 0.0001 * Path(onnx_path).stat().st_size / 1000)
        return LatencyResult(
            latency_ms=ms, latency_ms_p90=ms * 1.1, latency_ms_mean=ms, latency_ms_sem=ms * 0.01,
            runs=profile.protocol.min_runs, warmup_runs=profile.protocol.warmup_runs, measure_s=0.0,
            statistic=profile.protocol.statistic, batch_size=profile.batch_size,
            provider="fake", intra_op_threads=profile.runtime.intra_op_threads,
            inter_op_threads=profile.runtime.inter_op_threads,
            graph_optimization=profile.runtime.graph_optimization, ort_version="fake",
            cpu_model="fake", host=socket.gethostname(),  # made here, valid here
        )
