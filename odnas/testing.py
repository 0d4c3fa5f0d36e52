"""Fakes for tests and benchmarks, shipped in the package (as Optuna does): never used by a feature.

``FakeLatencyBackend`` returns a deterministic latency derived from the ONNX
graph's size in microseconds, so tests of the loop need no timing.
``InProcessJobs`` (with ``in_process_jobs``) runs each trial's job inside the
driver instead of as a TorchX job, so the real loop runs hundreds of trials fast.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

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


# ---------------------------------------------------------------- in-process jobs


def synthetic_val_acc(space, params: Mapping[str, Any]) -> float:
    """A cheap, deterministic stand-in for a trained model's ``val_acc`` (no training).

    Each parameter is put on [0, 1] (log scale for log ranges, index for choices).
    A quarter of the parameters (at least two), picked by a stable hash of the space
    and parameter names, matter; the rest barely do: a smooth, sparse, axis-aligned
    landscape like the ones SAASBO is built for. Each parameter has its own optimum;
    the value runs from 0.55 (far from every optimum) to 0.98 (at all of them).
    """
    specs = [s for s in space.specs if s.name in params]
    if not specs:
        return 0.55
    ranked = sorted(specs, key=lambda s: _unit_hash(f"{space.name}/{s.name}/rank"))
    important = {s.name for s in ranked[:max(2, len(specs) // 4)]}
    loss = 0.0
    for s in specs:
        u = _unit_position(s, params[s.name])
        centre = 0.15 + 0.7 * _unit_hash(f"{space.name}/{s.name}/centre")
        loss += (1.0 if s.name in important else 0.02) * (u - centre) ** 2
    return round(0.55 + 0.43 * math.exp(-4.0 * loss / len(important)), 6)


def _unit_hash(text: str) -> float:
    # hashlib, not hash(): the same value in every process (hash() is salted).
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def _unit_position(spec, value: Any) -> float:
    from odnas.spaces.base import Choice

    if isinstance(spec, Choice):
        vals = list(spec.values)
        return vals.index(value) / max(1, len(vals) - 1) if value in vals else 0.5
    lo, hi, v = float(spec.lo), float(spec.hi), min(max(float(value), float(spec.lo)), float(spec.hi))
    if spec.log:
        return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (v - lo) / (hi - lo) if hi > lo else 0.5


class InProcessJobs:
    """Stands in for TorchX's runner (``run``, ``status``, ``cancel``): each trial's job
    runs in this process and has finished when ``run`` returns.

    ``TrialRunner`` hands it the same ``AppDef`` it would hand TorchX; the job's own
    arguments (``python -m odnas.trial --out ... --params ...``) are read back from it.
    With ``train=False`` the job writes ``job.json``, one ``progress.jsonl`` line and
    ``result.json`` with :func:`synthetic_val_acc` (milliseconds, no training); with
    ``train=True`` it runs ``odnas.trial.main`` on those arguments, a real training.
    Either way ``TrialRunner.poll_trial`` and ``ValAccMetric`` read the trial dir as
    usual. ``after(trial_index, seconds)`` is called when each job has finished.
    """

    def __init__(self, train: bool = False, after: Callable[[int, float], None] | None = None) -> None:
        self.train = train
        self.after = after
        self.launched = 0
        self.failed = 0

    def run(self, app, scheduler: str, cfg: Mapping[str, Any] | None = None) -> str:
        argv = list(app.roles[0].args)
        if argv[:2] != ["-m", "odnas.trial"]:
            raise ValueError(f"not an odnas trial job: {argv[:2]}")
        argv = argv[2:]
        a = _job_args(argv)
        t0 = time.perf_counter()
        self.launched += 1
        if self.train:
            from odnas.trial import main

            try:
                main(argv)
            except Exception:  # the job wrote error.json, as a failed TorchX job would
                self.failed += 1
        else:
            from odnas.util import write_json_atomic
            from odnas.spaces import get_space

            out = Path(a.out)
            out.mkdir(parents=True, exist_ok=True)
            params = json.loads(a.params)
            write_json_atomic(out / "job.json", {"pid": os.getpid(), "host": socket.gethostname(),
                                                 "start": time.time(), "params": params})
            acc = synthetic_val_acc(get_space(a.space), params)
            with (out / "progress.jsonl").open("a") as f:
                f.write(json.dumps({"epoch": 1, "val_acc": acc, "time": time.time()}) + "\n")
            write_json_atomic(out / "result.json", {"val_acc": acc, "epochs": 1, "synthetic": True,
                                                    "status": "ok"})
        if self.after is not None:
            self.after(int(Path(a.out).name), time.perf_counter() - t0)
        return f"inprocess://odnas/{Path(a.out).name}"

    def status(self, handle: str):
        from torchx.specs import AppState, AppStatus

        return AppStatus(state=AppState.SUCCEEDED)  # a job has ended by the time run() returns

    def cancel(self, handle: str) -> None:
        pass  # nothing is left running


def _job_args(argv: list[str]):
    import argparse

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--out", required=True)
    ap.add_argument("--space", required=True)
    ap.add_argument("--params", required=True)
    a, _ = ap.parse_known_args(argv)
    return a


@contextmanager
def in_process_jobs(jobs: InProcessJobs) -> Iterator[InProcessJobs]:
    """While active, ``TrialRunner`` gets ``jobs`` where it asks TorchX for a runner
    (``torchx.runner.get_runner``), so ``odnas.search.run_loop`` runs unchanged and
    its runner, metrics and storage are the real ones; only the job runs in-process."""
    import torchx.runner

    saved = torchx.runner.get_runner
    torchx.runner.get_runner = lambda *args, **kwargs: jobs
    try:
        yield jobs
    finally:
        torchx.runner.get_runner = saved
