"""Where a model-based candidate's time goes, and what BoTorch's Monte Carlo samples
per acquisition evaluation cost.

For each finished run dir given, the candidate odnas's ``bo`` strategy would make next
from the run's experiment (every trial observed, nothing pending), made again for
each ``--mc-samples`` value (qLogNEHVI's ``mc_samples``, BoTorch's default 128, which
odnas leaves as it is) and each repeat, the values interleaved so machine noise hits
all alike. One torch thread, as the driver's child runs. Each candidate's wall and CPU
time is split into the surrogate's fit (``Surrogate.fit``: one GP per modelled
metric) and the acquisition optimisation (``Acquisition.optimize``), timed by
wrapping Ax's two methods; the rest is Ax's data handling around them.

    python benchmarks/acquisition.py runs/bench/overhead/tutorial-warm-s*-* --mc-samples 128,64,32 --repeats 5
    python benchmarks/acquisition.py RUN --mc-samples 128 --repeats 3 --profile   # and where it went, by call
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class Split:
    """Wall and CPU seconds spent inside wrapped methods, by label."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def wrap(self, owner: type, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            w, c = time.perf_counter(), time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.wall[label] = self.wall.get(label, 0.0) + time.perf_counter() - w
                self.cpu[label] = self.cpu.get(label, 0.0) + time.process_time() - c

        setattr(owner, name, timed)

    def reset(self) -> None:
        self.wall.clear()
        self.cpu.clear()


def strategy(settings, mc_samples: int, seed: int, discrete: bool):
    """odnas's generation strategy for the run, with qLogNEHVI's ``mc_samples`` set."""
    from odnas.loop.config import generation_strategy

    gs = generation_strategy(settings.method, seed=seed, init_trials=settings.init_trials,
                             trials=settings.trials, discrete=discrete)
    spec = gs.nodes_by_name["MBM"].generator_specs[0]
    spec.generator_kwargs = {**spec.generator_kwargs, "botorch_acqf_options": {"mc_samples": mc_samples}}
    return gs


def next_candidate(gs, exp, split: Split) -> dict[str, float]:
    """Time the strategy's first model-based candidate on ``exp``, its model's fit
    included (the quasi-random candidate a fresh strategy starts with is not counted)."""
    for _ in range(3):
        split.reset()
        w, c = time.perf_counter(), time.process_time()
        gs.gen(experiment=exp, n=1)
        w, c = time.perf_counter() - w, time.process_time() - c
        if gs.current_node_name == "MBM":  # the node that made it (a strategy moves on as gen starts)
            return {"wall": w, "cpu": c, **{f"{k} wall": v for k, v in split.wall.items()},
                    **{f"{k} cpu": v for k, v in split.cpu.items()}}
    raise RuntimeError("the strategy made no model-based candidate in three")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="finished run dirs")
    ap.add_argument("--mc-samples", default="128,64,32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true",
                    help="also profile every candidate (cProfile) and print where the acquisition optimisation went")
    a = ap.parse_args()
    import logging
    import warnings

    import torch

    from odnas.loop.adapter import experiment_of, import_ax

    import_ax()
    logging.getLogger("ax").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    from ax.generators.torch.botorch_modular.acquisition import Acquisition
    from ax.core.parameter import ParameterType
    from ax.generators.torch.botorch_modular.surrogate import Surrogate

    from odnas.loop.ahead import load_lazy_kernels
    from odnas.loop.store import load_client
    from odnas.rundir import read_settings

    torch.set_num_threads(1)
    load_lazy_kernels()  # as the driver does before its first candidate
    split = Split()
    split.wrap(Surrogate, "fit", "fit")
    split.wrap(Acquisition, "optimize", "optimize")
    values = [int(v) for v in a.mc_samples.split(",")]
    rows: dict[int, list[dict[str, float]]] = {v: [] for v in values}
    prof = cProfile.Profile() if a.profile else None
    for run in a.runs:
        settings = read_settings(run)
        client, _ = load_client(run, readonly=True)
        exp = experiment_of(client)
        n = len(exp.trials)
        discrete = not any(p.parameter_type == ParameterType.FLOAT for p in exp.search_space.range_parameters.values())
        for rep in range(a.repeats):
            order = values if rep % 2 == 0 else values[::-1]
            for v in order:
                torch.manual_seed(rep)
                gs = strategy(settings, v, seed=rep, discrete=discrete)
                if prof is not None:
                    prof.enable()
                r = next_candidate(gs, exp, split)
                if prof is not None:
                    prof.disable()
                rows[v].append(r)
                print(f"{run.name} ({n} trials) repeat {rep} mc_samples {v:4d}: wall {r['wall']:.2f} s, cpu "
                      f"{r['cpu']:.2f} s, fit {r.get('fit cpu', 0):.2f} s, acquisition optimisation "
                      f"{r.get('optimize cpu', 0):.2f} s", flush=True)
    print(f"\nmedians over {len(a.runs)} run(s) x {a.repeats} repeat(s), CPU seconds per candidate "
          "(one torch thread):")
    base = statistics.median(r["cpu"] for r in rows[values[0]])
    for v in values:
        med = {k: statistics.median(r.get(k, 0.0) for r in rows[v])
               for k in ("wall", "cpu", "fit cpu", "optimize cpu")}
        print(f"mc_samples {v:4d}: cpu {med['cpu']:.2f} s ({med['cpu'] / base:.2f}x of {values[0]}), fit "
              f"{med['fit cpu']:.2f} s, acquisition optimisation {med['optimize cpu']:.2f} s, rest "
              f"{med['cpu'] - med['fit cpu'] - med['optimize cpu']:.2f} s; wall {med['wall']:.2f} s")
    if prof is not None:
        print_profile(prof)
    return 0


def print_profile(prof: cProfile.Profile) -> None:
    """Cumulative seconds in the calls a candidate's time is made of (profiled, so
    slower than above; read the shares)."""
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, prim calls, tottime, cumtime, callers)
    wanted = {"gen": "strategy gen, in all (the quasi-random candidates before included)", "fit": "surrogate fit",
              "optimize": "acquisition optimisation",
              "posterior": "GP posteriors (in the optimisation)",
              "run_backward": "autograd backward passes (fit and optimisation)"}
    best: dict[str, float] = {}
    for (file, _, name), (_, _, _, cum, _) in stats.items():
        key = None
        if "run_backward" in name:
            key = "run_backward"
        elif name == "posterior" and "botorch/models" in file:
            key = "posterior"
        elif name in ("gen", "fit", "optimize"):
            key = {"generation_strategy.py": "gen", "surrogate.py": "fit", "acquisition.py": "optimize"}.get(
                Path(file).name)
            key = key if key == name else None
        if key is not None:
            best[key] = max(best.get(key, 0.0), cum)
    print("\nprofiled (cProfile), cumulative seconds over every candidate:")
    for key, label in wanted.items():
        print(f"{label}: {best.get(key, 0.0):.2f} s")


if __name__ == "__main__":
    sys.exit(main())
