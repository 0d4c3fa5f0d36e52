"""Load test: a long search through odnas's real loop, with trials that cost milliseconds.

The driver is the real one: ``create_run`` + ``run_loop`` (Ax Orchestrator, 'bo'
generation strategy, SQLite storage, TrialRunner, ValAccMetric, the cost lane).
Only the training job is replaced: ``odnas.testing.InProcessJobs`` runs each
trial's job inside the driver and writes ``result.json`` with a deterministic
synthetic ``val_acc`` (no TorchX job, no training; ``--train`` trains for real,
in-process). The cost lane is real (ONNX export + ONNX Runtime under the profile)
unless ``--fake-latency``.

Per trial it records the driver's RSS and the size of experiment.sqlite (with its
WAL) when the trial's job ends, and, per candidate (each ``GenerationStrategy.gen``
call, made by ``odnas.loop.ahead.Ahead``), its wall and CPU time (the driver's and the
forked child's that made it) beside Ax's own ``fit_time``/``gen_time`` on each
generator run.
``benchmarks/saasbo.py`` uses the same driver.
At the end a fresh process loads the run read-only (``odnas.loop.store.load_run``) and
checks every trial is there. Markdown on stdout, logs on stderr, raw data in
``benchmarks/results/load.json``.

    python benchmarks/load.py --trials 200 --parallel 4
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


_TERM = sys.stderr


def log(msg: str) -> None:
    print(f"[load] {msg}", file=_TERM, flush=True)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    try:
        fn = ctypes.CDLL(None).mallinfo2  # glibc 2.33 and later
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [], _MallInfo2
    return fn


MALLINFO2 = _mallinfo2()


def _sqlite_memory_used():
    """SQLite's own count of the heap bytes it holds (page caches, schemas, statements)
    over every connection in the process, or None where libsqlite3 cannot be loaded."""
    try:
        fn = ctypes.CDLL("libsqlite3.so.0").sqlite3_memory_used
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [], ctypes.c_int64
    return fn


SQLITE_MEMORY_USED = _sqlite_memory_used()


def proc_status() -> dict[str, float]:
    """This process's resident memory now and at its peak, in MB (from /proc); on glibc
    also what malloc holds over all its arenas: in use (``malloc_used_mb``, small blocks
    and mmapped ones) and free (``malloc_free_mb``: free chunks, including pages
    ``malloc_trim`` has handed back, so only partly resident). Growth in use is memory
    something still refers to; growth in free is fragmentation. Where libsqlite3 loads,
    ``sqlite_used_mb`` is the part of malloc's in-use bytes SQLite holds."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0]) / 1024
    res = {"rss_mb": round(out["VmRSS"], 1), "peak_rss_mb": round(out["VmHWM"], 1)}
    if MALLINFO2 is not None:
        m = MALLINFO2()
        res["malloc_used_mb"] = round((m.uordblks + m.hblkhd) / 2**20, 1)
        res["malloc_free_mb"] = round(m.fordblks / 2**20, 1)
    if SQLITE_MEMORY_USED is not None:
        res["sqlite_used_mb"] = round(SQLITE_MEMORY_USED() / 2**20, 2)
    return res


def db_bytes(run_dir: Path) -> dict[str, int]:
    from odnas.rundir import DB_NAME

    sizes = {}
    for suffix in ("", "-wal"):
        p = run_dir / (DB_NAME + suffix)
        sizes["db" + suffix.replace("-", "_")] = p.stat().st_size if p.exists() else 0
    return sizes


@contextmanager
def timed_generation(calls: list[dict]):
    """Time every candidate the driver's ``Ahead`` makes while active (a pass-through
    wrapper of ``Ahead._gen``, which every ``GenerationStrategy.gen`` call of the
    Orchestrator goes through: the loop inside ``run_loop`` is not touched otherwise).
    CPU time is this process's plus, where the candidate is made in a forked child
    (``odnas.loop.ahead``), the child's; the memory release after a candidate is left
    out of both."""
    from odnas.loop.ahead import Ahead

    real = Ahead._gen

    def gen(self, **kwargs):
        experiment = kwargs["experiment"]
        first = len(experiment.trials)
        done = sum(1 for t in experiment.trials.values() if t.status.is_completed)
        t0, c0, k0, r0 = time.perf_counter(), time.process_time(), self.child_cpu_s, self.collect_s

        def took() -> dict:
            released = self.collect_s - r0
            return {"wall_s": time.perf_counter() - t0 - released,
                    "cpu_s": time.process_time() - c0 + self.child_cpu_s - k0 - released}

        rec = {"first_trial": first, "completed": done, "asked": kwargs.get("num_trials", 1),
               "in_child": self.in_child}
        try:
            out = real(self, **kwargs)
        except Exception as e:  # Ax's "not now" signals (e.g. more data required) are calls too
            calls.append({**rec, "made": 0, **took(), "error": type(e).__name__})
            raise
        # CPU time beside wall time: the host is shared, and CPU seconds are what the
        # driver itself spends (torch runs one thread, so they are not inflated by threads).
        calls.append({**rec, "made": len(out), **took(), "child_peak_mb": self.child_peak_mb})
        return out

    Ahead._gen = gen
    try:
        yield calls
    finally:
        Ahead._gen = real


# ---------------------------------------------------------------- child: the driver


def fixed_params(items: list[str] | None) -> dict:
    """``["epochs=1"]`` -> ``{"epochs": 1}`` (values read as JSON, as ``odnas search --fixed`` does)."""
    out = {}
    for item in items or ():
        k, _, v = item.partition("=")
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v.strip()
    return out


def drive(a) -> None:
    global _TERM
    # run_loop sends fd 2 to the run's log while it runs; keep a copy for progress lines.
    _TERM = os.fdopen(os.dup(2), "w")
    import torch

    torch.set_num_threads(1)
    if a.candidates is not None:
        import odnas.loop.ahead as where

        where.IN_CHILD = a.candidates == "child"
    from odnas.errors import SearchError
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run, run_loop
    from odnas.testing import FakeLatencyBackend, InProcessJobs

    run_dir = Path(a.run_dir)
    cfg = SearchConfig(profile=a.profile, space=a.space, trials=a.trials, max_candidates=a.trials,
                       parallel=a.parallel, run_dir=str(run_dir), seed=a.seed, method=a.method,
                       init_trials=a.init_trials, threads=1, fixed=fixed_params(a.fix),
                       constraints=tuple(a.constraint or ()), scheduler=InProcessJobs.SCHEDULER)
    t0 = time.perf_counter()
    per_trial: list[dict] = []

    def after(index: int, job_s: float) -> None:
        rec = {"trial": index, "t_s": round(time.perf_counter() - t0, 3), "job_s": round(job_s, 4),
               **proc_status(), **db_bytes(run_dir)}
        per_trial.append(rec)
        if index % 10 == 0 or index < 5:
            log(f"trial {index}: {rec['t_s']:.0f} s, rss {rec['rss_mb']:.0f} MB, "
                f"db {(rec['db'] + rec['db_wal']) / 1e6:.2f} MB")

    # What the driver keeps between candidates: RSS right after each model candidate and
    # the release that follows it (odnas.loop.ahead calls release_memory by this name).
    import odnas.loop.ahead as ahead_module

    released: list[dict] = []
    release = ahead_module.release_memory

    def release_and_read() -> None:
        release()
        released.append({"trials_done": len(per_trial), **proc_status()})

    ahead_module.release_memory = release_and_read
    calls: list[dict] = []
    jobs = InProcessJobs(train=a.train, after=after)
    run_dir = create_run(cfg, schedulers=jobs.schedulers())
    backend = FakeLatencyBackend() if a.fake_latency else None
    error = None
    with timed_generation(calls):
        try:
            run_loop(run_dir, cost_backend=backend, quiet=True, schedulers=jobs.schedulers())
        except SearchError as e:  # e.g. no candidate fitted the budgets: the trials are stored all the same
            error = str(e)
            log(f"search ended with: {e}")
    wall = time.perf_counter() - t0
    if jobs.launched != len(per_trial):
        raise SystemExit("in-process jobs were not used for every trial")
    out = {"wall_s": round(wall, 1), "jobs": jobs.launched, "failed_jobs": jobs.failed, "search_error": error,
           "per_trial": per_trial, "gen_calls": calls, "released": released,
           "final": {**proc_status(), **db_bytes(run_dir)}}
    Path(a.out).write_text(json.dumps(out))
    log(f"driver done: {jobs.launched} jobs in {wall:.0f} s")


# ---------------------------------------------------------------- child: the read-only check


def check(a) -> None:
    t0 = time.perf_counter()
    from odnas.loop.store import load_run
    from odnas.select import pick

    run = load_run(a.run_dir)
    load_s = time.perf_counter() - t0
    profile, typed = run.profile, run.rows
    rows = [r.to_dict() for r in typed]
    trials = []
    for idx, t in sorted(run.experiment.trials.items()):
        gr = t.generator_runs[0]
        trials.append({"trial": idx, "node": gr._generation_node_name, "fit_time": gr.fit_time,
                       "gen_time": gr.gen_time})
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    complete = [r for r in rows if r["state"] == "completed" and "val_acc" in r["metrics"]
                and "latency_ms" in r["metrics"]]
    best = pick(typed, profile)
    print(json.dumps({"load_run_s": round(load_s, 2), "rows": len(rows), "states": states,
                      "best_feasible": best and {"trial": best.trial, **{
                          k: best.metrics.get(k) for k in ("val_acc", "latency_ms", "num_params")}},
                      "with_val_acc_and_latency": len(complete), "trials": trials,
                      "indices_contiguous": [r["trial"] for r in rows] == list(range(len(rows)))}))


# ---------------------------------------------------------------- analysis


def fit_power(n: np.ndarray, y: np.ndarray) -> float:
    """Exponent ``p`` of ``y = c * n^p`` by least squares in log-log."""
    ok = (n > 0) & (y > 0)
    return float(np.polyfit(np.log(n[ok]), np.log(y[ok]), 1)[0]) if ok.sum() >= 3 else float("nan")


def fit_poly(n: np.ndarray, y: np.ndarray, deg: int) -> tuple[list[float], float]:
    """Polynomial fit (highest power first) and its R^2."""
    coef = np.polyfit(n, y, deg)
    resid = y - np.polyval(coef, n)
    tot = float(((y - y.mean()) ** 2).sum())
    return [float(c) for c in coef], (1 - float(resid @ resid) / tot) if tot > 0 else float("nan")


PARTS = ("wall", "cpu", "fit", "gen", "other", "fit_cpu", "gen_cpu", "other_cpu")


def cycles_of(drv: dict, chk: dict) -> list[dict]:
    """BO generation grouped by Orchestrator cycle: the calls made at the same number of
    completed trials n share one model fit (Ax refits when new data arrive)."""
    by_trial = {t["trial"]: t for t in chk["trials"]}
    out: dict[int, dict] = {}
    for c in drv["gen_calls"]:
        grs = [by_trial[i] for i in range(c["first_trial"], c["first_trial"] + c["made"]) if i in by_trial]
        if not grs or grs[0]["node"] != "MBM":
            continue
        cy = out.setdefault(c["completed"], {"n": c["completed"], "made": 0, **{k: 0.0 for k in PARTS}})
        fit, gen = sum(g["fit_time"] or 0.0 for g in grs), sum(g["gen_time"] or 0.0 for g in grs)
        # Ax times fit and gen in wall seconds; on a shared host, scale them by the call's
        # CPU/wall ratio to estimate the CPU seconds each took (other processes' load
        # changes during a long run and would otherwise show up as growth).
        share = c["cpu_s"] / c["wall_s"] if c["wall_s"] > 0 else 1.0
        cy["made"] += c["made"]
        cy["wall"] += c["wall_s"]
        cy["cpu"] += c["cpu_s"]
        cy["fit"] += fit
        cy["gen"] += gen
        cy["fit_cpu"] += fit * share
        cy["gen_cpu"] += gen * share
    for cy in out.values():
        cy["other"] = cy["wall"] - cy["fit"] - cy["gen"]
        cy["other_cpu"] = cy["cpu"] - cy["fit_cpu"] - cy["gen_cpu"]
    return [out[k] for k in sorted(out)]


def analyse(drv: dict, chk: dict, trials: int) -> dict:
    cyc = cycles_of(drv, chk)
    res: dict = {"bo_cycles": len(cyc), "bo_candidates": sum(c["made"] for c in cyc),
                 "gen_calls_without_candidate": sum(1 for c in drv["gen_calls"] if not c["made"])}
    if len(cyc) >= 4:
        n = np.array([c["n"] for c in cyc], float)
        # Per candidate: the cycle's sums over the candidates it made.
        y = {k: np.array([c[k] / c["made"] for c in cyc]) for k in PARTS}
        res["power"] = {k: fit_power(n, y[k]) for k in PARTS}
        res["linear"] = {k: fit_poly(n, y[k], 1) for k in PARTS}
        res["cubic_r2"] = {k: fit_poly(n, y[k], 3)[1] for k in ("cpu", "fit_cpu")}
        q = -(-len(cyc) // 4)
        res["quarters"] = [{"n": f"{int(n[i])}-{int(n[min(i + q, len(n)) - 1])}", "cycles": len(n[i:i + q]),
                            **{k: float(np.median(y[k][i:i + q])) for k in PARTS}}
                           for i in range(0, len(cyc), q)]
        res["share_fit_gen"] = float(sum(c["fit"] + c["gen"] for c in cyc) / sum(c["wall"] for c in cyc))
        res["share_fit"] = float(sum(c["fit"] for c in cyc) / sum(c["wall"] for c in cyc))
        res["cpu_over_wall"] = float(sum(c["cpu"] for c in cyc) / sum(c["wall"] for c in cyc))
    pt = drv["per_trial"]
    # Seconds per trial by quarter of the run, all included (generation, cost lane, polls, saves).
    t = np.array([r["t_s"] for r in pt])
    q = max(1, len(t) // 4)
    res["trial_s_quarters"] = [float((t[min(i + q, len(t)) - 1] - (t[i - 1] if i else t[0]))
                                     / max(1, min(i + q, len(t)) - max(i, 1))) for i in range(0, len(t), q)][:4]
    rss = {r["trial"]: r["rss_mb"] for r in pt}
    res["rss_at"] = {k: rss[k - 1] for k in (1, 20, 100, 200) if k - 1 in rss}
    warm = [r for r in pt if r["trial"] >= min(50, trials // 4)]
    if len(warm) >= 4:
        slope, _ = np.polyfit([r["trial"] for r in warm], [r["rss_mb"] for r in warm], 1)
        res["rss_slope_mb_per_100"] = float(slope * 100)
        res["rss_warm_from"] = warm[0]["trial"]
    kept = [r for r in drv.get("released", []) if r["trials_done"] >= min(50, trials // 4)]
    if len(kept) >= 4:
        slope, _ = np.polyfit([r["trials_done"] for r in kept], [r["rss_mb"] for r in kept], 1)
        res["kept_slope_mb_per_100"] = float(slope * 100)
        res["kept_at"] = (kept[0]["trials_done"], kept[0]["rss_mb"], kept[-1]["trials_done"], kept[-1]["rss_mb"])
        res["kept_n"] = len(kept)
        for key in ("malloc_used_mb", "malloc_free_mb", "sqlite_used_mb"):
            if all(key in r for r in kept):
                slope, _ = np.polyfit([r["trials_done"] for r in kept], [r[key] for r in kept], 1)
                res[f"kept_{key}_slope_per_100"] = float(slope * 100)
                res[f"kept_{key}_at"] = (kept[0][key], kept[-1][key])
    size = {r["trial"]: r["db"] + r["db_wal"] for r in pt}
    res["db_at"] = {k: size[k - 1] for k in (1, 20, 100, 200) if k - 1 in size}
    return res


def markdown(args: dict, drv: dict, chk: dict, res: dict, total_s: float) -> str:
    a = argparse.Namespace(**{"train": False, "fix": None, "constraint": None, **args})
    L = []
    lane = "FakeLatencyBackend" if a.fake_latency else f"real ONNX Runtime under `{a.profile}`"
    fixed = ", ".join(a.fix or []) or "none"
    bounds = f"; bounds: {', '.join(a.constraint)}" if a.constraint else ""
    L.append(f"## Load test: {a.trials} trials, `{a.method}`, space `{a.space}` (fixed: {fixed}), "
             f"parallel {a.parallel}" + (f", candidates made in the {a.candidates}" if a.candidates else "") + "\n")
    L.append(f"Driver: `create_run` + `run_loop` unchanged (Ax Orchestrator, SQLite, TrialRunner, ValAccMetric, "
             f"cost lane); jobs: `odnas.testing.InProcessJobs` ("
             f"{'real training in the driver' if a.train else 'synthetic val_acc, no training'}, no TorchX job); "
             f"cost lane: {lane}{bounds}. One torch thread. Driver wall {drv['wall_s']:.0f} s, benchmark total "
             f"{total_s:.0f} s, {drv['jobs']} jobs.\n")
    ok = chk["rows"] == a.trials and chk["with_val_acc_and_latency"] == a.trials and chk["indices_contiguous"]
    L.append(f"**Storage** (fresh process, `load_run`, read-only): {chk['rows']} trials, states {chk['states']}, "
             f"{chk['with_val_acc_and_latency']} with val_acc and latency_ms; `load_run` took "
             f"{chk['load_run_s']:.1f} s (imports included). {'All trials there.' if ok else 'MISSING TRIALS.'}\n")
    if "quarters" in res:
        L.append(f"**Generation**: {res['bo_candidates']} BO candidates in {res['bo_cycles']} Orchestrator cycles "
                 "(the Orchestrator asks `GenerationStrategy.gen` for one candidate at a time; the calls of a cycle "
                 "share one model fit). Seconds per BO candidate, median over the cycles in each quarter of the run. "
                 "wall/cpu: around `gen` (cpu = the driver's CPU time and the forked child's that made the "
                 "candidate); fit/gen: Ax's own `fit_time`/`gen_time` "
                 "(wall) on the generator runs; other = wall - fit - gen; fit/gen cpu: Ax's times scaled by the "
                 "call's CPU/wall ratio, an estimate of their CPU seconds.\n")
        L.append("| completed trials n | cycles | wall | Ax fit_time | Ax gen_time | other | cpu | fit cpu | "
                 "gen cpu |")
        L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for q in res["quarters"]:
            L.append(f"| {q['n']} | {q['cycles']} | {q['wall']:.2f} | {q['fit']:.2f} | {q['gen']:.2f} "
                     f"| {q['other']:.3f} | {q['cpu']:.2f} | {q['fit_cpu']:.2f} | {q['gen_cpu']:.2f} |")
        L.append("")
        L.append("| per candidate | exponent p of `c n^p` | linear slope, s per 100 trials | linear R^2 |")
        L.append("| --- | --- | --- | --- |")
        for k in PARTS:
            L.append(f"| {k} | {res['power'][k]:.2f} | {100 * res['linear'][k][0][0]:+.3f} "
                     f"| {res['linear'][k][1]:.2f} |")
        L.append(f"\nCubic polynomial fits in n (R^2): cpu {res['cubic_r2']['cpu']:.2f}, fit cpu "
                 f"{res['cubic_r2']['fit_cpu']:.2f} (linear: {res['linear']['cpu'][1]:.2f}, "
                 f"{res['linear']['fit_cpu'][1]:.2f}). "
                 f"Ax's fit_time is {res['share_fit']:.0%} and fit + gen {res['share_fit_gen']:.0%} of the wall "
                 f"time of BO generation; CPU/wall {res['cpu_over_wall']:.2f} (the host is shared).\n")
    L.append("**Seconds per trial, everything included** (generation, cost lane, polls, saves), by quarter: "
             + ", ".join(f"{x:.1f}" for x in res["trial_s_quarters"]) + ".\n")
    L.append("**Memory and storage size** (driver VmRSS when a trial's job ends; experiment.sqlite + its WAL):\n")
    L.append("| after trial | RSS MB | sqlite + WAL MB |")
    L.append("| --- | --- | --- |")
    for k in res["rss_at"]:
        L.append(f"| {k} | {res['rss_at'][k]:.0f} | {res['db_at'][k] / 1e6:.2f} |")
    if "rss_slope_mb_per_100" in res:
        L.append(f"\nRSS slope from trial {res['rss_warm_from']} on: {res['rss_slope_mb_per_100']:+.1f} MB per "
                 f"100 trials; peak RSS {drv['final']['peak_rss_mb']:.0f} MB. Final sqlite "
                 f"{drv['final']['db'] / 1e6:.2f} MB + WAL {drv['final']['db_wal'] / 1e6:.2f} MB.\n")
    if "kept_slope_mb_per_100" in res:
        n0, r0, n1, r1 = res["kept_at"]
        child_peak = max((c.get("child_peak_mb", 0.0) for c in drv["gen_calls"]), default=0.0)
        L.append(f"What the driver keeps between candidates (VmRSS right after each of the {res['kept_n']} model "
                 f"candidates from trial {n0} on, and the memory release that follows it): {r0:.0f} MB at "
                 f"{n0} trials done, {r1:.0f} MB at {n1}; slope {res['kept_slope_mb_per_100']:+.1f} MB per 100 "
                 "trials. "
                 + (f"Candidates were made in forked child processes, so neither reading holds a candidate's "
                    f"working set (the largest child peaked at {child_peak:.0f} MB RSS, shared pages included)."
                    if child_peak else "The reading when a job ends usually falls while the next candidate is "
                    "being made, so it also holds that candidate's working set.")
                 + (f" Of that, what glibc's malloc holds in use (all arenas) grew "
                    f"{res['kept_malloc_used_mb_slope_per_100']:+.1f} MB per 100 trials and what it holds free "
                    f"{res['kept_malloc_free_mb_slope_per_100']:+.1f} (free bytes include pages handed back "
                    "by malloc_trim, so only part of them is resident)."
                    if "kept_malloc_used_mb_slope_per_100" in res else "")
                 + (f" SQLite's own heap (`sqlite3_memory_used`, every connection) grew "
                    f"{res['kept_sqlite_used_mb_slope_per_100']:+.2f} MB per 100 trials, from "
                    "{:.2f} to {:.2f} MB.".format(*res["kept_sqlite_used_mb_at"])
                    if "kept_sqlite_used_mb_slope_per_100" in res else "") + "\n")
    L.append("**Verdict**: " + verdict(a, res, ok))
    return "\n".join(L)


def verdict(a, res: dict, ok: bool) -> str:
    stored = f"holds all {a.trials} trials, readable in a fresh process" if ok else "LOST TRIALS"
    parts = [f"storage {stored}"]
    if "linear" in res:
        sl = {k: 100 * res["linear"][k][0][0] for k in PARTS}
        first, last = res["quarters"][0], res["quarters"][-1]
        if sl["cpu"] > 0:
            # Least-squares slopes add up: cpu = fit + gen + other, so their slopes split its growth.
            # CPU, not wall: the other processes on a shared host come and go during a run.
            parts.append(f"generation per candidate grows from {first['cpu']:.2f} to {last['cpu']:.2f} CPU s "
                         f"({first['wall']:.2f} -> {last['wall']:.2f} s wall; CPU ~n^{res['power']['cpu']:.2f}, "
                         f"linear slope {sl['cpu']:+.2f} s per 100 trials, R^2 {res['linear']['cpu'][1]:.2f}); "
                         f"model fitting explains {sl['fit_cpu'] / sl['cpu']:.0%} of that slope, acquisition "
                         f"optimisation (Ax gen_time) {sl['gen_cpu'] / sl['cpu']:.0%} and the rest "
                         f"{sl['other_cpu'] / sl['cpu']:.0%}: the growth is not model fitting")
            if sl["fit_cpu"] / sl["cpu"] > 0.5:
                parts[-1] = parts[-1].replace(": the growth is not model fitting", ": mostly model fitting")
        else:
            parts.append(f"generation per candidate does not grow ({first['cpu']:.2f} -> {last['cpu']:.2f} CPU s)")
    if "rss_slope_mb_per_100" in res:
        s = res["rss_slope_mb_per_100"]
        parts.append(f"driver memory {'is flat' if abs(s) < 5 else 'grows'} after warm-up ({s:+.1f} MB per 100 "
                     "trials when a job ends" + (f", {res['kept_slope_mb_per_100']:+.1f} kept between candidates"
                                                if "kept_slope_mb_per_100" in res else "") + ")")
    return "; ".join(parts) + "."


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--space", default="mlp")
    ap.add_argument("--profile", default="cpu-mobile")
    ap.add_argument("--method", default="bo")
    ap.add_argument("--candidates", choices=["child", "driver"], default=None,
                    help="where the driver makes candidates: in a forked child (odnas's default on Linux) or in "
                         "its own process (the default elsewhere); for side-by-side comparisons")
    ap.add_argument("--init-trials", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fixed", "--fix", dest="fix", action="append", metavar="NAME=VALUE",
                    help="hold a parameter constant (repeatable), as `odnas search --fixed`")
    ap.add_argument("--constraint", action="append", metavar="BOUND",
                    help="a bound replacing the profile's, as `odnas search --constraint` (repeatable)")
    ap.add_argument("--fake-latency", action="store_true", help="FakeLatencyBackend instead of ONNX Runtime")
    ap.add_argument("--train", action="store_true",
                    help="train each model for real (odnas.trial in-process) instead of a synthetic val_acc")
    ap.add_argument("--run-dir", default=None, help="default: a fresh temporary folder")
    ap.add_argument("--json", default=str(RESULTS / "load.json"), help="raw per-trial data")
    ap.add_argument("--report", metavar="JSON", help="print the report of an earlier run's raw data and exit")
    ap.add_argument("--role", choices=("main", "drive", "check"), default="main", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role == "drive":
        return drive(a)
    if a.role == "check":
        return check(a)
    if a.report:
        d = json.loads(Path(a.report).read_text())
        res = analyse(d["driver"], d["check"], d["args"]["trials"])
        print(markdown(d["args"], d["driver"], d["check"], res, d["total_s"]))
        return
    t0 = time.perf_counter()
    run_dir = Path(a.run_dir or tempfile.mkdtemp(prefix="odnas-load-")) / "run"
    child = [sys.executable, __file__, "--trials", str(a.trials), "--parallel", str(a.parallel), "--space",
             a.space, "--profile", a.profile, "--method", a.method, "--seed", str(a.seed), "--run-dir", str(run_dir)]
    if a.init_trials is not None:
        child += ["--init-trials", str(a.init_trials)]
    if a.fake_latency:
        child.append("--fake-latency")
    if a.candidates is not None:
        child += ["--candidates", a.candidates]
    if a.train:
        child.append("--train")
    for f in a.fix or ():
        child += ["--fixed", f]
    for c in a.constraint or ():
        child += ["--constraint", c]
    raw = run_dir.parent / "driver.json"
    # One thread for torch and for JAX (SAASBO's NUTS sampler runs on JAX/XLA).
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    log(f"driver: {run_dir}")
    # The driver's own stdout (Ax or odnas notes) goes to stderr: stdout is the report's.
    subprocess.run(child + ["--role", "drive", "--out", str(raw)], check=True, stdout=sys.stderr, env=env)
    drv = json.loads(raw.read_text())
    log("read-only check in a fresh process")
    chk = json.loads(subprocess.run(child + ["--role", "check"], check=True, capture_output=True, text=True,
                                    env=env).stdout.strip().splitlines()[-1])
    res = analyse(drv, chk, a.trials)
    total = time.perf_counter() - t0
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({
        "args": {k: v for k, v in vars(a).items() if k not in ("role", "out", "report")}, "run_dir": str(run_dir),
        "total_s": round(total, 1), "driver": drv, "check": chk, "analysis": res,
        "host": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}}, indent=1))
    print(markdown(vars(a), drv, chk, res, total))
    log(f"raw data: {a.json}")


if __name__ == "__main__":
    main()
