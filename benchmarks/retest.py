"""Does odnas's latency figure come out the same when measured again in another process?

    python benchmarks/retest.py                                  # 20 candidates, cpu-mobile, both protocols
    python benchmarks/retest.py --models 20 --seed 0 --processes 2
    python benchmarks/retest.py --json
    python benchmarks/retest.py --run RUN_DIR                    # a finished search: its figures measured again

For each protocol, `reference` (odnas's default) and `plain` (the profile with
``protocol.method: plain``: one session, the median of its runs, which is what odnas
did before), it runs ``odnas measure --space mobile-cnn --profile P --random N --seed S
--json`` in K fresh processes, one after another, and compares them pairwise: Spearman,
median and max |difference|, the share of models whose |difference| is within 3
combined standard errors, and seconds per candidate. Then an independent plain
ONNX Runtime loop (1 thread, 50 warm-ups, 0.6 s of runs, median; no odnas code) times
the first models in five fresh processes, and the lowest of its medians is set beside
odnas's figure. It prints the host, whether it shows speed modes (``odnas doctor``'s
calibration), markdown on stdout, logs on stderr.

With ``--run RUN_DIR`` (a finished search) it checks the run instead: every trained
candidate's latency from the search against ``odnas rescore RUN_DIR --profile P`` (a
fresh process, minutes later: Spearman, |difference|, share within 3 combined standard
errors), and the pick exported with ``odnas export`` against the lowest of five
fresh-process medians of the independent plain loop on the exported file.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The independent loop: only onnxruntime and numpy, as a user would time a file.
PLAIN_LOOP = r"""
import sys, time, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
out = []
for path in sys.argv[1:]:
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    feed = {i.name: np.random.default_rng(0).standard_normal([1] + list(i.shape[1:])).astype(np.float32)}
    for _ in range(50):
        s.run(None, feed)
    t, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < 0.6:
        a = time.perf_counter_ns(); s.run(None, feed); t.append((time.perf_counter_ns() - a) / 1e6)
    out.append(float(np.median(t)))
print(" ".join(map(str, out)))
"""


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def measure(profile: str, n: int, seed: int) -> list[dict]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "odnas", "measure", "--space", "mobile-cnn", "--profile", profile,
                          "--random", str(n), "--seed", str(seed), "--json"], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    recs = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    log(f"  {profile}: {len(recs)} candidates in {time.perf_counter() - t0:.0f} s (load {os.getloadavg()[0]:.2f})")
    return recs


def compare(runs: list[list[dict]]) -> dict:
    import numpy as np
    from scipy.stats import spearmanr

    pairs = []
    for a, b in itertools.combinations(runs, 2):
        x = np.array([r["metrics"]["latency_ms"] for r in a])
        y = np.array([r["metrics"]["latency_ms"] for r in b])
        sx = np.array([r["sem"]["latency_ms"] for r in a])
        sy = np.array([r["sem"]["latency_ms"] for r in b])
        d = np.abs(x / y - 1)
        z = np.abs(x - y) / np.hypot(sx, sy)
        pairs.append({"spearman": float(spearmanr(x, y).statistic), "median": float(np.median(d)),
                      "max": float(d.max()), "within3": float(np.mean(z <= 3)), "median_z": float(np.median(z))})
    secs = [r["latency"]["measure_s"] for run in runs for r in run]
    return {"pairs": pairs, "s_per_candidate": statistics.median(secs),
            "median_ms": statistics.median(r["metrics"]["latency_ms"] for r in runs[0])}


def plain_loop(paths: list[str], processes: int = 5) -> list[list[float]]:
    out = []
    for _ in range(processes):
        res = subprocess.run([sys.executable, "-c", PLAIN_LOOP, *paths], capture_output=True, text=True, check=True)
        out.append([float(v) for v in res.stdout.split()])
    return out


def export(params_list: list[dict], folder: Path) -> list[str]:
    import torch

    from odnas.cost.onnx import export_onnx
    from odnas.spaces import get_space

    space = get_space("mobile-cnn")
    paths = []
    for i, p in enumerate(params_list):
        torch.manual_seed(0)
        paths.append(str(export_onnx(space.build(p, (1, 8, 8), 10), (1, 8, 8), folder / f"c{i}.onnx")))
    return paths


def host_modes(profile: str) -> dict:
    from odnas.cost.latency import OrtLatencyBackend
    from odnas.profiles import load_profile

    base = OrtLatencyBackend().baseline(load_profile(profile), (1, 8, 8))
    return {"baseline_ms": base.ms, "calibration_s": base.seconds, **base.modes.__dict__}


def check_run(run_dir: str, profile: str) -> str:
    import numpy as np
    from scipy.stats import spearmanr

    from odnas.loop.store import load_run

    t0 = time.time()
    run = load_run(run_dir)
    trained = {r.trial: r for r in run.rows if r.state == "completed" and "latency_ms" in r.metrics}
    log(f"rescoring {len(trained)} trained candidates of {run_dir} under {profile}")
    res = json.loads(subprocess.run([sys.executable, "-m", "odnas", "rescore", run_dir, "--profile", profile,
                                     "--json"], capture_output=True, text=True, check=True, cwd=ROOT).stdout)
    again = {r["trial"]: r for r in res["rows"]}
    idx = sorted(set(trained) & set(again))
    x = np.array([trained[i].metrics["latency_ms"] for i in idx])
    y = np.array([again[i]["metrics"]["latency_ms"] for i in idx])
    sx = np.array([trained[i].sem.get("latency_ms", np.nan) for i in idx])
    sy = np.array([again[i]["sem"].get("latency_ms", np.nan) for i in idx])
    d, z = np.abs(x / y - 1), np.abs(x - y) / np.hypot(sx, sy)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pick.onnx"
        exported = subprocess.run([sys.executable, "-m", "odnas", "export", run_dir, "-o", str(out)],
                                  capture_output=True, text=True, cwd=ROOT)
        if exported.returncode == 0:
            card = json.loads(out.with_suffix(".json").read_text())
            loop = [p[0] for p in plain_loop([str(out)])]
    if exported.returncode == 0:
        lat = card["metrics"]["latency_ms"]
        pick = (f"The exported pick (trial {card['run']['trial']}): the card says {lat:.4f} ms "
                f"(+- {card['metrics']['latency_ms_sem']:.4f}); the independent plain loop in 5 fresh processes: "
                f"{', '.join(f'{v:.4f}' for v in loop)} ms, lowest {min(loop):.4f}; card / lowest = "
                f"{lat / min(loop):.3f}.")
    else:
        pick = f"No pick to export: `{(exported.stderr.strip().splitlines() or ['(nothing said)'])[-1]}`."
    return "\n".join([
        f"Run `{run_dir}` ({len(run.rows)} candidates, {len(idx)} trained); host {os.uname().nodename}; "
        f"{datetime.date.today()}; these checks took {time.time() - t0:.0f} s.", "",
        f"The search's latency_ms against `odnas rescore RUN --profile {profile}` (a fresh process, later):", "",
        "| trained candidates | Spearman | median \\|diff\\| | max \\|diff\\| | within 3 combined SE |",
        "| --- | --- | --- | --- | --- |",
        f"| {len(idx)} | {spearmanr(x, y).statistic:.3f} | {np.median(d):.1%} | {d.max():.1%} "
        f"| {np.mean(z <= 3):.0%} |",
        "", pick])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu-mobile")
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--plain-models", type=int, default=5, help="models the independent loop times")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--run", help="a finished search's run dir: check it instead (rescore, export)")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if a.run:
        print(check_run(a.run, a.profile))
        return 0
    import yaml

    from odnas.cost.latency import cpu_model
    from odnas.profiles import load_profile

    t0, load0 = time.time(), os.getloadavg()[0]
    prof = load_profile(a.profile)
    modes = host_modes(a.profile)
    log(f"host modes: {modes}")
    with tempfile.TemporaryDirectory() as tmp:
        plain_yaml = Path(tmp) / f"{prof.name}-plain.yaml"
        raw = yaml.safe_load(Path(prof.source).read_text())
        raw["protocol"] = {**raw.get("protocol", {}), "method": "plain", "min_runs": 100, "min_time_s": 0.25,
                           "statistic": "median"}
        raw["name"] = f"{prof.name}-plain"
        plain_yaml.write_text(yaml.safe_dump(raw))
        results, raw_runs = {}, {}
        for label, profile in (("reference (odnas)", a.profile), ("plain (before)", str(plain_yaml))):
            log(f"{label}:")
            runs = [measure(profile, a.models, a.seed) for _ in range(a.processes)]
            raw_runs[label] = runs
            results[label] = compare(runs)
        ref_runs = raw_runs["reference (odnas)"]
        k = min(a.plain_models, a.models)
        paths = export([r["params"] for r in ref_runs[0][:k]], Path(tmp))
        loop = plain_loop(paths)
    lowest = [min(p[i] for p in loop) for i in range(k)]
    ours = [statistics.mean(run[i]["metrics"]["latency_ms"] for run in ref_runs) for i in range(k)]
    if a.json:
        print(json.dumps({"modes": modes, "results": results, "plain_loop": loop, "ours": ours}))
        return 0
    L = [f"Host: {cpu_model()}, {os.cpu_count()} cores; {datetime.date.today()}; load average {load0:.2f} at the "
         f"start; {time.time() - t0:.0f} s in all.",
         f"Speed modes on this host: {'**yes**' if modes['present'] else 'no'} (reference model's burst medians "
         f"p90/p10 {modes['spread']:.2f}, {modes['fast_share']:.0%} of {modes['bursts']} bursts in the fast band, "
         f"{modes['calibration_s']:.0f} s of calibration; baseline {modes['baseline_ms']:.4f} ms).", "",
         f"`odnas measure --space mobile-cnn --profile P --random {a.models} --seed {a.seed} --json` in "
         f"{a.processes} fresh processes, one after another:", "",
         "| protocol | Spearman | median \\|diff\\| | max \\|diff\\| | within 3 SE | median \\|diff\\|/SE "
         "| s per candidate | median latency_ms |",
         "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in results.items():
        for p in r["pairs"]:
            L.append(f"| {label} | {p['spearman']:.3f} | {p['median']:.1%} | {p['max']:.1%} | {p['within3']:.0%} | "
                     f"{p['median_z']:.2f} | {r['s_per_candidate']:.2f} | {r['median_ms']:.4f} |")
    L += ["", f"An independent plain loop (onnxruntime only: 1 thread, 50 warm-ups, 0.6 s, median) on the first {k} "
          "models in 5 fresh processes, against odnas's figure (mean of its processes):", "",
          "| model | plain loop, 5 processes (ms) | lowest | odnas | odnas / lowest |",
          "| --- | --- | --- | --- | --- |"]
    for i in range(k):
        L.append(f"| c{i} | {', '.join(f'{p[i]:.4f}' for p in loop)} | {lowest[i]:.4f} | {ours[i]:.4f} | "
                 f"{ours[i] / lowest[i]:.3f} |")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    sys.exit(main())
