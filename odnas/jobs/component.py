"""The trial job and the warm worker as TorchX components: one ``AppDef`` each, for every scheduler.

``trial_app`` describes one training job (``python -m odnas.jobs.trial ...``);
``worker_app`` a warm worker (``python -m odnas.jobs.worker ...``) that serves many
trials of one slot from the run dir. The same ``AppDef`` runs on ``local_cwd``,
Kubernetes, Slurm or Ray by switching the scheduler. Nothing here knows Ax.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from odnas.rundir import TRIAL_MODULE, WORKER_MODULE


def parse_kv(text: str | None) -> dict[str, str]:
    """``"queue=default,namespace=ml"`` -> dict (TorchX's ``-cfg`` syntax)."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if part.strip():
            if "=" not in part:
                raise ValueError(f"{part!r} is not key=value")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


LOCAL_SCHEDULERS = ("local_cwd", "local_docker")
#: TorchX's schedulers that run each job in a container image (``--image``). local_cwd
#: and slurm run the host's own Python, ray a working dir it uploads.
CONTAINER_SCHEDULERS = ("local_docker", "kubernetes", "kubernetes_mcad", "aws_batch", "aws_sagemaker", "gcp_batch",
                        "lsf")
# TorchX's Ray scheduler reads a role's ``image`` as a local directory that it zips and
# uploads as the Ray job's working_dir; this folder of the trial dir is that upload.
RAY_WORKDIR = "ray"


def needs_image(scheduler: str) -> str:
    return (f"--scheduler {scheduler} runs each job in a container: give --image, an image with odnas installed "
            "(docs/schedulers.md, \"The image, in short\")")


def torchx_runner(schedulers: Mapping[str, Any] | None = None):
    """TorchX's runner with its own schedulers plus any passed in by name (TorchX's
    public way to add a backend: a ``Scheduler`` factory)."""
    from torchx.runner import Runner
    from torchx.schedulers import get_scheduler_factories

    return Runner("odnas", scheduler_factories={**get_scheduler_factories(), **(schedulers or {})})


def leave_local_jobs_running(runner) -> None:
    """Let the local jobs ``runner`` launched outlive it.

    TorchX's local scheduler kills every process it launched (SIGTERM, then SIGKILL)
    when it is closed or garbage-collected, as at a driver's exit. odnas leaves a
    training job to finish when its driver stops (Ctrl-C, SIGTERM, ``odnas stop``), and
    ``odnas resume`` reattaches to it: warm workers are asked to exit once idle, a fresh
    job ends with its trial. TorchX has no public way to let go of an app, so this
    empties the local scheduler's own table of them (``LocalScheduler._apps``)."""
    from torchx.schedulers.local_scheduler import LocalScheduler

    for sched in getattr(runner, "_scheduler_instances", {}).values():
        apps = getattr(sched, "_apps", None)
        if isinstance(sched, LocalScheduler) and isinstance(apps, dict):
            apps.clear()


def warm_capable(scheduler: str) -> bool:
    """Warm workers run on TorchX's own schedulers (``local_cwd``, Kubernetes, Slurm,
    Ray, ...); a scheduler passed in by name (``odnas.testing``'s in-process one, which
    runs jobs inside the driver) runs fresh jobs."""
    from torchx.schedulers import get_scheduler_factories

    return scheduler in get_scheduler_factories()


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
        raise ValueError(f"unknown keys {sorted(unknown)}; use cpu, gpu, memMB or a named resource")
    values = {"cpu": threads, "gpu": 0, "memMB": 2048}
    for key, text in kv.items():
        try:
            values[key] = int(text)
        except ValueError:
            raise ValueError(f"{key}={text!r}: expected a whole number") from None
        if values[key] < (0 if key == "gpu" else 1):
            raise ValueError(f"{key}={text}: must be {'0 or more' if key == 'gpu' else '1 or more'}")
    return specs.Resource(**values)


def trial_args(trial_dir: str, space: str, params: Mapping[str, Any], data: str = "digits",
               data_dir: str | None = None, data_seed: int = 0, seed: int = 0, threads: int = 1) -> list[str]:
    """The trial job's own arguments (after ``python -m odnas.jobs.trial``); a warm
    worker's request carries the same ones."""
    args = ["--out", str(trial_dir), "--space", space, "--params", json.dumps(dict(params), sort_keys=True),
            "--data", data, "--data-seed", str(data_seed), "--seed", str(seed), "--threads", str(threads)]
    if data_dir:
        args += ["--data-dir", str(data_dir)]
    return args


def trial_app(trial_dir: str, space: str, params: Mapping[str, Any], data: str = "digits",
              data_dir: str | None = None, data_seed: int = 0, seed: int = 0, threads: int = 1,
              scheduler: str = "local_cwd", image: str | None = None, resources: str | None = None,
              env: Mapping[str, str] | None = None, mounts: Sequence[str] | None = None,
              name: str = "odnas-trial"):
    """TorchX component for one training job (``python -m odnas.jobs.trial``).

    ``image`` is a container image for Kubernetes and Docker, unused by ``local_cwd``
    and Slurm (they run the host's Python), and for Ray a local directory that is
    uploaded as the job's working dir (default: an empty folder in the trial dir; a
    ``requirements.txt`` there is installed by Ray). ``env`` is set in the job;
    ``mounts`` are TorchX mount strings (Kubernetes, Docker).
    """
    args = ["-m", TRIAL_MODULE, *trial_args(trial_dir, space, params, data, data_dir, data_seed, seed, threads)]
    return _app(args, Path(trial_dir), threads, scheduler, image, resources, env, mounts, name)


def worker_app(run_dir: str, slot: int, token: str, space: str, data: str = "digits",
               data_dir: str | None = None, data_seed: int = 0, threads: int = 1,
               scheduler: str = "local_cwd", image: str | None = None, resources: str | None = None,
               env: Mapping[str, str] | None = None, mounts: Sequence[str] | None = None,
               idle_exit_s: float = 120.0, name: str = "odnas-worker"):
    """TorchX component for a warm worker of slot ``slot`` (``python -m odnas.jobs.worker``):
    the same image, resources, environment and mounts as a trial job, so it runs
    wherever trial jobs run. ``token`` names this worker among the slot's successive ones."""
    from odnas.rundir import worker_dir

    args = ["-m", WORKER_MODULE, "--run-dir", str(run_dir), "--slot", str(int(slot)), "--token", token,
            "--space", space, "--data", data, "--data-seed", str(data_seed), "--threads", str(threads),
            "--idle-exit", f"{float(idle_exit_s):g}"]
    if data_dir:
        args += ["--data-dir", str(data_dir)]
    return _app(args, worker_dir(run_dir, slot), threads, scheduler, image, resources, env, mounts, name)


def _app(args: list[str], workdir: Path, threads: int, scheduler: str, image: str | None,
         resources: str | None, env: Mapping[str, str] | None, mounts: Sequence[str] | None, name: str):
    from torchx import specs

    bad = [k for k in (env or {}) if not str(k).isidentifier()]
    if bad:
        raise ValueError(f"--env {bad[0]!r}: a variable name is letters, digits and _, not starting with a digit")
    if scheduler == "local_cwd":
        image, entrypoint = os.getcwd(), sys.executable
    elif scheduler == "ray":
        entrypoint = "python"
        if image is None:
            # Not the cwd: that may hold a virtualenv, far over Ray's upload limit.
            image = str(workdir / RAY_WORKDIR)
            Path(image).mkdir(parents=True, exist_ok=True)
        elif not Path(image).is_dir():
            raise ValueError(f"--image {image!r}: for the ray scheduler the image is a local directory "
                             "that Ray uploads as the job's working dir (leave it out for an empty one)")
    elif scheduler in CONTAINER_SCHEDULERS:
        if not image:
            raise ValueError(needs_image(scheduler))
        entrypoint = "python"
    else:  # slurm: the host's Python on the shared file system (the image is unused); a scheduler of one's own
        image, entrypoint = image or os.getcwd(), "python"
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


