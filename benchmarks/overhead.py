"""Overhead of a real search: where the wall time goes besides training, how soon the
driver notices a finished trial, and the driver's peak memory.

    python benchmarks/overhead.py                       # runs both searches below, then analyses them
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
    from odnas.rundir import DRIVER_STATS_NAME, read_settings

    settings = read_settings(run_dir)
    sessions = [json.loads(x) for x in (run_dir / DRIVER_STATS_NAME).read_text().splitlines() if x.strip()]
    wall = sum(s["wall_s"] for s in sessions)
    secs: dict[str, float] = {}
    for s in sessions:
        for k, v in s["seconds"].items():
            secs[k] = secs.get(k, 0.0) + v
    exp = load_run(run_dir).experiment
    trials, notice = [], []
    for t in exp.trials.values():
        meta = t.run_metadata or {}
        tdir = Path(meta.get("trial_dir", ""))
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
            "sessions": len(sessions)}


def run_default(run_dir: Path) -> None:
    log(f"overhead: default search into {run_dir}")
    subprocess.run([sys.executable, "-m", "odnas", "search", "--profile", "cpu-mobile", "--run-dir", str(run_dir),
                    "--quiet"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def run_tutorial(run_dir: Path) -> None:
    log(f"overhead: tutorial example into {run_dir}")
    subprocess.run([sys.executable, str(ROOT / "examples" / "tutorial_mnist_mlp.py"), "--run-dir", str(run_dir)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def markdown(results: list[tuple[str, dict]]) -> str:
    out = ["| search | wall s | trained / candidates | training (fit) share of slot time | outside training | "
           "of which job start-up | driver: generation | cost lane | launch | poll + fetch | storage | "
           "notice delay median (max) s | driver peak RSS MB |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results:
        d, slot = r["driver_s"], r["slot_s"]
        share = lambda x: f"{x / slot * 100:.1f}%"  # noqa: E731
        n = r["notice_s"]
        out.append(
            f"| {name} | {r['wall_s']:.0f} | {r['trained']} / {r['candidates']} | "
            f"{(1 - r['outside_training_share']) * 100:.1f}% | **{r['outside_training_share'] * 100:.1f}%** | "
            f"{share(r['job_overhead_s'])} | {d['generation']:.1f} s | {d['cost_lane']:.1f} s | {d['launch']:.1f} s | "
            f"{d['poll'] + d['fetch']:.1f} s | {d['storage']:.1f} s | "
            f"{statistics.median(n):.2f} ({max(n):.2f}) | {r['peak_rss_mb']:.0f} |")
    tut = dict(results).get("tutorial example")
    lines = [
        "*Slot time* is wall time x parallel trainings. *Training share* is the sum of Lightning fit times "
        "over slot time; the rest is *outside training*: job start-up (process, imports, data, trainer set-up: "
        "launch to result minus fit), waiting for the driver (generation, cost lane, launch, polling, storage "
        "run in the driver while slots are empty or full), and idle slots. Driver seconds are totals; they "
        "overlap with training in the other slot. *Notice delay* is Ax marking the trial completed minus the "
        "result file's time.",
        "",
        *out,
        "",
    ]
    for name, r in results:
        lines.append(
            f"Why, {name}: job start-up is {r['job_overhead_s'] / max(r['trained'], 1):.1f} s per training (a fresh "
            f"process importing torch and Lightning, loading data, setting up the trainer) against "
            f"{r['fit_s'] / max(r['trained'], 1):.1f} s of fit; the driver generates a candidate in "
            f"{r['driver_s']['generation'] / max(r['candidates'], 1):.1f} s (BoTorch model fits and acquisition "
            f"optimisation), and a trial that finishes meanwhile is noticed only after it.")
        lines.append("")
    if tut:
        nmax = max(max(r["notice_s"]) for _, r in results)
        lines.append(
            f"Goals: outside training <= 10% of the tutorial example's wall time: **"
            f"{'met' if tut['outside_training_share'] <= 0.10 else 'missed'}** "
            f"({tut['outside_training_share'] * 100:.0f}%); a finished trial noticed within 2 s: **"
            f"{'met' if nmax <= 2.0 else 'missed'}** (max {nmax:.2f} s).")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--analyze", nargs="*", help="existing run dirs (default search first, then tutorial)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-overhead"))
    a = ap.parse_args()
    if a.analyze:
        names = ["default search", "tutorial example"]
        results = [(names[i] if i < 2 else p, analyze(Path(p))) for i, p in enumerate(a.analyze)]
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        d1, d2 = Path(a.out) / f"default-{stamp}", Path(a.out) / f"tutorial-{stamp}"
        run_default(d1)
        run_tutorial(d2)
        results = [("default search", analyze(d1)), ("tutorial example", analyze(d2))]
    for name, r in results:
        log(name, json.dumps({k: v for k, v in r.items() if k != "notice_s"}))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
