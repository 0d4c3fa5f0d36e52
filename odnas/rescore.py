"""Measure a run's candidates again, without retraining.

``confirm_front`` re-times the feasible front with a longer protocol, inside a quiet
window (the machine-wide measurement lock held, this run's local jobs paused), before
a pick is named, and flags every candidate whose latency moved across a budget.
``rescore`` measures every trained candidate under another profile and gives that
profile's feasible front: one search, several targets. Costs depend on the
architecture alone, so neither needs the trained weights.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

from odnas.cost.calibrate import profile_calibration
from odnas.cost.lane import CostCache, CostLane, check_builds
from odnas.cost.latency import check_runnable
from odnas.errors import RunDirError
from odnas.loop.store import load_run
from odnas.profiles import HardwareProfile, load_profile, parse_bound
from odnas.records import RunSettings
from odnas.rundir import driver_running, write_json_atomic
from odnas.select import front, meets
from odnas.spaces import check_unchanged, get_space
from odnas.steps import Step, silent

#: The confirming protocol runs this many times longer than the search's.
CONFIRM_FACTOR = 4
LATENCY_KEYS = ("latency_ms", "latency_ms_p90")
#: A trained model whose search latency misses a latency bound given to ``select`` by at
#: most this share is confirmed too: the longer protocol may put it under. (Not the
#: profile's own bounds: ``export`` judges those on the search's figures, and must agree.)
NEAR = 0.05


def _near(bounds: Sequence[str]) -> list[str]:
    """``bounds`` with every latency bound loosened by ``NEAR``."""
    out = []
    for b in bounds:
        metric, op, value = parse_bound(b)
        out.append(f"{metric} <= {value * (1 + NEAR)!r}" if metric in LATENCY_KEYS and op == "<=" else b)
    return out


def long_protocol(profile: HardwareProfile, factor: int = CONFIRM_FACTOR) -> HardwareProfile:
    """The profile with ``factor`` x the timed runs: twice the sessions and twice the
    rounds when ``factor`` is 4 (reference protocol), or ``factor`` x the runs and time
    (at least 1 s) of a plain one."""
    p = profile.protocol
    half = max(1, round(factor ** 0.5))
    longer = dataclasses.replace(
        p, warmup_runs=p.warmup_runs * 2, min_runs=p.min_runs * factor, min_time_s=max(1.0, p.min_time_s * factor),
        max_time_s=max(p.max_time_s * factor, 10.0), sessions=p.sessions * half, rounds=p.rounds * half)
    return dataclasses.replace(profile, protocol=longer)


def _lane(run_dir: Path, settings: RunSettings, profile: HardwareProfile, cache: Path, backend=None) -> CostLane:
    lane = CostLane.for_run(run_dir, settings, backend=backend)
    lane.profile = profile
    lane.built_as, lane.cache = lane.cache, CostCache(cache)
    return lane


def _check_space(run_dir: Path, settings: RunSettings) -> None:
    """The run's candidates are rebuilt to be timed: its space must still build them."""
    space = get_space(settings.space)
    check_unchanged(space, settings)
    check_builds(space, settings, run_dir)


def confirm_front(run_dir: str | Path, extra: Sequence[str] = (), backend=None,
                  factor: int = CONFIRM_FACTOR, progress: Step | None = None) -> dict[str, Any]:
    """Re-time the front under a ``factor`` x longer protocol and select again.

    Front members get their confirmed latencies; a member pushed over a budget (or an
    ``extra`` bound) leaves the front, which may let another feasible model in; that
    one is confirmed too, until the front holds confirmed members only. A model the
    search timed just over a latency bound of ``extra`` (by ``NEAR`` at most) is
    confirmed as well, and joins the front if its confirmed figure is under.
    Returns the confirmed front, the pick, and per confirmed trial the search's and the
    confirmed latency, the bounds it crossed (``crossed``: met before, not now) and
    the ones it came under (``entered``). ``progress(text)`` is told each step.
    """
    step = progress or silent
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    _check_space(run_dir, run.settings)
    profile = run.profile
    lane = _lane(run_dir, run.settings, long_protocol(profile, factor), run_dir / "confirm" / profile.name, backend)
    by_trial = {r.trial: r for r in run.rows}
    confirmed: dict[int, dict[str, Any]] = {}
    bounds = profile.bounds() + list(extra)
    while True:
        rows = list(by_trial.values())
        todo = {r.trial: r for r in front(rows, profile, extra) + front(rows, profile, _near(extra))
                if r.trial not in confirmed}
        if not todo:
            break
        for r in todo.values():
            step(f"timing trial {r.trial} ({len(confirmed) + 1} of the front) with a {factor}x longer protocol")
            rec = lane.costs(r.params)
            new = {k: rec.metrics[k] for k in LATENCY_KEYS if k in rec.metrics}
            old = {k: r.metrics.get(k) for k in new}
            metrics = {**r.metrics, **new}
            timed = [b for b in bounds if b.split()[0] in new]
            confirmed[r.trial] = {
                "trial": r.trial, "arch_id": r.arch_id,
                "search": old, "confirmed": new, "sem": rec.sem.get("latency_ms"),
                "change": (new["latency_ms"] / old["latency_ms"] - 1.0
                           if old.get("latency_ms") and math.isfinite(old["latency_ms"]) else None),
                "crossed": [b for b in timed if meets(r.metrics, [b]) and not meets(metrics, [b])],
                "entered": [b for b in timed if not meets(r.metrics, [b]) and meets(metrics, [b])],
                "runs": rec.latency.get("runs"),
            }
            by_trial[r.trial] = r.replace(metrics=metrics, sem={**r.sem, **rec.sem}, latency_confirmed=True,
                                          search_metrics=old)
    fr = front(list(by_trial.values()), profile, extra)
    return {"front": fr, "pick": fr[0] if fr else None, "confirmed": list(confirmed.values()),
            "profile": profile.name, "protocol": dataclasses.asdict(lane.profile.protocol),
            "driver_running": driver_running(run_dir)}


def rescore(run_dir: str | Path, profile_name: str, backend=None, progress: Step | None = None) -> dict[str, Any]:
    """Every trained candidate of a run measured under ``profile_name`` (no retraining);
    that profile's budgets and thresholds give its feasible front and pick. The result
    is also written to ``RUN_DIR/rescore/PROFILE.json``. ``progress(text)`` is told each step."""
    step = progress or silent
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    _check_space(run_dir, run.settings)
    profile = load_profile(profile_name)
    check_runnable(profile)
    lane = _lane(run_dir, run.settings, profile, run_dir / "rescore" / profile.name / "costs", backend)
    lane.calibration = profile_calibration(profile) if backend is None else None  # this profile's own mapping
    trained = [r for r in run.rows if r.trained and "val_acc" in r.metrics]
    if not trained:
        raise RunDirError(f"{run_dir} has no trained model yet; nothing to rescore")
    out_rows = []
    for i, r in enumerate(trained, 1):
        step(f"{'reading' if lane.cached(r.params) else 'measuring'} trial {r.trial} under {profile.name} "
             f"({i}/{len(trained)})")
        rec = lane.costs(r.params)
        metrics = {**r.metrics, **rec.metrics}
        out_rows.append(r.replace(metrics=metrics, over_budget=profile.over_budget(metrics),
                                  sem={**r.sem, **rec.sem},
                                  search_metrics={k: r.metrics.get(k) for k in rec.metrics}))
    fr = front(out_rows, profile)
    where = f"the device agent at {profile.device.url}" if lane.on_device else "this host"
    rows = [{**r.to_dict(), "misses": [t for t in profile.thresholds if not meets(r.metrics, [t])]} for r in out_rows]
    result = {"profile": profile.to_dict(), "rows": rows, "front": [r.trial for r in fr],
              "pick": fr[0].trial if fr else None, "measured": lane.measured, "timed_on": where}
    write_json_atomic(run_dir / "rescore" / f"{profile.name}.json", result)
    return {**result, "front_rows": fr}
