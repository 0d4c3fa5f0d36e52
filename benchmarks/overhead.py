"""Overhead of a real search: where the wall time goes besides training, how soon the
driver notices a finished trial, and the driver's peak memory.

    python benchmarks/overhead.py                       # both searches, warm and fresh workers, then analyses them
    python benchmarks/overhead.py --searches tutorial --seeds 0       # one seed of the tutorial only
    python benchmarks/overhead.py --analyze RUN_DIR...  # analyses existing run dirs only

The two searches: the default ``odnas search --profile cpu-mobile`` (mobile-cnn on
digits, 16 trainings, 2 at a time) and the tutorial-problem example
(``examples/tutorial_mnist_mlp.py``: MLP on MNIST t10k, 48 candidates, 2 at a time).

Per trial, from its trial dir and the stored experiment: launched (run metadata), the
job's own start (``job.json``), its training time (``train_time_s``, Lightning's fit),
its result file's time, and when Ax marked it completed. Per driver session, from
``driver-stats.jsonl``: seconds in generation, cost lane, launching, polling, fetching
and storage, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def analyze(run_dir: Path) -> dict:
    from odnas.loop.store import load_run
    from odnas.rundir import DRIVER_STATS_NAME, read_settings, resolve_trial_dir

    settings = read_settings(run_dir)
    sessions = [json.loads(x) for x in (run_dir / DRIVER_STATS_NAME).read_text().splitlines() if x.strip()]
    wall = sum(s["wall_s"] for s in sessions)
    secs: dict[str, float] = {}
    for s in sessions:
        for k, v in s["seconds"].items():
            secs[k] = secs.get(k, 0.0) + v
    run = load_run(run_dir)
    exp = run.experiment
    trials, notice = [], []
    for t in exp.trials.values():
        meta = t.run_metadata or {}
        tdir = resolve_trial_dir(run_dir, meta.get("trial_dir")) or Path("")
        res = tdir / "result.json"
        if meta.get("over_budget") or not res.is_file():
            continue
        r = json.loads(res.read_text())
        job = json.loads((tdir / "job.json").read_text())
        done = res.stat().st_mtime
        noticed = t.time_completed.timestamp() if t.time_completed else None
        trials.append({"trial": t.index, "launched": meta["launched_at"], "start": job["start"], "done": done,
                       "fit_s": r["train_time_s"], "noticed": noticed})
        if noticed:
            notice.append(noticed - done)
    in_flight, pending = in_flight_and_pending(exp, trials, wall)
    parallel = settings.parallel
    slot_s = parallel * wall
    fit = sum(x["fit_s"] for x in trials)
    startup = sum((x["done"] - x["launched"]) - x["fit_s"] for x in trials)  # process start, imports, data, trainer
    lane = secs.get("cost_lane", 0.0)
    driver = {k: secs.get(k, 0.0) for k in ("generation", "cost_lane", "storage", "poll", "fetch")}
    driver["launch"] = secs.get("deploy", 0.0) - lane
    return {"run_dir": str(run_dir), "wall_s": wall, "parallel": parallel, "trained": len(trials),
            "candidates": len(exp.trials), "fit_s": fit, "slot_s": slot_s,
            "outside_training_share": 1 - fit / slot_s, "job_overhead_s": startup,
            "driver_s": driver, "driver_total_s": sum(driver.values()),
            "notice_s": notice, "peak_rss_mb": max(s["peak_rss_mb"] for s in sessions),
            "sessions": len(sessions), "in_flight": in_flight, "pending": pending,
            **({"hypervolume": tutorial_hypervolume(run)} if "num_params" in settings.profile.get(
                "objective", "") else {})}


def in_flight_and_pending(exp, trained: list[dict], wall: float) -> tuple[float, float]:
    """Trainings in flight on average (each trained trial from launch to result, over the
    wall), and the trials still running when each candidate began to be made.

    A candidate is made ahead from the moment the one before it is deployed (its trial
    created), so the trials not yet completed then are its pending points; the first
    candidate, made before anything ran, is left out. Failed trials are not counted."""
    busy = sum(x["done"] - x["launched"] for x in trained)
    ts = sorted(exp.trials.values(), key=lambda t: t.index)
    counts = []
    for prev, t in zip(ts, ts[1:]):
        begun = prev.time_created
        counts.append(sum(1 for u in ts[:t.index] if u.status.name != "FAILED"
                          and (u.time_completed is None or u.time_completed > begun)))
    return busy / wall if wall else 0.0, statistics.mean(counts) if counts else 0.0


def tutorial_hypervolume(run) -> float:
    """The tutorial example's feasible hypervolume (val_acc x num_params above 0.94,
    80000), as ``examples/tutorial_mnist_mlp.py`` prints it, from its loaded run."""
    import numpy as np

    from odnas.select import front, hypervolume, objective_matrix

    fr = front(run.rows, run.profile)
    if not fr:
        return 0.0
    return float(hypervolume(objective_matrix(fr, ["val_acc", "num_params"]), np.array([0.94, -80000.0])))


def run_default(run_dir: Path, workers: str, seed: int) -> dict:
    log(f"overhead: default search ({workers} workers, seed {seed}) into {run_dir}")
    subprocess.run([sys.executable, "-m", "odnas", "search", "--profile", "cpu-mobile", "--run-dir", str(run_dir),
                    "--workers", workers, "--seed", str(seed), "--quiet"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return {}


def run_tutorial(run_dir: Path, workers: str, seed: int) -> dict:
    log(f"overhead: tutorial example ({workers} workers, seed {seed}) into {run_dir}")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "tutorial_mnist_mlp.py"), "--run-dir", str(run_dir),
                          "--workers", workers, "--seed", str(seed)],
                         cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out[out.index("\n{") + 1:])  # the example's summary: wall, front, hypervolume


SEARCHES = {"default": ("default search", run_default), "tutorial": ("tutorial example", run_tutorial)}


def warm_up() -> None:
    """Pay this machine's one-time costs before the first timed run, where they would
    otherwise land in whichever search and mode runs first: BoTorch's fused qLogNEHVI
    kernel (built by torch's cpp_extension on a cache miss: about 35 s here) and the
    latency reference's calibration for each input shape (30 s a host, then cached)."""
    from odnas.cost.latency import OrtLatencyBackend
    from odnas.loop.ahead import load_lazy_kernels
    from odnas.profiles import load_profile

    t0 = time.perf_counter()
    load_lazy_kernels()
    t1 = time.perf_counter()
    profile, backend = load_profile("cpu-mobile"), OrtLatencyBackend()
    for shape in ((1, 8, 8), (1, 28, 28)):  # digits (the default search), MNIST (the tutorial problem)
        backend.baseline(profile, shape)
    log(f"warm-up before timing: BoTorch's kernel {t1 - t0:.1f} s, latency references "
        f"{time.perf_counter() - t1:.1f} s")


def ahead_stats(run_dir: Path) -> dict:
    """What the driver's background generation did (``driver-stats.jsonl``, summed)."""
    from odnas.rundir import DRIVER_STATS_NAME

    total: dict = {}
    for line in (run_dir / DRIVER_STATS_NAME).read_text().splitlines():
        for k, v in (json.loads(line).get("ahead") or {}).items():
            total[k] = total.get(k, 0) + v
    return total


def markdown(results: list[tuple[str, str, int, dict]]) -> str:
    out = ["| search | workers | seed | wall s | trained / candidates | training (fit) share of slot time | "
           "outside training | of which job start-up | driver: generation (waited for) | cost lane | launch | "
           "poll + fetch | storage | notice delay median (max) s | driver peak RSS MB | HV |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, workers, seed, r in results:
        d, slot = r["driver_s"], r["slot_s"]
        share = lambda x: f"{x / slot * 100:.1f}%"  # noqa: E731
        n = r["notice_s"] or [float("nan")]
        waited = r["ahead"].get("blocked_s")
        hv = r.get("hypervolume")
        out.append(
            f"| {name} | {workers} | {seed} | {r['wall_s']:.0f} | {r['trained']} / {r['candidates']} | "
            f"{(1 - r['outside_training_share']) * 100:.1f}% | **{r['outside_training_share'] * 100:.1f}%** | "
            f"{share(r['job_overhead_s'])} | {d['generation']:.1f} s"
            f"{f' ({waited:.1f} s)' if waited is not None else ''} | {d['cost_lane']:.1f} s | {d['launch']:.1f} s | "
            f"{d['poll'] + d['fetch']:.1f} s | {d['storage']:.1f} s | "
            f"{statistics.median(n):.2f} ({max(n):.2f}) | {r['peak_rss_mb']:.0f} | "
            f"{'' if hv is None else f'{hv:.1f}'} |")
    lines = [
        "*Slot time* is wall time x parallel trainings. *Training share* is the sum of Lightning fit times "
        "over slot time; the rest is *outside training*: job start-up (launch to result minus fit: with fresh "
        "jobs a process importing torch and Lightning, loading data, setting up the trainer; with warm workers "
        "a fork and the trainer), waiting for the driver (generation, cost lane, launch, polling, storage), "
        "and idle slots. *Generation* is Ax's fit and gen time over the candidates; in brackets, the part the "
        "driver's thread waited for (the rest was made on the background thread while trials trained). "
        "*Notice delay* is Ax marking the trial completed minus the result file's time. *HV*: the tutorial "
        "example's feasible hypervolume (val_acc x num_params above 0.94, 80000).",
        "",
        *out,
        "",
    ]
    by = {}
    for name, workers, seed, r in results:
        by.setdefault(name, {}).setdefault(workers, []).append(r)
    for name, modes in by.items():
        if {"warm", "fresh"} <= set(modes):
            w, f = modes["warm"], modes["fresh"]
            med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
            line = (f"**{name}**, warm against fresh, medians over {len(w)} and {len(f)} run(s): wall "
                    f"{med(w, 'wall_s'):.0f} s against {med(f, 'wall_s'):.0f} s "
                    f"(**{med(w, 'wall_s') / med(f, 'wall_s'):.2f}x**); "
                    f"outside training {med(w, 'outside_training_share') * 100:.0f}% against "
                    f"{med(f, 'outside_training_share') * 100:.0f}%; job start-up per training "
                    f"{statistics.median(r['job_overhead_s'] / max(r['trained'], 1) for r in w):.1f} s against "
                    f"{statistics.median(r['job_overhead_s'] / max(r['trained'], 1) for r in f):.1f} s")
            if all(r.get("hypervolume") is not None for r in w + f):
                line += (f"; feasible hypervolume {med(w, 'hypervolume'):.1f} against {med(f, 'hypervolume'):.1f} "
                         f"({med(w, 'hypervolume') / med(f, 'hypervolume'):.2f}x)")
            lines += [line + ".", ""]
    lines += [*paired_hypervolume(results), *core_budget(results), ""]
    notices = [x for *_, r in results for x in r["notice_s"]]
    if notices:
        lines.append(f"Notice delay over every trial of every run: median {statistics.median(notices):.2f} s, "
                     f"max {max(notices):.2f} s (goal: at most 2 s).")
    return "\n".join(lines)


def paired_hypervolume(results: list[tuple[str, str, int, dict]]) -> list[str]:
    """Warm against fresh hypervolume over every seed pair given (a pair: the same search
    and seed, run dirs of one benchmark run, whose names end in the same time stamp):
    how often warm is at least fresh, and the Wilcoxon signed-rank test of the
    differences (two-sided; scipy's). Three seeds cannot tell the modes apart when one
    trial above or below val_acc 0.94 moves a run's hypervolume by tens; many pairs can."""
    runs: dict[tuple, dict[str, float]] = {}
    for name, workers, seed, r in results:
        if r.get("hypervolume") is not None:
            stamp = Path(r["run_dir"]).name[-15:]
            runs.setdefault((name, seed, stamp), {})[workers] = r["hypervolume"]
    pairs = [(m["warm"], m["fresh"]) for m in runs.values() if {"warm", "fresh"} <= set(m)]
    if len(pairs) < 4:
        return []
    from scipy.stats import wilcoxon

    diff = [w - f for w, f in pairs]
    p = wilcoxon(diff).pvalue if any(diff) else 1.0
    return [f"Feasible hypervolume over {len(pairs)} seed pairs: warm at least fresh in "
            f"{sum(w >= f for w, f in pairs)}; median {statistics.median(w for w, _ in pairs):.1f} warm against "
            f"{statistics.median(f for _, f in pairs):.1f} fresh; median difference (warm - fresh) "
            f"{statistics.median(diff):+.1f}; Wilcoxon signed-rank p = {p:.2f}.", ""]


def core_budget(results: list[tuple[str, str, int, dict]]) -> list[str]:
    """What one training costs the machine, and the training share that leaves at best.

    Per training: its fit; the CPU of making candidates (the candidate child's own CPU
    time, over every candidate, those over a budget included); the cost lane times the
    slots it holds still while it times; the job's start-up. With each slot on its own
    core, a slot can train at most fit / (all four) of the time, however the work is
    scheduled: candidates and the timing take cores from training. (Start-up is wall
    time: for fresh jobs it includes waiting for a core, so there the bound is loose.)
    The bound again with candidates free (fit / (fit + cost lane + start-up)) says what
    a generator however cheap could reach.
    Then how many trainings were in flight on average (of ``parallel``), and how many
    trials were still running, as pending points, when each candidate began to be made."""
    out = ["| search | workers | seed | fit s / training | candidates' CPU s / training | cost lane x slots held, "
           "s / training | job start-up s / training | training share these allow at best | the same with candidates "
           "free | measured | trainings in flight (mean) | trials running as a candidate is begun (mean) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, workers, seed, r in results:
        n, a = max(r["trained"], 1), r["ahead"]
        if not a.get("in_child"):
            continue  # candidates made in the driver: their CPU is not counted apart
        fit, cand = r["fit_s"] / n, a["child_cpu_s"] / n
        lane, start = r["driver_s"]["cost_lane"] * r["parallel"] / n, r["job_overhead_s"] / n
        best, free = fit / (fit + cand + lane + start), fit / (fit + lane + start)
        out.append(f"| {name} | {workers} | {seed} | {fit:.2f} | {cand:.2f} | {lane:.2f} | {start:.2f} | "
                   f"{best * 100:.0f}% | {free * 100:.0f}% | {(1 - r['outside_training_share']) * 100:.0f}% | "
                   f"{r['in_flight']:.2f} | {r['pending']:.2f} |")
    return out if len(out) > 2 else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--analyze", nargs="*", help="existing run dirs (analysed only, named by their own settings)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-overhead"))
    ap.add_argument("--searches", default="default,tutorial")
    ap.add_argument("--workers", default="warm,fresh", help="modes, run alternately in one run")
    ap.add_argument("--seeds", default="0,1,2", help="the tutorial example's seeds (comma-separated)")
    ap.add_argument("--default-seeds", default="0", help="the default search's seeds")
    a = ap.parse_args()
    results = []
    if a.analyze:
        from odnas.rundir import read_settings

        for p in a.analyze:
            st = read_settings(Path(p))
            name = "tutorial example" if "num_params" in st.profile.get("objective", "") else "default search"
            results.append((name, st.workers, st.seed, {**analyze(Path(p)), "ahead": ahead_stats(Path(p))}))
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        warm_up()
        modes = a.workers.split(",")
        for key in a.searches.split(","):
            name, run = SEARCHES[key]
            seeds = a.seeds if key == "tutorial" else a.default_seeds
            for i, seed in enumerate(int(x) for x in seeds.split(",")):
                # Alternate which mode goes first, so a drift in the host's speed hits both alike.
                for workers in (modes if i % 2 == 0 else modes[::-1]):
                    d = Path(a.out) / f"{key}-{workers}-s{seed}-{stamp}"
                    run(d, workers, seed)
                    r = {**analyze(d), "ahead": ahead_stats(d)}  # its hypervolume is the example's
                    results.append((name, workers, seed, r))
                    log(name, workers, seed, json.dumps({k: v for k, v in r.items() if k != "notice_s"}))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
