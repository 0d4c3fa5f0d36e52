"""Fakes for tests and benchmarks, shipped in the package (as Optuna does): never used by a feature.

``FakeLatencyBackend`` returns a deterministic latency derived from the ONNX
graph's size in microseconds, so tests of the loop need no timing.
``InProcessJobs`` is a TorchX scheduler (``InProcessJobs.SCHEDULER``, passed to the
driver by name) that runs each trial's job inside the driver, so the real loop runs
hundreds of trials fast.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from torchx.schedulers.api import Scheduler

from odnas.cost.latency import LatencyResult
from odnas.profiles import HardwareProfile
from odnas.rundir import JOB_NAME, PROGRESS_NAME, RESULT_NAME, TRIAL_MODULE, write_json_atomic


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


class FixedCostLane:
    """A cost lane stand-in for job tests: the same small costs for every candidate of
    ``space``, never over a budget (the runner's jobs are what is under test)."""

    def __init__(self, space: str = "mlp") -> None:
        self.space = space

    def costs(self, params):
        from odnas.records import CostRecord
        from odnas.spaces import get_space

        return CostRecord(arch_id=get_space(self.space).arch_id(params), space=self.space, profile="cpu-mobile",
                          precision="fp32", metrics={"num_params": 1000, "latency_ms": 0.01})

    def over_budget(self, metrics):
        return []


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
    """Runs each trial's job in this process, as a TorchX scheduler: the driver gets it
    through TorchX's public extension point (a scheduler factory by name,
    ``run_loop(..., schedulers=jobs.schedulers())`` with ``SearchConfig(scheduler=
    InProcessJobs.SCHEDULER)``), so the runner, metrics and storage are the real ones.

    The job's own arguments (``python -m odnas.jobs.trial --out ... --params ...``) are
    read back from the ``AppDef``. With ``train=False`` the job writes ``job.json``, one
    ``progress.jsonl`` line and ``result.json`` with :func:`synthetic_val_acc`
    (milliseconds, no training); with ``train=True`` it runs ``odnas.jobs.trial.main``
    on those arguments, a real training. ``after(trial_index, seconds)`` is called when
    each job has finished. A job has finished by the time TorchX's ``run`` returns.
    """

    SCHEDULER = "inprocess"

    def __init__(self, train: bool = False, after: Callable[[int, float], None] | None = None) -> None:
        self.train = train
        self.after = after
        self.launched = 0
        self.failed = 0

    def schedulers(self) -> dict[str, Callable[..., Any]]:
        """``{name: factory}`` for ``run_loop``/``create_run``'s ``schedulers``."""
        return {self.SCHEDULER: lambda session_name, **kwargs: _InProcessScheduler(session_name, self)}

    def run_job(self, argv: list[str]) -> str:
        """Run one job given its ``python`` arguments; returns its app id."""
        if argv[:2] != ["-m", TRIAL_MODULE]:
            raise ValueError(f"not an odnas trial job: {argv[:2]}")
        argv = argv[2:]
        a = _job_args(argv)
        t0 = time.perf_counter()
        self.launched += 1
        if self.train:
            from odnas.jobs.trial import main

            try:
                main(argv)
            except Exception:  # the job wrote error.json, as a failed TorchX job would
                self.failed += 1
        else:
            from odnas.spaces import get_space

            out = Path(a.out)
            out.mkdir(parents=True, exist_ok=True)
            params = json.loads(a.params)
            write_json_atomic(out / JOB_NAME, {"pid": os.getpid(), "host": socket.gethostname(),
                                               "start": time.time(), "params": params})
            acc = synthetic_val_acc(get_space(a.space), params)
            with (out / PROGRESS_NAME).open("a") as f:
                f.write(json.dumps({"epoch": 1, "val_acc": acc, "time": time.time()}) + "\n")
            write_json_atomic(out / RESULT_NAME, {"val_acc": acc, "epochs": 1, "synthetic": True, "status": "ok"})
        if self.after is not None:
            self.after(int(Path(a.out).name), time.perf_counter() - t0)
        return f"odnas-{Path(a.out).name}-{self.launched}"


class _InProcessScheduler(Scheduler):
    def __init__(self, session_name: str, jobs: InProcessJobs) -> None:
        super().__init__(InProcessJobs.SCHEDULER, session_name)
        self.jobs = jobs
        self.apps: dict[str, str] = {}

    def _submit_dryrun(self, app, cfg):
        from torchx.specs import AppDryRunInfo

        return AppDryRunInfo(list(app.roles[0].args), lambda argv: "in process: python " + " ".join(argv))

    def schedule(self, dryrun_info) -> str:
        app_id = self.jobs.run_job(dryrun_info.request)
        self.apps[app_id] = "SUCCEEDED"
        return app_id

    def state(self, app_id: str):
        """The app's TorchX state: every job has finished by the time ``schedule`` returns."""
        from torchx.specs import AppState

        return AppState.SUCCEEDED

    def describe(self, app_id: str):
        from torchx.schedulers.api import DescribeAppResponse

        if app_id not in self.apps:
            return None
        return DescribeAppResponse(app_id=app_id, state=self.state(app_id))

    def list(self):
        from torchx.schedulers.api import ListAppResponse

        return [ListAppResponse(app_id=a, state=self.state(a)) for a in self.apps]

    def _cancel_existing(self, app_id: str) -> None:
        pass  # nothing is left running

    def log_iter(self, *args: Any, **kwargs: Any):
        return iter(())


def _job_args(argv: list[str]):
    import argparse

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--out", required=True)
    ap.add_argument("--space", required=True)
    ap.add_argument("--params", required=True)
    a, _ = ap.parse_known_args(argv)
    return a


# ---------------------------------------------------------------- the space contract


def check_space(space, input_shapes=((1, 8, 8), (1, 28, 28)), num_classes: int = 10, samples: int = 3,
                seed: int = 0, profiles=None) -> dict[str, Any]:
    """The checks every shipped space passes, for a user's own space (a ``Space``
    subclass, an instance, or a reference string), as Optuna users run its storage
    suite in their own tests::

        from odnas.testing import check_space
        def test_my_space():
            check_space(KwsSpace)

    For ``samples`` random members and every input shape: the model builds, its
    parameters and FLOPs are counted, it exports to ONNX (dynamic batch) and ONNX
    Runtime agrees with PyTorch; ``arch_id`` is the same when asked twice or when only
    the training settings change, and differs whenever the exported graphs differ; ``training`` gives usable settings;
    ``smallest()``, when the space names one, counts no more than any member drawn.
    For every shipped profile (or ``profiles``), the cost lane builds, counts and
    (with the fake latency backend, so no timing) prices it, int8 included.
    Raises ``AssertionError`` naming the check and the parameters; returns a summary.
    """
    import random
    import tempfile

    import numpy as np
    import onnxruntime as ort
    import torch

    from odnas.cost.count import count
    from odnas.cost.lane import measure_candidate
    from odnas.cost.onnx import export_onnx
    from odnas.profiles import list_profiles, load_profile
    from odnas.spaces import as_space, get_space

    space = get_space(space) if isinstance(space, str) else as_space(space)
    rng = random.Random(seed)
    members = [space.sample(rng) for _ in range(samples)]
    graphs: dict[str, tuple] = {}
    counted: dict[tuple, Any] = {}  # (member, input shape) -> its counts
    summary: dict[str, Any] = {"space": space.name, "members": len(members), "arch_ids": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, params in enumerate(members):
            where = f"space {space.name!r}, member {params}"
            arch = space.arch_id(params)
            assert isinstance(arch, str) and arch and arch == space.arch_id(dict(params)), f"{where}: arch_id unstable"
            assert arch == space.arch_id(json.loads(json.dumps(params))), f"{where}: arch_id changes through JSON"
            hp = space.training(params)
            assert float(hp["lr"]) > 0 and int(hp["epochs"]) >= 1 and int(hp["batch_size"]) >= 1, \
                f"{where}: training() gave {hp}"
            # Costs are cached by arch id: the same network trained otherwise must keep it.
            other = space.sample(rng)
            varied = {**params, **{k: other[k] for k in hp if k in params and k in other}}  # what training() reads
            assert space.arch_id(varied) == arch, \
                f"{where}: arch_id changes with the training settings ({', '.join(hp)}): {space.arch_id(varied)}"
            summary["arch_ids"].append(arch)
            for shape in input_shapes:
                torch.manual_seed(0)
                model = space.build(params, shape, num_classes).eval()
                c = counted[i, shape] = count(model, shape)
                assert c.num_params > 0 and c.flops >= 0, f"{where}, input {shape}: counted {c}"
                path = export_onnx(model, shape, Path(tmp) / f"{i}-{'x'.join(map(str, shape))}.onnx")
                x = np.random.default_rng(i).standard_normal((2, *shape)).astype(np.float32)
                sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
                with torch.no_grad():
                    want = model(torch.from_numpy(x)).numpy()
                assert got.shape == (2, num_classes), f"{where}, input {shape}: output shape {got.shape}"
                err = float(np.abs(got - want).max())
                assert err <= 1e-3 * max(1.0, float(np.abs(want).max())), \
                    f"{where}, input {shape}: ONNX Runtime and PyTorch differ by {err:.2e}"
                import onnx

                g = onnx.load(str(path)).graph
                sig = (tuple(n.op_type for n in g.node), tuple(tuple(t.dims) for t in g.initializer))
                if shape == input_shapes[0]:
                    assert graphs.setdefault(arch, sig) == sig, f"{where}: two different networks share arch_id {arch}"
        small = space.smallest({})
        if small is not None:  # what a search measures to refuse budgets no member meets
            space.check_fixed(small)  # a member: every value in its parameter's domain
            summary["smallest"] = space.arch_id(small)
            for shape in input_shapes:
                floor = count(space.build(small, shape, num_classes), shape)
                for i, params in enumerate(members):
                    c = counted[i, shape]
                    assert c.num_params >= floor.num_params and c.flops >= floor.flops, (
                        f"space {space.name!r}, input {shape}: member {params} counts {c.num_params} parameters "
                        f"and {c.flops} FLOPs, fewer than smallest() {small} ({floor.num_params}, {floor.flops}); "
                        "smallest() must return the cheapest member, or None")
        for name in (profiles or list_profiles()):
            prof = load_profile(name) if isinstance(name, str) else name
            rec = measure_candidate(space, members[0], input_shapes[0], num_classes, prof,
                                    backend=FakeLatencyBackend())
            assert rec.arch_id == space.arch_id(members[0]) and rec.metrics["num_params"] > 0, \
                f"space {space.name!r} under profile {prof.name}: {rec.metrics}"
    summary["distinct_arch_ids"] = len(set(summary["arch_ids"]))
    return summary
