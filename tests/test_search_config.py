"""Search settings that must fail before anything is written (unit tests, no search runs)."""

import sys

import pytest

from odnas.errors import SearchError
from odnas.loop.config import SearchConfig, make_settings


def test_saasbo_without_jax_and_numpyro_fails_before_the_run(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "numpyro", None)  # import numpyro -> ImportError
    with pytest.raises(SearchError, match=r"odnas\[saasbo\]"):
        make_settings(SearchConfig(space="mlp", method="saasbo", run_dir=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("field,value,match", [
    ("retries", -1, "--retries"), ("trial_timeout_s", 0.0, "--trial-timeout-s"),
    ("tolerated_failure_rate", 1.5, "--tolerated-failure-rate"), ("isolation", "loud", "--isolation"),
    ("env", {"1BAD": "x"}, "1BAD"),
])
def test_bad_fault_and_isolation_settings_are_one_line_errors(field, value, match):
    with pytest.raises((SearchError, ValueError), match=match):
        make_settings(SearchConfig(space="mlp", **{field: value}))


def test_a_space_without_float_parameters_gets_discrete_safe_optimizer_settings():
    """Ax's discrete acquisition optimizers refuse the gradient optimizer's ``options``."""
    from odnas.loop.config import generation_strategy

    def opt_kwargs(gs):
        return [spec.generator_gen_kwargs["model_gen_options"]["optimizer_kwargs"]
                for node in gs._nodes if node.name == "MBM" for spec in node.generator_specs]

    assert all("options" in kw for kw in opt_kwargs(generation_strategy("bo", 0, 2, 5)))
    discrete = opt_kwargs(generation_strategy("bo", 0, 2, 5, discrete=True))
    assert discrete and all("options" not in kw and kw["num_restarts"] > 0 for kw in discrete)


def test_the_model_fits_only_completed_trials_val_acc_curves():
    """Under early stopping val_acc is a curve: a running trial's latest epoch, or an
    early-stopped one's, is not what it would reach, so the model must not fit it."""
    import pandas as pd
    from ax.core.arm import Arm
    from ax.core.data import Data
    from ax.core.data_utils import extract_experiment_data
    from ax.core.experiment import Experiment
    from ax.core.parameter import ParameterType, RangeParameter
    from ax.core.search_space import SearchSpace

    from odnas.loop.config import generation_strategy
    from odnas.loop.metrics import ValAccCurveMetric

    exp = Experiment(name="curves", search_space=SearchSpace([RangeParameter("x", ParameterType.FLOAT, 0.0, 1.0)]),
                     tracking_metrics=[ValAccCurveMetric()])
    for i, (epochs, finish) in enumerate([(4, "completed"), (1, None), (2, "stopped")]):
        t = exp.new_trial().add_arm(Arm({"x": i / 4}, name=f"{i}_0"))
        t.mark_running(no_runner_required=True)
        exp.attach_data(Data(df=pd.DataFrame([
            {"trial_index": i, "arm_name": f"{i}_0", "metric_name": "val_acc", "metric_signature": "val_acc",
             "mean": 0.5 + 0.1 * e, "sem": 0.0, "step": float(e)} for e in range(1, epochs + 1)])))
        if finish == "completed":
            t.mark_completed()
        elif finish == "stopped":
            t.mark_early_stopped()
    configs = [spec.generator_kwargs["data_loader_config"] for node in generation_strategy("bo", 0, 2, 5)._nodes
               if node.name == "MBM" for spec in node.generator_specs]
    assert configs
    for config in configs:
        fitted = extract_experiment_data(exp, config).observation_data
        assert set(fitted.index.get_level_values("trial_index")) == {0}
        assert fitted[("mean", "val_acc")].tolist() == [0.9]  # the completed trial's last epoch


def test_search_flags_and_search_config_fields_match_one_to_one():
    """Every SearchConfig field is a `search` flag of the same name (dashes for
    underscores; a repeatable flag is the singular of its plural field), and every
    flag but the CLI's own is a field. Old spellings are hidden aliases."""
    import argparse
    from dataclasses import fields

    from odnas.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    search = sub.choices["search"]
    shown = {o for a in search._actions if a.help != argparse.SUPPRESS for o in a.option_strings
             if o.startswith("--")}
    cli_only = {"--help", "--quiet", "--report", "--json"}

    def flag(name: str) -> str:
        dashed = "--" + name.replace("_", "-")
        return dashed if dashed in shown or not dashed.endswith("s") else dashed[:-1]

    expected = {flag(f.name) for f in fields(SearchConfig)}
    assert expected == shown - cli_only
    # the old spellings still parse, onto the same fields
    a = search.parse_args(["--fix", "epochs=1", "--max-failure-rate", "0.2", "--trial-timeout", "9"])
    assert (a.fixed, a.tolerated_failure_rate, a.trial_timeout_s) == (["epochs=1"], 0.2, 9.0)
    assert search.parse_args([]).tolerated_failure_rate == 0.5  # the hidden alias leaves the default alone
