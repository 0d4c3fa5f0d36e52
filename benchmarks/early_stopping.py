"""Early stopping: training time saved and front quality, same seed with and without.

Reads two finished run dirs of the same search (one with ``--early-stopping``) and
prints the summed job time (start to last epoch record), the number of epochs
trained, and the feasible hypervolume (reference: the profile's thresholds and
budgets on the objectives).

    odnas search --profile cpu-mobile --run-dir R0 --seed 0
    odnas search --profile cpu-mobile --run-dir R1 --seed 0 --early-stopping
    python benchmarks/early_stopping.py R0 R1
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def summary(run_dir: str) -> dict:
    from odnas.profiles import METRIC_SIGN, parse_bound
    from odnas.loop.store import load_run
    from odnas.select import front, hypervolume, objective_matrix

    run = load_run(run_dir)
    profile, typed = run.profile, run.rows
    rows = [r.to_dict() for r in typed]
    job_s, epochs = 0.0, 0
    for r in rows:
        tdir = Path(r["trial_dir"] or "")
        job, prog = tdir / "job.json", tdir / "progress.jsonl"
        if job.exists() and prog.exists():
            recs = [json.loads(x) for x in prog.read_text().splitlines() if x.strip()]
            if recs:
                job_s += recs[-1]["time"] - json.loads(job.read_text())["start"]
                epochs += len(recs)
    bounds = {m: v for m, _, v in map(parse_bound, list(profile.thresholds) + profile.budget_constraints())}
    objs = profile.objective_metrics
    ref = np.array([METRIC_SIGN[o] * bounds[o] for o in objs])
    fr = [r.to_dict() for r in front(typed, profile)]
    hv = hypervolume(objective_matrix(front(typed, profile), objs), ref) if fr else 0.0
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    return {"run_dir": run_dir, "states": states, "job_s": round(job_s, 1), "epochs": epochs,
            "front": len(fr), "hypervolume": hv, "best_val_acc": max((r["metrics"]["val_acc"] for r in fr), default=None)}


def main() -> None:
    base, es = summary(sys.argv[1]), summary(sys.argv[2])
    for s in (base, es):
        print(json.dumps(s))
    print(f"job time with/without early stopping: {es['job_s'] / base['job_s']:.2f}; "
          f"epochs {es['epochs']}/{base['epochs']}; hypervolume {es['hypervolume'] / base['hypervolume']:.2f}")


if __name__ == "__main__":
    main()
