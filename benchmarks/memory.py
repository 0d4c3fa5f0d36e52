"""Driver memory probe: make candidates from a finished run, as its driver did, and
read this process's RSS after each.

Loads a run dir (for example the ``RUN/run`` that ``benchmarks/load.py`` prints and
keeps), hides every trial from ``--from`` on, then gives them back ``--step`` at a time
and makes one candidate after each step with the run's own generation strategy, on a
thread as the driver's ``Ahead`` does. A hidden trial is neither modelled (it is marked
abandoned) nor a pending point (Ax would count an abandoned trial as pending; the probe
drops hidden trials from the pending points), so a candidate at n models n trials, as
the driver's would. ``--after`` says what runs after every candidate:

    nothing    what the driver did before it released memory
    gc         gc.collect()
    gc-trim    odnas.loop.ahead.release_memory, what the driver does now: gc.collect(),
               MKL's mkl_free_buffers and glibc's malloc_trim(0)
    gc-trim-keep-mkl
               the same without mkl_free_buffers (what the driver did before)
    mmap       glibc's mmap threshold fixed at 1 MiB (set once, before the first)
    gc-mmap    both

    python benchmarks/memory.py RUN_DIR --from 25 --to 100 --step 3 --after gc-trim
    python benchmarks/memory.py RUN_DIR --from 100 --to 100 --repeat 30   # a fixed n

``--frozen`` makes the candidates inside ``odnas.loop.ahead.frozen_heap``, as the
driver does. The driver freezes before it loads its run; the probe freezes after, so
the loaded trials are frozen too and a release here walks fewer objects than the
driver's.

It makes the candidates in its own process: what it measures is what a candidate
leaves in the process that makes it. odnas's driver on Linux makes each candidate in
a forked child that exits (``odnas.loop.ahead``), so there this is the child's share;
it is the driver's own where candidates are made in the driver (elsewhere, or
``benchmarks/load.py --candidates driver``).

It prints one "n RSS_MB candidate_s release_s malloc_in_use_MB" line per candidate, then
the slopes in MB per 100 trials and the median seconds of a candidate and of what
follows it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import statistics
import threading
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--from", dest="start", type=int, default=25)
    ap.add_argument("--to", dest="stop", type=int, default=100)
    ap.add_argument("--step", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="candidates made at each n")
    ap.add_argument("--after", default="gc-trim",
                    choices=["nothing", "gc", "gc-trim", "gc-trim-keep-mkl", "mmap", "gc-mmap"])
    ap.add_argument("--frozen", action="store_true", help="inside frozen_heap, as the driver's loop")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import ax.generation_strategy.generation_strategy as gs_module
    from ax.core.trial_status import TrialStatus
    from ax.orchestration.orchestrator import get_fixed_features_from_experiment

    import odnas.loop.ahead as ahead
    from load import proc_status  # benchmarks/load.py: RSS and glibc's malloc counters
    from odnas.loop.ahead import frozen_heap, release_memory

    if a.after == "gc-trim-keep-mkl":
        ahead.MKL_FREE_BUFFERS = None
    from odnas.loop.store import load_client
    client, _ = load_client(a.run_dir, readonly=True)
    exp, gs = client._experiment, client._generation_strategy
    if not a.start <= a.stop <= len(exp.trials):
        raise SystemExit(f"memory.py: the run has {len(exp.trials)} trials; --from/--to must lie within")
    status = {i: t.status for i, t in exp.trials.items()}
    hidden = {i for i in exp.trials if i >= a.start}
    for i in hidden:
        exp.trials[i]._status = TrialStatus.ABANDONED  # not modelled until given back
    pending = gs_module.extract_pending_observations

    def visible_pending(experiment, **kwargs):
        found = pending(experiment=experiment, **kwargs) or {}
        return {m: [f for f in fs if f.trial_index not in hidden] for m, fs in found.items()}

    gs_module.extract_pending_observations = visible_pending
    if "mmap" in a.after:
        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    ns, rss, used, secs = [], [], [], []
    heap = frozen_heap() if a.frozen else contextlib.nullcontext()
    with heap:
        shown = a.start
        for n in range(a.start, a.stop + 1, a.step):
            for i in range(shown, n):
                exp.trials[i]._status = status[i]
                hidden.discard(i)
            shown = n
            for _ in range(a.repeat):
                errors: list[BaseException] = []

                def make() -> None:
                    try:
                        gs.gen(experiment=exp, n=1, num_trials=1,
                               fixed_features=get_fixed_features_from_experiment(exp))
                    except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                        errors.append(e)

                t0 = time.perf_counter()
                th = threading.Thread(target=make)
                th.start()
                th.join()
                t1 = time.perf_counter()
                if errors:
                    raise errors[0]
                if a.after.startswith("gc-trim"):
                    release_memory()
                elif "gc" in a.after:
                    gc.collect()
                ns.append(n)
                secs.append((t1 - t0, time.perf_counter() - t1))
                status_now = proc_status()
                rss.append(status_now["rss_mb"])
                used.append(status_now.get("malloc_used_mb", float("nan")))
                print(n, round(rss[-1]), f"{secs[-1][0]:.2f}", f"{secs[-1][1]:.3f}", used[-1], flush=True)
    if len(set(ns)) > 1:
        print(f"after {a.after}: RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB (max {max(rss):.0f}); "
              f"slope {np.polyfit(ns, rss, 1)[0] * 100:+.1f} MB per 100 trials; malloc in use {used[0]:.1f} -> "
              f"{used[-1]:.1f} MB, slope {np.polyfit(ns, used, 1)[0] * 100:+.1f}")
    else:
        print(f"after {a.after}, n={ns[0]}: RSS {min(rss):.0f}-{max(rss):.0f} MB over {len(rss)} candidates")
    print(f"{'frozen' if a.frozen else 'not frozen'}: candidate {statistics.median(c for c, _ in secs):.2f} s, "
          f"then {statistics.median(r for _, r in secs):.3f} s (medians of {len(secs)})")


if __name__ == "__main__":
    main()
