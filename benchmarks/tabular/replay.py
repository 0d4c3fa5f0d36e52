"""Search replay on a tabular benchmark: whole searches with no training.

Each method proposes configurations in the table's grid; "training" one is a table
lookup. The loop mirrors odnas's: a candidate's costs are known before training, a
candidate over a hard budget is completed with its cost metrics only (no ``val_acc``)
and does not use up a trial, ``trials`` counts trainings, and at most 4 x ``trials``
candidates are made (``--max-candidates``' default). Trials run one at a time.

What the methods see and how they are scored:

- observation: the ``val_acc`` of one training seed, column ``seeds[replay_seed % n]``
  of the table, so the optimizer sees real seed noise and a repeated configuration
  gets the same answer within one replay;
- score: the feasible hypervolume of the trained configurations with the *mean*
  ``val_acc`` over seeds (the same yardstick for every method and for the exhaustive
  front), reference point at the thresholds and budget (``val_acc >= 0.85``,
  ``latency_ms <= budget``), via ``odnas.select.front`` and ``odnas.select.hypervolume``.

Methods: ``bo`` (odnas's default: ``odnas.loop.config.generation_strategy('bo', ...)``, Ax's
Sobol then qLogNEHVI), ``sobol`` and ``random`` (the same Ax client with those
strategies), ``nsga2`` and ``tpe`` (Optuna's ``NSGAIISampler``, population 16, and its
multi-objective ``TPESampler``, defaults otherwise, with the bounds as trial constraints).

    python benchmarks/tabular/replay.py mlp_mnist --seeds 10 > replay_mlp_mnist.md

Results go to ``replay_NAME.json``; each finished (method, seed) is appended to
``replay_NAME.jsonl`` first, so a stopped replay resumes. Logs go to stderr, the
markdown summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
METHODS = ("bo", "sobol", "random", "nsga2", "tpe")
CHECKPOINTS = (16, 32, 48)
#: Share of the table's configurations the default latency budget lets through.
FEASIBLE_SHARE = 0.35
NSGA2_POPULATION = 16


class ReplayError(ValueError):
    """A replay that cannot start; the message says what to do."""


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Table:
    """A built table (``build.py``) with the profile whose latency budget is set for it."""

    name: str
    space: str
    grid: Mapping[str, tuple]
    fixed: Mapping[str, Any]
    seeds: tuple[str, ...]
    entries: Mapping[str, Mapping[str, Any]]  # config key -> entry (params, arch_id, val_acc per seed, mean)
    archs: Mapping[str, Mapping[str, Any]]  # arch id -> cost record (metrics, sem)
    profile: Any  # HardwareProfile
    meta: Mapping[str, Any]

    def key(self, params: Mapping[str, Any]) -> str:
        """The table key of a configuration (its grid values in grid order)."""
        try:
            return json.dumps([_match(params[n], self.grid[n]) for n in self.grid])
        except KeyError as e:
            raise ReplayError(f"configuration {dict(params)} lacks grid parameter {e}") from None

    def entry(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        k = self.key(params)
        if k not in self.entries:
            raise ReplayError(f"configuration {k} is not in table {self.name}")
        return self.entries[k]

    def costs(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """The cost record (``metrics`` and ``sem``) of a configuration's architecture."""
        return self.archs[self.entry(params)["arch_id"]]

    def val_acc(self, params: Mapping[str, Any], column: str) -> float | None:
        return self.entry(params)["val_acc"][column]

    def column(self, replay_seed: int) -> str:
        return self.seeds[replay_seed % len(self.seeds)]

    def score_row(self, key: str, column: str | None = None):
        """A ``TrialRow`` for ``odnas.select`` (``arch_id`` holds the table key) with the
        architecture's costs and the mean ``val_acc`` (or that of seed ``column``)."""
        from odnas.records import TrialRow

        e = self.entries[key]
        m = dict(self.archs[e["arch_id"]]["metrics"])
        acc = e["val_acc_mean"] if column is None else e["val_acc"][column]
        if acc is not None:
            m["val_acc"] = acc
        return TrialRow(trial=0, state="completed", arch_id=key, params={}, metrics=m)

    def feasible_share(self) -> float:
        from odnas.select import feasible

        return sum(feasible(self.score_row(k), self.profile) for k in self.entries) / len(self.entries)


def _match(value: Any, values: Sequence[Any]) -> Any:
    """The grid value equal to ``value`` (floats compared with a tolerance)."""
    for v in values:
        if v == value or (isinstance(v, float) and isinstance(value, (int, float))
                          and math.isclose(v, value, rel_tol=1e-9)):
            return v
    raise ReplayError(f"{value!r} is not one of the grid values {list(values)}")


def load_table(path: str | Path, latency_budget: float | None = None) -> Table:
    """Read a built table and set its latency budget (default: ``default_budget``)."""
    from odnas.profiles import load_profile

    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"{path}: no such table; build it with benchmarks/tabular/build.py")
    raw = json.loads(path.read_text())
    meta = raw["meta"]
    base = load_profile(meta["profile"])
    grid = {k: tuple(v) for k, v in meta["grid"].items()}
    # Keys are remade here from each entry's parameters, in this grid order.
    entries = {json.dumps([_match(e["params"][n], grid[n]) for n in grid]): e for e in raw["entries"]}
    tbl = Table(name=meta["name"], space=meta["space"], grid=grid, fixed=meta["fixed"],
                seeds=tuple(str(s) for s in meta["seeds"]), entries=entries, archs=raw["archs"], profile=base,
                meta=meta)
    budget = latency_budget if latency_budget is not None else default_budget(tbl)
    return with_budget(tbl, budget)


def with_budget(tbl: Table, latency_ms: float) -> Table:
    """The table under its profile with ``latency_ms <= latency_ms`` as the latency budget."""
    import dataclasses

    from odnas.loop.config import effective_profile

    if not latency_ms > 0:
        raise ReplayError(f"--latency-budget must be > 0, got {latency_ms}")
    return dataclasses.replace(tbl, profile=effective_profile(tbl.profile, None, (f"latency_ms <= {latency_ms:g}",)))


def default_budget(tbl: Table, share: float = FEASIBLE_SHARE) -> float:
    """The smallest latency budget, rounded up to two significant figures, under which
    at least ``share`` of the table's configurations are feasible (every other bound of
    the profile kept)."""
    lats = sorted({a["metrics"]["latency_ms"] for a in tbl.archs.values()})
    for lat in lats:
        b = round_up(lat)
        if with_budget(tbl, b).feasible_share() >= share:
            return b
    raise ReplayError(f"no latency budget lets {share:.0%} of table {tbl.name} through; "
                      "the other bounds already exclude more; pass --latency-budget")


def round_up(x: float, sig: int = 2) -> float:
    """``x`` rounded up to ``sig`` significant figures (0.03141 -> 0.032)."""
    step = 10.0 ** (math.floor(math.log10(x)) - (sig - 1))
    return float(f"{math.ceil(x / step - 1e-9) * step:.{sig}g}")


# ------------------------------------------------------------------ scoring (pure)


def reference_point(profile) -> np.ndarray:
    """The objectives' thresholds and budgets, signed so that every objective is maximised."""
    from odnas.profiles import METRIC_SIGN, parse_bound

    bounds = {m: v for m, _, v in map(parse_bound, list(profile.thresholds) + profile.budget_constraints())}
    return np.array([METRIC_SIGN[o] * bounds[o] for o in profile.objective_metrics])


def hypervolume_of(tbl: Table, keys: Sequence[str], column: str | None = None) -> float:
    """Feasible hypervolume of the configurations ``keys`` (mean ``val_acc``, or seed ``column``'s)."""
    from odnas.select import front, hypervolume, objective_matrix

    fr = front([tbl.score_row(k, column) for k in dict.fromkeys(keys)], tbl.profile)
    return hypervolume(objective_matrix(fr, tbl.profile.objective_metrics), reference_point(tbl.profile)) if fr else 0.0


def exhaustive_hypervolume(tbl: Table, column: str | None = None) -> float:
    return hypervolume_of(tbl, list(tbl.entries), column)


def hv_curve(tbl: Table, trained: Sequence[str], trials: int) -> list[float]:
    """Hypervolume after 1..``trials`` trainings; a run that ended early keeps its last value."""
    out, seen, hv = [], [], 0.0
    for n in range(trials):
        if n < len(trained):
            if trained[n] not in seen:
                seen.append(trained[n])
                hv = hypervolume_of(tbl, seen)
        out.append(hv)
    return out


def trials_to_reach(curve: Sequence[float], target: float, rtol: float = 1e-9) -> float:
    """Trainings needed until the curve reaches ``target`` (``inf`` if it never does)."""
    for n, hv in enumerate(curve, start=1):
        if hv >= target * (1 - rtol):
            return float(n)
    return math.inf


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles (linear interpolation), minimum and maximum. ``inf`` (never
    reached) is allowed: a quantile that falls between a value and ``inf`` is ``inf``."""
    v = sorted(float(x) for x in values)
    if not v:
        return {}

    def q(p: float) -> float:
        pos = p * (len(v) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        if lo == hi:
            return v[lo]
        if math.isinf(v[lo]) or math.isinf(v[hi]):
            return math.inf
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    return {"min": v[0], "q25": q(0.25), "median": q(0.5), "q75": q(0.75), "max": v[-1]}


# ------------------------------------------------------------------ proposers


def raw_costs(rec: Mapping[str, Any]) -> dict[str, Any]:
    """Cost metrics as odnas's ``CostMetric`` reports them: (mean, sem); counts are exact,
    a timing without a recorded SEM is unknown (NaN)."""
    from odnas.profiles import COST_METRICS

    out = {}
    for m in COST_METRICS:
        default = float("nan") if m.startswith("latency") else 0.0
        out[m] = (float(rec["metrics"][m]), float(rec.get("sem", {}).get(m, default)))
    return out


#: Acquisition-optimizer settings that Ax's optimizers for all-discrete spaces refuse.
DISCRETE_REFUSED = ("options",)


def discrete_safe(gs):
    """odnas's generation strategy with the optimizer settings dropped that Ax's
    ``optimize_acqf_discrete`` refuses: on a search space of choices only, Ax scores every
    configuration instead of running the gradient optimizer those settings tune, and
    ``odnas.loop.config.generation_strategy('bo', ...)`` as is stops at its first BO candidate
    with "UnsupportedError: `optimizer='optimize_acqf_discrete'` does not support the
    `options` argument"."""
    for node in gs.nodes_by_name.values():
        for spec in node.generator_specs:
            mgo = spec.generator_gen_kwargs.get("model_gen_options")
            if mgo and "optimizer_kwargs" in mgo:
                kw = {k: v for k, v in mgo["optimizer_kwargs"].items() if k not in DISCRETE_REFUSED}
                spec.generator_gen_kwargs = {**spec.generator_gen_kwargs,
                                             "model_gen_options": {**mgo, "optimizer_kwargs": kw}}
    return gs


class AxProposer:
    """An ``ax.api.Client`` set up as ``odnas.loop.driver.create_run`` does, over the grid."""

    def __init__(self, tbl: Table, method: str, seed: int, trials: int) -> None:
        from ax.api.client import Client

        from odnas.loop.adapter import ax_parameters
        from odnas.loop.config import ax_bounds, generation_strategy
        from odnas.spaces.base import Choice

        self.client = Client(random_seed=seed)
        self.client.configure_experiment(
            parameters=ax_parameters([Choice(n, tuple(v), ordered=True) for n, v in tbl.grid.items()]),
            name=f"replay-{tbl.name}", description=f"tabular replay of {tbl.name}")
        self.client.configure_optimization(tbl.profile.objective, outcome_constraints=ax_bounds(tbl.profile) or None)
        self.client.set_generation_strategy(discrete_safe(generation_strategy(method, seed, None, trials)))

    def ask(self) -> tuple[Any, dict[str, Any]]:
        (idx, params), = self.client.get_next_trials(max_trials=1).items()
        return idx, dict(params)

    def tell(self, handle: Any, costs: Mapping[str, Any], val_acc: float | None, over_budget: bool) -> None:
        raw = raw_costs(costs)
        if over_budget:  # as TrialRunner + ValAccMetric: completed with its costs only
            self.client.complete_trial(handle, raw_data=raw)
        elif val_acc is None:  # a training that failed (non-finite loss)
            self.client.mark_trial_failed(handle)
        else:
            self.client.complete_trial(handle, raw_data={**raw, "val_acc": float(val_acc)})


class OptunaProposer:
    """Optuna's NSGA-II or multi-objective TPE over the grid as categorical parameters.

    Bounds become constraints (``Trial.set_constraint``), relative so that no unit
    dominates (``x / limit - 1`` for ``<=``, ``1 - x / limit`` for ``>=``; feasible when
    <= 0). A candidate over a budget is told its latency and a placeholder ``val_acc`` of
    0 (Optuna needs a value; it is never trained), with the ``val_acc`` constraint at 0.
    """

    def __init__(self, tbl: Table, method: str, seed: int, trials: int) -> None:
        import optuna

        from odnas.profiles import METRIC_SIGN, parse_bound

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.tbl = tbl
        self.objectives = tbl.profile.objective_metrics
        self.bounds = [(b, *parse_bound(b)) for b in list(tbl.profile.thresholds) + tbl.profile.budget_constraints()]
        if method == "nsga2":
            sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=NSGA2_POPULATION)
        else:
            sampler = optuna.samplers.TPESampler(seed=seed)
        self.study = optuna.create_study(
            directions=["maximize" if METRIC_SIGN[o] > 0 else "minimize" for o in self.objectives], sampler=sampler)

    def ask(self) -> tuple[Any, dict[str, Any]]:
        t = self.study.ask()
        return t, {n: t.suggest_categorical(n, list(v)) for n, v in self.tbl.grid.items()}

    def tell(self, handle: Any, costs: Mapping[str, Any], val_acc: float | None, over_budget: bool) -> None:
        import optuna

        if val_acc is None and not over_budget:
            self.study.tell(handle, state=optuna.trial.TrialState.FAIL)
            return
        m = {**costs["metrics"], "val_acc": val_acc}
        for name, metric, op, limit in self.bounds:
            x = m.get(metric)
            handle.set_constraint(name, 0.0 if x is None else
                                  float(x) / limit - 1.0 if op == "<=" else 1.0 - float(x) / limit)
        self.study.tell(handle, [0.0 if (o == "val_acc" and val_acc is None) else float(m[o])
                                 for o in self.objectives])


def make_proposer(tbl: Table, method: str, seed: int, trials: int):
    if method in ("bo", "sobol", "random"):
        return AxProposer(tbl, method, seed, trials)
    if method in ("nsga2", "tpe"):
        return OptunaProposer(tbl, method, seed, trials)
    raise ReplayError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


# ------------------------------------------------------------------ one replay


def replay(tbl: Table, method: str, seed: int, trials: int = 48, max_candidates: int | None = None,
           log=None) -> dict[str, Any]:
    """One search on the table: the candidates in order, which were trained, and times."""
    cap = max_candidates or 4 * trials
    column = tbl.column(seed)
    t0 = time.perf_counter()
    prop = make_proposer(tbl, method, seed, trials)
    cands: list[dict[str, Any]] = []
    trained: list[str] = []
    ended = "trials"
    gen_s = 0.0
    while len(trained) < trials:
        if len(cands) >= cap:
            ended = "max_candidates"
            break
        g = time.perf_counter()
        try:
            handle, params = prop.ask()
        except Exception as e:  # e.g. Ax cannot find a new point in a small, used-up grid
            ended = f"generation stopped: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            break
        dt = time.perf_counter() - g
        gen_s += dt
        key = tbl.key(params)
        costs = tbl.costs(params)
        over = tbl.profile.over_budget(costs["metrics"])
        acc = None if over else tbl.val_acc(params, column)
        prop.tell(handle, costs, acc, bool(over))
        cands.append({"key": key, "over_budget": over, "val_acc": acc, "gen_s": round(dt, 3)})
        if not over and acc is not None:
            trained.append(key)
        if log and len(cands) % 10 == 0:
            log(f"  {method} seed {seed}: {len(cands)} candidates, {len(trained)} trained, "
                f"{gen_s / len(cands):.2f} s/candidate")
    return {"method": method, "seed": seed, "column": column, "trials": trials, "max_candidates": cap,
            "latency_budget": tbl.profile.budgets["latency_ms"], "trained": trained, "candidates": cands,
            "ended": ended, "gen_s": round(gen_s, 2), "wall_s": round(time.perf_counter() - t0, 2)}


# ------------------------------------------------------------------ the benchmark


def summarize(tbl: Table, runs: Sequence[Mapping[str, Any]], trials: int,
              checkpoints: Sequence[int] = CHECKPOINTS) -> dict[str, Any]:
    """Per method: HV and its share of the exhaustive front's at the checkpoints, and
    trainings needed to reach Sobol's median hypervolume at the last checkpoint."""
    full = exhaustive_hypervolume(tbl)
    full_seen = {c: exhaustive_hypervolume(tbl, c) for c in tbl.seeds}
    curves: dict[str, list[list[float]]] = {}
    for r in runs:
        curves.setdefault(r["method"], []).append(hv_curve(tbl, r["trained"], trials))
    last = checkpoints[-1]
    target = float(np.median([c[last - 1] for c in curves["sobol"]])) if "sobol" in curves else None
    out: dict[str, Any] = {"exhaustive_hv": full, "target_hv": target, "target": f"median Sobol HV at {last}",
                           "methods": {}}
    for method, cs in curves.items():
        mr = [r for r in runs if r["method"] == method]
        s: dict[str, Any] = {"seeds": len(cs), "hv": {}, "fraction": {}}
        for n in checkpoints:
            s["hv"][str(n)] = spread([c[n - 1] for c in cs])
            s["fraction"][str(n)] = spread([c[n - 1] / full for c in cs])
        if target is not None:
            s["trials_to_target"] = spread([trials_to_reach(c, target) for c in cs])
            s["reached_target"] = sum(trials_to_reach(c, target) <= trials for c in cs)
        # Scored on the seed the method saw, against that seed's exhaustive front: how much
        # of the gap to the mean-scored front is seed noise rather than search.
        s["fraction_observed"] = {str(n): spread([
            hypervolume_of(tbl, r["trained"][:n], r["column"]) / full_seen[r["column"]]
            for r in mr]) for n in checkpoints}
        s["candidates"] = spread([len(r["candidates"]) for r in mr])
        s["over_budget"] = spread([sum(bool(c["over_budget"]) for c in r["candidates"]) for r in mr])
        s["distinct_trained"] = spread([len(set(r["trained"])) for r in mr])
        s["gen_s_per_candidate"] = spread([r["gen_s"] / max(1, len(r["candidates"])) for r in mr])
        s["wall_s"] = round(sum(r["wall_s"] for r in mr), 1)
        s["ended_early"] = [f"seed {r['seed']}: {r['ended']}" for r in mr if r["ended"] != "trials"]
        s["curves"] = cs
        out["methods"][method] = s
    return out


def _trials(x: float) -> str:
    return f">{CHECKPOINTS[-1]}" if math.isinf(x) else f"{x:g}"


def markdown(tbl: Table, summ: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """The results as a markdown section (tables and the verdict against the goals)."""
    ms = summ["methods"]
    last = str(CHECKPOINTS[-1])
    lines = [f"### Tabular replay: {tbl.name}", "",
             f"{len(tbl.entries)} configurations ({len(tbl.archs)} architectures) of `{tbl.space}` on "
             f"{tbl.meta['data']} ({tbl.meta.get('n_train')} train / {tbl.meta.get('n_val')} val), "
             f"profile {tbl.profile.name} with latency budget {info['latency_budget']:g} ms "
             f"({info['feasible_share']:.0%} of the table feasible); bounds {', '.join(info['bounds'])}. "
             f"Trials = trainings; a candidate over a budget is free (at most {info['max_candidates']} candidates). "
             f"HV in val_acc x ms above the reference point (0.85, budget); exhaustive front HV "
             f"{summ['exhaustive_hv']:.4g}"
             + (f"; target = {summ['target']} = {summ['target_hv']:.4g} "
                f"({summ['target_hv'] / summ['exhaustive_hv']:.1%} of the exhaustive front's)."
                if summ["target_hv"] is not None else "."),
             "",
             "Hypervolume as a share of the exhaustive front's, median [IQR] (min-max); trainings to reach "
             "the target, median [IQR]; and, last, the share at the last checkpoint scored on the seed the "
             "method observed against that seed's exhaustive front (the part of the gap that is seed noise):", ""]
    head = ["method", "seeds", *(f"HV share @{n}" for n in CHECKPOINTS), "trials to target", "reached",
            f"HV share @{last}, seen seed"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in ms.items():
        cells = [f"`{m}`", str(s["seeds"])]
        for n in CHECKPOINTS:
            f = s["fraction"][str(n)]
            cells.append(f"{f['median']:.1%} [{f['q25']:.1%}, {f['q75']:.1%}] ({f['min']:.0%}-{f['max']:.0%})")
        t = s.get("trials_to_target")
        cells.append(f"{_trials(t['median'])} [{_trials(t['q25'])}, {_trials(t['q75'])}]" if t else "-")
        cells.append(f"{s.get('reached_target', '-')}/{s['seeds']}")
        fo = s["fraction_observed"][last]
        cells.append(f"{fo['median']:.1%} [{fo['q25']:.1%}, {fo['q75']:.1%}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Absolute HV (median [IQR]) and what the searches cost:", ""]
    head = ["method", *(f"HV @{n}" for n in CHECKPOINTS), "candidates", "over budget", "distinct trained",
            "s / candidate", "wall s (all seeds)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in ms.items():
        cells = [f"`{m}`"]
        for n in CHECKPOINTS:
            h = s["hv"][str(n)]
            cells.append(f"{h['median']:.4g} [{h['q25']:.4g}, {h['q75']:.4g}]")
        cells += [f"{s['candidates']['median']:g}", f"{s['over_budget']['median']:g}",
                  f"{s['distinct_trained']['median']:g}", f"{s['gen_s_per_candidate']['median']:.2f}",
                  f"{s['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    early = []
    for m, s in ms.items():
        reasons: dict[str, int] = {}
        for e in s["ended_early"]:
            why = e.split(": ", 1)[1].split(". ")[0][:160]
            reasons[why] = reasons.get(why, 0) + 1
        early += [f"`{m}` {n}/{s['seeds']} seeds ({why})" for why, n in reasons.items()]
    if early:
        lines += [f"Runs that ended before {last} trainings, their HV carried forward: " + "; ".join(early) + ".", ""]
    if "bo" in ms and summ["target_hv"] is not None:
        bo = ms["bo"]
        t = bo["trials_to_target"]["median"]
        f48 = bo["fraction"][last]["median"]
        g1 = "met" if t <= 24 else (f"missed: {_trials(t)} trainings, {t - 24:g} more than 24" if math.isfinite(t)
                                     else f"missed: median run does not reach it within {last}")
        g2 = "met" if f48 >= 0.95 else f"missed by {0.95 - f48:.1%} (median {f48:.1%})"
        lines.append(f"Verdict (odnas `bo`, median over {bo['seeds']} seeds): reach Sobol's {last}-trial HV in "
                     f"<= 24 trials: **{g1}**; >= 95% of the exhaustive front's HV at {last} trials: **{g2}**.")
    return "\n".join(lines)


def run_benchmark(tbl: Table, methods: Sequence[str], seeds: Mapping[str, int], trials: int,
                  out_dir: Path, max_candidates: int | None = None, log=print) -> tuple[dict[str, Any], str]:
    """Replay every (method, seed) not yet in ``replay_NAME.jsonl``; write ``replay_NAME.json``."""
    log_path = out_dir / f"replay_{tbl.name}.jsonl"
    budget = tbl.profile.budgets["latency_ms"]
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r["trials"] == trials and r["latency_budget"] == budget and \
                    r["max_candidates"] == (max_candidates or 4 * trials):
                done[(r["method"], r["seed"])] = r
    for method in methods:
        for seed in range(seeds[method]):
            if (method, seed) in done:
                continue
            log(f"{tbl.name}: {method} seed {seed} ...")
            with _quiet():
                r = replay(tbl, method, seed, trials, max_candidates, log)
            with log_path.open("a") as f:
                f.write(json.dumps(r, sort_keys=True) + "\n")
            done[(method, seed)] = r
            log(f"{tbl.name}: {method} seed {seed}: {len(r['trained'])} trained, {len(r['candidates'])} candidates, "
                f"{r['wall_s']:.1f} s, ended: {r['ended']}")
    runs = [done[(m, s)] for m in methods for s in range(seeds[m])]
    summ = summarize(tbl, runs, trials)
    info = {"latency_budget": budget, "feasible_share": tbl.feasible_share(),
            "bounds": list(tbl.profile.thresholds) + tbl.profile.budget_constraints(),
            "max_candidates": max_candidates or 4 * trials}
    md = markdown(tbl, summ, info)
    from odnas.cost.latency import cpu_model

    result = {"table": tbl.name, "table_meta": {k: tbl.meta.get(k) for k in ("grid", "fixed", "seeds", "runs")},
              "command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "host": socket.gethostname(), "cpu_model": cpu_model(), "trials": trials, "seeds": dict(seeds),
              **info, "observation": "val_acc of seed column seeds[replay_seed % n_seeds]",
              "score": "feasible HV with mean val_acc over seeds", "summary": summ, "markdown": md}
    out = out_dir / f"replay_{tbl.name}.json"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(_finite(result), indent=1, sort_keys=True))
    os.replace(tmp, out)
    return result, md


def _finite(obj: Any) -> Any:
    """JSON has no infinity: ``inf`` (never reached) is written as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class _quiet:
    """Keep Ax's and BoTorch's INFO lines and warnings (one per over-budget trial) off stderr."""

    def __enter__(self):
        from odnas.loop.adapter import import_ax

        import_ax()
        names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in ("ax", "botorch", "optuna")]
        self.levels = {n: logging.getLogger(n).level for n in {"ax", "botorch", "optuna", *names}}
        for n in self.levels:
            logging.getLogger(n).setLevel(logging.ERROR)
        self.w = warnings.catch_warnings()
        self.w.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        self.w.__exit__(*exc)
        for n, lv in self.levels.items():
            logging.getLogger(n).setLevel(lv)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", help="table name (mlp_mnist) or path to its .json")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, default=10, help="replay seeds per method")
    ap.add_argument("--bo-seeds", type=int, default=None, help="replay seeds for bo (default: --seeds)")
    ap.add_argument("--trials", type=int, default=CHECKPOINTS[-1], help="trainings per replay")
    ap.add_argument("--max-candidates", type=int, default=None, help="default 4 x trials, as odnas")
    ap.add_argument("--latency-budget", type=float, default=None,
                    help=f"ms; default: smallest that lets {FEASIBLE_SHARE:.0%} of the table through")
    ap.add_argument("--out-dir", default=str(HERE))
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        methods = [m.strip() for m in a.methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise ReplayError(f"--methods: unknown {', '.join(bad)}; choose from {', '.join(METHODS)}")
        if a.trials < CHECKPOINTS[-1]:
            raise ReplayError(f"--trials must be at least {CHECKPOINTS[-1]} (the last checkpoint)")
        path = Path(a.table) if a.table.endswith(".json") else HERE / f"{a.table}.json"
        tbl = load_table(path, a.latency_budget)
        seeds = {m: (a.bo_seeds if m == "bo" and a.bo_seeds is not None else a.seeds) for m in methods}
        log(f"{tbl.name}: latency budget {tbl.profile.budgets['latency_ms']:g} ms, "
            f"{tbl.feasible_share():.0%} of {len(tbl.entries)} configurations feasible")
        _, md = run_benchmark(tbl, methods, seeds, a.trials, Path(a.out_dir), a.max_candidates, log)
    except ValueError as e:
        print(f"replay: {e}", file=sys.stderr)
        return 2
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
