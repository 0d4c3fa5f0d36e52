"""The closed loop: an Ax experiment over a space, under a profile, run by Ax's Orchestrator.

``search(SearchConfig(...))`` makes a run dir, configures an ``ax.api.Client``
(parameters, objective, thresholds and budgets as Ax strings, runner, metrics,
generation strategy), stores it in SQLite and lets Ax's ``Orchestrator`` drive
TorchX jobs until the trial budget is spent. ``resume(run_dir)`` loads the stored
experiment and goes on. The experiment is saved by Ax after every state change.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from odnas.cost.calibrate import run_calibration
from odnas.cost.device import DeviceError, DeviceLatencyBackend
from odnas.cost.lane import CostLane, NamesTwoNetworks, calibration_note, check_budgets, check_builds
from odnas.cost.quiet import resume_jobs
from odnas.errors import OdnasError, SearchError, SearchFailed, SearchInterrupted, SpaceError
from odnas.jobs.component import CONTAINER_SCHEDULERS, torchx_runner
from odnas.loop.ahead import (Ahead, AheadOrchestrator, CandidateProcessDied, frozen_heap, kernel_build_due,
                              load_lazy_kernels, pace_note)
from odnas.loop.adapter import (
    ax_parameters, experiment_of, generation_strategy_of, import_ax, save_trials, set_trial_property,
    trial_property,
)
from odnas.loop.config import (
    SearchConfig, ax_bounds, check_fault_settings, default_run_dir, generation_strategy, make_settings,
    refuse_used_run_dir,
)
from odnas.loop.metrics import CostMetric, ValAccCurveMetric, ValAccMetric
from odnas.loop.runner import TrialRunner
from odnas.loop.store import EXPERIMENT_NAME, init_storage, load_client, load_run, quiet_logs, trial_table
from odnas.profiles import COST_METRICS, profile_from_dict, with_device
from odnas.records import RunSettings, TrialRow
from odnas.rundir import (
    DRIVER_STATS_NAME, JOB_NAME, LAUNCH_NAME, LOG_NAME, MADE_NAMES, MAKING_NAME, RESULT_NAME, SETTINGS_NAME,
    LOCK_NAME, STOP_REQUEST_NAME, being_made, driver_lock, driver_running, mark_making,
    read_curve, read_json, read_settings, trial_begun, write_settings, write_trials,
)
from odnas.select import pick
from odnas.spaces import check_unchanged, get_space
from odnas.spaces.base import Range

import_ax()

from ax.early_stopping.strategies import PercentileEarlyStoppingStrategy  # noqa: E402

#: Extra TorchX schedulers, by name: ``{"inprocess": factory}`` (see ``odnas.testing``).
Schedulers = Mapping[str, Callable[..., Any]]


def create_run(cfg: SearchConfig, schedulers: Schedulers | None = None, settings: RunSettings | None = None) -> Path:
    """Make the run dir and its stored, configured Ax experiment (no trials yet).
    ``settings``: ``make_settings(cfg, schedulers)``, if the caller has checked the input
    already (the CLI does, before it imports this module and Ax)."""
    settings = settings or make_settings(cfg, schedulers)
    import_ax()
    from ax.api.client import Client

    run_dir = (Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg, get_space(settings.space).name)).resolve()
    refuse_used_run_dir(run_dir)  # again: a default run dir, or one another search made meanwhile
    if being_made(run_dir) is False:  # a making killed before it could clean up (SIGKILL): made again
        for name in (*MADE_NAMES, MAKING_NAME):
            (run_dir / name).unlink(missing_ok=True)
    there = set(run_dir.iterdir()) if run_dir.exists() else None  # an empty folder the user made, say
    run_dir.mkdir(parents=True, exist_ok=True)
    mark_making(run_dir)
    try:
        _configure(run_dir, cfg, settings, Client)
    except BaseException as e:  # all or nothing: a half-made run dir could be neither searched nor resumed
        for f in [run_dir] if there is None else set(run_dir.iterdir()) - there:
            shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)
        from ax.exceptions.core import UserInputError

        if isinstance(e, OdnasError):  # odnas's own (a calibration table that does not fit): as it is
            raise
        if isinstance(e, (UserInputError, ValueError)):  # what odnas's checks let through: one line, not a traceback
            raise SearchError(f"Ax refused this search's setup: {(str(e).strip().splitlines() or [''])[0]}") from None
        raise
    (run_dir / MAKING_NAME).unlink(missing_ok=True)
    return run_dir


def _configure(run_dir: Path, cfg: SearchConfig, settings, Client) -> None:
    """``create_run``'s writing: the settings, a calibration, and the Ax experiment."""
    write_settings(run_dir, settings)
    profile = profile_from_dict(settings.profile)
    run_calibration(run_dir, profile)  # a calibrated profile: fit (or bad table) now, kept in the run dir
    with quiet_logs(run_dir / LOG_NAME):
        storage = init_storage(run_dir)
        client = Client(storage_config=storage, random_seed=cfg.seed)
        space = get_space(settings.space)
        client.configure_experiment(parameters=ax_parameters(space.searched(settings.fixed)),
                                    name=EXPERIMENT_NAME, description=f"odnas {settings.space} under {profile.name}")
        client.configure_optimization(profile.objective, outcome_constraints=ax_bounds(profile) or None)
        val_acc = ValAccCurveMetric() if settings.early_stopping else ValAccMetric()
        client.configure_metrics([val_acc, *(CostMetric(m) for m in COST_METRICS)])
        client.configure_runner(TrialRunner(str(run_dir), settings.to_dict()))
        discrete = not any(isinstance(p, Range) and p.kind == "float" for p in space.searched(settings.fixed))
        client.set_generation_strategy(generation_strategy(cfg.method, cfg.seed, cfg.init_trials, cfg.trials,
                                                           discrete=discrete))


# ---------------------------------------------------------------- the loop


def search(cfg: SearchConfig, progress: Callable[["RunState"], None] | None = None,
           cost_backend=None, quiet: bool = True, schedulers: Schedulers | None = None) -> Path:
    """Run a search from scratch; returns its run dir."""
    settings = make_settings(cfg, schedulers)
    # Budgets no candidate can meet: refused before the run dir is made.
    check_budgets(settings, cost_backend, progress=None if quiet else _say)
    run_dir = create_run(cfg, schedulers, settings)
    run_loop(run_dir, progress, cost_backend, quiet, schedulers=schedulers)
    return run_dir


def _tell(line: str, term) -> None:
    """A line for the terminal (``term``) that belongs in the run's log too: with quiet
    logs, this process's stderr is that log."""
    print(line, file=term, flush=True)
    if term is not sys.stderr:
        print(line, file=sys.stderr, flush=True)


def _say(text: str) -> None:
    print(f"odnas: {text}", file=sys.stderr, flush=True)


#: The image container schedulers ran when ``--image`` was not yet required.
LEGACY_IMAGE = "ghcr.io/odnas/odnas:latest"
#: What ``odnas resume`` may change of how a search meets failing trials.
FAULT_SETTINGS = frozenset({"retries", "trial_timeout_s", "tolerated_failure_rate"})


def resume(run_dir: str | Path, progress: Callable[["RunState"], None] | None = None,
           cost_backend=None, quiet: bool = True, trials: int | None = None,
           schedulers: Schedulers | None = None, device: str | None = None,
           max_candidates: int | None = None, faults: Mapping[str, Any] | None = None) -> Path:
    """Continue a stopped or killed search; completed trials are kept, never retrained.
    ``trials`` and ``max_candidates`` are new totals (a run that reached its candidate
    cap goes on with a higher one); ``device`` is the device agent's address when it
    has moved (a phone's new address); ``faults`` new ``retries``, ``trial_timeout_s``
    or ``tolerated_failure_rate`` (a run stopped on its failure rate goes on with
    another timeout, or a higher rate)."""
    faults = {k: v for k, v in (faults or {}).items() if v is not None}
    if set(faults) - FAULT_SETTINGS:
        raise ValueError(f"faults: unknown keys {sorted(set(faults) - FAULT_SETTINGS)}")
    check_fault_settings(faults.get("retries"), faults.get("trial_timeout_s"), faults.get("tolerated_failure_rate"))
    run_dir = Path(run_dir).resolve()
    settings = read_settings(run_dir)
    if driver_running(run_dir):  # refused now, not after the checks below (seconds on a large run)
        with driver_lock(run_dir):
            pass
    space = get_space(settings.space)
    check_unchanged(space, settings)  # Ax keeps the run's space: new code would not match it
    check_builds(space, settings, run_dir, k=None)  # nor would its cached costs, nor what it trains next
    if trials is not None and trials < 1:
        raise SearchError("--trials must be at least 1")
    if trials is not None or max_candidates is not None:  # read-only, before anything is loaded for writing
        rows = load_run(run_dir).rows
        done = sum(r.trained for r in rows)
        if trials is not None and trials < done:
            raise SearchError(f"--trials {trials}: {done} model{'s are' if done != 1 else ' is'} trained already, "
                              f"and --trials counts them; give more than {done} to train more (nothing was changed)")
        goal = trials if trials is not None else settings.trials
        made = sum(r.state != "failed" for r in rows)  # as the cap counts them (trials_to_run): failed ones are not
        if max_candidates is not None and (max_candidates <= made or max_candidates < goal):
            raise SearchError(f"--max-candidates {max_candidates}: the run has made {made} candidate"
                              f"{'s' if made != 1 else ''} already (failed ones aside), and --max-candidates counts "
                              f"them, as it does the {goal} trials; give more than {max(made, goal - 1)} (nothing "
                              "was changed)")
    if device:
        profile = profile_from_dict(settings.profile, source=f"{run_dir}/{SETTINGS_NAME}")
        if profile.device is None:
            raise SearchError(f"--device: {run_dir} times latency on its host; a search keeps where it times, "
                              "so its figures stay comparable")
        settings.profile = with_device(profile, device).to_dict()
        with driver_lock(run_dir):
            write_settings(run_dir, settings)
    run_loop(run_dir, progress, cost_backend, quiet, trials=trials, schedulers=schedulers,
             max_candidates=max_candidates, faults=faults)
    return run_dir


def run_loop(run_dir: Path, progress=None, cost_backend=None, quiet: bool = True,
             trials: int | None = None, schedulers: Schedulers | None = None,
             max_candidates: int | None = None, faults: Mapping[str, Any] | None = None) -> None:
    import torch
    from ax.api.utils.storage import db_settings_from_storage_config
    from ax.exceptions.core import UserInputError
    from ax.orchestration.orchestrator import FailureRateExceededError, OrchestratorOptions

    settings = read_settings(run_dir)
    t0 = time.time()
    # Ax's GPs are tiny; with trainings busy on every core, one thread fits them fastest
    # (5x faster than 2 threads measured on 2 busy cores).
    torch.set_num_threads(1)
    # Full collections (one after each model's candidate) walk only what the driver makes
    # from here on: the imported libraries are frozen out of their sight (loop.ahead).
    stop = run_dir / STOP_REQUEST_NAME
    with driver_lock(run_dir), quiet_logs(run_dir / LOG_NAME, enabled=quiet) as term, frozen_heap():
        # A request left from before this driver is not for it; one made once it holds the
        # lock is (`odnas stop` takes a held lock for a running driver: start-up can take a
        # minute). The lock file was written as it was taken: the same filesystem's clock.
        with contextlib.suppress(FileNotFoundError):
            if stop.stat().st_mtime < (run_dir / LOCK_NAME).stat().st_mtime:
                stop.unlink()
        if trials is not None or max_candidates is not None:  # new totals, written once this driver holds the run
            if trials is not None:
                settings.trials = trials
            settings.max_candidates = (max_candidates if max_candidates is not None else
                                       max(int(settings.max_candidates or 0), 4 * settings.trials))
            write_settings(run_dir, settings)
        if faults:  # new fault settings, written once this driver holds the run (resume --trial-timeout-s ...)
            for k, v in faults.items():
                setattr(settings, k, v)
            write_settings(run_dir, settings)
        client, storage = load_client(run_dir)
        exp = experiment_of(client)
        done = trained_count(exp)
        if trials is None and done >= settings.trials and not any(t.status.is_running for t in exp.trials.values()):
            # a run with nothing left to do: say how to do more, not only reprint its front
            print(f"odnas: note: all {settings.trials} planned trainings are done; `odnas resume {run_dir} "
                  f"--trials N` with N over {done} trains more", file=term, flush=True)
        runner = exp.runner
        assert isinstance(runner, TrialRunner)
        lane = CostLane.for_run(run_dir, settings, backend=cost_backend)
        lane.say = lambda line: _tell(line, term)  # a device agent's retries: on the terminal and in the log
        runner.attach(run_dir, lane, torchx_runner(schedulers))  # where the run dir is now
        for k in FAULT_SETTINGS:  # the runner keeps the settings it was made with; a resume may change these
            setattr(runner.cfg, k, getattr(settings, k))
        if runner.cfg.scheduler in CONTAINER_SCHEDULERS and not runner.cfg.image:
            runner.cfg.image = LEGACY_IMAGE  # a run made before --image was required: the tag it ran
        # Ax stops trials with the runner of their trial type, which storage decodes as an
        # object of its own: without this, early stops went to a runner never attached
        # (TorchX's default schedulers, no pool, the run dir the run was made in).
        exp.runner = runner
        resume_jobs(lane.local_jobs())  # a driver killed mid-measurement left them stopped
        try:
            host_note(lane, term)
        except DeviceError as e:  # nothing started: say how to go on once the device is back
            raise type(e)(f"{e}. {interrupt_summary(exp, run_dir)}") from None
        # With warm workers and lookahead, trials beyond the slots wait in the workers' inboxes.
        queued = settings.lookahead * settings.parallel if runner.warm else 0
        options = OrchestratorOptions(
            max_pending_trials=settings.parallel + queued,
            tolerated_trial_failure_rate=settings.tolerated_failure_rate,
            min_failed_trials_for_failure_rate_check=3,
            # Ax types it int, but only sleeps on it; odnas's own loop takes it as float seconds.
            init_seconds_between_polls=settings.poll_s,  # type: ignore[arg-type]
            min_seconds_before_poll=0.2,
            seconds_between_polls_backoff_factor=1.0,
            # With quiet logs Ax's loggers already write to the run's log (loop.store.quiet_logs);
            # the Orchestrator's own file handler would write each of its lines there twice.
            log_filepath=None if quiet else str(run_dir / LOG_NAME),
            wait_for_running_trials=True,
            early_stopping_strategy=(early_stopping_strategy(settings.early_stopping_from,
                                                             settings.early_stopping_against)
                                     if settings.early_stopping else None),
        )
        gs = generation_strategy_of(client)
        orch = AheadOrchestrator(experiment=exp, generation_strategy=gs, options=options,
                                 db_settings=db_settings_from_storage_config(storage))
        orch.storage = storage
        # The next candidate is made on a background thread while trials train (loop.ahead);
        # a latency is timed only while none is being made.
        ahead = orch.ahead = Ahead(gs, exp, wanted=lambda: new_trials_wanted(exp, settings) > 0,
                                   running=lambda: bool(orch.pending_trials))
        lane.holds.append(ahead.still)
        if new_trials_wanted(exp, settings) > 0:
            # Before the loop, so that neither a compile on a cache miss nor the load is taken
            # for candidates setting the pace; and said, else the first candidate looks stuck.
            if kernel_build_due():
                print("odnas: building BoTorch's acquisition kernel for this environment and CPU first: about "
                      "half a minute, once", file=term, flush=True)
            load_lazy_kernels()
        orch.refill = lambda: trials_to_run(exp, settings) > 0
        state = RunState(run_dir, t0)
        clock = DriverClock(exp, runner, lane, ahead)
        table = TrialsFile(exp, run_dir)
        adopt_lost_jobs(exp, runner, storage)
        if finished := orch.complete_finished_stopped():  # results that landed while no driver ran
            print(f"odnas: note: trial{'s' if len(finished) != 1 else ''} {', '.join(map(str, finished))} "
                  "finished training after being stopped early: kept as completed", file=term, flush=True)
        retries = settings.retries
        signals = SignalGuard()
        last = [0.0]

        def idle(_orch) -> None:
            """Called by the Orchestrator while it waits (about once a poll)."""
            signals.keep()  # TorchX's local scheduler installs its own handlers when it starts
            if stop.exists():
                raise StopRequested()
            table.update()
            if progress and time.time() - last[0] >= 1.0:
                last[0] = time.time()
                progress(state.refresh(exp))

        clean = False
        try:
            if progress:
                progress(state.refresh(exp))
            # ``trials`` counts trainings: a candidate over a budget costs seconds, not a
            # training, so it does not use up the trial budget (``max_candidates`` caps them).
            # Lost candidates (made but never deployed before a crash) are redeployed by Ax.
            while True:
                while (todo := trials_to_run(exp, settings)) > 0:
                    for _ in orch.run_trials_and_yield_results(max_trials=todo, idle_callback=idle):
                        signals.keep()
                        if stop.exists():
                            raise StopRequested()
                        queue_retries(exp, storage, retries)
                        table.update()
                        if progress:
                            progress(state.refresh(exp))
                        if not orch.deploying and trials_to_run(exp, settings) > 0:
                            # All `todo` are deployed and Ax would now only wait for them all;
                            # a trial that failed or was over a budget left room: fill it now.
                            break
                # Trials still marked RUNNING from before a restart end here; any that
                # failed leave room for new ones.
                orch.wait_for_completed_trials_and_report_results(idle_callback=idle)
                queue_retries(exp, storage, retries)
                if progress:
                    progress(state.refresh(exp))
                if trials_to_run(exp, settings) == 0 and not orch.pending_trials:
                    break
            clean = True
        except StopRequested:
            stop.unlink(missing_ok=True)
            runner.close()  # first: a warm worker told to stop takes no queued trial while this is told
            print(f"odnas: stopped on request (odnas stop); {interrupt_summary(exp, run_dir)}", file=term, flush=True)
            return
        except KeyboardInterrupt as e:
            how = "SIGTERM" if getattr(e, "signum", None) == signal.SIGTERM else "interrupted"
            runner.close()
            raise SearchInterrupted(f"{how}: {interrupt_summary(exp, run_dir)}") from None
        except FailureRateExceededError:
            runner.close()
            raise SearchFailed(
                f"too many trials failed (over {settings.tolerated_failure_rate:.0%}){failure_note(exp, run_dir)}; "
                f"see `odnas status {run_dir}` for each reason and {run_dir / LOG_NAME} for details. "
                f"{interrupt_summary(exp, run_dir)} (it takes --trial-timeout-s, --retries and "
                "--tolerated-failure-rate anew)"
            ) from None
        except UserInputError as e:
            raise SearchError(str(e).splitlines()[0]) from None
        except DeviceError as e:  # the device went away, or refused: say what is kept and how to go on
            raise type(e)(f"{e}. {interrupt_summary(exp, run_dir)}") from None
        except NamesTwoNetworks as e:  # the run keeps its space: resuming meets it again
            raise SpaceError(f"{e}. {interrupt_summary(exp, run_dir, go_on=NEW_SEARCH)}") from None
        except SpaceError as e:  # the cost lane met a build() that is not the network it timed: one line too
            raise SpaceError(f"{e}. {interrupt_summary(exp, run_dir)}") from None
        except CandidateProcessDied as e:  # twice: on the background thread, then in the driver's
            raise SearchFailed(f"no candidate could be made: {e}. "
                               f"{interrupt_summary(exp, run_dir)}") from None
        finally:
            signals.restore()
            ahead.close(wait=clean)  # on an interrupt, a candidate being made is dropped
            runner.close()  # jobs still training finish (resume reattaches); idle warm workers exit
            clocked = clock.write(run_dir / DRIVER_STATS_NAME, t0)
            table.close()
        if progress:
            progress(state.refresh(exp, final=True))
        trained = trained_count(exp)
        if trained < settings.trials:
            over = sum(1 for t in exp.trials.values() if (t.run_metadata or {}).get("over_budget"))
            msg = (f"{trained} of {settings.trials} trainings done: the candidate cap "
                   f"(--max-candidates {settings.max_candidates}) was reached with {over} "
                   f"candidate{'s' if over != 1 else ''} over a budget")
            more = f"`odnas resume {run_dir} --max-candidates {2 * settings.max_candidates}` tries more"
            if trained == 0:
                raise SearchFailed(msg + f"; no candidate tried fits the budgets: {more}, or loosen them in a new "
                                   "search (--constraint, or the profile's budgets); a run keeps the budgets it "
                                   "began with")
            print(f"odnas: note: {msg}; {more}", file=term, flush=True)
        if (pace := pace_note(clocked.get("ahead") or {}, clocked["wall_s"])) is not None:
            print(f"odnas: note: {pace}", file=term, flush=True)


class StopRequested(Exception):
    """``odnas stop RUN``: finish now, as after the last trial."""


class _Signal(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised as a KeyboardInterrupt: Ax catches ``Exception`` around
    runner calls (and TorchX's own handler raises one), which would swallow a Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SignalGuard:
    """odnas's SIGINT and SIGTERM handlers while a driver runs (main thread only),
    restored afterwards. ``keep`` puts them back if a library replaced them."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        import threading

        self.active = threading.current_thread() is threading.main_thread()
        self.previous = {s: signal.getsignal(s) for s in self.SIGNALS} if self.active else {}
        self.keep()

    @staticmethod
    def _raise(signum, frame) -> None:
        raise _Signal(signum)

    def keep(self) -> None:
        if self.active:
            for s in self.SIGNALS:
                if signal.getsignal(s) is not self._raise:
                    signal.signal(s, self._raise)

    def restore(self) -> None:
        if self.active:
            for s, h in self.previous.items():
                signal.signal(s, h)


def failure_note(exp, run_dir: Path) -> str:
    """The reason most failed trials share, when one does: a space that declines a
    member, or a timeout too short, fails the same way again on resume until changed."""
    reasons = [(r.reason or "").strip() for r in trial_table(exp, run_dir) if r.state == "failed"]
    if not reasons:
        return ""
    top = max(set(reasons), key=reasons.count)
    n = reasons.count(top)
    if not top or n < 2 or n * 2 < len(reasons):
        return ""
    return f"; {n} of the {len(reasons)} failed alike: {top.splitlines()[0][:200]}"


#: How to go on after a space's arch_id() named two networks.
NEW_SEARCH = "Fix arch_id() and start a new search (a run keeps the space it began with)."


def interrupt_summary(exp, run_dir: Path, go_on: str | None = None) -> str:
    """What an interrupted or stopped search leaves: what is kept, what still runs, how
    to go on (``go_on``; by default, resume)."""
    rows = trial_table(exp, run_dir)
    # Trained is what has a result on disk: a job that finished since the last poll counts.
    finished = {r.trial for r in rows if r.trial_dir and (Path(r.trial_dir) / RESULT_NAME).exists()}
    done = len(finished | {r.trial for r in rows if r.trained})
    active = [r for r in rows if r.state == "running" and r.trial not in finished]
    # A trial handed to a warm worker that had not begun it is not run once the driver
    # has gone: the worker exits when idle. A fresh job, once launched, runs.
    queued = sum(1 for r in active if r.arch_id and "worker" in (exp.trials[r.trial].run_metadata or {})
                 and not (r.trial_dir and trial_begun(r.trial_dir)))
    # A candidate made but never costed or launched (its cost lane cut short) runs nowhere.
    unlaunched = sum(1 for r in active if not r.arch_id)
    running = len(active) - queued - unlaunched
    parts = []
    if running:
        parts.append(f"{running} training job{'s are' if running != 1 else ' is'} left to finish, and resume "
                     f"reattaches to {'them' if running != 1 else 'it'}")
    if queued:
        parts.append(f"{queued} queued trial{'s' if queued != 1 else ''} had not started, and resume starts "
                     f"{'them' if queued != 1 else 'it'}")
    if unlaunched:
        parts.append(f"{unlaunched} candidate{'s' if unlaunched != 1 else ''} not costed or launched yet, and "
                     f"resume does {'them' if unlaunched != 1 else 'it'}")
    jobs = "; ".join(parts) or "no training job was running"
    go_on = go_on or f"Go on with: odnas resume {run_dir}"
    return f"{done} trained model{'s' if done != 1 else ''} kept; {jobs}. {go_on}"


def host_note(lane: CostLane, out) -> None:
    """Where latency is timed: on a device, one line naming it (after checking the link,
    so a wrong address or token stops the search before anything runs); on this host,
    one line when it switches speed modes, and what odnas does about it. Either way, one
    line before when the first timing will calibrate the latency reference first."""
    if lane.on_device:
        info = lane.backend.check(lane.profile)
        print(f"odnas: timing latency on {info['device']} ({info['cpu_model']}, onnxruntime {info['ort_version']}) "
              f"through the device agent at {lane.profile.device.url}", file=out, flush=True)
        if due := lane.calibration_due():
            print(f"odnas: {calibration_note(due, device=True)}", file=out, flush=True)
        return
    if due := lane.calibration_due():
        print(f"odnas: {calibration_note(due, isinstance(lane.backend, DeviceLatencyBackend))}", file=out,
              flush=True)
    base = lane.host_check()
    if base is not None and base.modes.present:
        print(f"odnas: note: this host switches between speed modes (the reference model's p90/p10 is "
              f"{base.modes.spread:.2f}); latencies are timed against it and reported for the fast mode, with "
              "error bars that cover the switching. `odnas doctor` says more.", file=out, flush=True)


class TrialsFile:
    """Keeps ``trials.json`` (``rundir.write_trials``) as new as the experiment, so
    ``odnas status`` reads the trials without loading Ax: written at the next poll after
    any commit to the run's database, and when the driver ends."""

    def __init__(self, exp, run_dir: Path) -> None:
        from ax.storage.sqa_store.db import get_engine
        from sqlalchemy import event

        self.exp, self.run_dir, self.dirty = exp, run_dir, True
        self.engine = get_engine()
        event.listen(self.engine, "commit", self._committed)

    def _committed(self, *args: Any) -> None:
        self.dirty = True

    def update(self) -> None:
        if self.dirty:
            self.dirty = False
            try:
                write_trials(self.run_dir, trial_table(self.exp, self.run_dir))
            except OSError:  # a full disk: status reads the experiment instead
                pass

    def close(self) -> None:
        """The last write, after the database's write-ahead log is checkpointed into it:
        SQLite would otherwise do that when the process exits, after this file, and the
        database would look newer than the trials written."""
        from sqlalchemy import event

        event.remove(self.engine, "commit", self._committed)
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception:  # noqa: BLE001 — busy or locked: status then reads the experiment
            pass
        self.dirty = True
        self.update()


class DriverClock:
    """Where the driver's wall time goes, from public figures only: Ax's own fit and
    generation times on each generator run made this session, the runner's deploy and
    poll times, the cost lane's measuring time, and the time SQLite spent executing
    Ax's storage statements (SQLAlchemy's engine events). Written to ``driver-stats.jsonl``."""

    def __init__(self, exp, runner: TrialRunner, lane: CostLane, ahead: Ahead | None = None) -> None:
        from ax.storage.sqa_store.db import get_engine
        from sqlalchemy import event

        self.exp, self.runner, self.lane, self.ahead = exp, runner, lane, ahead
        self.known = set(exp.trials)
        self.sql_s, self.sql_n = 0.0, 0
        self._started: list[float] = []
        self.engine = get_engine()
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)

    def _before(self, *args: Any) -> None:
        self._started.append(time.perf_counter())

    def _after(self, *args: Any) -> None:
        if self._started:
            self.sql_s += time.perf_counter() - self._started.pop()
            self.sql_n += 1

    def seconds(self) -> tuple[dict[str, float], dict[str, int]]:
        gen = [gr for i, t in self.exp.trials.items() if i not in self.known for gr in t.generator_runs]
        seconds = {"generation": sum((gr.fit_time or 0.0) + (gr.gen_time or 0.0) for gr in gen),
                   "cost_lane": self.lane.seconds, "storage": self.sql_s, **self.runner.seconds}
        calls = {"generation": len(gen), "cost_lane": self.lane.measured, "storage": self.sql_n,
                 **self.runner.calls}
        return seconds, calls

    def write(self, path: Path, t0: float) -> dict[str, Any]:
        import resource

        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)
        seconds, calls = self.seconds()
        rec = {"start": t0, "end": time.time(), "wall_s": time.time() - t0,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "seconds": {k: round(v, 3) for k, v in seconds.items()}, "calls": calls}
        if self.ahead is not None:  # generation made ahead, and what of it the driver's thread waited for
            rec["ahead"] = self.ahead.stats()
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec


def adopt_lost_jobs(exp, runner: TrialRunner, storage) -> list[int]:
    """Trials whose job was launched but which Ax never saved (the driver died between
    the two; Ax saves the trials it deploys together after the last of them): the
    job's own records (``job.json``, ``launch.json``) hold its parameters, so the trial
    is re-created under its index and reattached, not trained again.

    Every index up to the last job that still runs or has finished is adopted: a job
    before it that died while no driver watched keeps its index and fails on the first
    poll with its reason, and a candidate that was over a budget is measured again.
    Dead leftovers after the last such job are moved aside when their index is reused.
    Returns the adopted indices."""
    from ax.core.arm import Arm

    lost = []  # (index, params, whether there is something to reattach to)
    while True:
        idx = len(exp.trials) + len(lost)  # the index Ax gives the next trial, then the one after
        tdir = runner.trial_dir(idx)
        info = read_json(tdir / JOB_NAME) or read_json(tdir / LAUNCH_NAME) or {}
        if "params" not in info:
            break
        live = "over_budget" in info or runner.prior_job(tdir, info["params"]) is not None
        lost.append((idx, info["params"], live))
    while lost and not lost[-1][2]:
        lost.pop()
    for idx, params, live in lost:
        trial = exp.new_trial()
        trial.add_arm(Arm(parameters={k: v for k, v in params.items() if k not in runner.cfg.fixed}))
        trial.update_run_metadata(runner.run_trial(idx, params) if live else runner.lost_job(idx, params))
        trial.mark_running(no_runner_required=True)
        set_trial_property(trial, "adopted", True)
        save_trials(exp, [trial], storage)
    return [idx for idx, _, _ in lost]


def queue_retries(exp, storage, retries: int) -> list[int]:
    """For each failed training with attempts left, add a trial with the same
    parameters; the Orchestrator deploys waiting candidates before asking for new
    ones. ``retry_of`` (a stored trial property) links the attempts, so a resumed
    driver neither retries twice nor forgets a retry. Returns the new trial indices."""
    from ax.core.trial_status import TrialStatus

    if retries <= 0:
        return []
    retried = {trial_property(t, "retry_of") for t in exp.trials.values()}
    new = []
    for t in list(exp.trials.values()):
        if t.status != TrialStatus.FAILED or t.index in retried or (t.run_metadata or {}).get("over_budget"):
            continue
        attempt, root = 1, t
        while (prev := trial_property(root, "retry_of")) is not None:
            attempt, root = attempt + 1, exp.trials[prev]
        if attempt > retries:
            continue
        retry = exp.new_trial()
        retry.add_arm(t.arm.clone(clear_name=False))
        set_trial_property(retry, "retry_of", t.index)
        set_trial_property(retry, "attempt", attempt + 1)
        new.append(retry)
    if new:
        save_trials(exp, new, storage)
    return [t.index for t in new]


def early_stopping_strategy(from_epoch: int = 1, against: str = "cheaper"):
    """Ax's percentile rule on the ``val_acc`` curve: from epoch ``from_epoch`` on, a
    trial below the median of its peers at the same epoch is stopped. Costs are known
    before training, so they are not curves.

    ``against="all"``: its peers are every trial with a curve (Ax's rule as it is),
    once 4 curves exist. ``against="cheaper"`` (``CheaperPeersRule``): only the trials
    that cost no more in any cost objective, once it has two such peers."""
    if against == "all":
        return PercentileEarlyStoppingStrategy(metric_signatures=["val_acc"], percentile_threshold=50.0,
                                               min_progression=from_epoch, min_curves=4)
    return CheaperPeersRule(metric_signatures=["val_acc"], percentile_threshold=50.0,
                            min_progression=from_epoch, min_curves=3)


class CheaperPeersRule(PercentileEarlyStoppingStrategy):
    """Ax's percentile rule, with a trial compared only with the trials that cost no
    more than it in every cost objective (``latency_ms`` under ``cpu-mobile``): the
    ones that could dominate it. Against every trial, a rule on val_acc alone stops the
    cheap end of the front, whose accuracy is low by nature: in ten runs of the default
    search with every trial at 4 epochs it would have stopped 52% of the front's trials
    (docs/benchmarks.md, "Early stopping rules compared"). ``min_curves`` counts the
    trial itself: 3 is the trial and two cheaper peers."""

    def _should_stop_trial_early(self, trial_index, experiment, wide_df, long_df, minimize):
        costs = [m for m in experiment.optimization_config.objective.metric_names if m != "val_acc"]

        def cost(i: int) -> dict[str, float]:
            return (experiment.trials[i].run_metadata or {}).get("costs", {})

        mine = cost(trial_index)
        peers = [i for i in wide_df.columns if i == trial_index or (
            all(m in cost(i) and m in mine and cost(i)[m] <= mine[m] for m in costs))]
        return super()._should_stop_trial_early(trial_index, experiment, wide_df[peers], long_df, minimize)


def trained_count(exp) -> int:
    """Models trained so far: completed trials that were not over a budget, and early-stopped ones."""
    return sum(1 for t in exp.trials.values() if t.status.is_completed
               and not (t.run_metadata or {}).get("over_budget")) + sum(
        1 for t in exp.trials.values() if t.status.name == "EARLY_STOPPED")


def new_trials_wanted(exp, settings: RunSettings) -> int:
    """New candidates still to make: ``trials_to_run`` less the ones waiting already."""
    from ax.core.trial_status import TrialStatus

    waiting = sum(1 for t in exp.trials.values() if t.status == TrialStatus.CANDIDATE)
    return trials_to_run(exp, settings) - waiting


def trials_to_run(exp, settings: RunSettings) -> int:
    """Trials still to deploy: waiting candidates (retries, or trials made but not deployed
    before a crash) plus new ones, as many as trainings fall short of ``trials``, within
    ``max_candidates``."""
    from ax.core.trial_status import TrialStatus

    live = (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED, TrialStatus.RUNNING,
            TrialStatus.CANDIDATE, TrialStatus.STAGED)
    alive = [t for t in exp.trials.values() if t.status in live]
    trainings = [t for t in alive if not (t.run_metadata or {}).get("over_budget")]
    cap = settings.max_candidates
    waiting = sum(1 for t in alive if t.status == TrialStatus.CANDIDATE)  # retries, lost deployments
    return waiting + max(0, min(settings.trials - len(trainings), cap - len(alive)))


# ---------------------------------------------------------------- state for people


@dataclass
class RunState:
    """Counts and the best feasible model, for progress lines and ``odnas status``."""

    run_dir: Path
    t0: float
    counts: dict[str, int] = field(default_factory=dict)
    best: TrialRow | None = None
    final: bool = False
    planned: int = 0
    running: list[tuple[int, int, float | None]] = field(default_factory=list)  # trial, epochs done, val_acc

    def refresh(self, exp, final: bool = False) -> "RunState":
        rows = trial_table(exp, self.run_dir)
        c = {"running": 0, "completed": 0, "over_budget": 0, "failed": 0, "early_stopped": 0}
        for r in rows:
            c[r.state] = c.get(r.state, 0) + 1
        self.counts = c
        self.running = []
        for r in rows:
            if r.state == "running" and r.trial_dir:
                curve = read_curve(r.trial_dir)
                self.running.append((r.trial, int(curve[-1]["epoch"]) if curve else 0,
                                     float(curve[-1]["val_acc"]) if curve else None))
        settings = read_settings(self.run_dir)
        self.best = pick(rows, profile_from_dict(settings.profile))
        self.planned = settings.trials
        self.final = final
        return self

    def line(self) -> str:
        """One line, most important first (a narrow terminal cuts the end): time, trained,
        the best feasible model, each running trial's epoch and val_acc, the other counts."""
        el = int(time.time() - self.t0)
        c = self.counts
        trained = c.get("completed", 0) + c.get("early_stopped", 0)
        s = f"[{el // 60:2d}:{el % 60:02d}] trained {trained}/{self.planned}"
        if self.best:
            m = self.best.metrics
            s += f" · best #{self.best.trial} acc {m.get('val_acc', float('nan')):.3f}"
            if "latency_ms" in m:
                s += f" {m['latency_ms']:.3f} ms"
        runs = [f"#{t} ep{e}" + (f" {a:.2f}" if a is not None else "") for t, e, a in self.running]
        s += f" · running {', '.join(runs) if runs else 0}"
        s += f" · over budget {c.get('over_budget', 0)} · failed {c.get('failed', 0)}"
        if c.get("early_stopped"):
            s += f" · early stopped {c['early_stopped']}"
        return s
