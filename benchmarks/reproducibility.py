"""Does a latency figure come out the same in another process, a minute later?

    python benchmarks/reproducibility.py                          # 5 processes x 10 candidates, quiet host
    python benchmarks/reproducibility.py --processes 8 --models 20
    python benchmarks/reproducibility.py --neighbour busy         # a CPU-bound loop on the other core(s)
    python benchmarks/reproducibility.py --neighbour quota        # the timing processes under a 50% CFS quota
    python benchmarks/reproducibility.py --json                   # raw per-process results on stdout instead

Some hosts (KVM guests in particular) run in two speed modes ~1.6-1.9x apart that hold for
seconds and slow every model in the process by the same factor, so one model timed in fresh
processes lands in one mode or the other. This builds M random ``mobile-cnn`` candidates
(seed 0, input 1x8x8, 10 classes), a one-Reshape floor model and a fixed reference candidate,
then times them in K fresh processes under these protocols:

* P0  the current ``cpu-mobile`` protocol: 20 warm-ups, >=100 runs and >=0.25 s, median;
      SE = within-run SE of the median.
* P1  short rounds (burst medians) over ~1 s; figure = the lowest round; SE by bootstrap.
* P2  reference-normalised (``sess.run``): S fresh sessions of the candidate, each with R rounds
      of (candidate burst, reference burst) alternating order; ratio = median over rounds of
      cand/ref burst medians, averaged over sessions; latency = ratio x baseline, where the
      baseline is the reference's fast-mode time (10th percentile of its burst medians over a
      few seconds). SE = sqrt(between-session SE of the ratio^2 + (1.5% ratio)^2) x baseline
      (+ the baseline's own SE when each process calibrates its own).
* P3  P2 over IOBinding (``run_with_iobinding``), which cuts the Python floor.

"fixed baseline" uses one baseline for all processes (the median of the per-process
calibrations: what a per-host cache file would hold); "own baseline" calibrates in each process.
The worker side (``--worker``) needs only onnxruntime and numpy. Logs go to stderr, the markdown
table to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULTS = dict(warmup=20, burst=40, sessions=8, rounds=6, cal_s=4.0, cal_quantile=10)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ models (the only odnas part)


def build_models(folder: Path, n: int, seed: int = 0) -> dict:
    """Export n random mobile-cnn candidates, the floor and the reference; returns their paths."""
    sys.path.insert(0, str(ROOT))
    import torch
    from torch import nn

    from odnas.cost.onnx import export_onnx
    from odnas.cost.reference import REFERENCE_PARAMS  # odnas's own reference model: a mid-size candidate
    from odnas.spaces import get_space

    space = get_space("mobile-cnn")
    rng = random.Random(seed)
    cands = []
    for i in range(n):
        p = space.sample(rng)
        torch.manual_seed(0)
        cands.append(str(export_onnx(space.build(p, (1, 8, 8), 10), (1, 8, 8), folder / f"c{i:02d}.onnx")))
    torch.manual_seed(0)
    ref = export_onnx(space.build(REFERENCE_PARAMS, (1, 8, 8), 10), (1, 8, 8), folder / "reference.onnx")
    floor = export_onnx(nn.Sequential(nn.Flatten()), (1, 8, 8), folder / "floor.onnx")  # one Reshape
    return {"candidates": cands, "reference": str(ref), "floor": str(floor)}


# ------------------------------------------------------------------ worker (onnxruntime + numpy only)


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def _runner(sess, path: str):
    """A zero-argument callable running one inference: ``run`` (numpy feed) or ``iob`` (IOBinding)."""
    import numpy as np
    import onnxruntime as ort

    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([1] + [int(d) for d in inp.shape[1:]]).astype(np.float32)
    if path == "run":
        feed = {inp.name: x}
        return lambda: sess.run(None, feed)
    b = sess.io_binding()
    b.bind_ortvalue_input(inp.name, ort.OrtValue.ortvalue_from_numpy(x))
    for o in sess.get_outputs():
        b.bind_output(o.name, "cpu")
    return lambda: sess.run_with_iobinding(b)


def _burst(fn, n: int) -> float:
    import numpy as np

    pc = time.perf_counter_ns
    out = np.empty(n)
    for i in range(n):
        a = pc()
        fn()
        out[i] = pc() - a
    return float(np.median(out)) / 1e6


def _p0(fn, warm=20, min_runs=100, min_time=0.25, max_time=2.0) -> tuple[float, float]:
    """The current cpu-mobile protocol: (median ms, within-run SE of the median)."""
    import numpy as np

    for _ in range(warm):
        fn()
    s, pc, t0 = [], time.perf_counter_ns, time.perf_counter()
    while True:
        a = pc()
        fn()
        s.append((pc() - a) / 1e6)
        el = time.perf_counter() - t0
        if (len(s) >= min_runs and el >= min_time) or (el >= max_time and len(s) >= 3):
            break
    s = np.array(s)
    med = float(np.median(s))
    return med, 1.2533 * 1.4826 * float(np.median(np.abs(s - med))) / len(s) ** 0.5


def worker(job: dict) -> dict:
    """One fresh process: floors, reference calibration, then P0 and the round protocols per model."""
    import onnxruntime as ort

    if job.get("cpu") is not None:
        os.sched_setaffinity(0, {job["cpu"]})
    B, W, S, R = job["burst"], job["warmup"], job["sessions"], job["rounds"]
    res = {"pid": os.getpid(), "load": [os.getloadavg()[0]], "ort": ort.__version__, "floors": {}, "cal": {}}
    for path in ("run", "iob"):
        res["floors"][path] = _p0(_runner(_session(job["floor"]), path))[0]
    refs = {}
    for path in ("run", "iob"):
        s = _session(job["reference"])
        fn = _runner(s, path)
        for _ in range(W):
            fn()
        refs[path] = (s, fn)
        t0, cal = time.perf_counter(), []
        while time.perf_counter() - t0 < job["cal_s"]:
            cal.append(_burst(fn, B))
        res["cal"][path] = cal
    res["p0"], res["rounds"] = [], {"run": [], "iob": []}
    for m in job["models"]:
        t = time.perf_counter()
        med, se = _p0(_runner(_session(m), "run"))
        res["p0"].append({"ms": med, "se": se, "s": time.perf_counter() - t})
    for path in ("run", "iob"):
        ref = refs[path][1]
        for m in job["models"]:
            t = time.perf_counter()
            sessions = []
            for _ in range(S):
                fn = _runner(_session(m), path)  # a fresh session each time: placement varies per session
                for _ in range(W):
                    fn()
                c, r = [], []
                for i in range(R):
                    if i % 2:
                        r.append(_burst(ref, B))
                        c.append(_burst(fn, B))
                    else:
                        c.append(_burst(fn, B))
                        r.append(_burst(ref, B))
                sessions.append({"c": c, "r": r})
            res["rounds"][path].append({"sessions": sessions, "s": time.perf_counter() - t})
        res["load"].append(os.getloadavg()[0])
    return res


# ------------------------------------------------------------------ neighbours


@contextmanager
def neighbour(kind: str):
    """Yields (cpu to pin the worker to or None, prefix command for the worker)."""
    if kind == "none":
        yield None, []
        return
    ncpu = os.cpu_count() or 1
    if kind == "busy":
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(1, ncpu - 1))]
        for p in procs:
            os.sched_setaffinity(p.pid, set(range(1, ncpu)) or {0})
        try:
            yield (0 if ncpu > 1 else None), []
        finally:
            for p in procs:
                p.kill()
                p.wait()
        return
    # quota: a cgroup capped at 50% of one CPU (v2 cpu.max, else v1 cfs_quota_us); needs root
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    cg = Path("/sys/fs/cgroup" if v2 else "/sys/fs/cgroup/cpu") / f"odnas-repro-{os.getpid()}"
    cg.mkdir()
    try:
        if v2:
            (cg / "cpu.max").write_text("50000 100000")
        else:
            (cg / "cpu.cfs_period_us").write_text("100000")
            (cg / "cpu.cfs_quota_us").write_text("50000")
        yield None, ["sh", "-c", f'echo $$ > {cg / "cgroup.procs"} && exec "$@"', "sh"]
    finally:
        cg.rmdir()


# ------------------------------------------------------------------ analysis


def _mad_se(a) -> float:
    import numpy as np

    a = np.asarray(a, dtype=float)
    return 1.2533 * 1.4826 * float(np.median(np.abs(a - np.median(a)))) / len(a) ** 0.5


def _boot_se(a, q, n=300, seed=0) -> float:
    import numpy as np

    a = np.asarray(a, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(a), (n, len(a)))
    return float(np.std(np.percentile(a[idx], q, axis=1)))


def session_ratios(rec) -> list[float]:
    import numpy as np

    return [float(np.median(np.array(s["c"]) / np.array(s["r"]))) for s in rec["sessions"]]


def variants(procs: list[dict], q: int) -> dict:
    """name -> (figures [K][M], SEs [K][M], s/candidate, floor ms)."""
    import numpy as np

    from odnas_device.protocol import RESIDUAL_REL

    out = {"P0 current (sess.run)": ([[r["ms"] for r in p["p0"]] for p in procs],
                                     [[r["se"] for r in p["p0"]] for p in procs],
                                     statistics.mean(r["s"] for p in procs for r in p["p0"]),
                                     statistics.median(p["floors"]["run"] for p in procs))}
    for path, name in (("run", "P2 ref-normalised (sess.run)"), ("iob", "P3 = P2 over IOBinding")):
        secs = statistics.mean(r["s"] for p in procs for r in p["rounds"][path])
        floor = statistics.median(p["floors"][path] for p in procs)
        if path == "run":
            # P1 from the candidate bursts alone; half the time of the rounds (no reference bursts)
            X = [[min(c for s in r["sessions"] for c in s["c"]) for r in p["rounds"][path]] for p in procs]
            S = [[_boot_se([c for s in r["sessions"] for c in s["c"]], 0) for r in p["rounds"][path]] for p in procs]
            out["P1 min of rounds (sess.run)"] = (X, S, secs / 2, floor)
        own = np.array([np.percentile(p["cal"][path], q) for p in procs])
        own_se = np.array([_boot_se(p["cal"][path], q) for p in procs])
        fixed = float(np.median(own))
        ratio = np.array([[np.mean(session_ratios(r)) for r in p["rounds"][path]] for p in procs])
        rse = np.array([[np.std(session_ratios(r), ddof=1) / len(r["sessions"]) ** 0.5 for r in p["rounds"][path]]
                        for p in procs])
        rse = np.sqrt(rse ** 2 + (RESIDUAL_REL * ratio) ** 2)
        out[f"{name}, fixed baseline"] = (ratio * fixed, rse * fixed, secs, floor)
        X = ratio * own[:, None]
        out[f"{name}, own baseline"] = (X, X * np.sqrt((rse / ratio) ** 2 + (own_se / own)[:, None] ** 2), secs, floor)
    return out


def metrics(X, S) -> dict:
    import numpy as np
    from scipy.stats import spearmanr

    X, S = np.asarray(X, dtype=float), np.asarray(S, dtype=float)
    spread = X.max(0) / X.min(0) - 1
    dmed, dmax, rho, z = [], [], [], []
    for a, b in itertools.combinations(range(len(X)), 2):
        d = np.abs(X[a] / X[b] - 1)
        dmed.append(np.median(d))
        dmax.append(d.max())
        rho.append(spearmanr(X[a], X[b]).statistic)
        z.extend(np.abs(X[a] - X[b]) / np.sqrt(S[a] ** 2 + S[b] ** 2))
    factor = np.median(X / np.median(X, 0), 1)  # each process's level relative to the others
    return dict(spread=float(np.median(spread)), spread_max=float(spread.max()), dmed=float(np.median(dmed)),
                dmax=float(np.median(dmax)), dmax_worst=float(np.max(dmax)), rho=float(np.median(rho)),
                rho_min=float(np.min(rho)), cover=float(np.mean(np.array(z) <= 3)),
                factor_range=(float(factor.min()), float(factor.max())),
                bimodal=bool(factor.max() / factor.min() > 1.2))




def report(procs: list[dict], a, load_start: float, wall: float) -> str:
    from odnas.cost.latency import cpu_model
    var = variants(procs, DEFAULTS["cal_quantile"])
    loads = [x for p in procs for x in p["load"]]
    head = [f"Host: {cpu_model()} ({os.cpu_count()} CPUs); onnxruntime {procs[0]['ort']}; "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}; load average at start {load_start:.2f}, "
            f"during {min(loads):.2f}-{max(loads):.2f}; neighbour: {a.neighbour}.",
            "",
            f"{a.models} random `mobile-cnn` candidates (seed {a.seed}) timed in {a.processes} fresh processes "
            f"({wall:.0f} s in all). Rounds: {DEFAULTS['sessions']} sessions x {DEFAULTS['rounds']} rounds, bursts "
            f"of {DEFAULTS['burst']} runs, {DEFAULTS['warmup']} warm-ups a session; baseline = p"
            f"{DEFAULTS['cal_quantile']} of reference bursts over {DEFAULTS['cal_s']:.0f} s. *Spread*: per-model "
            "max/min - 1 over processes (median over models, max). *|diff|*: between two processes, median over "
            "models, then the max over models (both the median over process pairs; worst pair in brackets). "
            "*SE covers*: share of (model, pair) with |diff| / combined SE <= 3. *Process level*: each "
            "process's median figure relative to the others (min-max); *modes* if it spans > 20%.",
            "",
            "| protocol | spread, median (max) | median \\|diff\\| | max \\|diff\\| (worst pair) "
            "| Spearman, median (min) "
            "| SE covers | s/candidate | floor ms | process level | modes |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows = []
    for name, (X, S, secs, floor) in var.items():
        m = metrics(X, S)
        lo, hi = m["factor_range"]
        rows.append(f"| {name} | {m['spread'] * 100:.1f}% ({m['spread_max'] * 100:.1f}%) | {m['dmed'] * 100:.1f}% | "
                    f"{m['dmax'] * 100:.1f}% ({m['dmax_worst'] * 100:.1f}%) | {m['rho']:.3f} ({m['rho_min']:.3f}) | "
                    f"{m['cover'] * 100:.0f}% | {secs:.2f} | {floor:.4f} | {lo:.2f}-{hi:.2f} | "
                    f"{'yes' if m['bimodal'] else 'no'} |")
    import numpy as np

    base = {path: [round(float(np.percentile(p["cal"][path], DEFAULTS["cal_quantile"])), 4) for p in procs]
            for path in ("run", "iob")}
    tail = ["", f"Reference baseline per process (ms): sess.run {base['run']}; IOBinding {base['iob']}.",
            "Goal: median |diff| <= 3%, max <= 10%, Spearman >= 0.98, SE covers >= 95%, <= 2 s/candidate."]
    return "\n".join(head + rows + tail)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=5)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--neighbour", choices=("none", "busy", "quota"), default="none")
    ap.add_argument("--json", action="store_true", help="print the raw per-process results as JSON")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return 0
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        log(f"building {a.models} candidates, the reference and the floor")
        files = build_models(Path(tmp), a.models, a.seed)
        job = {**DEFAULTS, "models": files["candidates"], "reference": files["reference"], "floor": files["floor"]}
        procs, t0 = [], time.time()
        with neighbour(a.neighbour) as (cpu, prefix):
            job["cpu"] = cpu
            for i in range(a.processes):
                out = subprocess.run(prefix + [sys.executable, __file__, "--worker", json.dumps(job)],
                                     capture_output=True, text=True)
                if out.returncode:
                    log(out.stderr)
                    raise SystemExit(f"worker {i} failed")
                procs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                p = procs[-1]
                log(f"process {i + 1}/{a.processes}: load {p['load'][0]:.2f}, P0 median "
                    f"{statistics.median(r['ms'] for r in p['p0']):.4f} ms ({time.time() - t0:.0f} s)")
        wall = time.time() - t0
    if a.json:
        from odnas.cost.latency import cpu_model

        print(json.dumps({"args": vars(a), "cpu_model": cpu_model(), "load_start": load_start, "processes": procs}))
    else:
        print(report(procs, a, load_start, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
