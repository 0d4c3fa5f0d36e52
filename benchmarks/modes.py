"""Speed modes that do not cancel: what a search's latency figures are made of.

    python benchmarks/modes.py --run-dir runs/bench/modes [--trials 24]

Runs the tutorial-problem example (``examples/tutorial_mnist_mlp.py``: MLPs of 13-25 us
on MNIST's 28x28 inputs, 2 trainings at a time) with every timing round's candidate and
reference burst medians logged, then reads each measurement both ways from the same
bursts:

- *fast rounds* (odnas now, on a host with speed modes): rounds whose reference burst
  is within ``FAST_BAND`` of the measurement's fastest reference bursts and whose
  candidate burst is within ``FAST_BAND`` of its median in such rounds, the session
  ratio over those (``odnas_device.protocol.fast_ratios``);
- *every round* (odnas before): the session ratio over all rounds of the same sessions.

It prints how much a slow mode slowed the reference and the candidate, what that did
to the ratio, the two readings' difference, the sessions timed, and then
``benchmarks/retest.py --run`` (the search's figures against ``odnas rescore`` in a
fresh process, later).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Run in the search's own process (``--search``): log every burst of every measurement.
HOOK = """
import json, runpy, sys
from odnas_device import protocol as P
log, real_rounds, real_burst = open(sys.argv.pop(1), "a"), P.rounds, P.burst

def rounds(open_candidate, reference, **kw):
    bursts = []
    def burst(run, n, clock):
        b = real_burst(run, n, clock)
        bursts.append(b.median_ms)
        return b
    P.burst = burst
    try:
        out = real_rounds(open_candidate, reference, **kw)
    finally:
        P.burst = real_burst
    log.write(json.dumps({"bursts": bursts, "rounds": kw["rounds"], "modes": kw.get("modes"),
                          "ratio": out.ratio, "fast_only": out.fast_only}) + "\\n")
    log.flush()
    return out

P.rounds = rounds
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def pairs_of(rec: dict) -> list[np.ndarray]:
    """Per session, its rounds' (candidate, reference) burst medians (rounds alternate
    which goes first, as ``odnas_device.protocol.rounds`` times them)."""
    b, R = rec["bursts"], rec["rounds"]
    pairs = [(b[k], b[k + 1]) if (k // 2 % R) % 2 == 0 else (b[k + 1], b[k]) for k in range(0, len(b), 2)]
    return [np.asarray(pairs[s * R:(s + 1) * R]) for s in range(len(pairs) // R)]


def analyze(rounds_log: Path, baseline_ms: float, want: int) -> str:
    """``want``: the profile's ``protocol.sessions``."""
    from odnas_device import protocol as P

    recs = [json.loads(x) for x in rounds_log.read_text().splitlines() if x.strip()]
    ref_slow, cand_slow, ratio_gap, diffs, shares, sessions, fast_only = [], [], [], [], [], [], 0
    for rec in recs:
        timed = pairs_of(rec)
        allp = np.concatenate(timed)
        ref_fast = allp[:, 1] <= np.percentile(allp[:, 1], 5) * P.FAST_BAND
        fast = ref_fast & (allp[:, 0] <= np.median(allp[ref_fast, 0]) * P.FAST_BAND)
        slow = ~ref_fast
        shares.append(float(fast.mean()))
        sessions.append(len(timed))
        fast_only += bool(rec.get("fast_only"))
        if fast.sum() >= 3 and slow.sum() >= 3:
            ref_slow.append(np.median(allp[slow, 1]) / np.median(allp[fast, 1]))
            cand_slow.append(np.median(allp[slow, 0]) / np.median(allp[fast, 0]))
            ratio_gap.append(np.median(allp[slow, 0] / allp[slow, 1]) / np.median(allp[fast, 0] / allp[fast, 1]) - 1)
        every = P.summarize(P.session_ratios(timed), allp[:, 0], [1.0], 0).ratio
        # A log of the code before (every round counted) is read as the code now would read it.
        fast = P.fast_ratios(timed)
        counted = rec["ratio"] if "fast_only" in rec else P.summarize(
            fast if 2 * len(fast) >= want else P.session_ratios(timed), allp[:, 0], [1.0], 0).ratio
        diffs.append(counted / every - 1)
    d = np.abs(diffs)
    lines = [
        f"{len(recs)} measurements; host baseline {baseline_ms:.4f} ms; fast rounds per measurement: median "
        f"{statistics.median(shares):.0%} (min {min(shares):.0%}); figures from fast rounds alone: {fast_only} of "
        f"{len(recs)}.", "",
        f"In the {len(ref_slow)} measurements with both fast and slow rounds, a slow mode slowed the reference "
        f"{statistics.median(ref_slow):.2f}x (range {min(ref_slow):.2f}-{max(ref_slow):.2f}) and the candidate "
        f"{statistics.median(cand_slow):.2f}x ({min(cand_slow):.2f}-{max(cand_slow):.2f}); a slow round's ratio "
        f"read {statistics.median(ratio_gap):+.1%} against a fast round's (range {min(ratio_gap):+.1%} to "
        f"{max(ratio_gap):+.1%})." if ref_slow else "No measurement had both fast and slow rounds.", "",
        ("The figure the search recorded (fast rounds) against every round of the same sessions (as before): "
         if all("fast_only" in r for r in recs) else "A log of the code before: its bursts read from fast rounds "
         "(as odnas reads them now, from the sessions it timed) against every round (the figure it recorded): ") +
        f"median |diff| {np.median(d):.1%}, max {d.max():.1%}; {int(np.sum(d > 0.03))} of {len(d)} differ by more "
        "than 3%.", "",
        f"Sessions timed per measurement: median {statistics.median(sessions):.0f}, "
        f"{sum(s >= 3 * want for s in sessions)} at the limit of {3 * want}.",
    ]
    if not all("fast_only" in r for r in recs):
        # Where the code before ran to the limit: where counting fast rounds would have stopped.
        stops = []
        for rec in recs:
            timed = pairs_of(rec)
            if len(timed) >= 3 * want:
                stops.append(next((n for n in range(want, len(timed) + 1)
                                   if P.enough(P.fast_ratios(timed[:n]), want)), None))
        lines.append(f"Read from fast rounds, those at the limit would have stopped after: "
                     f"{', '.join('not within it' if n is None else f'{n} sessions' for n in stops) or 'none'}.")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default="runs/bench/modes")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--analyze", metavar="ROUNDS_JSONL", help="only read a rounds log an earlier run left")
    a = ap.parse_args()
    if a.analyze:
        from odnas.cost.latency import OrtLatencyBackend
        from odnas.profiles import load_profile

        prof = load_profile("cpu-mobile")
        print(analyze(Path(a.analyze), OrtLatencyBackend().baseline(prof, (1, 28, 28)).ms, prof.protocol.sessions))
        return 0
    run_dir = Path(a.run_dir)
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists; give another --run-dir")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    rounds_log = run_dir.parent / f"{run_dir.name}-rounds.jsonl"
    rounds_log.unlink(missing_ok=True)
    log(f"modes: tutorial example, {a.trials} candidates, into {run_dir}")
    subprocess.run([sys.executable, "-c", HOOK, str(rounds_log), str(ROOT / "examples" / "tutorial_mnist_mlp.py"),
                    "--trials", str(a.trials), "--seed", str(a.seed), "--run-dir", str(run_dir)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    from odnas.cost.latency import OrtLatencyBackend, cpu_model
    from odnas.profiles import load_profile

    prof = load_profile("cpu-mobile")
    base = OrtLatencyBackend().baseline(prof, (1, 28, 28))
    from benchmarks.retest import check_run

    print(f"Host: {cpu_model()}, {os.cpu_count()} cores; speed modes in its calibration: "
          f"{'yes' if base.modes.present else 'no'} (reference bursts p90/p10 {base.modes.spread:.2f}, "
          f"{base.modes.fast_share:.0%} in the fast band).\n")
    print(analyze(rounds_log, base.ms, prof.protocol.sessions))
    print()
    print(check_run(str(run_dir), "cpu-mobile"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
