"""The driver's side of warm workers: one long-lived TorchX worker app per slot.

``WorkerPool`` starts a worker (``odnas.jobs.component.worker_app``) through the same
TorchX runner and scheduler as trial jobs, hands it trials by dropping requests into
its inbox, tells whether it is alive, cancels a trial and stops the workers. Its state
is the run dir's files (``rundir``: ``workers/K/worker.json``, ``inbox/``, ``cancel/``,
``stop.json``), so a resumed driver finds the workers a killed one left running and
uses them. A worker is alive when its ``worker.json`` names a live process on this
host (pid and start time), or, on another node, when its heartbeat is recent; a worker
this driver launched and that has not written its record yet is alive while TorchX
says its app runs. Nothing here knows Ax.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from odnas.jobs.component import LOCAL_SCHEDULERS, worker_app
from odnas.records import RunSettings
from odnas.rundir import (
    CANCEL_DIR, DRIVER_NAME, INBOX_DIR, STOP_NAME, WORKER_NAME, WORKERS_DIR, local_job_alive, proc_start,
    read_json, worker_dir, write_json_atomic,
)

BEAT_TIMEOUT_S = 30.0  # a ready worker whose heartbeat is older is hung (on this host) or dead (elsewhere)
START_TIMEOUT_S = 900.0  # a launched worker may take this long to write its record (cluster queueing)
PRELOAD_MIN_S = 120.0  # ... and to preload (imports, data) at least this long, whatever --trial-timeout-s says
IDLE_EXIT_S = 120.0  # an idle worker with no driver for this long exits
WAIT_IDLE_S = 10.0  # all slots busy (a killed trial not yet reaped): wait this long before adding a worker


class WorkerPool:
    def __init__(self, run_dir: str | Path, settings: RunSettings, torchx) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = settings
        self.torchx = torchx
        self.launched: dict[int, dict[str, Any]] = {}  # slot -> {token, handle, at} of workers started here
        self.starts = 0
        self._beat = 0.0
        self.beat_timeout_s = BEAT_TIMEOUT_S
        # A fresh job loads its data within its trial's time, so a short --trial-timeout-s
        # bounds the preload too; but a worker preloads once, for many trials, and took 6-11 s
        # on a loaded 2-core host: a 2-s trial timeout failed every trial as "did not start".
        self.preload_timeout_s = (START_TIMEOUT_S if settings.trial_timeout_s is None else
                                  min(START_TIMEOUT_S, max(PRELOAD_MIN_S, float(settings.trial_timeout_s))))

    # ------------------------------------------------------------ files

    def dir(self, slot: int) -> Path:
        return worker_dir(self.run_dir, slot)

    def record(self, slot: int) -> dict[str, Any] | None:
        """The slot's current worker record: the one this driver launched there if it has
        written it, else whatever worker last wrote it (from before a driver restart)."""
        rec = read_json(self.dir(slot) / WORKER_NAME)
        mine = self.launched.get(slot)
        if rec and mine and rec.get("token") != mine["token"]:
            return None  # an older worker's record; ours has not started yet
        return rec

    def request(self, slot: int, name: str) -> Path:
        return self.dir(slot) / INBOX_DIR / f"{name}.json"

    def pending(self, slot: int) -> list[str]:
        try:
            return sorted(n[:-5] for n in os.listdir(self.dir(slot) / INBOX_DIR)
                          if n.endswith(".json") and not n.startswith("."))
        except OSError:
            return []

    def slots(self) -> list[int]:
        known = set(range(self.cfg.parallel)) | set(self.launched)
        root = self.run_dir / WORKERS_DIR
        if root.is_dir():
            known |= {int(p.name) for p in root.iterdir() if p.name.isdigit()}
        return sorted(known)

    def beat(self, force: bool = False) -> None:
        """Tell the workers a driver uses them (``workers/driver.json``)."""
        now = time.time()
        if force or now - self._beat > 2.0:
            self._beat = now
            (self.run_dir / WORKERS_DIR).mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / WORKERS_DIR / DRIVER_NAME, {
                "pid": os.getpid(), "host": socket.gethostname(), "proc_start": proc_start(os.getpid()),
                "beat": now})

    # ------------------------------------------------------------ liveness

    def alive(self, slot: int) -> bool:
        """Whether the slot's worker runs and is not hung. A worker whose heartbeat stopped
        (it beats every second, preloading, busy or idle) is hung: it is killed here, its
        trial child with it, and counts as dead; so is one still preloading after
        ``preload_timeout_s`` (``--trial-timeout-s`` where that is shorter, but never under
        ``PRELOAD_MIN_S``)."""
        rec = self.record(slot)
        if rec and not rec.get("exiting"):
            now = time.time()
            beat_ok = now - float(rec.get("beat", 0)) < self.beat_timeout_s and (
                rec.get("ready") is not None or now - float(rec.get("start", now)) < self.preload_timeout_s)
            if rec.get("host") == socket.gethostname():
                if local_job_alive(rec):
                    if beat_ok:
                        return True
                    self._kill_hung(slot, rec)
                    return False
            elif beat_ok:
                return True
        mine = self.launched.get(slot)
        if mine and not (rec and rec.get("token") == mine["token"]):
            # launched by this driver, record not written yet: TorchX knows whether it runs
            from torchx.specs import AppState

            try:
                status = self.torchx.status(mine["handle"])
            except Exception:
                status = None
            if status is not None and status.state in (AppState.SUCCEEDED, AppState.FAILED, AppState.CANCELLED):
                return False
            return time.time() - mine["at"] < START_TIMEOUT_S
        return False

    def _kill_hung(self, slot: int, rec: dict[str, Any]) -> None:
        write_json_atomic(self.dir(slot) / STOP_NAME, {"token": rec.get("token")})
        try:
            os.kill(int(rec["pid"]), signal.SIGKILL)  # its trial child dies with it (PR_SET_PDEATHSIG)
        except (ProcessLookupError, PermissionError, KeyError, ValueError):
            pass

    def busy(self, slot: int) -> bool:
        rec = self.record(slot)
        return bool(self.pending(slot)) or bool(rec and rec.get("trial"))

    def serving(self, slot: int, trial_dir: str | Path) -> bool:
        """Whether the slot's live worker is still busy with this trial (its child not yet reaped)."""
        rec = self.record(slot)
        return bool(rec and rec.get("trial") == str(trial_dir)) and self.alive(slot)

    # ------------------------------------------------------------ launching

    def start(self, slot: int) -> dict[str, Any]:
        """Launch a new worker for ``slot`` through TorchX (a previous one there is told to stop)."""
        old = self.record(slot)
        if old and old.get("token"):
            write_json_atomic(self.dir(slot) / STOP_NAME, {"token": old["token"]})
        token = uuid.uuid4().hex[:12]
        s = self.cfg
        d = self.dir(slot)
        for sub in (INBOX_DIR, CANCEL_DIR):
            (d / sub).mkdir(parents=True, exist_ok=True)
        app = worker_app(str(self.run_dir), slot, token, s.space, data=s.data, data_dir=s.data_dir,
                         data_seed=s.data_seed, threads=s.threads, scheduler=s.scheduler, image=s.image,
                         resources=s.resources, env=s.env, mounts=s.mounts, idle_exit_s=IDLE_EXIT_S,
                         name=f"odnas-worker-{slot}")
        cfg = dict(s.scheduler_cfg)
        if s.scheduler in LOCAL_SCHEDULERS:
            cfg.setdefault("log_dir", str((d / "torchx").resolve()))
        self.beat(force=True)
        handle = self.torchx.run(app, s.scheduler, cfg=cfg)
        self.launched[slot] = {"token": token, "handle": str(handle), "at": time.time()}
        self.starts += 1
        return self.launched[slot]

    def acquire(self, depth: int = 1) -> int:
        """A slot for the next trial: one whose worker is alive and idle; else one without a
        live worker, where a new one is launched; else the live worker with the shortest
        queue under ``depth`` (the trial waits in its inbox: behind a child the worker has
        not reaped yet, or, ``depth`` > 1, behind trials generated while the slots train).
        Slots run from 0 to ``parallel - 1``; only when every one is full for
        ``WAIT_IDLE_S`` (a stopped trial's child not reaped yet) is one added. An added
        worker serves while it is idle and the others are not, and is told to exit once
        one of the first ``parallel`` is idle again, so added workers never pile up."""
        self.beat()
        deadline = time.time() + WAIT_IDLE_S
        while True:
            slots = range(self.cfg.parallel)
            added = [k for k in self.slots()
                     if k >= self.cfg.parallel and self.alive(k) and not self._told_to_stop(k)]
            live = [k for k in slots if self.alive(k)]
            for k in live:
                if not self.busy(k):
                    self._retire(added)
                    return k
            for k in added:
                if not self.busy(k):
                    return k
            for k in slots:
                if k not in live:
                    self.start(k)
                    return k
            queued = sorted((len(self.pending(k)), k) for k in live)
            if queued and queued[0][0] < depth:
                return queued[0][1]
            if time.time() > deadline:
                k = next(k for k in range(self.cfg.parallel, 10_000) if not self.alive(k))
                self.start(k)
                return k
            time.sleep(0.1)

    def _told_to_stop(self, slot: int) -> bool:
        rec, stop = self.record(slot), read_json(self.dir(slot) / STOP_NAME)
        return bool(rec and stop and stop.get("token") in (rec.get("token"), "*"))

    def _retire(self, added: list[int]) -> None:
        """Tell the idle workers among ``added`` to exit (they exit once idle; a busy one
        finishes its trial first and is told again next time)."""
        for k in added:
            rec = self.record(k)
            if rec and rec.get("token") and not rec.get("exiting") and not self.busy(k):
                write_json_atomic(self.dir(k) / STOP_NAME, {"token": rec["token"]})

    def submit(self, slot: int, name: str, argv: list[str], trial_dir: str | Path) -> Path:
        req = self.request(slot, name)
        req.parent.mkdir(parents=True, exist_ok=True)
        try:
            (self.dir(slot) / CANCEL_DIR / name).unlink()
        except FileNotFoundError:
            pass
        write_json_atomic(req, {"argv": list(argv), "trial_dir": str(trial_dir), "time": time.time()})
        return req

    def log_tail(self, slot: int) -> str:
        """The last line of the slot's worker log (why it could not start)."""
        logs = (self.dir(slot) / "torchx").glob("**/stderr*")
        for log in sorted(logs, key=lambda p: p.stat().st_mtime, reverse=True):  # the latest worker's first
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
            if tail:
                return tail[0][:300]
        return ""

    # ------------------------------------------------------------ stopping

    def cancel(self, slot: int, name: str, job: dict[str, Any] | None = None) -> None:
        """Stop trial ``name`` on ``slot``: never start it, or kill its child (at once when
        it runs on this host; through ``cancel/NNNN`` the worker reads, anywhere)."""
        d = self.dir(slot)
        (d / CANCEL_DIR).mkdir(parents=True, exist_ok=True)
        (d / CANCEL_DIR / name).touch()
        try:
            self.request(slot, name).unlink()
        except FileNotFoundError:
            pass
        if local_job_alive(job):
            try:
                os.killpg(int(job["pid"]), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop_all(self) -> None:
        """Ask every live worker to exit once idle (a worker busy with a trial finishes it:
        a resumed driver reattaches to that trial). A worker launched but not up yet is
        cancelled through TorchX (on ``local_cwd``: SIGTERM, and SIGKILL after up to 10 s)."""
        for k in self.slots():
            rec = self.record(k)
            if rec and rec.get("token") and not rec.get("exiting"):
                write_json_atomic(self.dir(k) / STOP_NAME, {"token": rec["token"]})
            mine = self.launched.get(k)
            if mine and not (rec and rec.get("token") == mine["token"]):
                try:  # launched but not up yet: TorchX stops it
                    self.torchx.cancel(mine["handle"])
                except Exception:
                    pass
