"""Driver memory probe: make candidates from a finished run, as its driver did, and
read this process's RSS after each.

Loads a run dir (for example one `benchmarks/load.py` kept), hides every trial from
``--from`` on, then gives them back ``--step`` at a time and makes one candidate after
each step with the run's own generation strategy, on a thread as the driver's
``Ahead`` does. ``--after`` says what runs after every candidate:

    nothing    what the driver did before it released memory
    gc         gc.collect()
    gc-trim    gc.collect() + malloc_trim(0): what the driver does now (release_memory)
    mmap       glibc's mmap threshold fixed at 1 MiB (set once, before the first)
    gc-mmap    both

    python benchmarks/memory.py RUN_DIR --from 25 --to 100 --step 3 --after gc-trim
    python benchmarks/memory.py RUN_DIR --from 100 --to 100 --repeat 30   # a fixed n

It prints one "n RSS_MB" line per candidate, then the slope in MB per 100 trials.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import threading
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--from", dest="start", type=int, default=25)
    ap.add_argument("--to", dest="stop", type=int, default=100)
    ap.add_argument("--step", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="candidates made at each n")
    ap.add_argument("--after", default="gc-trim", choices=["nothing", "gc", "gc-trim", "mmap", "gc-mmap"])
    a = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from ax.core.trial_status import TrialStatus

    from odnas.loop.store import load_client

    client, _ = load_client(a.run_dir, readonly=True)
    exp, gs = client._experiment, client._generation_strategy
    status = {i: t.status for i, t in exp.trials.items()}
    for i, t in exp.trials.items():
        if i >= a.start:
            t._status = TrialStatus.ABANDONED  # not modelled until given back
    libc = ctypes.CDLL(None)
    if "mmap" in a.after:
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    ns, rss = [], []
    shown = a.start
    for n in range(a.start, a.stop + 1, a.step):
        for i in range(shown, n):
            exp.trials[i]._status = status[i]
        shown = n
        for _ in range(a.repeat):
            th = threading.Thread(target=lambda: gs.gen(experiment=exp, n=1, num_trials=1))
            th.start()
            th.join()
            if "gc" in a.after:
                gc.collect()
            if "trim" in a.after:
                libc.malloc_trim(0)
            ns.append(n)
            rss.append(rss_mb())
            print(n, round(rss[-1]), flush=True)
    if len(set(ns)) > 1:
        print(f"after {a.after}: RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB (max {max(rss):.0f}); "
              f"slope {np.polyfit(ns, rss, 1)[0] * 100:+.1f} MB per 100 trials")
    else:
        print(f"after {a.after}, n={ns[0]}: RSS {min(rss):.0f}-{max(rss):.0f} MB over {len(rss)} candidates")


if __name__ == "__main__":
    main()
