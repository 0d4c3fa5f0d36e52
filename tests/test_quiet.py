"""Quiet windows: measurements never overlap, and local jobs are paused while one runs."""

import subprocess
import sys
import time

from odnas.cost.quiet import _state, measurement_window, resume_jobs


def _busy_job():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)


def test_local_jobs_are_stopped_inside_the_window_and_run_after(tmp_path):
    job = _busy_job()
    try:
        time.sleep(0.2)
        with measurement_window("pause", lambda: [job.pid], lock_path=tmp_path / "lock") as info:
            assert info["paused"] == 1 and _state(job.pid) == "T"
        time.sleep(0.05)
        assert _state(job.pid) in ("R", "S")
        with measurement_window("lock", lambda: [job.pid], lock_path=tmp_path / "lock") as info:
            assert info["paused"] == 0 and _state(job.pid) in ("R", "S")
    finally:
        job.kill()
        job.wait()


def test_a_job_left_stopped_by_a_killed_driver_is_woken(tmp_path):
    job = _busy_job()
    try:
        import os
        import signal

        os.killpg(job.pid, signal.SIGSTOP)
        time.sleep(0.05)
        assert _state(job.pid) == "T"
        resume_jobs([job.pid])
        time.sleep(0.05)
        assert _state(job.pid) in ("R", "S")
    finally:
        job.kill()
        job.wait()


def test_measurements_never_overlap_across_processes(tmp_path):
    """Two processes each hold the window 0.3 s, twice; their intervals must not intersect."""
    code = (
        "import sys, time, json\n"
        "from pathlib import Path\n"
        "from odnas.cost.quiet import measurement_window\n"
        "out = []\n"
        "for _ in range(2):\n"
        f"    with measurement_window('lock', lock_path=Path({str(tmp_path / 'lock')!r})):\n"
        "        a = time.time(); time.sleep(0.3); out.append((a, time.time()))\n"
        "print(json.dumps(out))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    import json

    spans = sorted(s for p in procs for s in json.loads(p.communicate(timeout=60)[0]))
    assert len(spans) == 4
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert a1 <= b0 + 1e-3, spans
