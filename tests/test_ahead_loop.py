"""The driver's loop with candidates made ahead (``AheadOrchestrator``), on jobs that
run in this process for set times: a slot a failed trial frees is filled while the
other trials still run, without polling in a busy loop, and a candidate that fails on
the background thread is made again at once, not when some trial next finishes."""

import json
import threading
import time
from pathlib import Path

from odnas.loop.config import SearchConfig
from odnas.loop.driver import create_run, run_loop
from odnas.rundir import ERROR_NAME, JOB_NAME, PROGRESS_NAME, RESULT_NAME, write_json_atomic
from odnas.testing import FakeLatencyBackend, InProcessJobs, _InProcessScheduler, _job_args


class TimedJobs(InProcessJobs):
    """Each job runs for ``seconds[trial]`` (default 0.5) on a timer thread, or fails at
    once where that is None; ``finished[trial]`` is when its result was written. A
    trial in ``until`` runs until trial ``until[trial]`` is launched, or its seconds
    have passed (then whatever waits for that launch has waited too long)."""

    def __init__(self, seconds: dict[int, float | None], until: dict[int, int] | None = None) -> None:
        super().__init__()
        self.seconds, self.until = seconds, until or {}
        self.done: set[str] = set()
        self.finished: dict[int, float] = {}
        self.started: dict[int, float] = {}  # when the scheduler was asked to run a trial's job
        self.launched_event: dict[int, threading.Event] = {}

    def _launch_event(self, trial: int) -> threading.Event:
        return self.launched_event.setdefault(trial, threading.Event())

    def schedulers(self):
        return {self.SCHEDULER: lambda session_name, **kw: _TimedScheduler(session_name, self)}

    def run_job(self, argv: list[str]) -> str:
        a = _job_args(argv[2:])
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        trial = int(out.name)
        self.launched += 1
        self.started[trial] = time.time()
        self._launch_event(trial).set()
        app = f"odnas-{trial}-{self.launched}"
        write_json_atomic(out / JOB_NAME, {"pid": 1, "host": "here", "start": time.time(),
                                           "params": json.loads(a.params)})
        seconds = self.seconds.get(trial, 0.5)
        if seconds is None:
            write_json_atomic(out / ERROR_NAME, {"reason": "failed at once (test)"})
            self.done.add(app)
            return app

        def finish() -> None:
            (out / PROGRESS_NAME).write_text(json.dumps({"epoch": 1, "val_acc": 0.5, "time": time.time()}) + "\n")
            write_json_atomic(out / RESULT_NAME, {"val_acc": 0.5, "epochs": 1, "status": "ok"})
            self.finished[trial] = time.time()
            self.done.add(app)

        if trial in self.until:
            event = self._launch_event(self.until[trial])
            t = threading.Thread(target=lambda: (event.wait(seconds), finish()), daemon=True)
        else:
            t = threading.Timer(seconds, finish)
            t.daemon = True
        t.start()
        return app


class _TimedScheduler(_InProcessScheduler):
    def state(self, app_id: str):
        from torchx.specs import AppState

        return AppState.SUCCEEDED if app_id in self.jobs.done else AppState.RUNNING


def search(tmp_path: Path, jobs: TimedJobs, trials: int = 3,
           poll_s: float = 1.0) -> tuple[Path, dict[int, float], dict]:
    cfg = SearchConfig(profile="cpu-mobile", space="mlp", trials=trials, max_candidates=8, parallel=2,
                       run_dir=str(tmp_path / "run"), method="sobol", seed=0, threads=1, retries=0,
                       poll_s=poll_s, scheduler=InProcessJobs.SCHEDULER)
    run_dir = create_run(cfg, schedulers=jobs.schedulers())
    run_loop(run_dir, cost_backend=FakeLatencyBackend(), quiet=True, schedulers=jobs.schedulers())
    launched = {int(p.parent.name): json.loads(p.read_text())["time"]
                for p in (run_dir / "trials").glob("*/launch.json")}
    stats = [json.loads(line) for line in (run_dir / "driver-stats.jsonl").read_text().splitlines()][-1]
    return run_dir, launched, stats


def test_a_slot_a_failed_trial_frees_is_filled_while_the_others_run_without_a_busy_poll(tmp_path):
    # Trial 0 fails at once, after the Orchestrator has deployed all three it was asked
    # for; Ax would then only wait for trials 1 and 2. Trial 2 runs until trial 3 is
    # launched (the freed slot filled), or 30 s: a fixed 6 s was too short once on a
    # loaded CI machine, and this way the test takes no longer when it passes.
    jobs = TimedJobs({0: None, 1: 0.5, 2: 30.0}, until={2: 3})
    _, launched, stats = search(tmp_path, jobs)
    assert sorted(launched) == [0, 1, 2, 3]
    assert jobs.started[3] < jobs.finished[2], "the freed slot waited for every running trial"
    wall = max(jobs.finished.values()) - launched[0]
    assert stats["calls"]["poll"] < 5 * wall + 20, stats["calls"]  # a poll about every second, not thousands


def test_a_poll_interval_under_a_second_is_kept(tmp_path):
    """--poll-s 0.25 polls four times a second while trials run (it was once rounded to 1 s)."""
    jobs = TimedJobs({0: 4.0, 1: 4.0})
    _, launched, stats = search(tmp_path, jobs, trials=2, poll_s=0.25)
    wall = max(jobs.finished.values()) - launched[0]
    # About 6.6 polls a second here; rounded to 1 s it was 2.4 (each trial's end and the
    # candidates wake the loop too).
    assert stats["calls"]["poll"] > 4 * wall, (stats["calls"], wall)


def test_botorchs_kernel_is_loaded_before_the_loop_said_when_it_compiles_and_not_taken_for_candidates(
        tmp_path, monkeypatch, capfd):
    import odnas.loop.driver as driver

    loaded: list[float] = []
    monkeypatch.setattr(driver, "kernel_build_due", lambda: True)  # a new environment
    # A compile that takes longer than the whole search's waits for candidates would.
    monkeypatch.setattr(driver, "load_lazy_kernels", lambda: (time.sleep(6.0), loaded.append(time.time())))
    jobs = TimedJobs({})
    _, launched, stats = search(tmp_path, jobs)
    assert len(loaded) == 1 and loaded[0] < min(launched.values())
    assert "building BoTorch's acquisition kernel" in capfd.readouterr().err
    assert stats["ahead"]["blocked_s"] < 6.0  # the compile is not counted as waiting for candidates


def test_a_candidate_that_fails_on_the_background_thread_is_made_again_at_once(tmp_path, monkeypatch):
    from odnas.loop.ahead import Ahead, CandidateProcessDied

    real = Ahead._gen
    failed: list[float] = []

    def once(self, **kwargs):
        if threading.current_thread().name == "odnas-ahead" and not failed:
            failed.append(time.time())
            raise CandidateProcessDied("the process making the candidate was killed by signal 9 (test)")
        return real(self, **kwargs)

    monkeypatch.setattr(Ahead, "_gen", once)
    # The first candidate made ahead fails while trial 0 runs (until trial 1 is launched, or 30 s).
    jobs = TimedJobs({0: 30.0}, until={0: 1})
    _, launched, stats = search(tmp_path, jobs)
    assert failed and sorted(launched) == [0, 1, 2]
    assert jobs.started[1] < jobs.finished[0], "the free slot waited for a trial to finish"
    assert stats["ahead"]["failed"] == 1


def test_a_candidate_process_that_keeps_dying_ends_the_search_with_one_line_and_keeps_the_trials(tmp_path,
                                                                                                monkeypatch):
    import pytest

    from odnas.errors import SearchFailed
    from odnas.loop.ahead import Ahead, CandidateProcessDied

    real = Ahead._gen
    made: list[int] = []

    def dies_after_two(self, **kwargs):
        if len(made) >= 2:
            raise CandidateProcessDied("the process making the candidate was killed by signal 9 (test)")
        made.append(1)
        return real(self, **kwargs)

    monkeypatch.setattr(Ahead, "_gen", dies_after_two)
    jobs = TimedJobs({})
    with pytest.raises(SearchFailed) as e:
        search(tmp_path, jobs, trials=4)
    msg = str(e.value)
    assert "\n" not in msg and "killed by signal 9" in msg and "odnas resume" in msg, msg
    assert len(list((tmp_path / "run" / "trials").glob("*/result.json"))) == 2


def test_a_candidate_the_space_cannot_build_fails_with_the_reason_and_the_search_goes_on(tmp_path):
    """A user's space whose build() raises for some parameters: that trial fails with the
    space's own message (it used to end the search with a traceback, and resume with it)."""
    from odnas.loop.store import load_run

    space = tmp_path / "picky.py"
    space.write_text("from odnas.spaces.mlp import MLPSpace\n\n\n"
                     "class Picky(MLPSpace):\n"
                     "    name = 'picky'\n\n"
                     "    def build(self, params, input_shape, num_classes):\n"
                     "        if params['hidden_size_1'] > 90:\n"
                     "            raise ValueError(f\"width {params['hidden_size_1']} is not supported here\")\n"
                     "        return super().build(params, input_shape, num_classes)\n")
    jobs = TimedJobs({})
    cfg = SearchConfig(profile="cpu-mobile", space=f"{space}:Picky", trials=3, max_candidates=12, parallel=2,
                       run_dir=str(tmp_path / "run"), method="sobol", seed=0, threads=1, poll_s=0.5,
                       tolerated_failure_rate=0.9, scheduler=InProcessJobs.SCHEDULER)
    run_dir = create_run(cfg, schedulers=jobs.schedulers())
    run_loop(run_dir, cost_backend=FakeLatencyBackend(), quiet=True, schedulers=jobs.schedulers())
    rows = load_run(run_dir).rows
    failed = [r for r in rows if r.state == "failed"]
    assert failed and all("could not be built" in r.reason and "is not supported here" in r.reason
                          for r in failed), [(r.state, r.reason) for r in rows]
    assert sum(r.state == "completed" for r in rows) == 3


class StoppedAsItEnds(TimedJobs):
    """Each job reports epoch 1 at once and runs on; a stop reaches it just as it ends:
    cancelling the job writes its last epoch and result first (``ends_on_stop``), or
    kills it, its error written as a killed job's would be."""

    def __init__(self, ends_on_stop: bool) -> None:
        super().__init__({})
        self.ends_on_stop = ends_on_stop
        self.outs: dict[str, Path] = {}

    def schedulers(self):
        return {self.SCHEDULER: lambda session_name, **kw: _StoppableScheduler(session_name, self)}

    def run_job(self, argv: list[str]) -> str:
        out = Path(_job_args(argv[2:]).out)
        out.mkdir(parents=True, exist_ok=True)
        self.launched += 1
        app = f"odnas-{out.name}-{self.launched}"
        self.outs[app] = out
        write_json_atomic(out / JOB_NAME, {"pid": 1, "host": "here", "start": time.time(), "params": {}})
        (out / PROGRESS_NAME).write_text(json.dumps({"epoch": 1, "val_acc": 0.3, "time": time.time()}) + "\n")
        return app

    def stop(self, app: str) -> None:
        out = self.outs[app]
        if self.ends_on_stop:
            with (out / PROGRESS_NAME).open("a") as f:
                f.write(json.dumps({"epoch": 2, "val_acc": 0.9, "time": time.time()}) + "\n")
            write_json_atomic(out / RESULT_NAME, {"val_acc": 0.9, "epochs": 2, "status": "ok"})
        else:
            write_json_atomic(out / ERROR_NAME, {"reason": "job stopped by the driver"})
        self.done.add(app)


class _StoppableScheduler(_TimedScheduler):
    def describe(self, app_id: str):  # known to every instance the driver's TorchX runner makes
        from torchx.schedulers.api import DescribeAppResponse

        return DescribeAppResponse(app_id=app_id, state=self.state(app_id)) if app_id in self.jobs.outs else None

    def _cancel_existing(self, app_id: str) -> None:
        self.jobs.stop(app_id)


def _search_stopping_every_trial(tmp_path: Path, jobs: StoppedAsItEnds, monkeypatch) -> Path:
    import odnas.loop.driver as driver
    from odnas.loop.driver import early_stopping_strategy

    def stop_all(*args, **kwargs):  # the rule stops every running trial that has a curve
        rule = early_stopping_strategy(*args, **kwargs)
        object.__setattr__(rule, "should_stop_trials_early", lambda trial_indices, experiment, current_node=None: {
            i: "stopped by the test's rule" for i in trial_indices if experiment.trials[i].run_metadata})
        return rule

    monkeypatch.setattr(driver, "early_stopping_strategy", stop_all)
    cfg = SearchConfig(profile="cpu-mobile", space="mlp", trials=2, max_candidates=4, parallel=2,
                       run_dir=str(tmp_path / "run"), method="sobol", seed=0, threads=1, retries=0, poll_s=0.5,
                       early_stopping=True, scheduler=InProcessJobs.SCHEDULER)
    run_dir = create_run(cfg, schedulers=jobs.schedulers())
    run_loop(run_dir, cost_backend=FakeLatencyBackend(), quiet=True, schedulers=jobs.schedulers())
    return run_dir


def test_a_trial_that_ends_as_it_is_early_stopped_is_completed_with_its_final_figures(tmp_path, monkeypatch):
    """Ax marks every trial it stops early-stopped; one whose job had written its result
    as the stop reached it kept its epoch-1 figure, and was left off the front."""
    from odnas.loop.store import load_run

    run_dir = _search_stopping_every_trial(tmp_path, StoppedAsItEnds(ends_on_stop=True), monkeypatch)
    rows = load_run(run_dir).rows
    assert [(r.state, r.metrics.get("val_acc")) for r in rows] == [("completed", 0.9), ("completed", 0.9)], rows
    assert all((run_dir / "trials" / f"{r.trial:04d}" / "stopped.json").exists() for r in rows)


def test_an_early_stopped_trial_stays_early_stopped_when_its_driver_dies_before_ax_stores_the_stop(tmp_path,
                                                                                                  monkeypatch):
    """The stopped job writes "job stopped by the driver"; a driver killed before Ax
    stored the stop found that error on resume and failed the trial (counted against the
    failure rate, and retried under --retries)."""
    from ax.core.base_trial import TrialStatus

    from odnas.loop.runner import TrialRunner
    from odnas.loop.store import load_run

    run_dir = _search_stopping_every_trial(tmp_path, StoppedAsItEnds(ends_on_stop=False), monkeypatch)
    rows = load_run(run_dir).rows
    assert [r.state for r in rows] == ["early_stopped", "early_stopped"], rows
    tdir = run_dir / "trials" / "0000"
    assert (tdir / ERROR_NAME).exists() and (tdir / "stopped.json").exists()
    assert TrialRunner._ended(tdir) == TrialStatus.EARLY_STOPPED  # what a resumed driver's poll now says


def test_a_result_that_lands_after_the_stop_was_stored_is_kept_on_resume(tmp_path, monkeypatch):
    """A cancel that reaches the job late (a cluster, a worker on another node): its
    last epoch and result land after Ax stored the stop; the next driver completes it."""
    from odnas.loop.store import load_run
    from odnas.testing import FakeLatencyBackend

    jobs = StoppedAsItEnds(ends_on_stop=False)
    run_dir = _search_stopping_every_trial(tmp_path, jobs, monkeypatch)
    tdir = run_dir / "trials" / "0001"
    (tdir / ERROR_NAME).unlink()  # the job went on: its last epoch and result, late
    with (tdir / PROGRESS_NAME).open("a") as f:
        f.write(json.dumps({"epoch": 2, "val_acc": 0.9, "time": time.time()}) + "\n")
    write_json_atomic(tdir / RESULT_NAME, {"val_acc": 0.9, "epochs": 2, "status": "ok"})
    run_loop(run_dir, cost_backend=FakeLatencyBackend(), quiet=True, schedulers=jobs.schedulers())
    rows = load_run(run_dir).rows
    assert [(r.state, round(r.metrics["val_acc"], 6)) for r in rows] == [("early_stopped", 0.3),
                                                                          ("completed", 0.9)], rows


def test_a_stop_asked_while_the_driver_starts_up_is_kept_and_one_from_before_it_is_not(tmp_path, monkeypatch):
    """`odnas stop` is accepted once the driver holds the run's lock, but the driver
    removed the request at the end of its start-up (a minute later), then at its
    beginning (a fraction of a second later, still after the lock), and trained on."""
    import contextlib
    import os

    import odnas.loop.driver as driver
    from odnas.rundir import STOP_REQUEST_NAME

    frozen = driver.frozen_heap

    @contextlib.contextmanager
    def asked_meanwhile():  # the first step the driver takes with the lock held
        (tmp_path / "run" / STOP_REQUEST_NAME).write_text("stop\n")
        with frozen():
            yield

    monkeypatch.setattr(driver, "frozen_heap", asked_meanwhile)
    run_dir, launched, _ = search(tmp_path, TimedJobs({}), trials=4)
    assert len(launched) < 4 and not (run_dir / STOP_REQUEST_NAME).exists(), launched
    monkeypatch.setattr(driver, "frozen_heap", frozen)
    stale = run_dir / STOP_REQUEST_NAME  # left by an earlier driver that never read it
    stale.write_text("stop\n")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    run_loop(run_dir, cost_backend=FakeLatencyBackend(), quiet=True, schedulers=TimedJobs({}).schedulers())
    assert len(list((run_dir / "trials").glob("*/result.json"))) == 4 and not stale.exists()


def test_a_latency_is_timed_with_the_run_s_jobs_paused_and_no_candidate_being_made(tmp_path, monkeypatch):
    """The search's default isolation, wired end to end: the driver's cost lane pauses the
    run's local jobs (found from their job.json) and holds candidate generation still
    for each timing (docs/benchmarks.md, "isolation")."""
    import socket
    import subprocess
    import sys
    from contextlib import contextmanager

    from odnas.cost.quiet import _state
    from odnas.loop import ahead as ahead_mod
    from odnas.rundir import TRIAL_MODULE

    sleepers: list[subprocess.Popen] = []

    class LocalJobs(TimedJobs):  # each trial's job.json names a live local process, as a real job's does
        def run_job(self, argv):
            app = super().run_job(argv)
            out = Path(_job_args(argv[2:]).out)
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", TRIAL_MODULE])
            sleepers.append(p)
            write_json_atomic(out / JOB_NAME, {**json.loads((out / JOB_NAME).read_text()),
                                               "pid": p.pid, "host": socket.gethostname()})
            return app

    held: list[bool] = []
    real_still = ahead_mod.Ahead.still

    @contextmanager
    def still(self):
        with real_still(self):
            held.append(True)
            try:
                yield
            finally:
                held.pop()

    monkeypatch.setattr(ahead_mod.Ahead, "still", still)
    seen: list[tuple[list[str], bool]] = []

    class Sees(FakeLatencyBackend):
        def measure(self, onnx_path, profile):
            seen.append(([_state(p.pid) for p in sleepers if p.poll() is None], bool(held)))
            return super().measure(onnx_path, profile)

    jobs = LocalJobs({0: 3.0, 1: 3.0, 2: 0.5, 3: 0.5})
    cfg = SearchConfig(profile="cpu-mobile", space="mlp", trials=4, max_candidates=8, parallel=2,
                       run_dir=str(tmp_path / "run"), method="sobol", seed=0, threads=1, retries=0,
                       poll_s=0.5, scheduler=InProcessJobs.SCHEDULER)
    try:
        run_dir = create_run(cfg, schedulers=jobs.schedulers())
        run_loop(run_dir, cost_backend=Sees(), quiet=True, schedulers=jobs.schedulers())
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
    assert seen and all(h for _, h in seen), seen  # candidate generation held still for every timing
    with_jobs = [states for states, _ in seen if states]
    assert with_jobs, seen  # some timing happened while the run had jobs alive
    assert all(s == "T" for states in with_jobs for s in states), with_jobs  # every one paused


def test_a_run_stopped_on_its_failure_rate_says_why_and_resumes_with_new_fault_settings(tmp_path):
    """Failing alike (a member the space declines, a timeout too short), a resume failed
    the same way again: the error names the shared reason, and resume takes new
    --trial-timeout-s, --retries and --tolerated-failure-rate."""
    import pytest

    from odnas.errors import SearchError, SearchFailed
    from odnas.loop.driver import resume
    from odnas.rundir import read_settings

    jobs = TimedJobs({i: None for i in range(8)})  # every trial fails at once
    cfg = SearchConfig(profile="cpu-mobile", space="mlp", trials=4, max_candidates=12, parallel=2,
                       run_dir=str(tmp_path / "run"), method="sobol", seed=0, threads=1, retries=0,
                       poll_s=0.2, scheduler=InProcessJobs.SCHEDULER)
    run_dir = create_run(cfg, schedulers=jobs.schedulers())
    with pytest.raises(SearchFailed) as e:
        run_loop(run_dir, cost_backend=FakeLatencyBackend(), quiet=True, schedulers=jobs.schedulers())
    assert "too many trials failed (over 50%); " in str(e.value) and " failed alike: " in str(e.value), str(e.value)
    assert "failed at once (test)" in str(e.value) and "--tolerated-failure-rate anew" in str(e.value)
    with pytest.raises(SearchError, match="--trial-timeout-s -1: must be a positive number"):
        resume(run_dir, faults={"trial_timeout_s": -1})
    jobs = TimedJobs({})  # trials succeed now
    from odnas.loop.runner import TrialRunner

    attached = []
    real_attach = TrialRunner.attach
    TrialRunner.attach = lambda self, *a, **k: attached.append(self) or real_attach(self, *a, **k)
    try:
        resume(run_dir, cost_backend=FakeLatencyBackend(), schedulers=jobs.schedulers(),
               faults={"tolerated_failure_rate": 0.9, "trial_timeout_s": 30.0, "retries": None})
    finally:
        TrialRunner.attach = real_attach
    s = read_settings(run_dir)
    assert (s.tolerated_failure_rate, s.trial_timeout_s, s.retries) == (0.9, 30.0, 0)
    # the runner storage decoded keeps the settings it was made with: it times jobs out anew too
    assert attached and attached[-1].cfg.trial_timeout_s == 30.0
    assert sum(1 for p in (run_dir / "trials").glob("*/result.json")) >= 1


def test_an_arch_id_that_names_two_networks_stops_the_search_with_the_fix_not_resume(tmp_path):
    import pytest

    from odnas.errors import SpaceError
    from tests.test_custom_space import TWO

    space = tmp_path / "two.py"
    space.write_text("OMITS_ACT, WIDER = True, 0\n" + TWO)
    jobs = TimedJobs({})
    cfg = SearchConfig(profile="cpu-mobile", space=f"{space}:Two", trials=8, max_candidates=8, parallel=2,
                       run_dir=str(tmp_path / "run"), method="sobol", seed=0, threads=1, retries=0,
                       poll_s=0.2, scheduler=InProcessJobs.SCHEDULER)
    run_dir = create_run(cfg, schedulers=jobs.schedulers())
    with pytest.raises(SpaceError) as e:
        run_loop(run_dir, cost_backend=FakeLatencyBackend(), quiet=True, schedulers=jobs.schedulers())
    text = str(e.value)
    assert "to two different networks (they differ in act)" in text and "kept;" in text, text
    assert text.endswith("Fix arch_id() and start a new search (a run keeps the space it began with).") \
        and "Go on with" not in text, text
