"""Shared contract suites, in the spirit of Optuna's storage tests: one suite run
against every implementation of an extension point.

- latency backends: ONNX Runtime and the fake;
- job backends: TorchX's ``local_cwd`` (a real process) and the in-process scheduler;
- the run-dir protocol: atomic files, settings and records across versions, the lock.
"""

import json
import math
import time
from pathlib import Path

import pytest

from odnas.cost.latency import LatencyBackend, LatencyResult, OrtLatencyBackend
from odnas.cost.onnx import export_onnx
from odnas.errors import RunDirError
from odnas.records import CostRecord, LatencyKey, RunSettings, TrialRow
from odnas.spaces import get_space
from odnas.testing import FakeLatencyBackend, FixedCostLane, InProcessJobs

PARAMS = {"hidden_size_1": 32, "hidden_size_2": 16, "lr": 0.003, "dropout": 0.1, "epochs": 1, "batch_size": 64}


# ------------------------------------------------------------------ latency backends


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lat") / "m.onnx"
    return export_onnx(get_space("mlp").build(PARAMS, (1, 8, 8), 10), (1, 8, 8), path)


@pytest.mark.parametrize("backend", [OrtLatencyBackend(), FakeLatencyBackend()], ids=["onnxruntime", "fake"])
def test_latency_backend_contract(backend: LatencyBackend, small_onnx, short_profile):
    profile = short_profile()
    r = backend.measure(small_onnx, profile)
    assert isinstance(r, LatencyResult)
    assert 0 < r.latency_ms <= r.latency_ms_p90 and math.isfinite(r.latency_ms_sem) and r.latency_ms_sem >= 0
    assert r.runs >= 1 and r.warmup_runs == profile.protocol.warmup_runs and r.batch_size == profile.batch_size
    assert r.statistic in (profile.protocol.statistic, "reference-ratio")
    assert isinstance(r.key, LatencyKey) and r.key.differs(r.key) == []
    assert json.loads(json.dumps(r.to_dict())) == r.to_dict()  # a record is plain JSON
    again = backend.measure(small_onnx, profile)
    assert again.key == r.key  # same host, same settings: comparable
    assert r.ratio_to(again) > 0


# ------------------------------------------------------------------ job backends


@pytest.mark.parametrize("scheduler,workers", [("local_cwd", "fresh"), ("local_cwd", "warm"),
                                               (InProcessJobs.SCHEDULER, "warm")],
                         ids=["local_cwd-fresh", "local_cwd-warm", "inprocess"])
def test_job_backend_contract(scheduler, workers, tmp_path):
    """A trial launched through TorchX on each backend (a job of its own, or a warm
    worker's forked child) ends COMPLETED with its result in the trial dir, and the
    metric reads it back."""
    from ax.core.base_trial import TrialStatus

    from odnas.jobs.component import torchx_runner
    from odnas.loop.metrics import ValAccMetric
    from odnas.loop.runner import TrialRunner, failure_reason

    jobs = InProcessJobs(train=True)
    settings = RunSettings(space="mlp", profile={}, input_shape=[1, 8, 8], num_classes=10, threads=1,
                           scheduler=scheduler, workers=workers)
    runner = TrialRunner(str(tmp_path), settings.to_dict()).attach(tmp_path, FixedCostLane(),
                                                                   torchx_runner(jobs.schedulers()))
    meta = runner.run_trial(0, PARAMS)
    assert meta.get("app_handle") or meta.get("worker") is not None
    assert (runner.trial_dir(0) / "launch.json").is_file()
    t0 = time.time()
    while (status := runner.poll_trial(0, meta)) == TrialStatus.RUNNING and time.time() - t0 < 240:
        time.sleep(0.5)
    assert status == TrialStatus.COMPLETED, failure_reason(meta, runner.run_dir)
    assert not Path(meta["trial_dir"]).is_absolute()  # stored relative to the run dir
    epochs, acc = ValAccMetric().fetch(0, {**meta, "trial_dir": str(runner.trial_dir(0))})
    assert epochs == 1 and 0.0 <= acc <= 1.0
    assert (runner.trial_dir(0) / "model.pt").is_file() and (runner.trial_dir(0) / "job.json").is_file()
    runner.close()


# ------------------------------------------------------------------ the run-dir protocol


def _settings(**kw) -> RunSettings:
    return RunSettings(space="mlp", profile={"name": "cpu-mobile"}, input_shape=[1, 8, 8], num_classes=10, **kw)


def test_json_files_are_atomic_and_tolerant(tmp_path):
    from odnas.rundir import read_json, write_json_atomic

    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert read_json(tmp_path / "a.json") == {"x": 1} and list(tmp_path.iterdir()) == [tmp_path / "a.json"]
    (tmp_path / "b.json").write_text('{"x": ')  # a file being written
    assert read_json(tmp_path / "b.json") is None and read_json(tmp_path / "none.json") is None


def test_settings_round_trip_and_refusals(tmp_path):
    from odnas.rundir import SETTINGS_NAME, read_settings, write_settings

    with pytest.raises(RunDirError, match="not an odnas run dir"):
        read_settings(tmp_path)
    write_settings(tmp_path, _settings(trials=7, fixed={"epochs": 1}))
    s = read_settings(tmp_path)
    assert s.trials == 7 and s.fixed == {"epochs": 1} and s.schema_version == RunSettings.SCHEMA_VERSION
    raw = json.loads((tmp_path / SETTINGS_NAME).read_text())
    # A run dir from before versions (no schema_version, no max_candidates) still loads.
    old = {k: v for k, v in raw.items() if k not in ("schema_version", "max_candidates", "isolation")}
    (tmp_path / SETTINGS_NAME).write_text(json.dumps(old))
    s = read_settings(tmp_path)
    assert s.max_candidates == 28 and s.isolation == "pause"
    (tmp_path / SETTINGS_NAME).write_text(json.dumps({**raw, "schema_version": 99}))
    with pytest.raises(RunDirError, match="newer than this odnas reads"):
        read_settings(tmp_path)
    (tmp_path / SETTINGS_NAME).write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        read_settings(tmp_path)
    (tmp_path / SETTINGS_NAME).write_text(json.dumps({"space": "mlp"}))
    with pytest.raises(RunDirError, match="lacks profile"):
        read_settings(tmp_path)


@pytest.mark.parametrize("record", [
    CostRecord(arch_id="a", space="mlp", profile="cpu-mobile", precision="fp32", metrics={"latency_ms": 0.1},
               latency={"host": "h", "cpu_model": "c", "ort_version": "1", "provider": "CPUExecutionProvider",
                        "intra_op_threads": 1, "inter_op_threads": 1, "batch_size": 1, "graph_optimization": "all"}),
    TrialRow(trial=3, state="completed", arch_id="a", params={"x": 1}, metrics={"val_acc": 0.9}, retry_of=1),
], ids=["cost", "trial"])
def test_records_round_trip_through_json(record):
    cls = type(record)
    back = cls.from_dict(json.loads(json.dumps(record.to_dict())))
    assert back == record
    old = {k: v for k, v in record.to_dict().items() if k != "schema_version"}  # version 0
    assert cls.from_dict(old) == record
    with pytest.raises(RunDirError, match="newer"):
        cls.from_dict({**record.to_dict(), "schema_version": cls.SCHEMA_VERSION + 1})


def test_latency_key_names_what_differs():
    base = dict(host="h", cpu_model="c", ort_version="1.20", provider="CPUExecutionProvider", intra_op_threads=1,
                inter_op_threads=1, batch_size=1, graph_optimization="all")
    a, b = LatencyKey(**base), LatencyKey(**{**base, "ort_version": "1.21", "batch_size": 8})
    assert a.differs(b) == ["ort_version", "batch_size"] and a.differs(LatencyKey(**base)) == []


def test_latency_key_checks_the_cpu_signature_where_both_sides_know_it():
    """Two hosts called vm with a CPU called AMD EPYC differ by signature; a record from
    before signatures were kept (None) is not told apart on that field."""
    base = dict(host="vm", cpu_model="AMD EPYC", ort_version="1.20", provider="CPUExecutionProvider",
                intra_op_threads=1, inter_op_threads=1, batch_size=1, graph_optimization="all")
    zen2, zen4, old = (LatencyKey(**base, cpu_signature=s) for s in ("aaaa", "bbbb", None))
    assert zen2.differs(zen4) == ["cpu_signature"] and zen4.differs(zen2) == ["cpu_signature"]
    assert zen2.differs(old) == [] and old.differs(zen4) == [] and zen2.differs(zen2) == []


def test_cost_cache_measures_again_after_an_ort_upgrade(tmp_path, short_profile):
    """A cached latency taken under another ONNX Runtime build is not reused."""
    from odnas.cost.lane import CostLane

    lane = CostLane(get_space("mlp"), (1, 8, 8), 10, short_profile(), tmp_path)
    first = lane.costs(PARAMS)
    assert lane.measured == 1 and lane.costs(PARAMS) == first and lane.measured == 1
    stale = CostRecord.from_dict({**first.to_dict(), "latency": {**first.latency, "ort_version": "0.0.1"}})
    lane.cache.put(stale)
    again = lane.costs(PARAMS)
    assert lane.measured == 2 and again.latency["ort_version"] == first.latency["ort_version"]


def test_cost_cache_measures_again_on_another_cpu_of_the_same_name(tmp_path, short_profile):
    """A cached latency from a host of the same name and CPU name but another CPU
    signature (a run resumed on other hardware) is measured again; one recorded before
    signatures were kept is reused."""
    from odnas.cost.lane import CostLane

    lane = CostLane(get_space("mlp"), (1, 8, 8), 10, short_profile(), tmp_path)
    first = lane.costs(PARAMS)
    assert first.latency["cpu_signature"]  # this host's, recorded
    unsigned = {k: v for k, v in first.latency.items() if k != "cpu_signature"}
    lane.cache.put(CostRecord.from_dict({**first.to_dict(), "latency": unsigned}))
    assert lane.costs(PARAMS).latency == unsigned and lane.measured == 1
    lane.cache.put(CostRecord.from_dict({**first.to_dict(), "latency": {**unsigned, "cpu_signature": "other"}}))
    again = lane.costs(PARAMS)
    assert lane.measured == 2 and again.latency["cpu_signature"] == first.latency["cpu_signature"]


def test_driver_lock_is_exclusive_and_released(tmp_path):
    from odnas.errors import SearchError
    from odnas.rundir import driver_lock, driver_running

    assert not driver_running(tmp_path)
    with driver_lock(tmp_path):
        assert driver_running(tmp_path)
        with pytest.raises(SearchError, match="already being searched .*; wait for it, or stop it first "
                                              "\\(`odnas stop "):
            with driver_lock(tmp_path):
                pass
    assert not driver_running(tmp_path)


def test_a_search_into_a_run_being_searched_points_to_status_and_stop(tmp_path):
    """Not to resume, which is refused while the driver runs."""
    from odnas.errors import SearchError
    from odnas.loop.config import SearchConfig, refuse_used_run_dir
    from odnas.loop.driver import create_run
    from odnas.rundir import driver_lock

    run = create_run(SearchConfig(space="mlp", trials=1, run_dir=str(tmp_path / "run")))
    with pytest.raises(SearchError, match="already holds a search; use `odnas resume"):
        refuse_used_run_dir(run)
    with driver_lock(run):
        with pytest.raises(SearchError, match=f"{run} holds a search that is running now; `odnas status {run}` "
                                              f"follows it, `odnas stop {run}` stops it"):
            refuse_used_run_dir(run)


def test_a_job_from_another_host_is_never_ours():
    import os
    import socket

    from odnas.rundir import local_job_alive

    assert not local_job_alive({"pid": os.getpid(), "host": "elsewhere"})
    assert not local_job_alive({"pid": os.getpid(), "host": socket.gethostname()})  # not a trial process
    assert not local_job_alive(None) and not local_job_alive({"host": socket.gethostname()})


def test_resume_of_a_run_being_searched_is_refused_before_its_checks(tmp_path, monkeypatch):
    """Resume rebuilds every model the run measured (seconds on a large run); against a
    running driver it is refused first."""
    from odnas.errors import SearchError
    from odnas.loop import driver
    from odnas.loop.config import SearchConfig
    from odnas.rundir import driver_lock

    run = driver.create_run(SearchConfig(space="mlp", trials=1, run_dir=str(tmp_path / "run")))
    monkeypatch.setattr(driver, "check_builds", lambda *a, **k: pytest.fail("checked before the lock"))
    with driver_lock(run):
        with pytest.raises(SearchError, match="already being searched"):
            driver.resume(run)
