"""The device agent against the host's own measurement, on one machine.

    python benchmarks/device.py --profile cpu-mobile --repeats 2

Each repeat starts ``odnas-device serve`` on loopback in a fresh process with a fresh
cache (so it calibrates its own reference baseline, as a new device would), and
times the shipped reference set (``odnas calibrate``'s 15 models) two ways, one
model after the other: on the agent, over HTTP, and in this process with the host's
own backend, also with a fresh cache. Both run the same timing code under the same
profile, so on one machine they should agree; what they do not share is the
process, its sessions and its baseline calibration. Prints markdown: per model the
two figures and their ratio, then per repeat the median and largest |difference|,
how many agree within 5%, the share within 3 combined standard errors, Spearman's
rank correlation, and the two reference baselines (each process calibrates its own;
they differ by a few percent between processes, which moves every figure of one side
together).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOKEN = "benchmark-token"


def start_agent(cache: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "ODNAS_DEVICE_TOKEN": TOKEN, "ODNAS_CACHE_DIR": str(cache)}
    proc = subprocess.Popen([sys.executable, "-m", "odnas_device", "serve", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    m = re.search(r"serving (http://\S+)", proc.stdout.readline())
    if not m:
        raise SystemExit("the agent did not start")
    return proc, m.group(1)


def one_repeat(profile_name: str, folder: Path) -> list[dict]:
    from odnas.cost.calibrate import export_references
    from odnas.cost.device import DeviceLatencyBackend
    from odnas.cost.latency import OrtLatencyBackend
    from odnas.profiles import load_profile, with_device

    os.environ["ODNAS_CACHE_DIR"] = str(folder / "host-cache")  # this process: a fresh baseline too
    profile = load_profile(profile_name)
    man = export_references(folder / "refs", profile)
    proc, url = start_agent(folder / "agent-cache")
    try:
        device = DeviceLatencyBackend(with_device(profile, url).device, token=TOKEN)
        info = device.check(profile)
        host = OrtLatencyBackend()
        rows = []
        for m in man["models"]:
            path = folder / "refs" / m["file"]
            d = device.measure(path, profile)
            h = host.measure(path, profile)
            rows.append({"model": m["name"], "host": h, "device": d, "device_name": info["device"]})
        return rows
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu-mobile")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    from odnas.cost.latency import cpu_model

    t0 = time.time()
    repeats = []
    for _ in range(a.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            repeats.append(one_repeat(a.profile, Path(tmp)))
    print(f"Host and device: the same machine ({cpu_model()}), profile `{a.profile}`, "
          f"{len(repeats[0])} reference models, {a.repeats} repeats; each repeat a fresh agent process and a "
          f"fresh host baseline; {time.time() - t0:.0f} s in all.\n")
    head = "| model | " + " | ".join(f"host ms ({i + 1}) | device ms ({i + 1}) | device/host ({i + 1})"
                                      for i in range(a.repeats)) + " |"
    print(head)
    print("|" + " --- |" * (1 + 3 * a.repeats))
    for k, r0 in enumerate(repeats[0]):
        cells = []
        for rep in repeats:
            r = rep[k]
            cells += [f"{r['host'].latency_ms:.4f}", f"{r['device'].latency_ms:.4f}",
                      f"{r['device'].latency_ms / r['host'].latency_ms:.3f}"]
        print(f"| {r0['model']} | " + " | ".join(cells) + " |")
    print()
    print("| repeat | median \\|diff\\| | max \\|diff\\| | within 5% | within 3 SE | Spearman | agent's baseline ms | "
          "host's baseline ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, rep in enumerate(repeats):
        from scipy.stats import spearmanr

        h = np.array([r["host"].latency_ms for r in rep])
        d = np.array([r["device"].latency_ms for r in rep])
        se = np.array([np.hypot(r["host"].latency_ms_sem, r["device"].latency_ms_sem) for r in rep])
        diff = np.abs(d / h - 1)
        print(f"| {i + 1} | {np.median(diff):.1%} | {diff.max():.1%} | {int(np.sum(diff <= 0.05))} of {len(diff)} | "
              f"{np.mean(np.abs(d - h) <= 3 * se):.0%} | "
              f"{spearmanr(h, d)[0]:.3f} | {rep[0]['device'].baseline_ms:.4f} | {rep[0]['host'].baseline_ms:.4f} |")


if __name__ == "__main__":
    main()
