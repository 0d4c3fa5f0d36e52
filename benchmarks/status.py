"""How long ``odnas status RUN`` takes in a fresh process, as a user runs it: reading
the driver's ``trials.json`` against loading the stored experiment with Ax.

    python benchmarks/status.py RUN_DIR [--repeats 5]

Two copies of the finished run dir are made (file times kept): one as the driver left
it, one without ``trials.json``, so status loads the experiment. They are timed in
turn, ``--repeats`` times each, and both outputs are checked to hold the same trials.
Prints the medians and their ratio as markdown.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed_status(run_dir: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "odnas", "status", str(run_dir), "--json"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    if not (a.run_dir / "trials.json").is_file():
        sys.exit(f"{a.run_dir} has no trials.json: run a search with this version of odnas first")
    with tempfile.TemporaryDirectory() as tmp:
        table, experiment = Path(tmp) / "table", Path(tmp) / "experiment"
        shutil.copytree(a.run_dir, table)  # copy2: the files' times are kept
        shutil.copytree(a.run_dir, experiment)
        (experiment / "trials.json").unlink()
        times: dict[str, list[float]] = {"table": [], "experiment": []}
        seen: dict[str, dict] = {}
        for _ in range(a.repeats):
            for name, d in (("table", table), ("experiment", experiment)):
                s, out = timed_status(d)
                times[name].append(s)
                seen[name] = out
    same = [(r["trial"], r["state"], r["params"]) for r in seen["table"]["trials"]] == \
           [(r["trial"], r["state"], r["params"]) for r in seen["experiment"]["trials"]]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"`odnas status {a.run_dir} --json` in a fresh process, {a.repeats} times each, in turn "
          f"({len(seen['table']['trials'])} trials):\n")
    print("| reads | median s | min s | max s |\n| --- | --- | --- | --- |")
    for k, label in (("table", "trials.json (the driver's table)"), ("experiment", "the experiment (Ax)")):
        print(f"| {label} | {med[k]:.2f} | {min(times[k]):.2f} | {max(times[k]):.2f} |")
    print(f"\ntrials.json against the experiment: **{med['table'] / med['experiment']:.2f}x** the time; "
          f"same trials, states and parameters: {same}")


if __name__ == "__main__":
    main()
