"""A search's configuration: ``SearchConfig`` (what the CLI's flags fill), its checks,
and the frozen ``RunSettings`` a run dir keeps, plus the Ax generation strategy.

Every check that can fail on a user's input runs here, before anything is written.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from odnas.cost.device import check_link
from odnas.cost.latency import check_runnable
from odnas.cost.quiet import ISOLATION_MODES
from odnas import plugins
from odnas.errors import SearchError, SpaceError
from odnas.jobs.component import CONTAINER_SCHEDULERS, make_resource, needs_image, trial_app, warm_capable
from odnas.loop.adapter import import_ax
from odnas.profiles import (
    COST_METRICS, HardwareProfile, check_objective, load_profile, never_met, parse_bound, with_device,
)
from odnas.records import RunSettings
from odnas.rundir import DB_NAME, being_made, driver_running

METHODS = ("bo", "sobol", "random", "saasbo")
EARLY_STOPPING_PEERS = ("cheaper", "all")
WORKER_MODES = ("warm", "fresh")
OPT_RESTARTS = 4
OPT_RAW_SAMPLES = 256
OPT_OPTIONS = {"initialization_strategy": "random", "maxiter_alternating": 16}


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
    early_stopping_from: int = 1  # the first epoch after which the rule may stop a trial
    # whom a trial's val_acc is compared with: "cheaper" (trials costing no more in every
    # cost objective, which could dominate it) or "all" (Ax's rule as it is)
    early_stopping_against: str = "cheaper"
    # "warm": one long-lived TorchX worker per slot forks a child per trial (no start-up per
    # trial); "fresh": one TorchX job per trial, full isolation. Schedulers passed in by
    # name (odnas.testing's in-process one) always run fresh jobs.
    workers: str = "warm"
    # Warm workers only: trials queued in each worker's inbox beyond the one it trains. The
    # Orchestrator then generates (and the cost lane measures) the next candidate while the
    # slots train, with the running trials as pending points; a slot frees straight into it.
    lookahead: int = 0
    device: str | None = None  # a device agent's address: latency is timed there (overrides the profile's)


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
    given: dict[tuple[str, str], str] = {}
    for c in constraints:
        try:
            m, op, v = parse_bound(c)
        except ValueError as e:
            raise SearchError(f"--constraint {c!r}: {e}") from None
        if (m, op) in given:  # a flag replaces the profile's bound; two flags on one side contradict
            raise SearchError(f"--constraint {c!r}: {m} {op} is given already ({given[(m, op)]!r}); keep one")
        given[(m, op)] = c
        if why := never_met(m, op, v):
            raise SearchError(f"--constraint {c!r}: {why}")
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
    return profile.bounds()


def default_run_dir(cfg: SearchConfig, space_name: str | None = None) -> Path:
    """``runs/PROFILE-SPACE-TIME``: the space by its own name (a reference's class name without it)."""
    space = space_name or cfg.space.rpartition(":")[2]
    profile = cfg.profile.split("/")[-1].removesuffix(".yaml").removesuffix(".yml")
    return Path("runs") / f"{profile}-{space}-{time.strftime('%Y%m%d-%H%M%S')}"


def refuse_used_run_dir(run_dir: Path) -> None:
    """A run dir holds one search; one whose making was stopped (killed while
    ``create_run`` wrote it) holds none, and is made again; one another search is making
    now is refused."""
    making = being_made(run_dir)
    if making:
        raise SearchError(f"{run_dir} is being made by another search now; give this one another --run-dir")
    if (run_dir / DB_NAME).exists() and making is None:
        if driver_running(run_dir):
            raise SearchError(f"{run_dir} holds a search that is running now; `odnas status {run_dir}` follows it, "
                              f"`odnas stop {run_dir}` stops it; or give another --run-dir")
        raise SearchError(f"{run_dir} already holds a search; use `odnas resume {run_dir}` or another --run-dir")


def _most_epochs(space, fixed: Mapping[str, Any]) -> int | None:
    """The most epochs a trial of ``space`` trains, where its ``epochs`` parameter says."""
    if "epochs" in fixed:
        return int(fixed["epochs"])
    spec = next((s for s in space.specs if s.name == "epochs"), None)
    if spec is None:
        return None
    try:
        return int(max(spec.values)) if hasattr(spec, "values") else int(spec.hi)
    except (TypeError, ValueError):
        return None


def make_settings(cfg: SearchConfig, schedulers: Mapping[str, Any] | None = None) -> RunSettings:
    """Validate a config and freeze it into the JSON the run dir keeps."""
    if cfg.run_dir:  # first: the checks after it take seconds (Ax's import, the budget check's timing)
        refuse_used_run_dir(Path(cfg.run_dir).resolve())
    from odnas.data import check_data_dir, data_reference, load_data
    from odnas.spaces import get_space, spec_lines

    profile = effective_profile(load_profile(cfg.profile), cfg.objective, tuple(cfg.constraints))
    profile = with_device(profile, cfg.device)
    space = get_space(cfg.space)
    try:
        space.check_fixed(cfg.fixed)
    except SpaceError as e:
        raise SearchError(f"--fixed: {e}") from None
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
    if cfg.max_candidates is not None and cfg.max_candidates < cfg.trials:
        raise SearchError(f"--max-candidates {cfg.max_candidates}: must be at least --trials ({cfg.trials}), "
                          "since every training is a candidate")
    if cfg.init_trials is not None and cfg.init_trials < 1:
        raise SearchError(f"--init-trials {cfg.init_trials}: must be at least 1 (the model needs data to start from)")
    if cfg.isolation not in ISOLATION_MODES:
        raise SearchError(f"--isolation {cfg.isolation!r}: choose from {', '.join(ISOLATION_MODES)}")
    if cfg.workers not in WORKER_MODES:
        raise SearchError(f"--workers {cfg.workers!r}: choose from {', '.join(WORKER_MODES)}")
    if cfg.lookahead < 0:
        raise SearchError(f"--lookahead {cfg.lookahead}: must be 0 or more")
    check_fault_settings(cfg.retries, cfg.trial_timeout_s, cfg.tolerated_failure_rate)
    if cfg.threads is not None and cfg.threads < 1:
        raise SearchError(f"--threads {cfg.threads}: must be at least 1")
    if not cfg.poll_s > 0:
        raise SearchError(f"--poll-s {cfg.poll_s}: must be a positive number of seconds")
    if cfg.early_stopping_against not in EARLY_STOPPING_PEERS:
        raise SearchError(f"--early-stopping-against {cfg.early_stopping_against!r}: choose from "
                          f"{', '.join(EARLY_STOPPING_PEERS)}")
    if cfg.early_stopping_from < 1:
        raise SearchError(f"--early-stopping-from {cfg.early_stopping_from}: must be an epoch, 1 or more")
    most = _most_epochs(space, cfg.fixed)
    if cfg.early_stopping and most is not None and cfg.early_stopping_from >= most:
        raise SearchError(f"--early-stopping-from {cfg.early_stopping_from}: trials train {most} epoch"
                          f"{'s' if most != 1 else ''} at most, so early stopping could stop none; give less than "
                          f"{most}, or leave out --early-stopping")
    check_runtime(profile, cfg, schedulers)
    check_data_dir(cfg.data, cfg.data_dir)
    split = load_data(cfg.data, cfg.data_dir, seed=cfg.data_seed)
    check_with_ax(profile)  # last: the only check that imports Ax (seconds)
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // cfg.parallel)
    from importlib.metadata import version

    from odnas import __version__

    return RunSettings(
        # References are stored as the job will resolve them: file paths made absolute.
        space=plugins.absolute(cfg.space) if plugins.is_reference(cfg.space) else cfg.space,
        data=data_reference(cfg.data), data_dir=str(Path(cfg.data_dir).resolve()) if cfg.data_dir else None,
        data_seed=cfg.data_seed, input_shape=list(split.input_shape), num_classes=split.num_classes,
        trials=cfg.trials, max_candidates=cfg.max_candidates or 4 * cfg.trials, parallel=cfg.parallel,
        seed=cfg.seed, method=cfg.method, init_trials=cfg.init_trials, scheduler=cfg.scheduler,
        scheduler_cfg=dict(cfg.scheduler_cfg), resources=cfg.resources, image=cfg.image, env=dict(cfg.env),
        mounts=list(cfg.mounts), threads=threads, fixed=dict(cfg.fixed),
        tolerated_failure_rate=cfg.tolerated_failure_rate, poll_s=cfg.poll_s, retries=cfg.retries,
        trial_timeout_s=cfg.trial_timeout_s, early_stopping=cfg.early_stopping,
        early_stopping_from=cfg.early_stopping_from, early_stopping_against=cfg.early_stopping_against,
        isolation=cfg.isolation,
        workers=(workers := cfg.workers if warm_capable(cfg.scheduler) else "fresh"),
        lookahead=cfg.lookahead if workers == "warm" else 0,
        profile=profile.to_dict(), created=time.strftime("%Y-%m-%d %H:%M:%S"), space_specs=spec_lines(space),
        versions={"odnas": __version__, **{p: version(p) for p in (
            "ax-platform", "botorch", "torch", "onnxruntime", "pytorch-lightning", "torchx")},
            "python": sys.version.split()[0]},
    )


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


def check_fault_settings(retries: int | None, trial_timeout_s: float | None,
                         tolerated_failure_rate: float | None) -> None:
    """How a search meets failing trials, as ``search`` and ``resume`` take it (None: not given)."""
    if retries is not None and retries < 0:
        raise SearchError(f"--retries {retries}: must be 0 or more")
    if trial_timeout_s is not None and not trial_timeout_s > 0:
        raise SearchError(f"--trial-timeout-s {trial_timeout_s}: must be a positive number of seconds")
    if tolerated_failure_rate is not None and not 0.0 <= tolerated_failure_rate <= 1.0:
        raise SearchError(f"--tolerated-failure-rate {tolerated_failure_rate}: must be between 0 and 1")


def check_runtime(profile: HardwareProfile, cfg: SearchConfig, schedulers: Mapping[str, Any] | None = None) -> None:
    """Things that would otherwise fail at the first trial, after the run dir exists."""
    from torchx.schedulers import get_scheduler_factories

    check_runnable(profile)
    if profile.device is not None:  # a wrong address or token is one line now, before a run dir exists
        check_link(profile)
    if cfg.scheduler not in {**get_scheduler_factories(), **(schedulers or {})}:
        raise SearchError(f"--scheduler {cfg.scheduler!r}: TorchX knows {', '.join(get_scheduler_factories())}")
    try:
        make_resource(cfg.resources, 1)
    except ValueError as e:
        raise SearchError(f"--resources {cfg.resources!r}: {e}") from None
    if cfg.scheduler in CONTAINER_SCHEDULERS and not cfg.image:
        raise SearchError(needs_image(cfg.scheduler))
    try:
        trial_app("/check", "check", {}, scheduler="kubernetes", image="check", env=cfg.env, mounts=cfg.mounts)
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
    from ax.adapter.base import DataLoaderConfig
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
    for node in gs.nodes_by_name.values():
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
                # Only the metrics in the objective and bounds are modelled: the tracking
                # ones (flops, model_bytes, latency_ms_p90) steer nothing, and each would
                # add a GP to fit and to sample in every acquisition evaluation.
                # Under --early-stopping val_acc is a learning curve, and Ax fits each trial's
                # latest epoch by default: a running trial's (the model also has it as a
                # pending point) and an early-stopped one's, as if each were what the trial
                # reaches. Those low values steered the search away from the models being
                # tried, and from the cheap ones the rule stops (docs/benchmarks.md, "Early
                # stopping on long trainings"). Only completed trials' val_acc is fitted.
                spec.generator_kwargs = {**spec.generator_kwargs, "fit_tracking_metrics": False,
                                         "data_loader_config": DataLoaderConfig(fit_only_completed_map_metrics=True)}
    return gs


