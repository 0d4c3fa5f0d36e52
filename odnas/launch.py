"""Trials as TorchX jobs, and the Ax runner and metrics that drive and read them.

``trial_app`` is a TorchX component: the same ``AppDef`` runs on ``local_cwd``,
Kubernetes, Slurm or Ray by switching the scheduler. ``TrialRunner`` is an Ax
``IRunner``: before launching it passes the candidate through the cost lane, and a
candidate over a hard budget is completed at once with its costs only. Everything
the runner returns is JSON (an app handle and a trial dir), never a live object,
so the experiment can be stored and resumed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from odnas._ax import import_ax
from odnas.util import parse_kv, read_json, write_json_atomic

import_ax()

from ax.api.protocols.metric import IMetric  # noqa: E402
from ax.api.protocols.runner import IRunner  # noqa: E402
from ax.core.base_trial import BaseTrial, TrialStatus  # noqa: E402
from ax.core.data import Data  # noqa: E402
from ax.utils.common.result import Ok  # noqa: E402

LOCAL_SCHEDULERS = ("local_cwd", "local_docker")
LAUNCH_NAME = "launch.json"  # the TorchX app handle, written by the driver as it launches
DEFAULT_IMAGE = "ghcr.io/odnas/odnas:latest"
# TorchX's Ray scheduler reads a role's ``image`` as a local directory that it zips and
# uploads as the Ray job's working_dir; this folder of the trial dir is that upload.
RAY_WORKDIR = "ray"


def make_resource(resources: str | None, threads: int):
    """A TorchX named resource (``gpu.small``) or ``cpu=4,memMB=8192,gpu=0``.

    Kubernetes and Slurm request all three; Ray reserves ``cpu`` and ``gpu`` only.
    """
    from torchx import specs

    if not resources:
        return specs.Resource(cpu=threads, gpu=0, memMB=2048)
    if resources in specs.named_resources:
        return specs.resource(h=resources)
    if "=" not in resources:
        raise ValueError(f"{resources!r} is not a TorchX named resource (e.g. cpu.small, gpu.small) "
                         "nor cpu=N,memMB=M,gpu=G")
    kv = parse_kv(resources)
    unknown = set(kv) - {"cpu", "gpu", "memMB"}
    if unknown:
        raise ValueError(f"--resources: unknown keys {sorted(unknown)}; use cpu, gpu, memMB or a named resource")
    values = {"cpu": threads, "gpu": 0, "memMB": 2048}
    for key, text in kv.items():
        try:
            values[key] = int(text)
        except ValueError:
            raise ValueError(f"--resources {key}={text!r}: expected a whole number") from None
        if values[key] < (0 if key == "gpu" else 1):
            raise ValueError(f"--resources {key}={text}: must be {'0 or more' if key == 'gpu' else '1 or more'}")
    return specs.Resource(**values)


def trial_app(trial_dir: str, space: str, params: Mapping[str, Any], data: str = "digits",
              data_dir: str | None = None, data_seed: int = 0, seed: int = 0, threads: int = 1,
              scheduler: str = "local_cwd", image: str | None = None, resources: str | None = None,
              env: Mapping[str, str] | None = None, mounts: Sequence[str] | None = None,
              name: str = "odnas-trial"):
    """TorchX component for one training job (``python -m odnas.trial``).

    ``image`` is a container image for Kubernetes and Docker, unused by ``local_cwd``
    and Slurm (they run the host's Python), and for Ray a local directory that is
    uploaded as the job's working dir (default: an empty folder in the trial dir; a
    ``requirements.txt`` there is installed by Ray). ``env`` is set in the job;
    ``mounts`` are TorchX mount strings (Kubernetes, Docker).
    """
    from torchx import specs

    args = ["-m", "odnas.trial", "--out", str(trial_dir), "--space", space,
            "--params", json.dumps(dict(params), sort_keys=True), "--data", data,
            "--data-seed", str(data_seed), "--seed", str(seed), "--threads", str(threads)]
    if data_dir:
        args += ["--data-dir", str(data_dir)]
    bad = [k for k in (env or {}) if not str(k).isidentifier()]
    if bad:
        raise ValueError(f"--env {bad[0]!r}: a variable name is letters, digits and _, not starting with a digit")
    if scheduler == "local_cwd":
        image, entrypoint = os.getcwd(), sys.executable
    elif scheduler == "ray":
        entrypoint = "python"
        if image is None:
            # Not the cwd: that may hold a virtualenv, far over Ray's upload limit.
            image = str(Path(trial_dir) / RAY_WORKDIR)
            Path(image).mkdir(parents=True, exist_ok=True)
        elif not Path(image).is_dir():
            raise ValueError(f"--image {image!r}: for the ray scheduler the image is a local directory "
                             "that Ray uploads as the job's working dir (leave it out for an empty one)")
    else:
        image, entrypoint = image or DEFAULT_IMAGE, "python"
    # A run dir on a Kubernetes PersistentVolume (type=volume) or a host path (type=bind)
    # reaches the job this way, mounted at the driver's path.
    role_mounts = []
    for text in mounts or ():
        try:
            parsed = specs.parse_mounts([part.strip() for part in text.split(",") if part.strip()])
        except (KeyError, ValueError) as e:
            raise ValueError(f"--mount {text!r}: {str(e).strip(chr(39))}; expected "
                             "type=volume,src=CLAIM,dst=/path or type=bind,src=/host,dst=/path") from None
        if len(parsed) != 1:
            raise ValueError(f"--mount {text!r}: give one mount per --mount")
        role_mounts += parsed
    role = specs.Role(
        name="trainer",
        image=image,
        entrypoint=entrypoint,
        args=args,
        env={"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), **(env or {})},
        resource=make_resource(resources, threads),
        mounts=role_mounts,
    )
    return specs.AppDef(name=name, roles=[role])


def local_job_alive(job: Mapping[str, Any] | None) -> bool:
    """Whether the job recorded in ``job.json`` is a live ``odnas.trial`` process on
    this host (a pid from another host, or a reused pid, is not ours)."""
    if not job or job.get("host") != socket.gethostname():
        return False
    try:
        cmdline = Path(f"/proc/{int(job['pid'])}/cmdline").read_bytes()
        state = Path(f"/proc/{int(job['pid'])}/stat").read_text().split(")")[-1].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return b"odnas.trial" in cmdline and state != "Z"


def _same_params(a: Any, b: Mapping[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(dict(b), sort_keys=True)


class TrialRunner(IRunner):
    """Ax runner: cost lane in the driver, then a TorchX job per trial.

    ``settings`` is JSON (space, data, profile, scheduler, ...), so Ax stores and
    rebuilds the runner with the experiment. The cost lane and the TorchX client
    are made on first use; tests may replace ``cost_lane`` with a fake.
    """

    def __init__(self, run_dir: str, settings: dict[str, Any]) -> None:
        super().__init__()
        self.run_dir = str(run_dir)
        self.settings = dict(settings)
        self._torchx = None
        self._cost_lane = None

    @property
    def cost_lane(self):
        if self._cost_lane is None:
            from odnas.search import CostLane

            self._cost_lane = CostLane.from_settings(self.run_dir, self.settings)
        return self._cost_lane

    @cost_lane.setter
    def cost_lane(self, lane) -> None:
        self._cost_lane = lane

    @property
    def torchx(self):
        if self._torchx is None:
            from torchx.runner import get_runner

            self._torchx = get_runner("odnas")
        return self._torchx

    def trial_dir(self, trial_index: int) -> Path:
        return Path(self.run_dir) / "trials" / f"{trial_index:04d}"

    def app_for(self, trial_index: int, parameterization: Mapping[str, Any]):
        s = self.settings
        return trial_app(
            str(self.trial_dir(trial_index).resolve()), s["space"], parameterization, data=s["data"],
            data_dir=s.get("data_dir"), data_seed=s.get("data_seed", 0), seed=s.get("seed", 0) + trial_index,
            threads=s.get("threads", 1), scheduler=s.get("scheduler", "local_cwd"), image=s.get("image"),
            resources=s.get("resources"), env=s.get("env"), mounts=s.get("mounts"),
            name=f"odnas-trial-{trial_index}",
        )

    def scheduler_cfg(self, trial_index: int) -> dict[str, Any]:
        cfg = dict(self.settings.get("scheduler_cfg") or {})
        if self.settings.get("scheduler", "local_cwd") in LOCAL_SCHEDULERS:
            cfg.setdefault("log_dir", str((self.trial_dir(trial_index) / "torchx").resolve()))
        return cfg

    def run_trial(self, trial_index: int, parameterization: Mapping[str, Any]) -> dict[str, Any]:
        parameterization = {**parameterization, **(self.settings.get("fixed") or {})}
        tdir = self.trial_dir(trial_index)
        tdir.mkdir(parents=True, exist_ok=True)
        record = self.cost_lane.costs(parameterization)
        meta: dict[str, Any] = {
            "trial_dir": str(tdir), "arch_id": record["arch_id"], "costs": record["metrics"],
            "costs_sem": record.get("sem", {}), "launched_at": time.time(),
            "params": dict(parameterization),
        }
        over = self.cost_lane.over_budget(record["metrics"])
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
        if any((tdir / f).exists() for f in ("job.json", LAUNCH_NAME, "error.json", "result.json")):
            # Another candidate's job: stop it if it still runs (it would write into the new
            # dir, which has its path), then move its dir aside.
            launch = read_json(tdir / LAUNCH_NAME) or {}
            self.stop_trial(trial_index, {"trial_dir": str(tdir), "app_handle": launch.get("app_handle")})
            tdir.rename(tdir.with_name(f"{tdir.name}.orphan-{int(time.time())}"))
            tdir.mkdir(parents=True)
        scheduler = self.settings.get("scheduler", "local_cwd")
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
        job, launch = read_json(tdir / "job.json"), read_json(tdir / LAUNCH_NAME)
        params = (job or launch or {}).get("params")
        if params is None or not _same_params(params, parameterization):
            return None
        handle = (launch or {}).get("app_handle")
        if (tdir / "result.json").exists() or local_job_alive(job):
            return {"reattached": True, **({"app_handle": handle} if handle else {})}
        if handle and not (tdir / "error.json").exists():
            from torchx.specs import AppState

            state = self._app_state(handle)
            if state is not None and state not in (AppState.SUCCEEDED, AppState.FAILED, AppState.CANCELLED):
                return {"reattached": True, "app_handle": handle}
        return None

    def poll_trial(self, trial_index: int, trial_metadata: Mapping[str, Any]) -> TrialStatus:
        if trial_metadata.get("over_budget"):
            return TrialStatus.COMPLETED
        tdir = Path(trial_metadata["trial_dir"])
        if (tdir / "result.json").exists():
            return TrialStatus.COMPLETED
        if (tdir / "error.json").exists():
            return TrialStatus.FAILED
        state = self._app_state(trial_metadata.get("app_handle"))
        if state is not None:
            from torchx.specs import AppState

            if state in (AppState.SUCCEEDED, AppState.FAILED, AppState.CANCELLED):
                # Finished but wrote no result: re-check once (the file may have just landed).
                if (tdir / "result.json").exists():
                    return TrialStatus.COMPLETED
                self._record_failure(tdir, "job exited without error but wrote no result" if state == AppState.SUCCEEDED
                                     else f"job {state.name.lower()} without writing its result "
                                          "(killed by a signal, or out of memory)")
                return TrialStatus.FAILED
            return self._check_timeout(trial_metadata, tdir)
        # TorchX does not know the app (a local job from before a driver restart):
        # the job's own pid file says whether it still runs.
        job = read_json(tdir / "job.json")
        if local_job_alive(job):
            return self._check_timeout(trial_metadata, tdir)
        if job is None and time.time() - float(trial_metadata.get("launched_at", 0)) < 120:
            return TrialStatus.RUNNING  # still starting up
        return TrialStatus.FAILED

    def _check_timeout(self, trial_metadata: Mapping[str, Any], tdir: Path) -> TrialStatus:
        """A job running past ``trial_timeout_s`` is stopped and failed: a hung job must
        not hold a slot (and the search) forever. The clock starts when the job starts
        (``job.json``), so time spent queued on a cluster does not count."""
        limit = self.settings.get("trial_timeout_s")
        job = read_json(tdir / "job.json") if limit else None
        if not job or time.time() - float(job.get("start", time.time())) <= float(limit):
            return TrialStatus.RUNNING
        self._record_failure(tdir, f"timed out: no result {float(limit):g} s after the job started "
                                   "(--trial-timeout); job stopped")
        self.stop_trial(-1, trial_metadata)
        return TrialStatus.FAILED

    @staticmethod
    def _record_failure(tdir: Path, reason: str) -> None:
        """Write the reason the job could not write itself, unless it wrote one."""
        if not (tdir / "error.json").exists():
            write_json_atomic(tdir / "error.json", {"reason": reason, "time": time.time(), "by": "driver"})

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
            job = read_json(Path(trial_metadata["trial_dir"]) / "job.json")
            if local_job_alive(job):
                os.kill(int(job["pid"]), 15)
        return {"stopped_at": time.time()}


def failure_reason(trial_metadata: Mapping[str, Any]) -> str:
    """Why a trial failed, from its trial dir: the job's own error record; else, if it
    had started, that it died (a kill or the OOM killer leave no record); else the
    last line of its TorchX log (it never got as far as starting)."""
    tdir = Path(trial_metadata.get("trial_dir", "."))
    err = read_json(tdir / "error.json")
    if err:
        return str(err.get("reason", "job failed"))[:500]
    if (tdir / "job.json").exists():
        return "job died without writing its result (killed by a signal, or out of memory)"
    for log in sorted(tdir.glob("torchx/**/stderr*")):
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        if tail:
            return f"job exited before starting: {tail[0][:300]}"
    return "job never started or was lost"


class ValAccMetric(IMetric):
    """``val_acc`` read from the trial dir: the curve while running, the result at the end."""

    def __init__(self, name: str = "val_acc") -> None:
        super().__init__(name=name)
        self.lower_is_better = False  # set here, not stored: a reloaded metric gets it too

    def fetch(self, trial_index: int, trial_metadata: Mapping[str, Any]) -> tuple[int, float]:
        tdir = Path(trial_metadata["trial_dir"])
        res = read_json(tdir / "result.json")
        if res is not None:
            return int(res["epochs"]), float(res["val_acc"])
        curve = read_curve(tdir)
        if not curve:
            raise RuntimeError(f"no val_acc yet in {tdir}")
        return int(curve[-1]["epoch"]), float(curve[-1]["val_acc"])

    def fetch_trial_data(self, trial: BaseTrial, **kwargs: Any):
        # A candidate over a budget is never trained: it has no accuracy, on purpose.
        if trial.run_metadata.get("over_budget"):
            return Ok(value=Data())
        return super().fetch_trial_data(trial, **kwargs)

    @classmethod
    def is_available_while_running(cls) -> bool:
        # Not without early stopping: Ax fetches and saves every running trial's data on
        # every poll when any metric is, which cost 0.4 s of storage writes per poll.
        return False


class ValAccCurveMetric(ValAccMetric):
    """``val_acc`` read while the trial runs too: the learning curve early stopping needs."""

    @classmethod
    def is_available_while_running(cls) -> bool:
        return True


def read_curve(trial_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(trial_dir) / "progress.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for ln in lines:
        try:
            rec = json.loads(ln)
        except ValueError:
            continue  # a line being written right now
        if rec.get("val_acc") is not None:
            out.append(rec)
    return out


class CostMetric(IMetric):
    """A cost metric (params, FLOPs, bytes, latency) from the cost lane, kept in run metadata."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name)
        self.lower_is_better = True

    def fetch(self, trial_index: int, trial_metadata: Mapping[str, Any]) -> tuple[int, tuple[float, float]]:
        value = float(trial_metadata["costs"][self.name])
        # Counts are exact (SEM 0); a timing without a recorded SEM is noisy, not exact.
        default = float("nan") if self.name.startswith("latency") else 0.0
        sem = float(trial_metadata.get("costs_sem", {}).get(self.name, default))
        return 0, (value, sem)

    @classmethod
    def is_available_while_running(cls) -> bool:
        return False  # known at deploy, but fetched with the result: see ValAccMetric


def registry_bundle():
    """Ax storage registry with odnas's runner and metrics, for SQLite save/load."""
    from ax.storage.metric_registry import CORE_METRIC_REGISTRY
    from ax.storage.registry_bundle import RegistryBundle
    from ax.storage.runner_registry import CORE_RUNNER_REGISTRY

    return RegistryBundle(
        metric_clss={**CORE_METRIC_REGISTRY, ValAccMetric: None, ValAccCurveMetric: None, CostMetric: None},
        runner_clss={**CORE_RUNNER_REGISTRY, TrialRunner: None},
    )
