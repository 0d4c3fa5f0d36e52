"""Quiet windows for latency measurement: one measurement at a time on a machine, and
local training jobs paused while it runs.

A latency taken while two trainings share the CPU measures the trainings as much as
the model. On a 2-core host, pinning jobs and measurements to disjoint cores still
leaves them sharing caches, memory bandwidth and the second core's hyper-threads;
pausing the jobs (SIGSTOP to their process groups, SIGCONT after) for the second or
so a measurement takes gives a quiet machine (docs/benchmarks.md, "isolation").
A driver killed inside a window leaves its jobs stopped; ``resume_jobs`` wakes them
and ``odnas resume`` calls it first.
"""

from __future__ import annotations

import fcntl
import os
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

#: Machine-wide: every odnas process on this host measures under this lock.
LOCK_PATH = Path(os.environ.get("ODNAS_MEASURE_LOCK", Path(tempfile.gettempdir()) / "odnas-measure.lock"))
ISOLATION_MODES = ("pause", "lock", "none")


def _signal_group(pid: int, sig: int) -> bool:
    """Signal the job's process group (TorchX's local scheduler starts each job in its
    own session, so the group is the job and its children); the pid alone otherwise."""
    try:
        pgid = os.getpgid(pid)
        if pgid == pid and pgid != os.getpgid(0):
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def pause_jobs(pids: Iterable[int], timeout_s: float = 0.5) -> list[int]:
    """SIGSTOP each job's group and wait until the kernel reports it stopped."""
    stopped = [p for p in pids if _signal_group(p, signal.SIGSTOP)]
    deadline = time.monotonic() + timeout_s
    while stopped and time.monotonic() < deadline and any(_state(p) not in ("T", "t", "?", "Z") for p in stopped):
        time.sleep(0.002)
    return stopped


def resume_jobs(pids: Iterable[int]) -> None:
    for p in pids:
        _signal_group(p, signal.SIGCONT)


@contextmanager
def measurement_window(mode: str = "pause", local_jobs: Callable[[], Iterable[int]] | None = None,
                       lock_path: Path | None = None) -> Iterator[dict]:
    """Hold the machine-wide measurement lock and, in ``pause`` mode, keep the local
    jobs ``local_jobs()`` returns stopped while the body runs. Yields a small record
    (waited for the lock, jobs paused) for the cost lane's log."""
    info = {"mode": mode, "lock_wait_s": 0.0, "paused": 0}
    if mode == "none":
        yield info
        return
    path = lock_path or LOCK_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        t0 = time.monotonic()
        fcntl.flock(f, fcntl.LOCK_EX)  # waits for another process's measurement to end
        info["lock_wait_s"] = time.monotonic() - t0
        paused: list[int] = []
        try:
            if mode == "pause" and local_jobs is not None:
                paused = pause_jobs(local_jobs())
                info["paused"] = len(paused)
            yield info
        finally:
            resume_jobs(paused)
            fcntl.flock(f, fcntl.LOCK_UN)
