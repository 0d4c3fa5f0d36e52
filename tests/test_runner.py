"""TrialRunner's reattach rule, for fresh jobs and warm workers, with the cost lane and
TorchX client faked (unit test)."""

import json
import time

from odnas.loop.runner import TrialRunner
from odnas.records import CostRecord, RunSettings


class _Lane:
    def costs(self, params):
        return CostRecord(arch_id="mlp_32x16", space="mlp", profile="cpu-mobile", precision="fp32",
                          metrics={"num_params": 10, "latency_ms": 0.01})

    def over_budget(self, metrics):
        return []


class _TorchX:
    def __init__(self):
        self.launched = []

    def run(self, app, scheduler, cfg):
        self.launched.append(app)
        return f"local_cwd://odnas/app{len(self.launched)}"


PARAMS = {"hidden_size_1": 32, "hidden_size_2": 16, "lr": 0.001, "dropout": 0.1, "epochs": 1, "batch_size": 32}


def _runner(tmp_path):
    settings = RunSettings(space="mlp", profile={}, input_shape=[1, 8, 8], num_classes=10, workers="fresh")
    return TrialRunner(str(tmp_path), settings.to_dict()).attach(tmp_path, _Lane(), _TorchX())


def _leave_job(r, idx, params, result=True):
    tdir = r.trial_dir(idx)
    tdir.mkdir(parents=True)
    (tdir / "job.json").write_text(json.dumps({"pid": 1, "host": "elsewhere", "params": params}))
    if result:
        (tdir / "result.json").write_text(json.dumps({"val_acc": 0.9, "epochs": 1}))


def test_reattaches_to_its_own_finished_job(tmp_path):
    r = _runner(tmp_path)
    _leave_job(r, 0, PARAMS)
    meta = r.run_trial(0, PARAMS)
    assert meta.get("reattached") and r.torchx.launched == []


def test_never_adopts_another_candidates_job(tmp_path):
    r = _runner(tmp_path)
    _leave_job(r, 0, dict(PARAMS, hidden_size_1=64))
    meta = r.run_trial(0, PARAMS)
    assert not meta.get("reattached") and len(r.torchx.launched) == 1
    assert not (r.trial_dir(0) / "result.json").exists()  # the other model's result is not ours
    assert len(list(r.trial_dir(0).parent.glob("0000.orphan-*"))) == 1


def test_an_index_moved_aside_twice_in_one_second_keeps_both_leftovers(tmp_path, monkeypatch):
    monkeypatch.setattr("odnas.loop.runner.time.time", lambda: 1_700_000_000.0)
    r = _runner(tmp_path)
    _leave_job(r, 0, dict(PARAMS, hidden_size_1=64))
    r.run_trial(0, PARAMS)  # moves the first leftover aside, launches: a launch.json is left
    r.run_trial(0, dict(PARAMS, hidden_size_1=128))  # another candidate, the same second
    assert sorted(p.name for p in r.trial_dir(0).parent.glob("0000.orphan-*")) == [
        "0000.orphan-1700000000", "0000.orphan-1700000000-2"]
    assert len(r.torchx.launched) == 2


def test_a_dead_unfinished_job_is_launched_again(tmp_path):
    r = _runner(tmp_path)
    _leave_job(r, 0, PARAMS, result=False)  # pid on another host: not a live local job
    meta = r.run_trial(0, PARAMS)
    assert not meta.get("reattached") and len(r.torchx.launched) == 1


class _RemoteTorchX(_TorchX):
    """A cluster scheduler that still runs app1 (the job's pid is on another node)."""

    def status(self, handle):
        from torchx.specs import AppState, AppStatus

        return AppStatus(state=AppState.RUNNING) if handle.endswith("app1") else None

    def cancel(self, handle):
        self.cancelled = [*getattr(self, "cancelled", []), handle]


def test_reattaches_to_a_remote_job_by_its_app_handle(tmp_path):
    r = _runner(tmp_path)
    r.attach(r.run_dir, r.cost_lane, _RemoteTorchX())
    first = r.run_trial(0, PARAMS)  # launches app1 and records its handle
    assert json.loads((r.trial_dir(0) / "launch.json").read_text())["app_handle"] == first["app_handle"]
    again = r.run_trial(0, PARAMS)  # a resumed driver, before the job wrote anything
    assert again.get("reattached") and again["app_handle"] == first["app_handle"]
    assert len(r.torchx.launched) == 1
    other = r.run_trial(0, dict(PARAMS, hidden_size_1=64))  # another candidate under this index
    assert not other.get("reattached") and len(r.torchx.launched) == 2
    assert r.torchx.cancelled == [first["app_handle"]]  # the leftover job is stopped, not left writing here


# ------------------------------------------------------------------ warm workers (no worker process runs)


def _warm_runner(tmp_path):
    settings = RunSettings(space="mlp", profile={}, input_shape=[1, 8, 8], num_classes=10, workers="warm")
    return TrialRunner(str(tmp_path), settings.to_dict()).attach(tmp_path, _Lane(), _TorchX())


def test_a_warm_trial_is_a_request_in_a_workers_inbox(tmp_path):
    r = _warm_runner(tmp_path)
    meta = r.run_trial(0, PARAMS)
    assert meta["worker"] == 0 and "app_handle" not in meta
    assert [a.roles[0].args[1] for a in r.torchx.launched] == ["odnas.jobs.worker"]  # one worker for slot 0
    launch = json.loads((r.trial_dir(0) / "launch.json").read_text())
    req = json.loads((tmp_path / "workers" / "0" / "inbox" / "0000.json").read_text())
    assert launch["worker"] == 0 and launch["params"] == PARAMS
    assert req["argv"][:2] == ["--out", str(r.trial_dir(0).resolve())] and json.loads(req["argv"][5]) == PARAMS
    r.run_trial(1, PARAMS)  # slot 0 is busy (its request is pending): slot 1 gets a worker
    assert len(r.torchx.launched) == 2 and (tmp_path / "workers" / "1" / "inbox" / "0001.json").is_file()


def test_a_resumed_driver_reattaches_to_a_waiting_request_and_never_doubles_it(tmp_path):
    r = _warm_runner(tmp_path)
    r.run_trial(0, PARAMS)
    again = _warm_runner(tmp_path).run_trial(0, PARAMS)  # a new driver: the request still waits
    assert again.get("reattached") and again["worker"] == 0
    assert len(list((tmp_path / "workers").glob("*/inbox/0000.json"))) == 1
    other = _warm_runner(tmp_path).run_trial(0, dict(PARAMS, hidden_size_1=64))  # another candidate here
    assert not other.get("reattached")
    reqs = list((tmp_path / "workers").glob("*/inbox/0000.json"))
    assert len(reqs) == 1 and json.loads(json.loads(reqs[0].read_text())["argv"][5])["hidden_size_1"] == 64
    assert len(list(tmp_path.glob("trials/0000.orphan-*"))) == 1


def test_stopping_a_warm_trial_cancels_its_request_not_the_worker(tmp_path):
    r = _warm_runner(tmp_path)
    meta = r.run_trial(0, PARAMS)
    r.stop_trial(0, meta)
    assert not (tmp_path / "workers" / "0" / "inbox" / "0000.json").exists()
    assert (tmp_path / "workers" / "0" / "cancel" / "0000").exists()


def test_lookahead_queues_one_trial_behind_each_busy_worker(tmp_path):
    settings = RunSettings(space="mlp", profile={}, input_shape=[1, 8, 8], num_classes=10, workers="warm",
                           parallel=2, lookahead=1)
    r = TrialRunner(str(tmp_path), settings.to_dict()).attach(tmp_path, _Lane(), _TorchX())
    slots = [r.run_trial(i, dict(PARAMS, hidden_size_1=16 + i))["worker"] for i in range(4)]
    assert slots == [0, 1, 0, 1] and len(r.torchx.launched) == 2  # two workers, two trials queued behind them
    assert sorted(p.name for p in (tmp_path / "workers" / "0" / "inbox").iterdir()) == ["0000.json", "0002.json"]


# ------------------------------------------------------------------ jobs Ax never saved


class _BudgetLane(_Lane):
    """num_params is the first width; over 500 is over the budget."""

    def costs(self, params):
        return CostRecord(arch_id=f"mlp_{params['hidden_size_1']}", space="mlp", profile="cpu-mobile",
                          precision="fp32", metrics={"num_params": params["hidden_size_1"], "latency_ms": 0.01})

    def over_budget(self, metrics):
        return ["num_params"] if metrics["num_params"] > 500 else []


def test_jobs_ax_never_saved_are_adopted_up_to_the_last_one_that_ran(tmp_path):
    """A driver killed after deploying several trials but before Ax saved them: every
    index up to the last job that finished (or runs) is adopted under its own index. A
    job before it that died keeps its index and fails with a reason, a candidate over a
    budget is measured again and stays over; nothing is launched again or moved aside.
    A dead job after the last live one is left for its index to be reused."""
    from ax.core.trial_status import TrialStatus

    from odnas.loop.adapter import experiment_of
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import adopt_lost_jobs, create_run
    from odnas.loop.store import load_client

    d = create_run(SearchConfig(space="mlp", trials=4, run_dir=str(tmp_path / "run"), workers="fresh"))
    client, storage = load_client(d)
    exp = experiment_of(client)
    r = exp.runner.attach(d, _BudgetLane(), _TorchX())
    assert len(exp.trials) == 0
    dead, over, done, after = (dict(PARAMS, hidden_size_1=w) for w in (32, 600, 64, 128))
    _leave_job(r, 0, dead, result=False)  # died while no driver watched
    r.run_trial(1, over)  # over the budget: recorded, never launched
    _leave_job(r, 2, done)  # finished: its result is kept
    _leave_job(r, 3, after, result=False)  # dead, and nothing after it ran
    assert adopt_lost_jobs(exp, r, storage) == [0, 1, 2]
    assert r.torchx.launched == [] and not list(r.trial_dir(0).parent.glob("*.orphan-*"))
    assert [exp.trials[i].arm.parameters["hidden_size_1"] for i in range(3)] == [32, 600, 64]
    assert all(exp.trials[i].status == TrialStatus.RUNNING for i in range(3))
    assert exp.trials[1].run_metadata["over_budget"] == ["num_params"]
    # A job judged dead may only have been starting: if it completes, its costs are there.
    assert exp.trials[0].run_metadata["costs"]["num_params"] == 32
    assert r.poll_trial(0, exp.trials[0].run_metadata) == TrialStatus.FAILED
    assert r.poll_trial(1, exp.trials[1].run_metadata) == TrialStatus.COMPLETED  # as any over-budget trial
    assert r.poll_trial(2, exp.trials[2].run_metadata) == TrialStatus.COMPLETED
    assert len(load_client(d)[0]._experiment.trials) == 3  # saved


def test_an_over_budget_candidate_moves_another_candidates_leftover_aside_first(tmp_path):
    """Its launch.json must not sit beside a dead job's job.json, which adoption would
    read first and take for this index's candidate."""
    r = _runner(tmp_path)
    r.attach(r.run_dir, _BudgetLane(), _TorchX())
    _leave_job(r, 0, PARAMS, result=False)
    over = dict(PARAMS, hidden_size_1=600)
    assert r.run_trial(0, over)["over_budget"] == ["num_params"]
    assert sorted(p.name for p in r.trial_dir(0).iterdir()) == ["launch.json"]
    assert len(list(r.trial_dir(0).parent.glob("0000.orphan-*"))) == 1
    r.run_trial(0, over)  # the same candidate again (a resumed driver): nothing more is moved
    assert len(list(r.trial_dir(0).parent.glob("0000.orphan-*"))) == 1


def test_nothing_after_the_last_saved_trial_ran_adopts_nothing(tmp_path):
    from odnas.loop.adapter import experiment_of
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import adopt_lost_jobs, create_run
    from odnas.loop.store import load_client

    d = create_run(SearchConfig(space="mlp", trials=4, run_dir=str(tmp_path / "run"), workers="fresh"))
    client, storage = load_client(d)
    exp = experiment_of(client)
    r = exp.runner.attach(d, _BudgetLane(), _TorchX())
    _leave_job(r, 0, PARAMS, result=False)
    assert adopt_lost_jobs(exp, r, storage) == [] and len(exp.trials) == 0


# ------------------------------------------------------------------ the pool's added workers


class _FakeSlotsPool:
    """A WorkerPool whose workers' liveness and business are set by the test (no process runs)."""

    def __new__(cls, tmp_path):
        from odnas.loop.pool import WorkerPool

        class Pool(WorkerPool):
            def __init__(self):
                settings = RunSettings(space="mlp", profile={}, input_shape=[1, 8, 8], num_classes=10, parallel=2)
                super().__init__(tmp_path, settings, _TorchX())
                self.up, self.working, self.started = set(), set(), []

            def alive(self, slot):
                return slot in self.up

            def busy(self, slot):
                return slot in self.working

            def pending(self, slot):  # a busy worker here has a trial queued behind the one it trains
                return ["next"] if slot in self.working else []

            def start(self, slot):
                self.started.append(slot)
                self.up.add(slot)
                self.dir(slot).mkdir(parents=True, exist_ok=True)
                (self.dir(slot) / "worker.json").write_text(json.dumps({"token": f"t{slot}"}))
                return {}

        return Pool()


def test_an_added_worker_serves_while_the_others_are_busy_and_is_retired_when_one_is_free(tmp_path, monkeypatch):
    """Both slots busy, each with a trial queued, past WAIT_IDLE_S: a worker is
    added. It is used again while it is idle and the others are busy, not a new one each
    time, and told to exit (stop.json with its token) once a first slot is idle again."""
    import odnas.loop.pool as pool_mod

    monkeypatch.setattr(pool_mod, "WAIT_IDLE_S", 0.0)
    pool = _FakeSlotsPool(tmp_path)
    pool.up |= {0, 1}
    pool.working |= {0, 1}
    assert pool.acquire() == 2 and pool.started == [2]
    assert pool.acquire() == 2 and pool.started == [2]  # idle again: reused, nothing new started
    pool.working.add(2)
    assert pool.acquire() == 3 and pool.started == [2, 3]  # every worker busy: one more
    pool.working.add(3)
    pool.working -= {1, 2}
    assert pool.acquire() == 1  # a first slot is free: the idle added worker is retired
    assert json.loads((pool.dir(2) / "stop.json").read_text()) == {"token": "t2"}
    assert not (pool.dir(3) / "stop.json").exists()  # busy: it finishes its trial first
    pool.working.add(1)
    assert pool.acquire() == 4  # never the retired one


def _starting_job(tdir):
    """A process whose command line is a trial job's writing into ``tdir`` (it has not
    written job.json: still importing)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "odnas.jobs.trial",
                             "--out", str(tdir.resolve())], start_new_session=True)


def test_a_fresh_job_launched_just_before_the_driver_died_is_found_by_its_command_line(tmp_path):
    """Only launch.json, and a TorchX that no longer knows the handle: the job still
    imports, so it is reattached, not launched again. Under another candidate it is
    killed before its dir is moved aside (it would write into the new one)."""
    from odnas.rundir import local_jobs_writing

    r = _runner(tmp_path)
    tdir = r.trial_dir(0)
    tdir.mkdir(parents=True)
    (tdir / "launch.json").write_text(json.dumps({"app_handle": "local_cwd://odnas/gone", "params": PARAMS}))
    job = _starting_job(tdir)
    try:
        deadline = time.monotonic() + 10
        while local_jobs_writing(tdir) != [job.pid] and time.monotonic() < deadline:
            time.sleep(0.05)  # forked, not yet exec'd: its command line is still pytest's
        assert local_jobs_writing(tdir) == [job.pid]
        assert local_jobs_writing(r.trial_dir(1)) == []
        meta = r.run_trial(0, PARAMS)
        assert meta.get("reattached") and r.torchx.launched == []
        meta = r.run_trial(0, dict(PARAMS, hidden_size_1=64))
        assert not meta.get("reattached") and len(r.torchx.launched) == 1
        assert job.wait(timeout=10) == -9  # killed, not left to write into the new dir
        assert len(list(tdir.parent.glob("0000.orphan-*"))) == 1
    finally:
        job.kill()
        job.wait()


def test_a_stop_a_dead_driver_recorded_but_never_sent_is_sent_on_resume(tmp_path, monkeypatch):
    """The trial dir says the trial was stopped (stopped.json), yet it has no result or
    error: the driver died between writing that and stopping the job. The next poll
    calls it early-stopped and stops the job, which otherwise trained on unseen."""
    from ax.core.base_trial import TrialStatus

    from odnas.loop.runner import TrialRunner
    from odnas.records import RunSettings

    settings = RunSettings(space="mlp", profile={}, input_shape=[1, 8, 8], num_classes=10)
    runner = TrialRunner(str(tmp_path), settings.to_dict())
    tdir = tmp_path / "trials" / "0003"
    tdir.mkdir(parents=True)
    (tdir / "stopped.json").write_text('{"time": 0, "reason": "the rule"}')
    sent = []
    monkeypatch.setattr(runner, "stop_trial", lambda i, meta: sent.append(meta["trial_dir"]) or {})
    meta = {"trial_dir": str(tdir), "launched_at": 0}
    assert runner._poll(meta) == TrialStatus.EARLY_STOPPED and sent == [str(tdir)]
    (tdir / "result.json").write_text("{}")  # the job had finished: completed, nothing to stop
    assert runner._poll(meta) == TrialStatus.COMPLETED and len(sent) == 1
