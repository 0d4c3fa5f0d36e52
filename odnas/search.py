"""The closed loop: an Ax experiment over a space, under a profile, run by Ax's Orchestrator.

``search(SearchConfig(...))`` makes a run dir, configures an ``ax.api.Client``
(parameters, objective, thresholds and budgets as Ax strings, runner, metrics,
generation strategy), stores it in SQLite and lets Ax's ``Orchestrator`` drive
TorchX jobs until the trial budget is spent. ``resume(run_dir)`` loads the stored
experiment and goes on. The experiment is saved by Ax after every state change.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from odnas._ax import import_ax
from odnas.cost.lane import CostCache, measure_candidate
from odnas.profiles import (
    COST_METRICS, HardwareProfile, check_objective, load_profile, parse_bound, profile_from_dict,
)
from odnas.util import read_json, write_json_atomic

EXPERIMENT_NAME = "odnas"
METHODS = ("bo", "sobol", "random", "saasbo")
DB_NAME = "experiment.sqlite"
OPT_RESTARTS = 4
OPT_RAW_SAMPLES = 256
OPT_OPTIONS = {"initialization_strategy": "random", "maxiter_alternating": 16}
SETTINGS_NAME = "odnas.json"
LOG_NAME = "odnas.log"
DRIVER_STATS_NAME = "driver-stats.jsonl"  # one line per driver session: where its time went


class SearchError(RuntimeError):
    """A search that cannot start or go on; the message says what to do."""


@dataclass
class SearchConfig:
    """Everything a search needs. The CLI's flags map one to one onto these fields."""

    profile: str = "cpu-mobile"
    space: str = "mobile-cnn"
    data: str = "digits"
    data_dir: str | None = None
    data_seed: int = 0
    trials: int = 16  # trainings; candidates over a budget are measured but not counted
    max_candidates: int | None = None  # all candidates, over-budget ones included; default 4 x trials
    parallel: int = 2
    objective: str | None = None  # overrides the profile's
    constraints: tuple[str, ...] = ()  # Ax bound strings; override the profile's per metric
    run_dir: str | None = None
    seed: int = 0
    method: str = "bo"
    init_trials: int | None = None
    scheduler: str = "local_cwd"
    scheduler_cfg: Mapping[str, str] = field(default_factory=dict)
    resources: str | None = None
    image: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # environment of every training job
    mounts: tuple[str, ...] = ()  # TorchX mount strings, e.g. "type=volume,src=runs,dst=/shared/runs"
    threads: int | None = None  # per training job; default cores // parallel
    fixed: Mapping[str, Any] = field(default_factory=dict)  # parameters held constant, e.g. {"epochs": 1}
    tolerated_failure_rate: float = 0.5
    retries: int = 0  # a failed training is tried again this many times, same parameters
    trial_timeout_s: float | None = None  # a job with no result after this long is stopped and failed
    poll_s: float = 1.0
    isolation: str = "pause"  # latency timing: pause local jobs ("pause"), only never overlap ("lock"), "none"
    early_stopping: bool = False  # stop trials whose val_acc curve falls behind (Ax's percentile rule)


# ---------------------------------------------------------------- profile + flags


def effective_profile(profile: HardwareProfile, objective: str | None,
                      constraints: tuple[str, ...]) -> HardwareProfile:
    """The profile with ``--objective`` and ``--constraint`` applied.

    A ``<=`` bound on a cost metric is a hard budget; any other bound is a
    threshold. A flag replaces the profile's bound on the same metric and side.
    """
    if objective:
        check_objective(objective)
    budgets = dict(profile.budgets)
    thresholds = {(m, op): f"{m} {op} {v:g}" for m, op, v in map(parse_bound, profile.thresholds)}
    for c in constraints:
        try:
            m, op, v = parse_bound(c)
        except ValueError as e:
            raise SearchError(f"--constraint {c!r}: {e}") from None
        if m in COST_METRICS and op == "<=":
            if v <= 0:
                raise SearchError(f"--constraint {c!r}: a budget must be > 0")
            budgets[m] = v
        elif m in ("val_acc",) + COST_METRICS:
            thresholds[(m, op)] = f"{m} {op} {v:g}"
        else:
            raise SearchError(f"--constraint {c!r}: unknown metric {m!r}")
    return dataclasses.replace(profile, objective=objective or profile.objective,
                               thresholds=tuple(thresholds.values()), budgets=budgets)


def ax_bounds(profile: HardwareProfile) -> list[str]:
    """Thresholds and budgets as Ax outcome-constraint strings (those on objectives
    become objective thresholds, i.e. the reference point)."""
    return list(profile.thresholds) + profile.budget_constraints()


# ---------------------------------------------------------------- the cost lane


class CostLane:
    """Costs of a candidate, measured on the driver one at a time, cached by arch id."""

    def __init__(self, space, input_shape, num_classes: int, profile: HardwareProfile,
                 cache_dir: str | Path, backend=None, calibration=None, isolation: str = "pause",
                 trials_dir: str | Path | None = None) -> None:
        self.space, self.input_shape, self.num_classes = space, tuple(input_shape), num_classes
        self.profile = profile
        self.cache = CostCache(cache_dir)
        self.backend = backend
        self.calibration = calibration  # host -> device mapping (odnas.calibrate), or None
        self.isolation = isolation  # odnas.cost.quiet mode: pause local jobs while timing
        self.trials_dir = Path(trials_dir) if trials_dir else None
        self.measured = 0  # measurements made by this process (cache misses)

    @classmethod
    def from_settings(cls, run_dir: str, settings: Mapping[str, Any], backend=None) -> "CostLane":
        from odnas.spaces import get_space

        from odnas.calibrate import run_calibration

        profile = profile_from_dict(settings["profile"], source=f"{run_dir}/{SETTINGS_NAME}")
        calibration = run_calibration(run_dir, profile) if backend is None else None
        return cls(get_space(settings["space"]), settings["input_shape"], settings["num_classes"],
                   profile, Path(run_dir) / "costs", backend, calibration,
                   isolation=settings.get("isolation", "pause"), trials_dir=Path(run_dir) / "trials")

    def local_jobs(self) -> list[int]:
        """Pids of this run's training jobs alive on this host (the ones to pause)."""
        from odnas.launch import local_job_alive

        if self.trials_dir is None or not self.trials_dir.is_dir():
            return []
        jobs = (read_json(p) for p in self.trials_dir.glob("*/job.json"))
        return [int(j["pid"]) for j in jobs if local_job_alive(j)]

    def window(self):
        from odnas.cost.quiet import measurement_window

        return measurement_window(self.isolation, self.local_jobs)

    def costs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        arch = self.space.arch_id(params)
        rec = self.cache.get(arch)
        # A latency from another host is not comparable with this one's: measure again.
        if rec is not None and rec.get("latency", {}).get("host") != socket.gethostname():
            rec = None
        if rec is None:
            rec = measure_candidate(self.space, params, self.input_shape, self.num_classes,
                                    self.profile, backend=self.backend, window=self.window)
            self.cache.put(rec)  # host figures: the cache never holds device estimates
            self.measured += 1
        if self.calibration is not None:
            from odnas.calibrate import apply_to_record

            rec = apply_to_record(rec, self.calibration)  # budgets then judge device milliseconds
        return rec

    def over_budget(self, metrics: Mapping[str, float]) -> list[str]:
        return self.profile.over_budget(metrics)


# ---------------------------------------------------------------- run dir helpers


@contextmanager
def driver_lock(run_dir: Path) -> Iterator[None]:
    """One driver per run dir; a second one is refused with a clear message."""
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / "driver.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise SearchError(f"{run_dir} is already being searched by {who}; wait for it or stop it first") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def driver_running(run_dir: str | Path) -> bool:
    """Whether a driver holds the run dir's lock right now."""
    path = Path(run_dir) / "driver.lock"
    if not path.exists():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def init_storage(run_dir: Path):
    """Bind Ax's SQL storage to ``run_dir/experiment.sqlite`` (WAL mode) and return its config."""
    import_ax()
    from ax.api.configs import StorageConfig
    from ax.storage.sqa_store.db import create_all_tables, get_engine, init_engine_and_session_factory
    from sqlalchemy import text

    from odnas.launch import registry_bundle

    url = f"sqlite:///{(run_dir / DB_NAME).resolve()}"
    init_engine_and_session_factory(url=url, force_init=True)
    engine = get_engine()
    with engine.connect() as conn:
        conn.execute(text("PRAGMA journal_mode=WAL"))
    create_all_tables(engine)
    return StorageConfig(url=url, registry_bundle=registry_bundle())


def read_settings(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / SETTINGS_NAME
    if not p.is_file():
        raise SearchError(f"{run_dir} is not an odnas run dir (no {SETTINGS_NAME})")
    try:
        return json.loads(p.read_text())
    except ValueError:
        raise SearchError(f"{p} is not valid JSON; the run dir's settings are damaged") from None


def load_client(run_dir: str | Path, readonly: bool = False):
    """The stored ``ax.api.Client`` of a run dir, and its storage config.

    ``readonly`` loads without storage: ``Client.load_from_database`` saves the whole
    experiment again as it loads (data rows deleted and re-inserted), which would race
    a driver saving new results. Commands that only read (status, select, export,
    report) use ``readonly=True``; only the driver, which holds the lock, writes.
    """
    import_ax()
    from ax.api.client import Client

    run_dir = Path(run_dir)
    read_settings(run_dir)
    if not (run_dir / DB_NAME).is_file():
        raise SearchError(f"{run_dir} has no {DB_NAME}; the search never started")
    storage = init_storage(run_dir)
    with quiet_logs(run_dir / LOG_NAME):
        from ax.exceptions.core import ObjectNotFoundError
        from ax.storage.sqa_store.load import load_experiment, load_generation_strategy_by_experiment_name

        try:
            if not readonly:
                return Client.load_from_database(EXPERIMENT_NAME, storage_config=storage), storage
            config = storage.registry_bundle.sqa_config
            exp = load_experiment(EXPERIMENT_NAME, config=config)
        except ObjectNotFoundError:
            raise SearchError(f"{run_dir}/{DB_NAME} holds no odnas experiment; the search never started") from None
        client = Client()
        client.set_experiment(exp)
        gs = load_generation_strategy_by_experiment_name(EXPERIMENT_NAME, config=config, experiment=exp)
        if gs is not None:
            client.set_generation_strategy(gs)
        return client, None


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], HardwareProfile, list[dict[str, Any]]]:
    """A run's settings, its effective profile and one row per trial (read-only)."""
    from odnas.select import trial_table

    settings = read_settings(run_dir)
    client, _ = load_client(run_dir, readonly=True)
    return settings, profile_from_dict(settings["profile"]), trial_table(client._experiment)


@contextmanager
def quiet_logs(log_path: Path, enabled: bool = True) -> Iterator[None]:
    """Send Ax's, BoTorch's, TorchX's and Lightning's logs and warnings to the run's log file."""
    if not enabled:
        yield
        return
    import warnings

    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in
             ("ax", "botorch", "torchx", "pytorch_lightning", "lightning", "linear_operator", "gpytorch")]
    saved = {}
    for n in names + ["ax", "torchx", "botorch"]:
        lg = logging.getLogger(n)
        saved[n] = (lg.handlers[:], lg.propagate)
        lg.handlers = [handler] if n.count(".") == 0 or n in ("ax", "torchx", "botorch") else []
        lg.propagate = n.count(".") > 0
    old_showwarning = warnings.showwarning

    def to_log(message, category, filename, lineno, file=None, line=None):
        handler.stream.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = to_log
    # Ax names loggers per module and attaches its own stderr handler to each; catch
    # those created later too by routing fd 2 into the log while the loop runs.
    sys.stderr.flush()
    saved_fd = os.dup(2)
    os.dup2(handler.stream.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        warnings.showwarning = old_showwarning
        for n, (h, p) in saved.items():
            lg = logging.getLogger(n)
            lg.handlers, lg.propagate = h, p
        handler.close()


# ---------------------------------------------------------------- set-up


def default_run_dir(cfg: SearchConfig) -> Path:
    return Path("runs") / f"{cfg.profile.split('/')[-1].removesuffix('.yaml')}-{cfg.space}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_settings(cfg: SearchConfig) -> dict[str, Any]:
    """Validate a config and freeze it into the JSON the run dir keeps."""
    from odnas.data import load_data
    from odnas.spaces import get_space

    profile = effective_profile(load_profile(cfg.profile), cfg.objective, tuple(cfg.constraints))
    space = get_space(cfg.space)
    try:
        space.check_fixed(cfg.fixed)
    except ValueError as e:
        raise SearchError(f"--fix: {e}") from None
    if cfg.method not in METHODS:
        raise SearchError(f"--method {cfg.method!r}: choose from {', '.join(METHODS)}")
    if cfg.method == "saasbo":
        try:  # BoTorch's SAAS model samples with NumPyro on JAX; without them it fails after the Sobol trials
            import jax  # noqa: F401
            import numpyro  # noqa: F401
        except ImportError:
            raise SearchError("--method saasbo needs JAX and NumPyro: pip install 'odnas[saasbo]'") from None
    if cfg.trials < 1 or cfg.parallel < 1:
        raise SearchError("--trials and --parallel must be at least 1")
    from odnas.cost.quiet import ISOLATION_MODES

    if cfg.isolation not in ISOLATION_MODES:
        raise SearchError(f"--isolation {cfg.isolation!r}: choose from {', '.join(ISOLATION_MODES)}")
    if cfg.retries < 0:
        raise SearchError(f"--retries {cfg.retries}: must be 0 or more")
    if cfg.trial_timeout_s is not None and not cfg.trial_timeout_s > 0:
        raise SearchError(f"--trial-timeout {cfg.trial_timeout_s}: must be a positive number of seconds")
    if not 0.0 <= cfg.tolerated_failure_rate <= 1.0:
        raise SearchError(f"--max-failure-rate {cfg.tolerated_failure_rate}: must be between 0 and 1")
    check_with_ax(profile)
    check_runtime(profile, cfg)
    split = load_data(cfg.data, cfg.data_dir, seed=cfg.data_seed)
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // cfg.parallel)
    from importlib.metadata import version

    from odnas import __version__

    return {
        "space": space.name, "data": cfg.data,
        "data_dir": str(Path(cfg.data_dir).resolve()) if cfg.data_dir else None,
        "data_seed": cfg.data_seed, "input_shape": list(split.input_shape), "num_classes": split.num_classes,
        "trials": cfg.trials, "max_candidates": cfg.max_candidates or 4 * cfg.trials, "parallel": cfg.parallel, "seed": cfg.seed, "method": cfg.method,
        "init_trials": cfg.init_trials, "scheduler": cfg.scheduler, "scheduler_cfg": dict(cfg.scheduler_cfg),
        "resources": cfg.resources, "image": cfg.image, "env": dict(cfg.env), "mounts": list(cfg.mounts), "threads": threads, "fixed": dict(cfg.fixed),
        "tolerated_failure_rate": cfg.tolerated_failure_rate, "poll_s": cfg.poll_s,
        "retries": cfg.retries, "trial_timeout_s": cfg.trial_timeout_s,
        "early_stopping": cfg.early_stopping, "isolation": cfg.isolation,
        "profile": profile.to_dict(), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "versions": {"odnas": __version__, **{p: version(p) for p in (
            "ax-platform", "botorch", "torch", "onnxruntime", "pytorch-lightning", "torchx")},
            "python": sys.version.split()[0]},
    }


def check_with_ax(profile: HardwareProfile) -> None:
    """Let Ax parse the objective and bounds now, before anything is written."""
    import_ax()
    from ax.api.utils.instantiation.from_string import optimization_config_from_string

    try:
        optimization_config_from_string(objective_str=profile.objective,
                                        outcome_constraint_strs=ax_bounds(profile) or None)
    except Exception as e:  # Ax's own message says what is wrong with the strings
        raise SearchError(f"objective {profile.objective!r} with bounds {ax_bounds(profile)}: "
                          f"{str(e).splitlines()[0]}") from None


def check_runtime_profile(profile: HardwareProfile) -> None:
    """A profile this host can measure under: its provider exists, int8 can be made."""
    import onnxruntime as ort

    if profile.runtime.provider not in ort.get_available_providers():
        raise SearchError(f"profile {profile.name!r} asks for {profile.runtime.provider}, which this onnxruntime "
                          f"does not have (it has {', '.join(ort.get_available_providers())})")
    if profile.precision == "int8":
        try:
            import onnxruntime.quantization  # noqa: F401  (the cost lane quantizes every candidate)
        except ImportError as e:
            raise SearchError(f"profile {profile.name!r} asks for precision int8, but onnxruntime's "
                              f"quantization tool does not import ({e}); use an fp32 profile") from None


def check_runtime(profile: HardwareProfile, cfg: SearchConfig) -> None:
    """Things that would otherwise fail at the first trial, after the run dir exists."""
    from torchx.schedulers import get_scheduler_factories

    check_runtime_profile(profile)
    if cfg.scheduler not in get_scheduler_factories():
        raise SearchError(f"--scheduler {cfg.scheduler!r}: TorchX knows {', '.join(get_scheduler_factories())}")
    from odnas.launch import make_resource

    try:
        make_resource(cfg.resources, 1)
    except ValueError as e:
        raise SearchError(f"--resources {cfg.resources!r}: {e}") from None
    from odnas.launch import trial_app

    try:
        trial_app("/check", "check", {}, scheduler="kubernetes", env=cfg.env, mounts=cfg.mounts)
    except ValueError as e:
        raise SearchError(str(e)) from None
    if cfg.scheduler == "ray" and cfg.image and not Path(cfg.image).is_dir():
        raise SearchError(f"--image {cfg.image!r}: for the ray scheduler this is a local directory uploaded "
                          "as the job's working dir")


def generation_strategy(method: str, seed: int, init_trials: int | None, trials: int, discrete: bool = False):
    """Ax generation strategy for ``method``: ``bo`` is Ax's default (Sobol, then
    BoTorch qLogNEHVI for several objectives); ``saasbo`` is Ax's "quality" SAAS model;
    ``sobol`` quasi-random; ``random`` uniform random. ``discrete``: no float parameter
    is searched, so Ax optimizes the acquisition by discrete (local) search, which
    refuses the gradient optimizer's ``options``."""
    from ax.api.utils.generation_strategy_dispatch import choose_generation_strategy
    from ax.api.utils.structs import GenerationStrategyDispatchStruct

    if method == "random":
        from ax.adapter.registry import Generators
        from ax.generation_strategy.generation_node import GenerationNode
        from ax.generation_strategy.generation_strategy import GenerationStrategy
        from ax.generation_strategy.generator_spec import GeneratorSpec

        return GenerationStrategy(name="Uniform", nodes=[GenerationNode(
            name="Uniform", generator_specs=[GeneratorSpec(generator_enum=Generators.UNIFORM,
                                                           generator_kwargs={"seed": seed})])])
    init = init_trials if init_trials is not None else max(4, min(8, trials // 3))
    gs = choose_generation_strategy(GenerationStrategyDispatchStruct(
        method={"bo": "fast", "saasbo": "quality", "sobol": "random_search"}[method],
        initialization_budget=init, initialization_random_seed=seed,
        min_observed_initialization_trials=max(1, init // 2),
        allow_exceeding_initialization_budget=True,
    ))
    for node in gs._nodes:
        for spec in node.generator_specs:
            if node.name == "MBM":
                # Ax's default acquisition optimizer (20 restarts over 1024 raw samples, with
                # mixed alternating search over ~20 discrete dims) takes 20-30 s a candidate on
                # 2 cores; these settings take a few seconds (docs/benchmarks.md, "generation").
                opt = {"num_restarts": OPT_RESTARTS, "raw_samples": OPT_RAW_SAMPLES}
                if not discrete:
                    opt["options"] = OPT_OPTIONS
                spec.generator_gen_kwargs = {**spec.generator_gen_kwargs,
                                             "model_gen_options": {"optimizer_kwargs": opt}}
    return gs


def create_run(cfg: SearchConfig) -> Path:
    """Make the run dir and its stored, configured Ax experiment (no trials yet)."""
    settings = make_settings(cfg)  # validate before the slow imports
    import_ax()
    from ax.api.client import Client

    from odnas.launch import CostMetric, TrialRunner, ValAccCurveMetric, ValAccMetric
    from odnas.spaces import get_space

    run_dir = (Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)).resolve()
    if (run_dir / DB_NAME).exists():
        raise SearchError(f"{run_dir} already holds a search; use `odnas resume {run_dir}` or another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / SETTINGS_NAME, settings)
    profile = profile_from_dict(settings["profile"])
    from odnas.calibrate import run_calibration

    run_calibration(run_dir, profile)  # a calibrated profile: fit (or bad table) now, kept in the run dir
    with quiet_logs(run_dir / LOG_NAME):
        storage = init_storage(run_dir)
        client = Client(storage_config=storage, random_seed=cfg.seed)
        client.configure_experiment(parameters=get_space(settings["space"]).ax_parameters(settings["fixed"]),
                                    name=EXPERIMENT_NAME, description=f"odnas {settings['space']} under {profile.name}")
        client.configure_optimization(profile.objective, outcome_constraints=ax_bounds(profile) or None)
        val_acc = ValAccCurveMetric() if settings["early_stopping"] else ValAccMetric()
        client.configure_metrics([val_acc, *(CostMetric(m) for m in COST_METRICS)])
        client.configure_runner(TrialRunner(str(run_dir), settings))
        from odnas.spaces.base import Range

        discrete = not any(isinstance(p, Range) and p.kind == "float" and p.name not in settings["fixed"]
                           for p in get_space(settings["space"]).specs)
        client.set_generation_strategy(generation_strategy(cfg.method, cfg.seed, cfg.init_trials, cfg.trials,
                                                           discrete=discrete))
    return run_dir


# ---------------------------------------------------------------- the loop


def search(cfg: SearchConfig, progress: Callable[["RunState"], None] | None = None,
           cost_backend=None, quiet: bool = True) -> Path:
    """Run a search from scratch; returns its run dir."""
    run_dir = create_run(cfg)
    run_loop(run_dir, progress, cost_backend, quiet)
    return run_dir


def resume(run_dir: str | Path, progress: Callable[["RunState"], None] | None = None,
           cost_backend=None, quiet: bool = True, trials: int | None = None) -> Path:
    """Continue a stopped or killed search; completed trials are kept, never retrained."""
    run_dir = Path(run_dir).resolve()
    read_settings(run_dir)
    if trials is not None and trials < 1:
        raise SearchError("--trials must be at least 1")
    run_loop(run_dir, progress, cost_backend, quiet, trials=trials)
    return run_dir


def run_loop(run_dir: Path, progress=None, cost_backend=None, quiet: bool = True,
             trials: int | None = None) -> None:
    from ax.exceptions.core import UserInputError
    from ax.orchestration.orchestrator import FailureRateExceededError, Orchestrator, OrchestratorOptions

    from odnas.launch import TrialRunner

    settings = read_settings(run_dir)
    t0 = time.time()
    import torch

    # Ax's GPs are tiny; with trainings busy on every core, one thread fits them fastest
    # (5x faster than 2 threads measured on 2 busy cores).
    torch.set_num_threads(1)
    with driver_lock(run_dir), quiet_logs(run_dir / LOG_NAME, enabled=quiet):
        if trials is not None:  # a new total, written only once this driver holds the run
            settings["trials"] = trials
            settings["max_candidates"] = max(int(settings.get("max_candidates") or 0), 4 * trials)
            write_json_atomic(run_dir / SETTINGS_NAME, settings)
        client, storage = load_client(run_dir)
        exp = client._experiment
        runner = exp.runner
        assert isinstance(runner, TrialRunner)
        runner.run_dir = str(run_dir)  # where the run dir is now, not where it was made
        runner.cost_lane = CostLane.from_settings(str(run_dir), settings, backend=cost_backend)
        from odnas.cost.quiet import resume_jobs

        resume_jobs(runner.cost_lane.local_jobs())  # a driver killed mid-measurement left them stopped
        options = OrchestratorOptions(
            max_pending_trials=int(settings["parallel"]),
            tolerated_trial_failure_rate=float(settings["tolerated_failure_rate"]),
            min_failed_trials_for_failure_rate_check=3,
            init_seconds_between_polls=max(1, int(settings.get("poll_s", 1))),
            min_seconds_before_poll=0.2,
            seconds_between_polls_backoff_factor=1.0,
            log_filepath=str(run_dir / LOG_NAME),
            wait_for_running_trials=True,
            early_stopping_strategy=early_stopping_strategy() if settings.get("early_stopping") else None,
        )
        from ax.api.utils.storage import db_settings_from_storage_config

        orch = Orchestrator(experiment=exp, generation_strategy=client._generation_strategy,
                            options=options, db_settings=db_settings_from_storage_config(storage))
        state = RunState(run_dir, t0)
        clock = DriverClock().install(orch, runner, exp)
        adopt_lost_jobs(exp, runner, orch)
        try:
            if progress:
                progress(state.refresh(exp))
            # ``trials`` counts trainings: a candidate over a budget costs seconds, not a
            # training, so it does not use up the trial budget (``max_candidates`` caps them).
            # Lost candidates (made but never deployed before a crash) are redeployed by Ax.
            while True:
                while (todo := trials_to_run(exp, settings)) > 0:
                    for _ in orch.run_trials_and_yield_results(max_trials=todo):
                        queue_retries(exp, orch, int(settings.get("retries") or 0))
                        if progress:
                            progress(state.refresh(exp))
                # Trials still marked RUNNING from before a restart end here; any that
                # failed leave room for new ones.
                orch.wait_for_completed_trials_and_report_results()
                queue_retries(exp, orch, int(settings.get("retries") or 0))
                if progress:
                    progress(state.refresh(exp))
                if trials_to_run(exp, settings) == 0 and not orch.pending_trials:
                    break
        except FailureRateExceededError:
            raise SearchError(
                f"too many trials failed (over {settings['tolerated_failure_rate']:.0%}); see "
                f"`odnas status {run_dir}` for each reason and {run_dir / LOG_NAME} for details. "
                "Completed trials are kept."
            ) from None
        except UserInputError as e:
            raise SearchError(str(e).splitlines()[0]) from None
        finally:
            clock.write(run_dir / DRIVER_STATS_NAME, t0)
        if progress:
            progress(state.refresh(exp, final=True))
        trained = sum(1 for t in exp.trials.values() if t.status.is_completed
                      and not (t.run_metadata or {}).get("over_budget")) + sum(
            1 for t in exp.trials.values() if t.status.name == "EARLY_STOPPED")
        if trained < int(settings["trials"]):
            over = sum(1 for t in exp.trials.values() if (t.run_metadata or {}).get("over_budget"))
            msg = (f"{trained} of {settings['trials']} trainings done: the candidate cap "
                   f"(--max-candidates {settings['max_candidates']}) was reached with {over} candidates over a budget")
            if trained == 0:
                raise SearchError(msg + "; no candidate fits the budgets, loosen them (--constraint)")
            print(f"odnas: note: {msg}", file=sys.__stdout__, flush=True)


class DriverClock:
    """Where the driver's wall time goes: candidate generation, the cost lane, launching
    jobs, polling them, fetching their metrics, and storage writes. Installed as
    per-instance wrappers, so nothing of Ax changes; written to ``driver-stats.jsonl``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._depth: dict[str, int] = {}

    def timed(self, key: str, fn: Callable) -> Callable:
        def wrapper(*a, **k):
            if self._depth.get(key):  # a nested call of the same kind is already being timed
                return fn(*a, **k)
            self._depth[key] = 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self._depth[key] = 0
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t
                self.calls[key] = self.calls.get(key, 0) + 1
        return wrapper

    def install(self, orch, runner, exp) -> "DriverClock":
        gs = orch.generation_strategy
        gs.gen = self.timed("generation", gs.gen)
        lane = runner.cost_lane
        lane.costs = self.timed("cost_lane", lane.costs)
        runner.run_trial = self.timed("deploy", runner.run_trial)  # includes the cost lane
        runner.poll_trial = self.timed("poll", runner.poll_trial)
        for metric in exp.metrics.values():
            metric.fetch_trial_data = self.timed("fetch", metric.fetch_trial_data)
        for name in dir(orch):
            if name.startswith(("_save_", "_update_")) and "db" in name and callable(getattr(orch, name)):
                setattr(orch, name, self.timed("storage", getattr(orch, name)))
        return self

    def write(self, path: Path, t0: float) -> dict[str, Any]:
        import resource

        rec = {"start": t0, "end": time.time(), "wall_s": time.time() - t0,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "calls": dict(self.calls)}
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec


def adopt_lost_jobs(exp, runner, orch) -> list[int]:
    """Trials whose job was launched but which Ax never saved (the driver died between
    the two): the job's own records (``job.json``, ``launch.json``) hold its parameters,
    so the trial is re-created under its index and reattached, not trained again.
    Returns the adopted indices."""
    from ax.core.arm import Arm

    from odnas.launch import LAUNCH_NAME

    fixed = runner.settings.get("fixed") or {}
    adopted = []
    while True:
        idx = len(exp.trials)  # the index Ax gives the next trial
        tdir = runner.trial_dir(idx)
        info = read_json(tdir / "job.json") or read_json(tdir / LAUNCH_NAME) or {}
        if "params" not in info or runner.prior_job(tdir, info["params"]) is None:
            break  # nothing to adopt; a dead leftover is moved aside when the index is reused
        params = {k: v for k, v in info["params"].items() if k not in fixed}
        trial = exp.new_trial()
        trial.add_arm(Arm(parameters=params))
        trial.update_run_metadata(runner.run_trial(idx, params))
        trial.mark_running(no_runner_required=True)
        trial._properties["adopted"] = True
        orch._save_or_update_trials_in_db_if_possible(experiment=exp, trials=[trial])
        adopted.append(idx)
    return adopted


def queue_retries(exp, orch, retries: int) -> list[int]:
    """For each failed training with attempts left, add a trial with the same
    parameters; the Orchestrator deploys waiting candidates before asking for new
    ones. ``retry_of`` (a stored trial property) links the attempts, so a resumed
    driver neither retries twice nor forgets a retry. Returns the new trial indices."""
    from ax.core.trial_status import TrialStatus

    if retries <= 0:
        return []
    retried = {t._properties.get("retry_of") for t in exp.trials.values()}
    new = []
    for t in list(exp.trials.values()):
        if t.status != TrialStatus.FAILED or t.index in retried or (t.run_metadata or {}).get("over_budget"):
            continue
        attempt, root = 1, t
        while (prev := root._properties.get("retry_of")) is not None:
            attempt, root = attempt + 1, exp.trials[prev]
        if attempt > retries:
            continue
        retry = exp.new_trial()
        retry.add_arm(t.arm.clone(clear_name=False))
        retry._properties["retry_of"] = t.index
        retry._properties["attempt"] = attempt + 1
        new.append(retry)
    if new:
        orch._save_or_update_trials_in_db_if_possible(experiment=exp, trials=new)
    return [t.index for t in new]


def early_stopping_strategy():
    """Ax's percentile rule on the ``val_acc`` curve: from the first epoch on, once 4
    curves exist, a trial below the median of the others at the same epoch is stopped.
    Costs are known before training, so they play no part in it."""
    from ax.early_stopping.strategies import PercentileEarlyStoppingStrategy

    return PercentileEarlyStoppingStrategy(metric_signatures=["val_acc"], percentile_threshold=50.0,
                                           min_progression=1, min_curves=4)


def trials_to_run(exp, settings: Mapping[str, Any]) -> int:
    """Trials still to deploy: waiting candidates (retries, or trials made but not deployed
    before a crash) plus new ones, as many as trainings fall short of ``trials``, within
    ``max_candidates``."""
    from ax.core.trial_status import TrialStatus

    live = (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED, TrialStatus.RUNNING,
            TrialStatus.CANDIDATE, TrialStatus.STAGED)
    alive = [t for t in exp.trials.values() if t.status in live]
    trainings = [t for t in alive if not (t.run_metadata or {}).get("over_budget")]
    cap = int(settings.get("max_candidates") or 4 * int(settings["trials"]))
    waiting = sum(1 for t in alive if t.status == TrialStatus.CANDIDATE)  # retries, lost deployments
    return waiting + max(0, min(int(settings["trials"]) - len(trainings), cap - len(alive)))


# ---------------------------------------------------------------- state for people


@dataclass
class RunState:
    """Counts and the best feasible model, for progress lines and ``odnas status``."""

    run_dir: Path
    t0: float
    counts: dict[str, int] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    final: bool = False
    planned: int = 0

    def refresh(self, exp, final: bool = False) -> "RunState":
        from odnas.select import trial_table, pick

        rows = trial_table(exp)
        c = {"running": 0, "completed": 0, "over_budget": 0, "failed": 0, "early_stopped": 0}
        for r in rows:
            c[r["state"]] = c.get(r["state"], 0) + 1
        self.counts = c
        settings = read_settings(self.run_dir)
        self.best = pick(rows, profile_from_dict(settings["profile"]))
        self.planned = int(settings["trials"])
        self.final = final
        return self

    def line(self) -> str:
        el = int(time.time() - self.t0)
        c = self.counts
        trained = c.get("completed", 0) + c.get("early_stopped", 0)
        s = (f"[{el // 60:2d}:{el % 60:02d}] trained {trained}/{self.planned}"
             + (f" ({c['early_stopped']} stopped early)" if c.get("early_stopped") else "")
             + f" · running {c.get('running', 0)}"
             f" · over budget {c.get('over_budget', 0)} · failed {c.get('failed', 0)}")
        if self.best:
            m = self.best["metrics"]
            s += f" · best feasible: trial {self.best['trial']} val_acc {m.get('val_acc', float('nan')):.3f}"
            if "latency_ms" in m:
                s += f" {m['latency_ms']:.3f} ms"
        return s
