"""Early stopping: training time saved and front quality, same seed with and without.

Reads pairs of finished run dirs of the same search (the second of each with
``--early-stopping``) and prints, per run, the summed job time (start to last epoch
record, or to the stop for an early-stopped trial), the number of epochs trained and
the feasible hypervolume (reference: the profile's thresholds and budgets on the
objectives); per pair, the ratios and the job time per epoch; and over
several pairs (seeds), the median ratios and how far the hypervolume moves between
seeds without early stopping, which is the noise a ratio has to beat.

    odnas search --profile cpu-mobile --run-dir R0 --seed 0
    odnas search --profile cpu-mobile --run-dir R1 --seed 0 --early-stopping
    python benchmarks/early_stopping.py R0 R1 [R0' R1' ...]
    python benchmarks/early_stopping.py --groups-of 3 R0 R1 R2 [R0' R1' R2' ...]   # two rules against one baseline
    python benchmarks/early_stopping.py --ranks RUN [RUN ...]   # only the rank correlations
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
    job_s, epochs, curves, by_trial, costs = 0.0, 0, [], {}, {}
    for r in rows:
        tdir = Path(r["trial_dir"] or "")
        job, prog = tdir / "job.json", tdir / "progress.jsonl"
        if job.exists() and prog.exists():
            recs = [json.loads(x) for x in prog.read_text().splitlines() if x.strip()]
            if recs:
                end = recs[-1]["time"]
                stopped = run.experiment.trials[r["trial"]].time_completed
                if r["state"] == "early_stopped" and stopped:  # it trained on until it was told to stop
                    end = max(end, stopped.timestamp())
                job_s += end - json.loads(job.read_text())["start"]
                epochs += len(recs)
                if r["state"] == "completed":
                    curves.append([x["val_acc"] for x in recs])
                    by_trial[r["trial"]] = curves[-1]
                    costs[r["trial"]] = tuple(r["metrics"].get(o, 0.0) for o in profile.objective_metrics
                                              if o != "val_acc")
    bounds = {m: v for m, _, v in map(parse_bound, list(profile.thresholds) + profile.budget_constraints())}
    objs = profile.objective_metrics
    ref = np.array([METRIC_SIGN[o] * bounds[o] for o in objs])
    fr = [r.to_dict() for r in front(typed, profile)]
    hv = hypervolume(objective_matrix(front(typed, profile), objs), ref) if fr else 0.0
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    return {"run_dir": run_dir, "states": states, "job_s": round(job_s, 1), "epochs": epochs,
            "front": len(fr), "hypervolume": hv,
            "best_val_acc": max((r["metrics"]["val_acc"] for r in fr), default=None),
            "curves": curves, "by_trial": by_trial, "costs": costs, "front_trials": [r["trial"] for r in fr]}


def would_stop(curves: dict[int, list[float]], trial: int, from_epoch: int, min_curves: int = 4,
               costs: dict[int, tuple] | None = None) -> bool:
    """Whether Ax's percentile rule (median, from epoch ``from_epoch``) would have stopped
    this trial, judged against the trials started before it (what the rule sees while it
    runs): below the median of their val_acc at some epoch it had yet to finish. With
    ``costs`` (a trial's cost objectives, known before training), only against the
    trials that cost no more in any of them: the ones that could dominate it."""
    c = curves[trial]
    peers = [t for t in curves if t < trial and (costs is None or all(
        a <= b for a, b in zip(costs[t], costs[trial])))]
    for k in range(from_epoch, len(c)):  # stopping after its last epoch saves nothing
        others = [curves[t][k - 1] for t in peers if len(curves[t]) >= k]
        if len(others) >= min_curves and c[k - 1] < np.median(others):
            return True
    return False


def front_stopped(runs: list[dict], upto: int = 3) -> str:
    """Over runs without early stopping: how many of the feasible front's trials the rule
    would have stopped, from each first epoch, against how many of all completed trials
    it could stop. A rule on val_acc alone is blind to cost: a cheap model with a lower
    accuracy can still be on the front."""
    parts = []
    fr = [(run, t) for run in runs for t in run["front_trials"] if t in run["by_trial"]]
    alls = [(run, t) for run in runs for t in run["by_trial"]]
    for peers in ("all", "cheaper"):
        for k in range(1, upto + 1):
            f, a = (sum(would_stop(run["by_trial"], t, k, costs=run["costs"] if peers == "cheaper" else None)
                        for run, t in which) for which in (fr, alls))
            parts.append(f"against {peers} earlier trials from epoch {k}: {f} of {len(fr)} front trials "
                         f"({f / max(1, len(fr)):.0%}), {a} of {len(alls)} trials ({a / max(1, len(alls)):.0%})")
    return "; ".join(parts)


def early_ranks(curves: list[list[float]], upto: int = 3) -> str:
    """How well a trial's val_acc after epoch k ranks trials by their last one: Spearman's
    rho over the completed trials that trained more than k epochs. Early stopping can only
    be right as often as this is high."""
    from scipy.stats import spearmanr

    parts = []
    for k in range(1, upto + 1):
        longer = [c for c in curves if len(c) > k]
        if len(longer) >= 5:
            rho = spearmanr([c[k - 1] for c in longer], [c[-1] for c in longer]).statistic
            parts.append(f"after epoch {k}: rho {rho:.2f} over {len(longer)} trials")
    return "; ".join(parts) or "too few trials trained past epoch 1"


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--ranks"]:  # any finished runs: how early val_acc ranks their trials
        for d in args[1:]:
            print(f"{d}: {early_ranks(summary(d)['curves'])}")
        return
    k = 2
    if args[:1] == ["--groups-of"]:  # OFF ON_A ON_B ...: several early-stopping rules against one baseline
        k, args = int(args[1]), args[2:]
    if k < 2 or not args or len(args) % k:
        sys.exit("usage: early_stopping.py [--groups-of K] OFF ON [ON ...] [OFF ON ...]")
    groups = [args[i:i + k] for i in range(0, len(args), k)]
    time_r, hv_r, offs, ons, curves = ([[] for _ in range(k - 1)], [[] for _ in range(k - 1)], [],
                                       [[] for _ in range(k - 1)], [])
    bases, epoch_r = [], [[] for _ in range(k - 1)]
    for off, *variants in groups:
        base = summary(off)
        print(json.dumps({key: v for key, v in base.items() if key not in ("curves", "by_trial")}))
        offs.append(base["hypervolume"])
        curves += base["curves"]
        bases.append(base)
        for v, on in enumerate(variants):
            es = summary(on)
            print(json.dumps({key: val for key, val in es.items() if key not in ("curves", "by_trial")}))
            t, hv = es["job_s"] / base["job_s"], es["hypervolume"] / base["hypervolume"]
            time_r[v].append(t)
            epoch_r[v].append(es["epochs"] / base["epochs"])
            hv_r[v].append(hv)
            ons[v].append(es["hypervolume"])
            print(f"job time with/without early stopping: {t:.2f}; epochs {es['epochs']}/{base['epochs']}; "
                  f"job s per epoch {es['job_s'] / es['epochs']:.2f}/{base['job_s'] / base['epochs']:.2f}; "
                  f"hypervolume {hv:.2f}")
    for v in range(k - 1):
        if len(groups) < 2:
            break
        which = f"rule {v + 1} of {k - 1} (runs {v + 2}, {v + 2 + k}, ... of the arguments): " if k > 2 else ""
        t, hv = time_r[v], hv_r[v]
        print(f"{which}over {len(t)} seeds: median job time ratio {np.median(t):.2f} "
              f"({min(t):.2f}-{max(t):.2f}), median epochs ratio {np.median(epoch_r[v]):.2f} "
              f"({min(epoch_r[v]):.2f}-{max(epoch_r[v]):.2f}), median hypervolume ratio {np.median(hv):.2f} "
              f"({min(hv):.2f}-{max(hv):.2f}), seeds at 95% of the hypervolume or more {sum(x >= 0.95 for x in hv)}"
              f"/{len(hv)}; median hypervolume {np.median(ons[v]):.4g} against {np.median(offs):.4g} without "
              f"({np.median(ons[v]) / np.median(offs):.2f}x)")
    if len(groups) > 1:
        print(f"without early stopping the hypervolume ranges {min(offs):.4g}-{max(offs):.4g} across seeds "
              f"({max(offs) / min(offs):.2f}x)")
    print("how an early val_acc ranks trials by their last one (runs without early stopping, trials trained "
          "to the end): " + early_ranks(curves))
    print("trials the median rule would have stopped in the runs without early stopping, judged against the "
          "trials started before them: " + front_stopped(bases))


if __name__ == "__main__":
    main()
