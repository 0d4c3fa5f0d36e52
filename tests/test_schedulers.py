"""Trials on TorchX schedulers other than ``local_cwd``.

Kubernetes and Slurm: TorchX's own dry run builds the real Volcano job and sbatch
script, no cluster needed. Ray (slow): a real Ray cluster on this machine's loopback
runs one trial, a cancelled trial, and a whole small search.
"""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli, status_json

PARAMS = {"hidden_size_1": 32, "hidden_size_2": 16, "lr": 1e-3, "dropout": 0.1, "epochs": 1, "batch_size": 32}
BASE = {"space": "mlp", "profile": {}, "input_shape": [1, 8, 8], "num_classes": 10}  # RunSettings' required fields
REMOTE = {**BASE, "data": "digits", "threads": 4, "seed": 0, "image": "registry.example/odnas:1",
          "resources": "cpu=4,memMB=8192,gpu=1", "env": {"ODNAS_PROBE": "x y", "HF_HOME": "/cache/hf"},
          "mounts": ["type=volume,src=odnas-runs,dst=/shared/runs"]}


def _runner(run_dir, scheduler, **extra):
    from odnas.loop.runner import TrialRunner

    return TrialRunner(str(run_dir), {**REMOTE, "scheduler": scheduler, **extra})


def test_kubernetes_job_spec():
    """The Volcano job TorchX would submit: image, command, resources, env, volume."""
    pytest.importorskip("kubernetes")
    from torchx.runner import get_runner

    r = _runner("/shared/runs/r1", "kubernetes", scheduler_cfg={"queue": "default", "namespace": "ml"})
    info = get_runner().dryrun(r.app_for(3, PARAMS), "kubernetes", cfg=r.scheduler_cfg(3))
    job = yaml.safe_load(repr(info.request))
    assert job["kind"] == "Job" and job["apiVersion"].startswith("batch.volcano.sh/")
    assert job["spec"]["queue"] == "default" and job["spec"]["maxRetry"] == 0
    (task,) = job["spec"]["tasks"]
    pod = task["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.example/odnas:1"
    assert c["command"][:3] == ["python", "-m", "odnas.jobs.trial"]
    cmd = c["command"]
    assert cmd[cmd.index("--out") + 1] == "/shared/runs/r1/trials/0003"  # the driver's path, on the volume
    assert json.loads(cmd[cmd.index("--params") + 1]) == PARAMS
    assert cmd[cmd.index("--seed") + 1] == "3" and cmd[cmd.index("--threads") + 1] == "4"
    limits = c["resources"]["limits"]
    assert limits == {"cpu": "4000m", "memory": "8192M", "nvidia.com/gpu": "1"}
    # TorchX asks for a little less than the limit so the pod fits a node of that size.
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["ODNAS_PROBE"] == "x y" and env["HF_HOME"] == "/cache/hf" and env["OMP_NUM_THREADS"] == "4"
    mount = [m for m in c["volumeMounts"] if m["mountPath"] == "/shared/runs"]
    assert mount and not mount[0]["readOnly"]
    vol = [v for v in pod["volumes"] if v["name"] == mount[0]["name"]]
    assert vol[0]["persistentVolumeClaim"]["claimName"] == "odnas-runs"


def test_slurm_batch_script():
    """The sbatch script TorchX would submit: resources as #SBATCH flags, env exported to srun."""
    from torchx.runner import get_runner

    r = _runner("/shared/runs/r1", "slurm", scheduler_cfg={"partition": "cpu", "time": "1:00:00"})
    info = get_runner().dryrun(r.app_for(3, PARAMS), "slurm", cfg=r.scheduler_cfg(3))
    script = info.request.materialize()
    sbatch = [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]
    assert len(sbatch) == 1
    flags = sbatch[0].split()[1:]
    for want in ("--partition=cpu", "--time=1:00:00", "--cpus-per-task=4", "--mem=8192", "--gpus-per-task=1"):
        assert want in flags, (want, sbatch[0])
    (srun,) = [ln for ln in script.splitlines() if ln.startswith("srun ")]
    export = srun.split("'--export=")[1].split("'")[0]
    assert "ODNAS_PROBE=x y" in export and "HF_HOME=/cache/hf" in export and "OMP_NUM_THREADS=4" in export
    # Slurm runs the host's Python from the shared file system: no image, same paths.
    assert "python -m odnas.jobs.trial --out /shared/runs/r1/trials/0003 " in srun
    assert "registry.example" not in script


def test_ray_job_request(tmp_path):
    """What TorchX hands Ray: a small per-trial working dir and one actor with cpu, gpu and env."""
    pytest.importorskip("ray", reason="ray is not installed: pip install 'odnas[ray]'")
    from torchx.runner import get_runner

    r = _runner(tmp_path, "ray", image=None, scheduler_cfg={"dashboard_address": "127.0.0.1:8265"})
    info = get_runner().dryrun(r.app_for(0, PARAMS), "ray", cfg=r.scheduler_cfg(0))
    job = info.request
    assert job.dashboard_address == "127.0.0.1:8265"
    assert Path(job.working_dir) == (tmp_path / "trials" / "0000" / "ray").resolve()
    assert not any(Path(job.working_dir).iterdir())  # nothing big to upload
    (actor,) = job.actors
    assert actor.num_cpus == 4 and actor.num_gpus == 1
    assert actor.command[:3] == ["python", "-m", "odnas.jobs.trial"]
    assert actor.env["ODNAS_PROBE"] == "x y" and actor.env["OMP_NUM_THREADS"] == "4"


def test_bad_scheduler_options_are_one_line_value_errors(tmp_path):
    from odnas.jobs.component import make_resource, trial_app

    cases = [
        (lambda: make_resource("cpu=x", 1), "cpu='x': expected a whole number"),
        (lambda: make_resource("cpu=0", 1), "cpu=0: must be 1 or more"),
        (lambda: make_resource("gpu=-1", 1), "gpu=-1: must be 0 or more"),
        (lambda: make_resource("gpu.smal", 1), "not a TorchX named resource"),
        (lambda: make_resource("cpu=2,disk=9", 1), "unknown keys ['disk']"),
        (lambda: trial_app(str(tmp_path), "mlp", PARAMS, scheduler="kubernetes", env={"1BAD": "x"}), "--env '1BAD'"),
        (lambda: trial_app(str(tmp_path), "mlp", PARAMS, scheduler="kubernetes", image="reg/odnas:1",
                           mounts=["src=a,dst=/b"]), "type must be specified first"),
        (lambda: trial_app(str(tmp_path), "mlp", PARAMS, scheduler="kubernetes", image="reg/odnas:1",
                           mounts=["type=nfs,src=a,dst=/b"]), "invalid mount type"),
        (lambda: trial_app(str(tmp_path), "mlp", PARAMS, scheduler="kubernetes"),  # odnas publishes no image
         "--scheduler kubernetes runs each job in a container: give --image"),
        (lambda: trial_app(str(tmp_path), "mlp", PARAMS, scheduler="ray", image="reg/odnas:1"),
         "local directory"),
    ]
    for call, expect in cases:
        with pytest.raises(ValueError) as e:
            call()
        assert expect in str(e.value) and "\n" not in str(e.value), str(e.value)
    res = make_resource("gpu.small", 1)
    assert (res.cpu, res.gpu, res.memMB) == (8, 1, 32 * 1024)
    res = make_resource("memMB=4096", 3)
    assert (res.cpu, res.gpu, res.memMB) == (3, 0, 4096)


# --- Ray: a real cluster on loopback -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray cluster bound to 127.0.0.1; yields its dashboard address.

    Stopped by signalling the ``ray start --block`` process we started (it stops its
    own children), not by ``ray stop``, which would stop every Ray on the machine.
    """
    ray_bin = Path(sys.executable).with_name("ray")
    if importlib.util.find_spec("ray") is None or not ray_bin.exists():
        pytest.skip("ray is not installed in this environment: pip install 'odnas[ray]'")
    # Ray's unix socket paths must stay short, so not pytest's deep tmp_path.
    temp = Path(tempfile.mkdtemp(prefix="odnas-ray-", dir="/tmp"))
    dash = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           # Keeps every Ray address on loopback (Ray otherwise uses the host's own IP).
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "AUTOSCALER_METRIC_PORT": str(_free_port()), "DASHBOARD_METRIC_PORT": str(_free_port()),
           # The workers run `python`: this environment's, where odnas is installed.
           "PATH": f"{ray_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    log = open(temp / "ray-start.log", "w")
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--num-cpus=2", f"--port={_free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
         f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
         "--object-store-memory=100000000", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{dash}"
    try:
        t0 = time.time()
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/api/version", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() - t0 > 120:
                    pytest.fail("ray start failed:\n" + (temp / "ray-start.log").read_text()[-3000:])
                time.sleep(1)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:  # anything of this cluster that outlived `ray start` (same process group)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait(runner, meta, limit_s: float = 300):
    from ax.core.base_trial import TrialStatus

    t0 = time.time()
    while (status := runner.poll_trial(0, meta)) == TrialStatus.RUNNING and time.time() - t0 < limit_s:
        time.sleep(1)
    return status


def _launch_on_ray(ray_cluster, tmp_path, params):
    """A TrialRunner on the loopback cluster and trial 0 launched through TorchX's ray scheduler."""
    from odnas.loop.runner import TrialRunner

    r = TrialRunner(str(tmp_path), {**BASE, "data": "digits", "threads": 1, "scheduler": "ray",
                                    "scheduler_cfg": {"dashboard_address": ray_cluster}})
    tdir = r.trial_dir(0)
    tdir.mkdir(parents=True)
    handle = r.torchx.run(r.app_for(0, params), "ray", cfg=r.scheduler_cfg(0))
    return r, tdir, handle


@pytest.mark.slow
def test_trial_runs_as_a_ray_job(ray_cluster, tmp_path):
    from ax.core.base_trial import TrialStatus
    from torchx.specs import AppState

    from odnas.loop.metrics import ValAccMetric

    r, tdir, handle = _launch_on_ray(ray_cluster, tmp_path, PARAMS)
    assert str(handle).startswith(f"ray://odnas/{ray_cluster}-odnas-trial-0-")
    meta = {"trial_dir": str(tdir), "app_handle": str(handle), "launched_at": time.time()}
    assert _wait(r, meta) == TrialStatus.COMPLETED, r.torchx.log_lines(handle, "ray")
    epochs, val_acc = ValAccMetric().fetch(0, meta)
    assert epochs == 1 and 0.0 <= val_acc <= 1.0
    assert (tdir / "model.pt").is_file() and json.loads((tdir / "job.json").read_text())["params"] == PARAMS
    t0 = time.time()
    while (state := r.torchx.status(handle).state) == AppState.RUNNING and time.time() - t0 < 60:
        time.sleep(1)  # the job's own ending trails the result file by a moment
    assert state == AppState.SUCCEEDED


@pytest.mark.slow
def test_stopping_a_ray_trial_ends_its_training(ray_cluster, tmp_path):
    """Early stopping and --trial-timeout cancel jobs: on Ray that must end the training process."""
    from ax.core.base_trial import TrialStatus
    from torchx.specs import AppState

    r, tdir, handle = _launch_on_ray(ray_cluster, tmp_path, {**PARAMS, "epochs": 200})
    meta = {"trial_dir": str(tdir), "app_handle": str(handle), "launched_at": time.time()}
    t0 = time.time()
    while not (tdir / "progress.jsonl").exists() and time.time() - t0 < 180:
        time.sleep(0.5)
    assert (tdir / "progress.jsonl").exists(), "training never started"
    pid = json.loads((tdir / "job.json").read_text())["pid"]
    r.stop_trial(0, meta)
    t0 = time.time()
    while Path(f"/proc/{pid}").exists() and time.time() - t0 < 60:
        time.sleep(0.5)
    assert not Path(f"/proc/{pid}").exists(), "the training process outlived its cancelled Ray job"
    assert r.torchx.status(handle).state == AppState.CANCELLED
    assert r.poll_trial(0, meta) == TrialStatus.FAILED and not (tdir / "result.json").exists()


@pytest.mark.slow
def test_search_through_ray(ray_cluster, tmp_path):
    """`odnas search --scheduler ray`: every training is a Ray job, and each completes with a val_acc."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(f"http://{ray_cluster}")
    before = {j.submission_id for j in client.list_jobs()}
    d = tmp_path / "run"
    run_cli("search", "--profile", "cpu-mobile", "--space", "mlp", "--trials", "2", "--parallel", "1",
            "--fix", "epochs=1", "--init-trials", "2", "--quiet", "--run-dir", str(d), "--scheduler", "ray",
            "--scheduler-cfg", f"dashboard_address={ray_cluster}", check=True)
    st = status_json(d)
    trained = [t for t in st["trials"] if "val_acc" in t["metrics"]]
    assert st["counts"]["completed"] == len(st["trials"]) and len(trained) == 2
    assert all(0.0 <= t["metrics"]["val_acc"] <= 1.0 for t in trained)
    # Warm workers (the default): one Ray job per slot served both trials, and exits once idle.
    assert {json.loads((Path(t["trial_dir"]) / "job.json").read_text())["worker"]["slot"] for t in trained} == {0}
    t0 = time.time()
    while time.time() - t0 < 60:
        new = [j for j in client.list_jobs() if j.submission_id not in before]
        if all(j.status == "SUCCEEDED" for j in new):
            break
        time.sleep(1)
    assert sorted(j.submission_id.rsplit("-", 1)[0] for j in new) == ["odnas-worker-0"]
    assert all(j.status == "SUCCEEDED" for j in new), [(j.submission_id, j.status) for j in new]
