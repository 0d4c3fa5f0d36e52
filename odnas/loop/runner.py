"""The Ax runner: the cost lane in the driver, then a TorchX job per trial.

``TrialRunner`` is an Ax ``IRunner``. Before launching it passes the candidate through
the cost lane, and a candidate over a hard budget is completed at once with its costs
only. Everything it returns is JSON (an app handle and a trial dir), never a live
object, so the experiment can be stored and resumed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from odnas.jobs.component import LOCAL_SCHEDULERS, torchx_runner, trial_app
from odnas.loop.adapter import import_ax
from odnas.records import CostRecord, RunSettings
from odnas.rundir import (
    ERROR_NAME, JOB_NAME, LAUNCH_NAME, RESULT_NAME, local_job_alive, read_json, trial_dir, write_json_atomic,
)

import_ax()

from ax.api.protocols.runner import IRunner  # noqa: E402
from ax.core.base_trial import BaseTrial, TrialStatus  # noqa: E402


def _same_params(a: Any, b: Mapping[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(dict(b), sort_keys=True)


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
        self.cost_lane = None
        self._torchx = None
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def attach(self, run_dir: str | Path, cost_lane, torchx) -> "TrialRunner":
        """Give the runner where the run dir is now, its cost lane and its TorchX runner."""
        self.run_dir = str(run_dir)
        self.cost_lane, self._torchx = cost_lane, torchx
        return self

    @property
    def torchx(self):
        """The TorchX runner (TorchX's own schedulers unless the driver attached another)."""
        if self._torchx is None:
            self._torchx = torchx_runner()
        return self._torchx

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
        try:
            return self._deploy(trial_index, parameterization)
        finally:
            self._timed("deploy", t0)

    def _deploy(self, trial_index: int, parameterization: Mapping[str, Any]) -> dict[str, Any]:
        parameterization = {**parameterization, **self.cfg.fixed}
        tdir = self.trial_dir(trial_index)
        tdir.mkdir(parents=True, exist_ok=True)
        record: CostRecord = self.cost_lane.costs(parameterization)
        meta: dict[str, Any] = {
            "trial_dir": str(tdir), "arch_id": record.arch_id, "costs": record.metrics,
            "costs_sem": record.sem, "launched_at": time.time(),
            "params": dict(parameterization),
        }
        over = self.cost_lane.over_budget(record.metrics)
        if over:
            meta["over_budget"] = over
            return meta
        # A job from before a driver crash may already have run or still run here. Ax may
        # have given this index to another candidate since (trials are saved after they
        # are deployed), so reattach only to a job with these very parameters.
        prior = self.prior_job(tdir, parameterization)
        if prior is not None:
            meta.update(prior)
            return meta
        if any((tdir / f).exists() for f in (JOB_NAME, LAUNCH_NAME, ERROR_NAME, RESULT_NAME)):
            # Another candidate's job: stop it if it still runs (it would write into the new
            # dir, which has its path), then move its dir aside.
            launch = read_json(tdir / LAUNCH_NAME) or {}
            self.stop_trial(trial_index, {"trial_dir": str(tdir), "app_handle": launch.get("app_handle")})
            tdir.rename(tdir.with_name(f"{tdir.name}.orphan-{int(time.time())}"))
            tdir.mkdir(parents=True)
        scheduler = self.cfg.scheduler
        handle = self.torchx.run(self.app_for(trial_index, parameterization), scheduler,
                                 cfg=self.scheduler_cfg(trial_index))
        meta["app_handle"] = str(handle)
        # Written before Ax saves the trial: a driver killed in between can still find the job.
        write_json_atomic(tdir / LAUNCH_NAME, {"app_handle": str(handle), "params": dict(parameterization),
                                               "scheduler": scheduler, "time": time.time()})
        return meta

    def prior_job(self, tdir: Path, parameterization: Mapping[str, Any]) -> dict[str, Any] | None:
        """Metadata to reattach to a job already launched into ``tdir`` with these
        parameters, if it finished with a result or still runs: a local job by its pid,
        any other by its TorchX app handle. None when there is nothing to reattach to."""
        job, launch = read_json(tdir / JOB_NAME), read_json(tdir / LAUNCH_NAME)
        params = (job or launch or {}).get("params")
        if params is None or not _same_params(params, parameterization):
            return None
        handle = (launch or {}).get("app_handle")
        if (tdir / RESULT_NAME).exists() or local_job_alive(job):
            return {"reattached": True, **({"app_handle": handle} if handle else {})}
        if handle and not (tdir / ERROR_NAME).exists():
            from torchx.specs import AppState

            state = self._app_state(handle)
            if state is not None and state not in (AppState.SUCCEEDED, AppState.FAILED, AppState.CANCELLED):
                return {"reattached": True, "app_handle": handle}
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
        tdir = Path(trial_metadata["trial_dir"])
        if (tdir / RESULT_NAME).exists():
            return TrialStatus.COMPLETED
        if (tdir / ERROR_NAME).exists():
            return TrialStatus.FAILED
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

    def _check_timeout(self, trial_metadata: Mapping[str, Any], tdir: Path) -> TrialStatus:
        """A job running past ``trial_timeout_s`` is stopped and failed: a hung job must
        not hold a slot (and the search) forever. The clock starts when the job starts
        (``job.json``), so time spent queued on a cluster does not count."""
        limit = self.cfg.trial_timeout_s
        job = read_json(tdir / JOB_NAME) if limit else None
        if not job or time.time() - float(job.get("start", time.time())) <= float(limit):
            return TrialStatus.RUNNING
        self._record_failure(tdir, f"timed out: no result {float(limit):g} s after the job started "
                                   "(--trial-timeout); job stopped")
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
        return failure_reason(trial.run_metadata)

    def stop_trial(self, trial_index: int, trial_metadata: Mapping[str, Any]) -> dict[str, Any]:
        handle = trial_metadata.get("app_handle")
        if handle and self._app_state(handle) is not None:
            self.torchx.cancel(handle)
        else:
            job = read_json(Path(trial_metadata["trial_dir"]) / JOB_NAME)
            if local_job_alive(job):
                os.kill(int(job["pid"]), 15)
        return {"stopped_at": time.time()}


def failure_reason(trial_metadata: Mapping[str, Any]) -> str:
    """Why a trial failed, from its trial dir: the job's own error record; else, if it
    had started, that it died (a kill or the OOM killer leave no record); else the
    last line of its TorchX log (it never got as far as starting)."""
    tdir = Path(trial_metadata.get("trial_dir", "."))
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


