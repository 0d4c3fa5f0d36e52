"""Warm workers against fresh jobs, in one run: job start-up and a small search's wall time.

    python benchmarks/workers.py                        # the search below, fresh, warm, warm+lookahead
    python benchmarks/workers.py --repeats 2 --trials 8 --parallel 2 --modes fresh,warm

Each repeat runs the same search once per mode through the Python API (the equivalent
of ``odnas search --profile cpu-mobile --space mlp --fixed epochs=1 --trials 8 --parallel 2``):
``fresh`` (a TorchX job per trial), ``warm`` (a TorchX worker per slot forks a child per
trial) and ``lookahead`` (warm, plus one trial queued per worker: the next candidate is
generated while the slots train), rotating which goes first. Per
trained trial, from its trial dir: start-up is launch (``launch.json``) to the first
training step (``first_step_at`` in ``result.json``); fit is Lightning's fit time.
The first trial of each warm slot pays the worker's own start-up; its median over all
trials is reported, and the start-up of trials served by an already running worker
separately. A trial queued behind another (lookahead) counts from when that one ended. Prints a markdown
table (host CPU, date and command at the top).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from odnas.cost.latency import cpu_model  # noqa: E402




def measure(run_dir: Path, wall: float) -> dict:
    from odnas.rundir import read_settings

    settings = read_settings(run_dir)
    startup, fit, warm_startup = [], [], []
    # when each worker was ready (a worker replaced in its slot is no longer on file: not counted)
    ready_at = {r["token"]: r.get("ready") for r in
                (json.loads(p.read_text()) for p in (run_dir / "workers").glob("*/worker.json"))}
    trials = []
    for res_path in sorted((run_dir / "trials").glob("*/result.json")):
        tdir = res_path.parent
        res = json.loads(res_path.read_text())
        if res.get("first_step_at") is None:
            continue
        trials.append({"first": res["first_step_at"], "fit": res["train_time_s"], "done": res_path.stat().st_mtime,
                       "launched": json.loads((tdir / "launch.json").read_text())["time"],
                       "worker": json.loads((tdir / "job.json").read_text()).get("worker")})
    for t in trials:
        launched = t["launched"]
        if t["worker"] is not None:
            # A trial queued behind another (lookahead) could not start before that one ended.
            token = t["worker"]["token"]
            before = [u["done"] for u in trials
                      if u["worker"] is not None and u["worker"]["token"] == token and u["first"] < t["first"]]
            launched = max([launched, *before])
        s = t["first"] - launched
        startup.append(s)
        fit.append(t["fit"])
        if t["worker"] is not None and (ready_at.get(t["worker"]["token"]) or float("inf")) < launched:
            warm_startup.append(s)  # served by a worker already up when the trial could start
    slot_s = settings.parallel * wall
    stats = [json.loads(x) for x in (run_dir / "driver-stats.jsonl").read_text().splitlines() if x.strip()]
    driver = {k: sum(st["seconds"].get(k, 0.0) for st in stats) for k in ("generation", "cost_lane")}
    return {"driver": driver, "wall_s": wall, "trained": len(startup), "startup": startup, "warm_startup": warm_startup,
            "fit": fit, "outside": 1 - sum(fit) / slot_s if slot_s else float("nan")}


MODES = {"fresh": ("fresh", 0), "warm": ("warm", 0), "lookahead": ("warm", 1)}


def run_one(mode: str, args, root: Path, rep: int) -> dict:
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import search

    run_dir = root / f"{mode}-{rep}"
    cfg = SearchConfig(profile=args.profile, space="mlp", fixed={"epochs": 1}, trials=args.trials,
                       parallel=args.parallel, run_dir=str(run_dir), seed=args.seed + rep,
                       workers=MODES[mode][0], lookahead=MODES[mode][1],
                       data=args.data, data_dir=args.data_dir)
    t0 = time.perf_counter()
    search(cfg)
    wall = time.perf_counter() - t0
    out = measure(run_dir, wall)
    print(f"workers: {mode} repeat {rep}: wall {wall:.1f} s, {out['trained']} trained, start-up median "
          f"{statistics.median(out['startup']):.2f} s", file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--profile", default="cpu-mobile")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="keep the run dirs here")
    ap.add_argument("--modes", default="fresh,warm,lookahead", help=f"from {', '.join(MODES)}")
    a = ap.parse_args()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="odnas-workers-"))
    root.mkdir(parents=True, exist_ok=True)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if "fresh" not in modes or any(m not in MODES for m in modes):
        ap.error(f"--modes: include fresh (the baseline); choose from {', '.join(MODES)}")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    try:
        for rep in range(a.repeats):
            for mode in modes[rep % len(modes):] + modes[:rep % len(modes)]:
                results[mode].append(run_one(mode, a, root, rep))
    finally:
        if a.keep:
            (root / "results.json").write_text(json.dumps(results, indent=1))
        else:
            shutil.rmtree(root, ignore_errors=True)

    def med(mode: str, key: str) -> float:
        vals = [v for r in results[mode] for v in r[key]]
        return statistics.median(vals) if vals else float("nan")

    def walls(mode: str) -> str:
        return ", ".join(f"{r['wall_s']:.1f}" for r in results[mode])

    cmd = " ".join(["python", "benchmarks/workers.py", *sys.argv[1:]])
    print(f"Host CPU: {cpu_model()} ({__import__('os').cpu_count()} cores)  ")
    print(f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ")
    print(f"Command: `{cmd}`  ")
    print(f"Search: `odnas search --profile {a.profile} --space mlp --fixed epochs=1 --trials {a.trials} "
          f"--parallel {a.parallel} --data {a.data}` through the Python API, modes {', '.join(modes)}, "
          f"{a.repeats} repeat(s), rotating order\n")
    others = [m for m in modes if m != "fresh"]
    print("| | fresh | " + " | ".join(others) + " | " + " | ".join(f"{m} / fresh" for m in others) + " |")
    print("|---|---:|" + "---:|" * (2 * len(others)))

    def row(name: str, values: dict[str, float], fmt: str, ratio: bool = True, extra: dict | None = None) -> None:
        cells = [format(values[m], fmt) + (f" [{extra[m]}]" if extra else "") for m in modes]
        ratios = [format(values[m] / values["fresh"], ".2f") if ratio and values["fresh"] else "" for m in others]
        print(f"| {name} | " + " | ".join(cells + ratios) + " |")

    row("job start-up, median over trials (s)", {m: med(m, "startup") for m in modes}, ".2f")
    row("job start-up on a running worker, median (s)",
        {m: med(m, "warm_startup" if m != "fresh" else "startup") for m in modes}, ".2f")
    row("fit, median (s)", {m: med(m, "fit") for m in modes}, ".2f")
    row("search wall, median (s) [each run]", {m: statistics.median(r["wall_s"] for r in results[m]) for m in modes},
        ".1f", extra={m: walls(m) for m in modes})
    for key, name in (("generation", "driver in Ax generation"),
                      ("cost_lane", "driver in the cost lane (incl. lock waits)")):
        row(f"{name}, median (s)", {m: statistics.median(r["driver"][key] for r in results[m]) for m in modes},
            ".1f", ratio=False)
    row("slot time outside training, median", {m: statistics.median(r["outside"] for r in results[m])
                                               for m in modes}, ".0%", ratio=False)
    row("trials trained (all repeats)", {m: sum(r["trained"] for r in results[m]) for m in modes}, "d", ratio=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
