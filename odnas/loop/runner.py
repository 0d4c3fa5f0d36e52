"""The Ax runner: the cost lane in the driver, then the trial on a warm worker or a TorchX job.

``TrialRunner`` is an Ax ``IRunner``. Before launching it passes the candidate through
the cost lane, and a candidate over a hard budget is completed at once with its costs
only. Then, with ``workers="warm"``, the trial goes to an idle warm worker of a slot
(``odnas.loop.pool``; a worker is launched through TorchX when the slot has none),
else to a TorchX job of its own. Everything it returns is JSON (an app handle or a
worker slot, and a trial dir), never a live object, so the experiment can be stored
and resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odnas.cost.device import DeviceError, DeviceRefusedModel
from odnas.errors import OdnasError
from odnas.jobs.component import (LOCAL_SCHEDULERS, leave_local_jobs_running, torchx_runner, trial_app, trial_args,
                                  warm_capable)
from odnas.loop.adapter import import_ax
from odnas.loop.pool import WorkerPool
from odnas.records import CostRecord, RunSettings
from odnas.rundir import (
    ERROR_NAME, JOB_NAME, LAUNCH_NAME, RESULT_NAME, STOPPED_NAME, local_job_alive, local_jobs_writing, read_json,
    resolve_trial_dir, stored_trial_dir, trial_dir, write_json_atomic,
)

import_ax()

from ax.api.protocols.runner import IRunner  # noqa: E402
from ax.core.base_trial import BaseTrial, TrialStatus  # noqa: E402


def _same_params(a: Any, b: Mapping[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(dict(b), sort_keys=True)


@dataclass
class _Live:
    """A runner's live parts (see ``TrialRunner.__init__``)."""

    cost_lane: Any = None
    torchx: Any = None
    pool: WorkerPool | None = None
    dead_seen: dict[str, float] = field(default_factory=dict)  # trial dir -> when its child was first seen gone
    restarts: dict[str, int] = field(default_factory=dict)  # trial dir -> workers launched again to serve it
    seconds: dict[str, float] = field(default_factory=dict)  # where the runner's time went (deploy, poll)
    calls: dict[str, int] = field(default_factory=dict)
    device_gone: Exception | None = None  # the device agent stayed away: every deployment fails now


class TrialRunner(IRunner):
    """Ax runner: cost lane in the driver, then a TorchX job per trial.

    ``settings`` is the run's ``RunSettings`` as JSON, so Ax stores and rebuilds the
    runner with the experiment. The driver gives it its live parts with ``attach``:
    the cost lane and the TorchX runner (whose schedulers may include ones passed in,
    such as ``odnas.testing``'s in-process scheduler). ``seconds`` and ``calls``
    record where its time went (deploy, which includes the cost lane, and poll).
    """

    def __init__(self, run_dir: str, settings: dict[str, Any]) -> None:
        super().__init__()
        self.run_dir = str(run_dir)
        self.settings = dict(settings)
        self.cfg = RunSettings.from_dict(settings)
        # Live parts, never stored: one plain object, the same type in the runner Ax decodes
        # after a save, so Ax's db-id copy passes it by (no warning per save).
        self._live = _Live()

    def attach(self, run_dir: str | Path, cost_lane, torchx) -> "TrialRunner":
        """Give the runner where the run dir is now, its cost lane and its TorchX runner."""
        self.run_dir = str(run_dir)
        self._live = _Live(cost_lane=cost_lane, torchx=torchx)
        return self

    @property
    def cost_lane(self):
        return self._live.cost_lane

    @property
    def seconds(self) -> dict[str, float]:
        return self._live.seconds

    @property
    def calls(self) -> dict[str, int]:
        return self._live.calls

    def tdir(self, trial_metadata: Mapping[str, Any]) -> Path:
        """The trial dir of a trial's metadata, where the run dir is now."""
        return resolve_trial_dir(self.run_dir, trial_metadata["trial_dir"])

    @property
    def warm(self) -> bool:
        """Whether new trials go to warm workers (``RunSettings.workers``; only on TorchX's own schedulers)."""
        return self.cfg.workers == "warm" and warm_capable(self.cfg.scheduler)

    @property
    def pool(self) -> WorkerPool:
        if self._live.pool is None:
            self._live.pool = WorkerPool(self.run_dir, self.cfg, self.torchx)
        return self._live.pool

    def close(self) -> None:
        """The driver is leaving: warm workers exit once idle (a busy one finishes its
        trial), and jobs still training are left to finish (resume reattaches to them),
        not killed with TorchX's local scheduler as the driver exits."""
        if self._live.pool is not None:
            self._live.pool.stop_all()
        if self._live.torchx is not None:
            leave_local_jobs_running(self._live.torchx)

    @property
    def torchx(self):
        """The TorchX runner (TorchX's own schedulers unless the driver attached another)."""
        if self._live.torchx is None:
            self._live.torchx = torchx_runner()
        return self._live.torchx

    def _timed(self, key: str, t0: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0
        self.calls[key] = self.calls.get(key, 0) + 1

    def trial_dir(self, trial_index: int) -> Path:
        return trial_dir(self.run_dir, trial_index)

    def app_for(self, trial_index: int, parameterization: Mapping[str, Any]):
        s = self.cfg
        return trial_app(
            str(self.trial_dir(trial_index).resolve()), s.space, parameterization, data=s.data,
            data_dir=s.data_dir, data_seed=s.data_seed, seed=s.seed + trial_index,
            threads=s.threads, scheduler=s.scheduler, image=s.image,
            resources=s.resources, env=s.env, mounts=s.mounts,
            name=f"odnas-trial-{trial_index}",
        )

    def scheduler_cfg(self, trial_index: int) -> dict[str, Any]:
        cfg = dict(self.cfg.scheduler_cfg)
        if self.cfg.scheduler in LOCAL_SCHEDULERS:
            cfg.setdefault("log_dir", str((self.trial_dir(trial_index) / "torchx").resolve()))
        return cfg

    def run_trial(self, trial_index: int, parameterization: Mapping[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        # A device that stayed away past its retries (or refused) ends the search: Ax retries
        # a failed deployment three times, and each would wait out the device's retries again.
        if self._live.device_gone is not None:
            raise self._live.device_gone
        try:
            return self._deploy(trial_index, parameterization)
        except DeviceError as e:  # gone past its retries, or refusing: deploying again would not help
            self._live.device_gone = e
            raise
        finally:
            self._timed("deploy", t0)

    def _deploy(self, trial_index: int, parameterization: Mapping[str, Any]) -> dict[str, Any]:
        parameterization = {**parameterization, **self.cfg.fixed}
        tdir = self.trial_dir(trial_index)
        tdir.mkdir(parents=True, exist_ok=True)
        try:
            record: CostRecord = self.cost_lane.costs(parameterization)
        except DeviceRefusedModel as e:  # this candidate only: it fails with the device's reason
            self._record_failure(tdir, str(e))
            return {"trial_dir": stored_trial_dir(self.run_dir, tdir), "params": dict(parameterization),
                    "launched_at": time.time(), "device_refused": True}
        except OdnasError:
            raise  # the search's own (a device gone, a bad calibration): not this candidate's
        except Exception as e:  # noqa: BLE001 -- the space could not build, count or export this candidate
            why = (str(e).strip().splitlines() or [""])[0][:300]
            self._record_failure(tdir, f"the candidate could not be built, counted or exported: "
                                       f"{type(e).__name__}: {why}")
            return {"trial_dir": stored_trial_dir(self.run_dir, tdir), "params": dict(parameterization),
                    "launched_at": time.time(), "cost_failed": True}
        meta: dict[str, Any] = {
            "trial_dir": stored_trial_dir(self.run_dir, tdir), "arch_id": record.arch_id, "costs": record.metrics,
            "costs_sem": record.sem, "launched_at": time.time(),
            "params": dict(parameterization),
        }
        over = self.cost_lane.over_budget(record.metrics)
        if over:
            meta["over_budget"] = over
            launch = read_json(tdir / LAUNCH_NAME) or {}
            if not ("over_budget" in launch and _same_params(launch.get("params", {}), parameterization)):
                self._move_aside(trial_index, tdir)
            # Recorded like a launch: a driver killed before Ax saves this trial finds it,
            # and adopts the trials launched after it under their own indices.
            write_json_atomic(tdir / LAUNCH_NAME, {"over_budget": over, "params": dict(parameterization),
                                                   "time": time.time()})
            return meta
        # A job from before a driver crash may already have run or still run here. Ax may
        # have given this index to another candidate since (trials are saved after they
        # are deployed), so reattach only to a job with these very parameters.
        prior = self.prior_job(tdir, parameterization)
        if prior is not None:
            meta.update(prior)
            return meta
        self._move_aside(trial_index, tdir)
        scheduler = self.cfg.scheduler
        if self.warm:
            s = self.cfg
            slot = self.pool.acquire(depth=1 + max(0, int(self.cfg.lookahead)))
            meta["worker"] = slot
            # launch.json first: a driver killed before the request exists relaunches, never doubles.
            write_json_atomic(tdir / LAUNCH_NAME, {"worker": slot, "params": dict(parameterization),
                                                   "scheduler": scheduler, "time": time.time()})
            self.pool.submit(slot, tdir.name, trial_args(
                str(tdir.resolve()), s.space, parameterization, data=s.data, data_dir=s.data_dir,
                data_seed=s.data_seed, seed=s.seed + trial_index, threads=s.threads), tdir.resolve())
            return meta
        handle = self.torchx.run(self.app_for(trial_index, parameterization), scheduler,
                                 cfg=self.scheduler_cfg(trial_index))
        meta["app_handle"] = str(handle)
        # Written before Ax saves the trial: a driver killed in between can still find the job.
        write_json_atomic(tdir / LAUNCH_NAME, {"app_handle": str(handle), "params": dict(parameterization),
                                               "scheduler": scheduler, "time": time.time()})
        return meta

    def _move_aside(self, trial_index: int, tdir: Path) -> None:
        """Another candidate's leftover in this index's dir: stop its job if it still runs
        (it would write into the new dir, which has its path), then move the dir aside."""
        if any((tdir / f).exists() for f in (JOB_NAME, LAUNCH_NAME, ERROR_NAME, RESULT_NAME)):
            launch = read_json(tdir / LAUNCH_NAME) or {}
            self.stop_trial(trial_index, {"trial_dir": str(tdir), "app_handle": launch.get("app_handle"),
                                          **({"worker": launch["worker"]} if "worker" in launch else {})})
            for pid in local_jobs_writing(tdir):  # launched but not started: no job.json to find it by
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    try:
                        os.killpg(pid, signal.SIGKILL)  # its own session (TorchX's local scheduler)
                    except ProcessLookupError:
                        os.kill(pid, signal.SIGKILL)
            tdir.rename(_unused(tdir.with_name(f"{tdir.name}.orphan-{int(time.time())}")))
            tdir.mkdir(parents=True)

    def lost_job(self, trial_index: int, parameterization: Mapping[str, Any]) -> dict[str, Any]:
        """Metadata for a job launched into this index that looked dead to a resumed
        driver: nothing is launched. The first poll fails the trial with the reason its
        records give, or, if the job was only starting, it completes as any trial (its
        costs are measured again here for that). See ``driver.adopt_lost_jobs``."""
        tdir = self.trial_dir(trial_index)
        launch = read_json(tdir / LAUNCH_NAME) or {}
        how = {k: launch[k] for k in ("app_handle", "worker") if launch.get(k) is not None}
        record: CostRecord = self.cost_lane.costs({**parameterization, **self.cfg.fixed})
        return {"trial_dir": stored_trial_dir(self.run_dir, tdir), "arch_id": record.arch_id,
                "costs": record.metrics, "costs_sem": record.sem, "params": dict(parameterization),
                "launched_at": float(launch.get("time", 0.0)), "reattached": True, **how}

    def prior_job(self, tdir: Path, parameterization: Mapping[str, Any]) -> dict[str, Any] | None:
        """Metadata to reattach to a job already launched into ``tdir`` with these
        parameters, if it finished with a result or still runs: a local job by its pid,
        any other by its TorchX app handle. None when there is nothing to reattach to."""
        job, launch = read_json(tdir / JOB_NAME), read_json(tdir / LAUNCH_NAME)
        params = (job or launch or {}).get("params")
        if params is None or not _same_params(params, parameterization):
            return None
        handle = (launch or {}).get("app_handle")
        worker = (launch or {}).get("worker")
        how = {"app_handle": handle} if handle else {"worker": int(worker)} if worker is not None else {}
        if (tdir / RESULT_NAME).exists() or local_job_alive(job):
            return {"reattached": True, **how}
        if worker is not None:
            # On a warm worker: its request still waits in the inbox (a worker of the slot
            # will serve it), or a worker on another node still serves it.
            if not (tdir / ERROR_NAME).exists() and (
                    tdir.name in self.pool.pending(int(worker)) or self.pool.serving(int(worker), tdir.resolve())):
                return {"reattached": True, **how}
            return None
        if handle and not (tdir / ERROR_NAME).exists():
            from torchx.specs import AppState

            state = self._app_state(handle)
            if state is not None and state not in (AppState.SUCCEEDED, AppState.FAILED, AppState.CANCELLED):
                return {"reattached": True, "app_handle": handle}
            if state is None and job is None and self.cfg.scheduler in LOCAL_SCHEDULERS and local_jobs_writing(tdir):
                return {"reattached": True, "app_handle": handle}  # launched, not yet started (importing)
        return None

    def poll_trial(self, trial_index: int, trial_metadata: Mapping[str, Any]) -> TrialStatus:
        t0 = time.perf_counter()
        try:
            return self._poll(trial_metadata)
        finally:
            self._timed("poll", t0)

    def _poll(self, trial_metadata: Mapping[str, Any]) -> TrialStatus:
        if trial_metadata.get("over_budget"):
            return TrialStatus.COMPLETED
        tdir = self.tdir(trial_metadata)
        ended = self._ended(tdir)
        if ended == TrialStatus.EARLY_STOPPED:  # stopped by a driver that died before Ax stored it
            self.stop_trial(-1, trial_metadata)  # its job may not have been reached: it is now
        if ended is not None:
            return ended
        if trial_metadata.get("worker") is not None:
            return self._poll_warm(trial_metadata, tdir)
        state = self._app_state(trial_metadata.get("app_handle"))
        if state is not None:
            from torchx.specs import AppState

            if state in (AppState.SUCCEEDED, AppState.FAILED, AppState.CANCELLED):
                # Finished but wrote no result: re-check once (the file may have just landed).
                if (tdir / RESULT_NAME).exists():
                    return TrialStatus.COMPLETED
                self._record_failure(tdir, "job exited without error but wrote no result" if state == AppState.SUCCEEDED
                                     else f"job {state.name.lower()} without writing its result "
                                          "(killed by a signal, or out of memory)")
                return TrialStatus.FAILED
            return self._check_timeout(trial_metadata, tdir)
        # TorchX does not know the app (a local job from before a driver restart):
        # the job's own pid file says whether it still runs.
        job = read_json(tdir / JOB_NAME)
        if local_job_alive(job):
            return self._check_timeout(trial_metadata, tdir)
        if job is None and time.time() - float(trial_metadata.get("launched_at", 0)) < 120:
            return TrialStatus.RUNNING  # still starting up
        return TrialStatus.FAILED

    def _poll_warm(self, trial_metadata: Mapping[str, Any], tdir: Path) -> TrialStatus:
        """A trial on a warm worker: its child's pid (``job.json``) while it runs, the
        worker's record after; a worker that died before starting it is replaced and the
        new one serves the waiting request; one that died while serving it fails it."""
        pool, slot, name, now = self.pool, int(trial_metadata["worker"]), tdir.name, time.time()
        pool.beat()
        job = read_json(tdir / JOB_NAME)
        if job is not None:
            remote = job.get("host") != socket.gethostname()
            if local_job_alive(job) or (remote and pool.serving(slot, tdir.resolve())):
                return self._check_timeout(trial_metadata, tdir)
            if pool.serving(slot, tdir.resolve()):  # the worker has not reaped it yet
                if now - self._live.dead_seen.setdefault(str(tdir), now) < 10:
                    return TrialStatus.RUNNING
            ended = self._ended(tdir)
            if ended is not None:
                return ended
            self._record_failure(tdir, "the warm worker serving it died (killed by a signal, or out of memory); "
                                       "the trial died with it" if not pool.alive(slot) else
                                 "job died without writing its result (killed by a signal, or out of memory)")
            pool.cancel(slot, name)
            return TrialStatus.FAILED
        if name in pool.pending(slot):
            if pool.alive(slot):
                return TrialStatus.RUNNING  # waiting for the worker (starting up, or reaping a child)
            ended = self._ended(tdir)
            if ended is not None:
                return ended
            tries = self._live.restarts.get(str(tdir), 0)
            if tries < 3:
                # The worker died before it started this trial: a new one takes the slot and serves it.
                self._live.restarts[str(tdir)] = tries + 1
                pool.start(slot)
                return TrialStatus.RUNNING
            self._record_failure(tdir, f"the warm worker of slot {slot} did not start {tries} times: "
                                       f"{pool.log_tail(slot) or 'no log'}")
            pool.cancel(slot, name)
            return TrialStatus.FAILED
        ended = self._ended(tdir)
        if ended is not None:
            return ended
        if now - float(trial_metadata.get("launched_at", 0)) < 5:
            return TrialStatus.RUNNING
        self._record_failure(tdir, "job never started or was lost (its request left the worker's inbox)")
        return TrialStatus.FAILED

    @staticmethod
    def _ended(tdir: Path) -> TrialStatus | None:
        """COMPLETED, EARLY_STOPPED or FAILED if the trial's last file has landed (checked
        again after a liveness check: it may have landed in between), else None. A trial
        the driver early-stopped is that, not the failure its killed job reports ("job
        stopped by the driver"), when a driver died before Ax stored the stop."""
        if (tdir / RESULT_NAME).exists():
            return TrialStatus.COMPLETED
        if (tdir / STOPPED_NAME).exists():
            return TrialStatus.EARLY_STOPPED
        if (tdir / ERROR_NAME).exists():
            return TrialStatus.FAILED
        return None

    def _check_timeout(self, trial_metadata: Mapping[str, Any], tdir: Path) -> TrialStatus:
        """A job running past ``trial_timeout_s`` is stopped and failed: a hung job must
        not hold a slot (and the search) forever. The clock starts when the job starts
        (``job.json``), so time spent queued on a cluster does not count."""
        limit = self.cfg.trial_timeout_s
        job = read_json(tdir / JOB_NAME) if limit else None
        if not job or time.time() - float(job.get("start", time.time())) <= float(limit):
            return TrialStatus.RUNNING
        self._record_failure(tdir, f"timed out: no result {float(limit):g} s after the job started "
                                   "(--trial-timeout-s); job stopped")
        self.stop_trial(-1, trial_metadata)
        return TrialStatus.FAILED

    @staticmethod
    def _record_failure(tdir: Path, reason: str) -> None:
        """Write the reason the job could not write itself, unless it wrote one."""
        if not (tdir / ERROR_NAME).exists():
            write_json_atomic(tdir / ERROR_NAME, {"reason": reason, "time": time.time(), "by": "driver"})

    def _app_state(self, handle: str | None):
        if not handle:
            return None
        try:
            status = self.torchx.status(handle)
        except Exception:
            return None
        return None if status is None else status.state

    def poll_exception(self, trial: BaseTrial) -> str:
        return failure_reason(trial.run_metadata, self.run_dir)

    def stop(self, trial: BaseTrial, reason: str | None = None) -> dict[str, Any]:
        """Ax early-stops a trial: the trial dir says so first (``STOPPED_NAME``), so a
        driver killed before Ax stores the stop finds an early-stopped trial, not a failed
        one (``_ended``), and a result that lands anyway is found (``finished_while_stopped``)."""
        tdir = self.tdir(trial.run_metadata)
        write_json_atomic(tdir / STOPPED_NAME, {"time": time.time(), "reason": reason})
        return super().stop(trial, reason)

    def finished_while_stopped(self, trials) -> list[int]:
        """Of early-stopped ``trials``, those whose job finished anyway, its result
        written: a complete training that Ax, as it marks every trial it stops, took for a
        stopped one. The stop may reach a job after its last epoch, or late (a cancel on a
        cluster, a worker on another node), or not at all (a driver killed first)."""
        dirs = {t.index: self.tdir(t.run_metadata) for t in trials}
        return [i for i, d in dirs.items() if (d / STOPPED_NAME).exists() and (d / RESULT_NAME).exists()]

    def stop_trial(self, trial_index: int, trial_metadata: Mapping[str, Any]) -> dict[str, Any]:
        if trial_metadata.get("worker") is not None:  # kill the child, never the worker
            tdir = self.tdir(trial_metadata)
            self.pool.cancel(int(trial_metadata["worker"]), tdir.name, read_json(tdir / JOB_NAME))
            return {"stopped_at": time.time()}
        handle = trial_metadata.get("app_handle")
        if handle and self._app_state(handle) is not None:
            self.torchx.cancel(handle)
        else:
            job = read_json(self.tdir(trial_metadata) / JOB_NAME)
            if local_job_alive(job):
                os.kill(int(job["pid"]), 15)
        return {"stopped_at": time.time()}


def failure_reason(trial_metadata: Mapping[str, Any], run_dir: str | Path | None = None) -> str:
    """Why a trial failed, from its trial dir (``run_dir``: where the run is now): the
    job's own error record; else, if it had started, that it died (a kill or the OOM
    killer leave no record); else the last line of its TorchX log (it never got as far
    as starting)."""
    tdir = resolve_trial_dir(run_dir, trial_metadata.get("trial_dir")) or Path(".")
    err = read_json(tdir / ERROR_NAME)
    if err:
        return str(err.get("reason", "job failed"))[:500]
    if (tdir / JOB_NAME).exists():
        return "job died without writing its result (killed by a signal, or out of memory)"
    for log in sorted(tdir.glob("torchx/**/stderr*")):
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        if tail:
            return f"job exited before starting: {tail[0][:300]}"
    return "job never started or was lost"


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... if it is taken (an index moved aside twice in one second)."""
    n = 1
    out = path
    while out.exists():
        n += 1
        out = path.with_name(f"{path.name}-{n}")
    return out
