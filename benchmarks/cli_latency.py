"""How long the reading commands and a bad input take in a fresh process, as a user
runs them: ``odnas select --no-confirm`` and ``odnas status`` on a finished run, reading
the driver's ``trials.json`` against loading the stored experiment with Ax (status alone,
both ways, is ``benchmarks/status.py``); and ``odnas search`` with a profile that
does not exist, against another checkout of odnas (``--against``, e.g. a git worktree
of an older commit).

    python benchmarks/cli_latency.py RUN_DIR [--repeats 5] [--against OLD_CHECKOUT]

Two copies of the finished run dir are made (file times kept): one as the driver left
it, one without ``trials.json``. Every command is timed in turn, ``--repeats`` times
each, interleaved, and prints the medians and their ratios as markdown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(args: list[str], checkout: Path = ROOT) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "odnas", *args], cwd=checkout, capture_output=True, text=True,
                          env=env)
    return time.perf_counter() - t0, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--against", type=Path, help="another odnas checkout, for the bad input's time")
    a = ap.parse_args()
    if not (a.run_dir / "trials.json").is_file():
        sys.exit(f"{a.run_dir} has no trials.json: run a search with this version of odnas first")
    tmp = Path(tempfile.mkdtemp(prefix="odnas-cli-"))
    fast, slow = tmp / "fast", tmp / "slow"
    shutil.copytree(a.run_dir, fast)
    shutil.copytree(a.run_dir, slow)
    (slow / "trials.json").unlink()
    cases: dict[str, tuple[list[str], Path]] = {}
    for verb, args in (("select --no-confirm", ["select", "{}", "--no-confirm"]), ("status", ["status", "{}"])):
        for how, d in (("trials.json", fast), ("experiment (Ax)", slow)):
            cases[f"`odnas {verb}`, {how}"] = ([x.format(d) for x in args], ROOT)
    cases["`odnas search --profile nope` (this checkout)"] = (["search", "--profile", "nope",
                                                             "--run-dir", str(tmp / "r")], ROOT)
    if a.against:
        cases[f"`odnas search --profile nope` ({a.against.name})"] = (["search", "--profile", "nope",
                                                                     "--run-dir", str(tmp / "r")], a.against)
    times: dict[str, list[float]] = {k: [] for k in cases}
    codes: dict[str, set[int]] = {k: set() for k in cases}
    for _ in range(a.repeats):
        for k, (args, checkout) in cases.items():
            s, code = timed(args, checkout)
            times[k].append(s)
            codes[k].add(code)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("| command | exit code | median s | min - max s |")
    print("| --- | --- | --- | --- |")
    for k in cases:
        print(f"| {k} | {', '.join(map(str, sorted(codes[k])))} | {med[k]:.2f} | "
              f"{min(times[k]):.2f} - {max(times[k]):.2f} |")
    for verb in ("select --no-confirm", "status"):
        print(f"\n`odnas {verb}`: trials.json against the experiment, "
              f"**{med[f'`odnas {verb}`, trials.json'] / med[f'`odnas {verb}`, experiment (Ax)']:.2f}x** the time")
    if a.against:
        new, old = (med[f"`odnas search --profile nope` ({n})"] for n in ("this checkout", a.against.name))
        print(f"\nA bad profile: **{new / old:.2f}x** the time of {a.against.name}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
