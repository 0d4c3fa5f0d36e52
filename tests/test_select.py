"""Selection on fronts computed by hand."""

import dataclasses

import numpy as np
import pytest

from odnas.profiles import load_profile
from odnas.records import TrialRow
from odnas.select import front, hypervolume, pareto_mask, pick


def test_pareto_mask_by_hand():
    # maximise both: (1,1) is dominated by (2,2); (3,0) and (0,3) are not.
    y = np.array([[1, 1], [2, 2], [3, 0], [0, 3], [2, 2]])
    assert pareto_mask(y).tolist() == [False, True, True, True, True]
    assert pareto_mask(np.zeros((0, 2))).tolist() == []


def _row(i, acc, lat, params=1000, state="completed"):
    m = {"latency_ms": lat, "num_params": params, "flops": 1, "model_bytes": 1}
    if acc is not None:
        m["val_acc"] = acc
    return TrialRow(trial=i, state=state, metrics=m, arch_id=f"a{i}", params={})


def test_front_never_holds_a_model_over_budget():
    prof = dataclasses.replace(load_profile("cpu-mobile"), budgets={"latency_ms": 0.2, "num_params": 5000},
                               thresholds=("val_acc >= 0.5",))
    rows = [
        _row(0, 0.99, 0.30),               # most accurate, but over the latency budget
        _row(1, 0.95, 0.15),
        _row(2, 0.90, 0.10),
        _row(3, 0.89, 0.12),               # dominated by 2
        _row(4, 0.97, 0.10, params=9000),  # over the params budget
        _row(5, 0.40, 0.05),               # under the accuracy threshold
        _row(6, None, 0.01, state="over_budget"),
        _row(7, 0.99, 0.01, state="failed"),
    ]
    f = front(rows, prof)
    assert [r.trial for r in f] == [1, 2]
    assert pick(rows, prof).trial == 1
    assert pick(rows, prof, ["latency_ms <= 0.12"]).trial == 2
    assert pick(rows, prof, ["val_acc >= 0.999"]) is None


def test_hypervolume_by_hand():
    # maximised: points (2,1) and (1,2) above ref (0,0): union area = 2 + 2 - 1 = 3
    assert abs(hypervolume(np.array([[2.0, 1.0], [1.0, 2.0]]), np.array([0.0, 0.0])) - 3.0) < 1e-9
    assert hypervolume(np.array([[-1.0, 5.0]]), np.array([0.0, 0.0])) == 0.0


def test_proxy_correlations():
    from odnas.select import proxy_correlations

    rows = [TrialRow(trial=i, state="completed", arch_id=None, params={},
                     metrics={"latency_ms": lat, "flops": f, "num_params": p})
            for i, (lat, f, p) in enumerate([(1, 10, 3), (2, 20, 2), (3, 30, 1), (4, 40, 0)])]
    c = proxy_correlations(rows)
    assert c["n"] == 4 and abs(c["flops"] - 1.0) < 1e-12 and abs(c["num_params"] + 1.0) < 1e-12
    assert proxy_correlations(rows[:2])["flops"] is None


def test_spearman_is_scipys_with_ties_and_nan_when_constant():
    import numpy as np
    from scipy.stats import spearmanr

    from odnas.select import spearman

    rng = np.random.default_rng(0)
    for n in (3, 5, 17, 60):
        a = rng.integers(0, 6, n).astype(float)  # many ties
        b = a * 0.5 + rng.normal(size=n)
        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
        assert spearman(b, -b) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_status_says_which_bound_a_trained_model_misses():
    from odnas.cli import _note

    prof = dataclasses.replace(load_profile("cpu-mobile"), budgets={"latency_ms": 0.2, "num_params": 5000},
                               thresholds=("val_acc >= 0.85",))
    assert _note(_row(0, 0.9, 0.1), prof) == ""
    assert _note(_row(1, 0.75, 0.1), prof) == "misses val_acc >= 0.85"
    assert _note(_row(2, 0.75, 0.1, state="running"), prof) == ""  # not judged before it is trained
