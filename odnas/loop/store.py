"""A run's stored Ax experiment: SQLite storage, loading it (read-only or for the
driver), and turning it into ``TrialRow`` records.

This is the one read-only loader: ``status``, ``select``, ``rescore``, ``export`` and
``report`` read runs through ``load_run`` and never import the driver. Importing it
does not import Ax (seconds): ``load_run`` reads the driver's ``trials.json`` when it is
as new as the experiment, and loads the experiment only when asked for it or when only
the experiment can say.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from odnas.errors import RunDirError
from odnas.loop.adapter import experiment_of, import_ax, trial_property
from odnas.profiles import HardwareProfile, profile_from_dict
from odnas.records import RunSettings, TrialRow, trials_frame
from odnas.rundir import DB_NAME, LOG_NAME, read_settings, read_trials, resolve_trial_dir

EXPERIMENT_NAME = "odnas"


def registry_bundle():
    """Ax storage registry with odnas's runner and metrics, for SQLite save/load."""
    from ax.storage.metric_registry import CORE_METRIC_REGISTRY
    from ax.storage.registry_bundle import RegistryBundle
    from ax.storage.runner_registry import CORE_RUNNER_REGISTRY

    from odnas.loop.metrics import CostMetric, ValAccCurveMetric, ValAccMetric
    from odnas.loop.runner import TrialRunner

    return RegistryBundle(
        metric_clss={**CORE_METRIC_REGISTRY, ValAccMetric: None, ValAccCurveMetric: None, CostMetric: None},
        runner_clss={**CORE_RUNNER_REGISTRY, TrialRunner: None},
    )


def init_storage(run_dir: Path):
    """Bind Ax's SQL storage to ``run_dir/experiment.sqlite`` (WAL mode) and return its config."""
    import_ax()
    from ax.api.configs import StorageConfig
    from ax.storage.sqa_store.db import create_all_tables, get_engine, init_engine_and_session_factory
    from sqlalchemy import text

    url = f"sqlite:///{(run_dir / DB_NAME).resolve()}"
    init_engine_and_session_factory(url=url, force_init=True)
    engine = get_engine()
    with engine.connect() as conn:
        conn.execute(text("PRAGMA journal_mode=WAL"))
    create_all_tables(engine)
    return StorageConfig(url=url, registry_bundle=registry_bundle())


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
        raise RunDirError(f"{run_dir} has no {DB_NAME}; the search never started")
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
            raise RunDirError(f"{run_dir}/{DB_NAME} holds no odnas experiment; the search never started") from None
        client = Client()
        client.set_experiment(exp)
        gs = load_generation_strategy_by_experiment_name(EXPERIMENT_NAME, config=config, experiment=exp)
        if gs is not None:
            client.set_generation_strategy(gs)
        return client, None


@dataclass
class Run:
    """A run as read from its run dir: settings, effective profile, one row per trial,
    and the stored Ax experiment (read-only: changing it changes nothing on disk). The
    experiment is loaded when first asked for, if the rows did not need it."""

    run_dir: Path
    settings: RunSettings
    profile: HardwareProfile
    rows: list[TrialRow]
    _stored: Any = field(default=None, repr=False)
    as_of: float | None = None  # when the driver wrote the rows, if they are its trials.json

    @property
    def experiment(self):
        if self._stored is None:
            self._stored = experiment_of(load_client(self.run_dir, readonly=True)[0])
        return self._stored

    def table(self):
        """A pandas DataFrame, one row per trial (``TrialRow.flat``): what
        ``odnas status RUN --format csv|json`` prints."""
        return trials_frame(self.rows)


def load_run(run_dir: str | Path, running: bool | None = None) -> Run:
    """Read a run without writing to it (safe while its driver runs). Its rows are the
    driver's ``trials.json`` when that is as new as the experiment (at most a poll behind
    while a driver runs): no Ax to import and no experiment to load, seconds each.
    Otherwise (a driver killed after its last save, a run from before that file) they
    are the stored experiment's ``trial_table``. ``running``: whether a driver holds the
    run, if the caller has just asked (one answer for both, as ``odnas status`` prints it)."""
    run_dir = Path(run_dir)
    settings = read_settings(run_dir)
    profile = profile_from_dict(settings.profile)
    seen = read_trials(run_dir, running)
    if seen is not None:
        return Run(run_dir, settings, profile, seen[0], as_of=seen[1])
    exp = experiment_of(load_client(run_dir, readonly=True)[0])
    return Run(run_dir, settings, profile, trial_table(exp, run_dir), exp)


@contextmanager
def quiet_logs(log_path: Path, enabled: bool = True) -> Iterator[Any]:
    """Send Ax's, BoTorch's, TorchX's and Lightning's logs and warnings to the run's log
    file. Yields the terminal's stderr (fd 2 itself goes to the log meanwhile), for the
    driver's own notes."""
    if not enabled:
        yield sys.stderr
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
    term = open(saved_fd, "w", closefd=False)
    try:
        yield term
    finally:
        sys.stderr.flush()
        term.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        warnings.showwarning = old_showwarning
        for n, (h, p) in saved.items():
            lg = logging.getLogger(n)
            lg.handlers, lg.propagate = h, p
        handler.close()


_STATE = {"COMPLETED": "completed", "RUNNING": "running", "CANDIDATE": "running", "STAGED": "running",
          "FAILED": "failed", "ABANDONED": "failed", "EARLY_STOPPED": "early_stopped"}


def trial_table(exp, run_dir: str | Path) -> list[TrialRow]:
    """One row per trial of a stored experiment: state, arch id, parameters, metrics,
    and its trial dir where the run dir (``run_dir``) is now."""
    data = exp.lookup_data()
    df = data.full_df if hasattr(data, "full_df") else data.df
    latest: dict[int, dict[str, float]] = {}
    sems: dict[int, dict[str, float]] = {}
    if len(df):
        step = "step" if "step" in df.columns else None
        df = df.sort_values(step) if step else df
        for rec in df.itertuples(index=False):
            latest.setdefault(int(rec.trial_index), {})[rec.metric_name] = float(rec.mean)
            sems.setdefault(int(rec.trial_index), {})[rec.metric_name] = float(rec.sem)
    rows: list[TrialRow] = []
    for idx, t in sorted(exp.trials.items()):
        meta = t.run_metadata or {}
        state = _STATE.get(t.status.name, t.status.name.lower())
        if state == "completed" and meta.get("over_budget"):
            state = "over_budget"
        metrics = {**meta.get("costs", {}), **latest.get(idx, {})}
        if state == "running":
            metrics.pop("val_acc", None)  # a curve point, not a result
        rows.append(TrialRow(
            trial=idx, state=state, arch_id=meta.get("arch_id"),
            params=dict(meta.get("params") or (t.arm.parameters if t.arm else {})), metrics=metrics,
            sem=sems.get(idx, {}), over_budget=list(meta.get("over_budget", [])),
            reason=getattr(t, "status_reason", None) or meta.get("failed_reason"),
            trial_dir=str(tdir) if (tdir := resolve_trial_dir(run_dir, meta.get("trial_dir"))) else None,
            retry_of=trial_property(t, "retry_of"),
        ))
    return rows
