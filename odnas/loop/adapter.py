"""The one module that touches Ax beyond its public API, and Ax's import chatter.

Everything else in odnas goes through ``ax.api`` and Ax's public core classes. Where
Ax 1.3 has no public way to do what odnas needs, the private use lives here, named,
with the Ax version it was written against; ``tests/test_adapter.py`` fails when an
Ax upgrade removes any of it.

``import ax`` logs an INFO line to stderr through a handler it attaches to the ``ax``
logger; ``import_ax`` lets Ax's warnings through to stderr but keeps its INFO lines
off the terminal (a search sends them to the run's log file).
"""

from __future__ import annotations

import io
import logging
import sys
from typing import Any, Iterable, Sequence

from odnas.spaces.base import Choice

#: The Ax releases this adapter was written and tested against.
AX_VERSIONS = ">=1.3,<1.4"


def import_ax() -> None:
    if "ax" in sys.modules:
        return
    real, buf = sys.stderr, io.StringIO()
    sys.stderr = buf
    try:
        import ax  # noqa: F401
    finally:
        sys.stderr = real
    for h in logging.getLogger("ax").handlers:
        if isinstance(h, logging.StreamHandler) and h.stream is buf:
            h.setStream(real)
            h.setLevel(logging.WARNING)


# ------------------------------------------------------------------ public API, in one place


def ax_parameters(specs: Sequence[Any]) -> list[Any]:
    """``odnas.spaces`` specs (``Range``, ``Choice``) as ``ax.api`` parameter configs."""
    from ax.api.configs import ChoiceParameterConfig, RangeParameterConfig

    out = []
    for s in specs:
        if isinstance(s, Choice):
            out.append(ChoiceParameterConfig(
                name=s.name, values=list(s.values), parameter_type=s.kind,
                is_ordered=s.ordered if s.kind != "bool" else None,
                dependent_parameters={k: list(v) for k, v in s.dependents.items()} or None))
        else:
            lo, hi = (int(s.lo), int(s.hi)) if s.kind == "int" else (float(s.lo), float(s.hi))
            out.append(RangeParameterConfig(name=s.name, bounds=(lo, hi), parameter_type=s.kind,
                                            scaling="log" if s.log else "linear"))
    return out


def save_trials(experiment, trials: Iterable[Any], storage_config) -> None:
    """Save new or changed trials now (Ax's public SQL storage call)."""
    from ax.storage.sqa_store.save import save_or_update_trials

    save_or_update_trials(experiment=experiment, trials=list(trials),
                          config=storage_config.registry_bundle.sqa_config)


# ------------------------------------------------------------------ private Ax use (Ax 1.3)


def experiment_of(client):
    """The ``Experiment`` behind an ``ax.api.Client``. Ax 1.3's Client keeps it private
    (``_experiment``) and offers no getter; the runner, the Orchestrator and the
    report's analyses need the object itself."""
    return client._experiment


def generation_strategy_of(client):
    """The ``GenerationStrategy`` behind an ``ax.api.Client`` (private in Ax 1.3)."""
    return client._generation_strategy


def trial_property(trial, key: str, default: Any = None) -> Any:
    """A stored per-trial property (``retry_of``, ``attempt``, ``adopted``). Ax 1.3 stores
    ``BaseTrial._properties`` with the trial but has no public accessor for it."""
    return trial._properties.get(key, default)


def set_trial_property(trial, key: str, value: Any) -> None:
    trial._properties[key] = value


def wrap_generation(generation_strategy, gen):
    """Route a generation strategy's ``gen`` calls (the Orchestrator's requests for new
    candidates) through ``gen``; returns the strategy's own bound ``gen``. Ax 1.3 has no
    hook between its Orchestrator and ``GenerationStrategy.gen``, and a subclass of the
    strategy could not be stored, so the method is shadowed on this one instance (it is
    not stored: Ax's encoder writes named fields only)."""
    real = type(generation_strategy).gen.__get__(generation_strategy)
    generation_strategy.gen = gen
    return real


def unwrap_generation(generation_strategy) -> None:
    generation_strategy.__dict__.pop("gen", None)


def generation_count(generation_strategy) -> int:
    """How many generator runs the strategy has made (its private record, Ax 1.3)."""
    return len(generation_strategy._generator_runs)


def strategy_state(generation_strategy, since: int) -> dict[str, Any]:
    """What ``GenerationStrategy.gen`` changed on the strategy (Ax 1.3), besides the
    models it fitted: the generator runs it made after the first ``since``, the node it
    is at, and each node's transition marks. ``restore_strategy_state`` applies it to the
    same strategy in another process."""
    gs = generation_strategy
    return {"runs": gs._generator_runs[since:], "current": gs._curr.name,
            "nodes": {name: (node._previous_node_name, node._should_skip) for name, node in gs.nodes_by_name.items()}}


def restore_strategy_state(generation_strategy, experiment, state: dict[str, Any]) -> None:
    """Leave the strategy as a ``gen`` on ``experiment`` left its copy in another process
    (``strategy_state`` there). Its next quasi-random candidate then continues the
    sequence (Ax reads a generator's state from its last generator run) and its record
    of generator runs is what storage saves."""
    gs = generation_strategy
    gs.experiment = experiment
    for name, (previous, skip) in state["nodes"].items():
        node = gs.nodes_by_name[name]
        node._previous_node_name, node._should_skip = previous, skip
    gs._curr = gs.nodes_by_name[state["current"]]
    gs._generator_runs.extend(state["runs"])


def complete_stopped(experiment, indices: Sequence[int], storage_config) -> None:
    """Mark early-stopped trials completed (their jobs had finished), attach their final
    data and store them, as a poll does for a trial that completes."""
    from ax.core.base_trial import TrialStatus

    trials = [experiment.trials[i] for i in indices]
    for trial in trials:
        trial.mark_as(TrialStatus.COMPLETED, unsafe=True)
        experiment.attach_data(trial.fetch_data())
    save_trials(experiment, trials, storage_config)
