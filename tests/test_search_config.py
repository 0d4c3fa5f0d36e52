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
    ("retries", -1, "--retries"), ("trial_timeout_s", 0.0, "--trial-timeout"),
    ("tolerated_failure_rate", 1.5, "--max-failure-rate"), ("isolation", "loud", "--isolation"),
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
