"""The run dir: its layout, its files' atomic writes, and the one-driver lock.

Everything one search writes lives under its run dir::

    odnas.json           settings (``records.RunSettings``)
    experiment.sqlite    the Ax experiment (SQLite, WAL)
    costs/ARCH_ID.json   cost-lane records (``records.CostRecord``)
    trials/NNNN/         launch.json, job.json, progress.jsonl, tensorboard/, model.pt,
                         result.json or error.json, torchx logs
    workers/K/           warm worker of slot K: worker.json (pid, token, heartbeat, current trial),
                         inbox/NNNN.json (trial requests, removed once served), cancel/NNNN, stop.json
    workers/driver.json  the driver serving workers (pid, host, heartbeat): idle workers outlive
                         a driver by a grace period only
    odnas.log            the libraries' logs; driver-stats.jsonl: where the driver's time went
    trials.json          the driver's latest view of the trials (``records.TrialRow``), for
                         ``odnas status`` without loading Ax; the experiment stays the record

The trial job and the driver talk only through files here: the job writes
``job.json`` first and ``result.json`` (or ``error.json``) last, atomically; the
driver writes ``launch.json`` as it launches. A warm worker (``odnas.jobs.worker``)
serves requests the driver drops into its inbox, one forked child per trial, and the
child writes the very same trial-dir files. Standard library only.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from odnas.errors import RunDirError, SearchError
from odnas.records import RunSettings, TrialRow

SETTINGS_NAME = "odnas.json"
DB_NAME = "experiment.sqlite"
LOG_NAME = "odnas.log"
MAKING_NAME = "making"  # there while ``create_run`` makes the run: a run dir with it was never finished
#: What making a run writes (besides ``MAKING_NAME``): what is removed to make it again.
MADE_NAMES = (SETTINGS_NAME, DB_NAME, *(f"{DB_NAME}-{s}" for s in ("journal", "wal", "shm")), LOG_NAME,
              "calibration.json")
DRIVER_STATS_NAME = "driver-stats.jsonl"  # one line per driver session: where its time went
LOCK_NAME = "driver.lock"
TRIALS_NAME = "trials.json"  # the trial table as the driver last saw it (status reads it without Ax)
STOP_REQUEST_NAME = "stop"  # ``odnas stop``: the driver finishes cleanly at its next poll
TRIALS_DIR = "trials"
COSTS_DIR = "costs"
# In a trial dir:
LAUNCH_NAME = "launch.json"  # the TorchX app handle and parameters, written by the driver as it launches
JOB_NAME = "job.json"  # pid, host, start, parameters: written by the job first
RESULT_NAME = "result.json"  # written by the job last, on success only
ERROR_NAME = "error.json"  # the failure reason, by the job or (for what it cannot report) the driver
STOPPED_NAME = "stopped.json"  # written by the driver before it early-stops the trial's job
PROGRESS_NAME = "progress.jsonl"  # one line per epoch
CHECKPOINT_NAME = "model.pt"
#: The module TorchX runs for a trial (``python -m ...``); a live job's command line names it.
TRIAL_MODULE = "odnas.jobs.trial"
#: The module TorchX runs for a warm worker; its forked trial children share its command line.
WORKER_MODULE = "odnas.jobs.worker"
# Warm workers, one folder per slot:
WORKERS_DIR = "workers"
WORKER_NAME = "worker.json"  # pid, host, proc_start, token, beat, trial (the trial dir it serves, or null)
INBOX_DIR = "inbox"  # NNNN.json: a trial request (the trial job's arguments); removed once served
CANCEL_DIR = "cancel"  # NNNN: the driver asks the worker to kill trial NNNN's child (or never start it)
STOP_NAME = "stop.json"  # {"token": T}: the worker with that token exits when idle
DRIVER_NAME = "driver.json"  # in workers/: pid, host, proc_start, beat of the driver using the workers


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON so that a reader (or a kill) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``, or None if it is missing or not (yet) valid."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def trial_dir(run_dir: str | Path, trial_index: int) -> Path:
    return Path(run_dir) / TRIALS_DIR / f"{trial_index:04d}"


def stored_trial_dir(run_dir: str | Path, path: str | Path) -> str:
    """A trial dir as the run's stored metadata keeps it: relative to the run dir
    (``trials/0003``), so a copied or moved run dir still finds its trials."""
    return Path(path).resolve().relative_to(Path(run_dir).resolve()).as_posix()


def resolve_trial_dir(run_dir: str | Path | None, stored: str | Path | None) -> Path | None:
    """A stored trial dir where the run dir is now. Runs from before relative paths
    stored absolute ones: their last two parts (``trials/NNNN``) are taken, since a
    trial dir always lives there; without a run dir the stored path is all there is."""
    if not stored:
        return None
    p = Path(stored)
    if run_dir is None:
        return p
    if p.is_absolute():
        p = Path(*p.parts[-2:])
    return Path(run_dir) / p


def read_settings(run_dir: str | Path) -> RunSettings:
    """The run's settings; one line if the folder is not a run dir or they are damaged."""
    p = Path(run_dir) / SETTINGS_NAME
    if not Path(run_dir).exists():  # a typo, or a search whose first seconds have not made it yet
        raise RunDirError(f"run dir {run_dir} does not exist")
    if (making := being_made(run_dir)) is not None:
        raise RunDirError(f"{run_dir} is being made by a search that has just started; try again in a few seconds"
                          if making else
                          f"{run_dir} was being made when its search stopped, and nothing was trained: run the same "
                          "`odnas search` with this --run-dir again")
    if not p.is_file():
        raise RunDirError(f"{run_dir} is not an odnas run dir (no {SETTINGS_NAME})")
    try:
        raw = json.loads(p.read_text())
    except ValueError:
        raise RunDirError(f"{p} is not valid JSON; the run dir's settings are damaged") from None
    if not isinstance(raw, dict):
        raise RunDirError(f"{p} does not hold a settings object; the run dir's settings are damaged")
    return RunSettings.from_dict(raw, source=str(p))


def write_settings(run_dir: str | Path, settings: RunSettings) -> None:
    write_json_atomic(Path(run_dir) / SETTINGS_NAME, settings.to_dict())


@contextmanager
def driver_lock(run_dir: Path) -> Iterator[None]:
    """One driver per run dir; a second one is refused with a clear message."""
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / LOCK_NAME, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise SearchError(f"{run_dir} is already being searched by {who}; wait for it, or stop it first "
                          f"(`odnas stop {run_dir}`)") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def driver_running(run_dir: str | Path) -> bool:
    """Whether a driver holds the run dir's lock right now."""
    path = Path(run_dir) / LOCK_NAME
    if not path.exists():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def trial_begun(trial_dir: str | Path) -> bool:
    """Whether a trial's training began, or will without a driver: its job wrote job.json
    (or its result), it went to a fresh TorchX job (which runs once launched), or a warm
    worker is serving it now (its child may not have written job.json yet). A trial
    left in a worker's inbox has not: the worker exits when idle once the driver is gone."""
    d = Path(trial_dir)
    if (d / JOB_NAME).exists() or (d / RESULT_NAME).exists() or "worker" not in (read_json(d / LAUNCH_NAME) or {}):
        return True
    workers = d.parent.parent / WORKERS_DIR
    return any(Path(str(w.get("trial"))).name == d.name for w in map(read_json, workers.glob(f"*/{WORKER_NAME}"))
               if w and w.get("trial"))


def local_jobs_writing(trial_dir: str | Path) -> list[int]:
    """Pids of the trial jobs on this host started to write into ``trial_dir`` (their
    command line reads ``odnas.jobs.trial --out TRIAL_DIR``). A job launched just before
    its driver died may not have written ``job.json`` yet, and the TorchX of a new
    driver does not know it; this finds it all the same (Linux; elsewhere, none)."""
    needle = b"\0--out\0" + str(Path(trial_dir).resolve()).encode() + b"\0"
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    pids = []
    for e in entries:
        if not e.isdigit() or int(e) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{e}/cmdline").read_bytes()
        except OSError:
            continue
        if TRIAL_MODULE.encode() in cmdline and needle in cmdline and _proc_live(_proc_stat(int(e))):
            pids.append(int(e))
    return pids


def write_trials(run_dir: str | Path, rows: list[TrialRow]) -> None:
    """The driver's latest trial table, trial dirs stored relative to the run dir."""
    out = []
    for r in rows:
        d = r.to_dict()
        if r.trial_dir:
            try:
                d["trial_dir"] = stored_trial_dir(run_dir, r.trial_dir)
            except ValueError:  # not under the run dir: kept as it is
                pass
        out.append(d)
    write_json_atomic(Path(run_dir) / TRIALS_NAME, {"time": time.time(), "trials": out})


def read_trials(run_dir: str | Path, running: bool | None = None) -> tuple[list[TrialRow], float] | None:
    """The trial table the driver wrote and when, if it is as new as the experiment:
    written after the experiment's database last changed, or by the driver that holds
    the run now (at most a poll behind; ``running``: whether one does, if the caller
    knows). None when only the experiment can say (a driver was killed after its last
    save, a run from before this file, a damaged file)."""
    run_dir = Path(run_dir)
    path = run_dir / TRIALS_NAME
    try:
        written = path.stat().st_mtime
        changed = (run_dir / DB_NAME).stat().st_mtime
    except OSError:
        return None
    try:
        wal = (run_dir / (DB_NAME + "-wal")).stat()
    except FileNotFoundError:  # none, or removed by the driver's last checkpoint since
        wal = None
    if wal is not None and wal.st_size:  # an empty log holds no change (a reader opening the database makes one)
        changed = max(changed, wal.st_mtime)
    if written < changed and not (driver_running(run_dir) if running is None else running):
        return None
    snap = read_json(path)
    try:
        rows = [TrialRow.from_dict(d, source=str(path)) for d in snap["trials"]]
        return [r.replace(trial_dir=str(resolve_trial_dir(run_dir, r.trial_dir)) if r.trial_dir else None)
                for r in rows], float(snap["time"])
    except (TypeError, KeyError, ValueError, RunDirError):
        return None


def worker_dir(run_dir: str | Path, slot: int) -> Path:
    return Path(run_dir) / WORKERS_DIR / str(int(slot))


def _proc_stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat``'s fields after the command name (``[0]`` the state, ``[19]``
    the start time), or None if the process is gone."""
    try:
        return Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None


def _proc_live(fields: list[str] | None) -> bool:
    return fields is not None and fields[0] not in ("Z", "X")


#: A ``MAKING_NAME`` from another host this old is stale (making a run takes seconds); on
#: this host its process says whether it is alive.
MAKING_STALE_S = 600.0


def mark_making(run_dir: Path) -> None:
    """Say that this process is making ``run_dir`` (``create_run``), and who it is: the
    marker is written whole beside it and linked into place, which fails if another
    search made one meanwhile, and that refuses this one."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{MAKING_NAME}.{os.getpid()}"
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "proc_start": proc_start(os.getpid()), "time": time.time()}))
    try:
        os.link(tmp, run_dir / MAKING_NAME)
    except FileExistsError:
        raise SearchError(f"{run_dir} is being made by another search now; give this one another --run-dir") from None
    finally:
        tmp.unlink(missing_ok=True)


def being_made(run_dir: str | Path) -> bool | None:
    """None: ``run_dir`` is not being made. True: a live process is making it now (on
    another host: a recent marker). False: its making stopped before the end."""
    path = Path(run_dir) / MAKING_NAME
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    rec = read_json(path)
    try:
        if rec.get("host") != socket.gethostname():
            return age < MAKING_STALE_S  # another machine's: it may be making it now
        fields = _proc_stat(int(rec["pid"]))
        return _proc_live(fields) and int(fields[19]) == int(rec["proc_start"])
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return False  # not a marker this odnas writes (an earlier one's): its making is over


def proc_start(pid: int) -> int | None:
    """When a process started (clock ticks since boot, ``/proc/PID/stat`` field 22), or
    None if it is gone. With the pid it names one process for good: a reused pid differs."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def local_job_alive(job: Mapping[str, Any] | None) -> bool:
    """Whether the process recorded in ``job.json`` (or a worker's ``worker.json``) is a
    live odnas job on this host: a trial job, or a warm worker or the trial child it
    forked (which shares its command line). A pid from another host is not ours, nor a
    reused pid: the process's start time must match the one recorded (``proc_start``),
    when recorded."""
    if not job or job.get("host") != socket.gethostname():
        return False
    try:
        pid = int(job["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return False
    fields = _proc_stat(pid)
    if not _proc_live(fields):
        return False
    if job.get("proc_start") is not None and str(job["proc_start"]) != fields[19]:
        return False  # the pid was reused
    return TRIAL_MODULE.encode() in cmdline or WORKER_MODULE.encode() in cmdline


def local_jobs(run_dir: str | Path) -> list[int]:
    """Pids of the run's training jobs alive on this host, and of its warm workers (an
    idle worker still wakes to look at its inbox: a quiet window pauses it too)."""
    run_dir = Path(run_dir)
    trials = run_dir / TRIALS_DIR
    jobs = [read_json(p) for p in trials.glob(f"*/{JOB_NAME}")] if trials.is_dir() else []
    workers = [read_json(p) for p in (run_dir / WORKERS_DIR).glob(f"*/{WORKER_NAME}")] \
        if (run_dir / WORKERS_DIR).is_dir() else []
    return [int(j["pid"]) for j in jobs + [w for w in workers if w and not w.get("exiting")] if local_job_alive(j)]


def read_curve(trial_dir: str | Path) -> list[dict[str, Any]]:
    """The epochs a trial has logged so far (``progress.jsonl``), skipping a line being written."""
    try:
        lines = (Path(trial_dir) / PROGRESS_NAME).read_text().splitlines()
    except OSError:
        return []
    out = []
    for ln in lines:
        try:
            rec = json.loads(ln)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("val_acc") is not None:
            out.append(rec)
    return out
