"""Warm workers: the file protocol and pid checks (unit), and real workers launched
through TorchX's local_cwd scheduler serving real Lightning trials: a worker SIGKILLed
mid-trial, a hung worker, a hung trial, and a driver killed while workers run, then
resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from odnas.testing import FixedCostLane
from tests.conftest import ROOT, run_cli, status_json

PARAMS = {"hidden_size_1": 32, "hidden_size_2": 16, "lr": 0.003, "dropout": 0.1, "epochs": 1, "batch_size": 64}
FAULTS = Path(__file__).parent / "faults"


# ------------------------------------------------------------------ unit


def test_local_job_alive_accepts_a_worker_child_and_refuses_a_reused_pid():
    import socket

    from odnas.rundir import WORKER_MODULE, local_job_alive, proc_start

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", WORKER_MODULE])
    try:
        # Popen returns once exec has begun, a moment before the kernel has set the new
        # command line; wait until the child's command line is its own.
        t0 = time.time()
        while WORKER_MODULE.encode() not in Path(f"/proc/{p.pid}/cmdline").read_bytes() and time.time() - t0 < 10:
            time.sleep(0.01)
        assert WORKER_MODULE.encode() in Path(f"/proc/{p.pid}/cmdline").read_bytes(), "the child never ran"
        job = {"pid": p.pid, "host": socket.gethostname(), "proc_start": proc_start(p.pid)}
        assert local_job_alive(job)
        assert local_job_alive({k: v for k, v in job.items() if k != "proc_start"})  # an old job.json
        assert not local_job_alive({**job, "proc_start": job["proc_start"] - 1})  # the pid was reused
    finally:
        p.kill()
        p.wait()
    assert not local_job_alive(job)


def test_the_log_tail_of_a_slot_is_its_latest_workers(tmp_path):
    """Why a slot's worker did not start is read from its latest worker's log, whatever
    TorchX's random app ids make of the name order."""
    from odnas.loop.pool import WorkerPool
    from odnas.records import RunSettings

    pool = WorkerPool(tmp_path, RunSettings(space="mlp", profile={}, input_shape=[1, 8, 8], num_classes=10), None)
    old, new = (pool.dir(0) / "torchx" / "odnas-worker-zz" / "stderr.log",
                pool.dir(0) / "torchx" / "odnas-worker-aa" / "stderr.log")
    for log, text in ((old, "`Trainer.fit` stopped: `max_epochs=1` reached.\n"),
                      (new, "Traceback ...\nMemoryError: preload\n\n")):
        log.parent.mkdir(parents=True)
        log.write_text(text)
    os.utime(old, (time.time() - 60, time.time() - 60))
    assert pool.log_tail(0) == "MemoryError: preload"


def test_a_request_left_in_a_copied_run_dir_is_served_in_the_copy_not_the_original(tmp_path):
    from odnas.jobs.component import trial_args
    from odnas.jobs.worker import request_here

    old = "/elsewhere/run/trials/0003"
    req = {"argv": trial_args(old, "mlp", PARAMS), "trial_dir": old}
    tdir, argv = request_here(tmp_path / "copy", req)
    assert tdir == tmp_path / "copy" / "trials" / "0003"
    assert argv[argv.index("--out") + 1] == str(tdir) and old not in argv


def test_exit_reasons_name_what_the_driver_used_to():
    from odnas.jobs.worker import exit_reason

    assert exit_reason(0) == "job exited without error but wrote no result"
    assert "killed by SIGKILL without writing its result (killed by a signal" in exit_reason(signal.SIGKILL)
    assert "exit code 3" in exit_reason(3 << 8)


def test_old_settings_load_and_fresh_only_for_schedulers_passed_in():
    from odnas.jobs.component import warm_capable
    from odnas.records import RunSettings

    old = RunSettings(space="mlp", profile={}, input_shape=[1, 8, 8], num_classes=10).to_dict()
    del old["workers"]
    assert RunSettings.from_dict(old).workers == "warm"
    assert warm_capable("local_cwd") and warm_capable("kubernetes") and warm_capable("slurm")
    assert not warm_capable("inprocess")


def test_worker_app_is_the_trial_apps_twin():
    from odnas.jobs.component import trial_app, worker_app

    kw = dict(scheduler="kubernetes", image="reg/odnas:1", resources="cpu=2,memMB=4096,gpu=0", env={"A": "1"},
              mounts=["type=volume,src=runs,dst=/runs"])
    t = trial_app("/runs/r/trials/0000", "mlp", PARAMS, data="mnist", **kw).roles[0]
    w = worker_app("/runs/r", 1, "tok", "mlp", data="mnist", **kw).roles[0]
    assert w.args[:2] == ["-m", "odnas.jobs.worker"] and "--slot" in w.args and "tok" in w.args
    assert (w.image, w.entrypoint, w.resource, w.env, w.mounts) == (t.image, t.entrypoint, t.resource, t.env, t.mounts)


# ------------------------------------------------------------------ real workers (TorchX local_cwd)


def _runner(tmp_path, **kw):
    from odnas.jobs.component import torchx_runner
    from odnas.loop.runner import TrialRunner
    from odnas.records import RunSettings

    settings = RunSettings(space="mlp", profile={}, input_shape=[1, 8, 8], num_classes=10, threads=1,
                           parallel=1, workers="warm", **kw)
    return TrialRunner(str(tmp_path), settings.to_dict()).attach(tmp_path, FixedCostLane(), torchx_runner())


def _wait(runner, i, meta, until=lambda: False, timeout=240):
    from ax.core.base_trial import TrialStatus

    t0 = time.time()
    while (st := runner.poll_trial(i, meta)) == TrialStatus.RUNNING and time.time() - t0 < timeout:
        if until():
            return None
        time.sleep(0.1)
    return st


def _worker(runner, slot=0):
    return json.loads((runner.pool.dir(slot) / "worker.json").read_text())


def _gone(pid, timeout=10):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


def test_a_worker_sigkilled_mid_trial_fails_its_trial_and_a_new_worker_takes_the_slot(tmp_path):
    from ax.core.base_trial import TrialStatus

    from odnas.loop.runner import failure_reason

    r = _runner(tmp_path)
    try:
        meta = r.run_trial(0, {**PARAMS, "epochs": 30})
        job = r.trial_dir(0) / "job.json"
        assert _wait(r, 0, meta, until=job.exists) is None, "the trial never started"
        first = _worker(r)
        child = json.loads(job.read_text())
        assert child["worker"]["pid"] == first["pid"] != child["pid"]  # a forked child, not the worker
        os.kill(first["pid"], signal.SIGKILL)
        assert _wait(r, 0, meta) == TrialStatus.FAILED
        assert "warm worker serving it died" in failure_reason(meta, r.run_dir)
        assert _gone(child["pid"]), "the trial's child outlived its worker"
        meta1 = r.run_trial(1, PARAMS)  # the slot gets a new worker
        assert _wait(r, 1, meta1) == TrialStatus.COMPLETED, failure_reason(meta1, r.run_dir)
        assert meta1["worker"] == 0 and _worker(r)["token"] != first["token"] and r.pool.starts == 2
    finally:
        r.close()
    # What a warm worker's child trains is what a fresh process (--workers fresh) trains:
    # the same trial, to the last digit, so the two modes search the same models.
    from odnas.jobs.component import trial_args
    from odnas.rundir import TRIAL_MODULE

    fresh = tmp_path / "fresh-0001"  # trial 1 as a fresh job runs it: the run's seed (0) + the trial's index
    subprocess.run([sys.executable, "-m", TRIAL_MODULE, *trial_args(str(fresh), "mlp", PARAMS, seed=1)],
                   check=True, capture_output=True, timeout=240)
    warm, cold = (json.loads((d / "result.json").read_text()) for d in (r.trial_dir(1), fresh))
    assert (warm["val_acc"], warm["val_loss"]) == (cold["val_acc"], cold["val_loss"]), (warm, cold)


def test_a_hung_trial_is_stopped_by_its_timeout_and_the_worker_serves_on(tmp_path):
    """The trial's child hangs: --trial-timeout kills the child, never the worker, and the
    same warm worker serves the next trial at once."""
    from ax.core.base_trial import TrialStatus

    from odnas.loop.runner import failure_reason

    env = {"PYTHONPATH": f"{FAULTS}{os.pathsep}{ROOT}", "ODNAS_TEST_FAULTS": "hang",
           "ODNAS_TEST_FAULT_DIR": str(tmp_path / "slots")}
    (tmp_path / "slots").mkdir()
    r = _runner(tmp_path / "run", trial_timeout_s=4.0, env=env)
    try:
        meta = r.run_trial(0, PARAMS)
        assert _wait(r, 0, meta) == TrialStatus.FAILED
        assert "timed out" in failure_reason(meta, r.run_dir)
        child = json.loads((r.trial_dir(0) / "job.json").read_text())["pid"]
        assert _gone(child)
        worker = _worker(r)
        meta1 = r.run_trial(1, PARAMS)
        assert _wait(r, 1, meta1) == TrialStatus.COMPLETED, failure_reason(meta1, r.run_dir)
        assert _worker(r)["token"] == worker["token"] and r.pool.starts == 1
        res = json.loads((r.trial_dir(1) / "result.json").read_text())
        launched = json.loads((r.trial_dir(1) / "launch.json").read_text())["time"]
        assert res["first_step_at"] - launched < 5  # no start-up paid (well under 1 s on a quiet machine)
    finally:
        r.close()


def test_a_hung_worker_is_killed_and_replaced(tmp_path):
    """The worker itself hangs (SIGSTOP: no heartbeat, no serving) with a trial waiting
    in its inbox: the driver kills it and a new worker serves the trial."""
    from ax.core.base_trial import TrialStatus

    from odnas.loop.runner import failure_reason

    r = _runner(tmp_path)
    try:
        meta = r.run_trial(0, PARAMS)
        assert _wait(r, 0, meta) == TrialStatus.COMPLETED
        hung = _worker(r)
        os.kill(hung["pid"], signal.SIGSTOP)
        r.pool.beat_timeout_s = 3.0
        meta1 = r.run_trial(1, PARAMS)  # handed to the hung worker: it still looked alive
        assert _wait(r, 1, meta1) == TrialStatus.COMPLETED, failure_reason(meta1, r.run_dir)
        assert _worker(r)["token"] != hung["token"] and _gone(hung["pid"])
    finally:
        r.close()


def test_a_worker_stuck_preloading_is_killed_at_the_trial_timeout_and_the_trial_fails_with_why(tmp_path,
                                                                                                  monkeypatch):
    """A worker whose data load never returns: it beats, but is not ready within
    ``--trial-timeout-s`` (never under ``PRELOAD_MIN_S``, shortened here from 120 s); it
    is killed and replaced, and after three workers the trial fails saying the slot's
    worker did not start (it waited forever before)."""
    from ax.core.base_trial import TrialStatus

    monkeypatch.setattr("odnas.loop.pool.PRELOAD_MIN_S", 3.0)
    env = {"PYTHONPATH": f"{FAULTS}{os.pathsep}{ROOT}", "ODNAS_TEST_WORKER_PRELOAD": "hang"}
    r = _runner(tmp_path / "run", trial_timeout_s=3.0, env=env)
    pids = set()
    try:
        def note_worker() -> bool:  # never ends the wait: only notes each worker's pid
            if (r.pool.dir(0) / "worker.json").exists():
                pids.add(_worker(r)["pid"])
            return False

        meta = r.run_trial(0, PARAMS)
        st = _wait(r, 0, meta, until=note_worker, timeout=120)
        assert st == TrialStatus.FAILED
        reason = json.loads((r.trial_dir(0) / "error.json").read_text())["reason"]
        assert "did not start" in reason, reason
        assert len(pids) >= 3 and all(_gone(pid) for pid in pids - {_worker(r)["pid"]})
    finally:
        r.close()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_driver_killed_while_workers_train_then_resume_reuses_them_and_trains_nothing_twice(tmp_path):
    """SIGKILL the driver while warm workers train; the workers finish their trials, and
    ``odnas resume`` reattaches to them and goes on with the same workers."""
    d = tmp_path / "run"
    # "slow" trials: a warm trial of 1 epoch may end before a poll sees it training
    args = ["search", "--profile", "cpu-mobile", "--space", "mlp", "--fix", "epochs=1", "--quiet",
            "--trials", "5", "--parallel", "2", "--init-trials", "2", "--run-dir", str(d)]
    env = {**os.environ, "PYTHONPATH": f"{FAULTS}{os.pathsep}{ROOT}", "ODNAS_TEST_FAULTS": ",".join(["slow"] * 4),
           "ODNAS_TEST_FAULT_DIR": str(tmp_path / "slots")}
    (tmp_path / "slots").mkdir()
    drv = subprocess.run([sys.executable, str(FAULTS / "driver.py"), "running", "2", *args], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert drv.returncode == -signal.SIGKILL, drv.stderr[-2000:]
    workers = {p.parent.name: json.loads(p.read_text()) for p in (d / "workers").glob("*/worker.json")}
    assert workers and all(w["token"] for w in workers.values())
    proc = run_cli("resume", str(d), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    st = status_json(d)
    assert st["counts"].get("completed") == 5 and st["counts"].get("running", 0) == 0, st["counts"]
    completed = [r for r in st["trials"] if r["state"] == "completed"]
    assert len(list((d / "trials").glob("*/result.json"))) == len(completed), "a candidate was trained twice"
    for r in completed:
        assert len((Path(r["trial_dir"]) / "progress.jsonl").read_text().splitlines()) == 1
    killed_at = max(w["beat"] for w in workers.values())
    after = [r for r in completed if json.loads((Path(r["trial_dir"]) / "launch.json").read_text())["time"] > killed_at]
    tokens = {json.loads((Path(r["trial_dir"]) / "job.json").read_text())["worker"]["token"] for r in after}
    assert after and tokens & {w["token"] for w in workers.values()}, "resume did not use the workers left running"


def test_a_ctrl_c_leaves_busy_workers_training_and_resume_loses_no_trial(tmp_path):
    """Ctrl-C while warm workers train: the driver exits with 130 and says the jobs are
    left to finish; they do (TorchX's local scheduler, closed as the driver exits, would
    SIGTERM them), and ``odnas resume`` completes the search with no trial failed."""
    d = tmp_path / "run"
    args = ["search", "--profile", "cpu-mobile", "--space", "mlp", "--fix", "epochs=1", "--quiet",
            "--trials", "3", "--parallel", "2", "--init-trials", "3", "--run-dir", str(d)]
    env = {**os.environ, "PYTHONPATH": f"{FAULTS}{os.pathsep}{ROOT}", "ODNAS_TEST_FAULTS": ",".join(["slow"] * 2),
           "ODNAS_TEST_FAULT_DIR": str(tmp_path / "slots"), "ODNAS_TEST_KILL_SIGNAL": "INT"}
    (tmp_path / "slots").mkdir()
    drv = subprocess.run([sys.executable, str(FAULTS / "driver.py"), "running", "1", *args], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert drv.returncode == 130, drv.stdout + drv.stderr[-2000:]
    assert "left to finish" in drv.stderr, drv.stderr[-2000:]
    deadline = time.time() + 120  # the trials the driver left finish on their own
    busy = [p.parent for p in (d / "trials").glob("*/job.json")]
    while time.time() < deadline and not all((t / "result.json").exists() or (t / "error.json").exists()
                                             for t in busy):
        time.sleep(0.5)
    assert busy and not [t.name for t in busy if (t / "error.json").exists()], \
        [json.loads((t / "error.json").read_text()) for t in busy if (t / "error.json").exists()]
    proc = run_cli("resume", str(d), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    st = status_json(d)
    assert st["counts"] == {"completed": 3}, st["counts"]
    assert len(list((d / "trials").glob("*/result.json"))) == 3, "a candidate was trained twice"


@pytest.mark.slow
def test_a_worker_sigkilled_in_a_search_is_retried_on_a_new_worker(tmp_path):
    """End to end: the worker dies mid-trial, the trial fails with its reason, its retry
    (same parameters) trains on the slot's new worker, and the search completes."""
    d, slots = tmp_path / "run", tmp_path / "slots"
    slots.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{FAULTS}{os.pathsep}{ROOT}", "ODNAS_TEST_FAULTS": "killworker",
           "ODNAS_TEST_FAULT_DIR": str(slots)}
    proc = subprocess.run(
        [sys.executable, "-m", "odnas", "search", "--profile", "cpu-mobile", "--space", "mlp", "--fix", "epochs=1",
         "--quiet", "--trials", "3", "--parallel", "2", "--init-trials", "3", "--retries", "1",
         "--max-failure-rate", "0.9", "--run-dir", str(d)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    st = status_json(d)
    assert st["counts"] == {"failed": 1, "completed": 3}
    failed = [r for r in st["trials"] if r["state"] == "failed"][0]
    assert "warm worker serving it died" in failed["reason"]
    retry = [r for r in st["trials"] if r["retry_of"] == failed["trial"]]
    assert len(retry) == 1 and retry[0]["state"] == "completed" and retry[0]["params"] == failed["params"]


def test_a_short_trial_timeout_leaves_a_worker_time_to_preload(tmp_path):
    """--trial-timeout-s 2 bounded the worker's one-time preload too (6-11 s on a loaded
    host): every trial failed as "the warm worker of slot 0 did not start 3 times"."""
    from odnas.loop.pool import PRELOAD_MIN_S, START_TIMEOUT_S, WorkerPool
    from odnas.records import RunSettings

    def preload(timeout):
        settings = RunSettings(space="mlp", profile={}, input_shape=[1, 8, 8], num_classes=10,
                               trial_timeout_s=timeout)
        return WorkerPool(tmp_path, settings, torchx=None).preload_timeout_s

    assert (preload(2.0), preload(300.0), preload(None), preload(5000.0)) == (
        PRELOAD_MIN_S, 300.0, START_TIMEOUT_S, START_TIMEOUT_S)
