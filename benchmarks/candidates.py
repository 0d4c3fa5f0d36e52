"""Search quality of candidates made in a child process against candidates made in
the driver (``odnas.loop.ahead.Ahead``, ``in_child=True`` or ``False``).

Both make the same candidate from the same strategy state and seed
(``tests/test_ahead.py``), but the child draws its seed from the driver's random
state, so the two take different random paths. This measures whether their searches
are equally good: odnas's ``bo`` strategy on a deterministic two-objective problem
(BoTorch's DTLZ2, 4 parameters, both objectives minimised, reference point 1.1), one
candidate at a time, each completed before the next; the hypervolume of everything
observed after each budget. Modes alternate within a seed, so machine noise hits
both alike.

    python benchmarks/candidates.py --seeds 0,1,2,3,4 --trials 24
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REF = 1.1


def search(seed: int, trials: int, init: int, in_child: bool) -> tuple[list[float], float]:
    """Hypervolume after each completed trial, and the seconds spent making candidates."""
    import torch
    from ax.api.client import Client
    from ax.api.configs import RangeParameterConfig
    from ax.core.data import Data
    import pandas as pd
    from botorch.test_functions.multi_objective import DTLZ2
    from botorch.utils.multi_objective.hypervolume import Hypervolume
    from botorch.utils.multi_objective.pareto import is_non_dominated

    from odnas.loop.adapter import experiment_of, generation_strategy_of
    from odnas.loop.ahead import Ahead
    from odnas.loop.config import generation_strategy

    torch.set_num_threads(1)  # as the driver fits (odnas.loop.driver)
    torch.manual_seed(seed)
    names = [f"x{i}" for i in range(4)]
    client = Client(random_seed=seed)
    client.configure_experiment(parameters=[RangeParameterConfig(name=n, bounds=(0.0, 1.0), parameter_type="float")
                                            for n in names])
    client.configure_optimization("-f1, -f2", outcome_constraints=[f"f1 <= {REF}", f"f2 <= {REF}"])
    client.set_generation_strategy(generation_strategy("bo", seed=seed, init_trials=init, trials=trials))
    exp, gs = experiment_of(client), generation_strategy_of(client)
    ahead = Ahead(gs, exp, wanted=lambda: True, running=lambda: False, fixed_features=lambda e: None,
                  in_child=in_child)
    problem = DTLZ2(dim=4, num_objectives=2)
    hv, ys, gen_s = Hypervolume(torch.tensor([-REF, -REF], dtype=torch.double)), [], 0.0
    out = []
    for _ in range(trials):
        t0 = time.perf_counter()
        grs = ahead._gen(experiment=exp, n=1, num_trials=1, fixed_features=None)
        gen_s += time.perf_counter() - t0
        trial = exp.new_trial(generator_run=grs[0][0])
        trial.mark_running(no_runner_required=True)
        x = torch.tensor([[trial.arm.parameters[n] for n in names]], dtype=torch.double)
        f = problem(x)[0]
        exp.attach_data(Data(df=pd.DataFrame([
            {"trial_index": trial.index, "arm_name": trial.arm.name, "metric_name": m, "metric_signature": m,
             "mean": float(v), "sem": 0.0} for m, v in zip(("f1", "f2"), f)])))
        trial.mark_completed()
        ys.append(-f)
        y = torch.stack(ys)
        y = y[(y >= -REF).all(dim=-1)]
        out.append(hv.compute(y[is_non_dominated(y)]) if len(y) else 0.0)
    ahead.close()
    return out, gen_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--init", type=int, default=8)
    a = ap.parse_args()
    import logging
    import warnings

    from odnas.loop.adapter import import_ax

    import_ax()
    logging.getLogger("ax").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    from odnas.loop.ahead import frozen_heap, load_lazy_kernels

    load_lazy_kernels()  # as the driver does before its first child
    checkpoints = sorted({a.init, (a.init + a.trials) // 2, a.trials})
    res: dict[str, list[tuple[list[float], float]]] = {"child": [], "driver": []}
    with frozen_heap():  # as the driver runs: its release after a candidate walks only what is new
        for i, seed in enumerate(int(s) for s in a.seeds.split(",")):
            for mode in (("child", "driver") if i % 2 == 0 else ("driver", "child")):
                curve, gen_s = search(seed, a.trials, a.init, in_child=mode == "child")
                res[mode].append((curve, gen_s))
                print(f"seed {seed} {mode:6s} HV " + " ".join(f"@{k} {curve[k - 1]:.4f}" for k in checkpoints)
                      + f"  generation {gen_s:.1f} s", flush=True)
    print(f"DTLZ2 (4 parameters, 2 objectives), reference point {REF}, bo with {a.init} quasi-random candidates, "
          f"{a.trials} trials, seeds {a.seeds}; median over seeds:")
    for k in checkpoints:
        c, d = (statistics.median(curve[k - 1] for curve, _ in res[m]) for m in ("child", "driver"))
        print(f"HV after {k} trials: child {c:.4f}, driver {d:.4f} (child/driver {c / d:.3f})")
    c, d = (statistics.median(g for _, g in res[m]) for m in ("child", "driver"))
    print(f"generation seconds per search: child {c:.1f}, driver {d:.1f} (child/driver {c / d:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
