"""Tabular benchmark: lookup, hypervolume and trials-to-target on a tiny synthetic table,
and short replays of Ax's random and Sobol strategies and of Optuna's samplers on it."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest

from conftest import ROOT


def _load(name: str):
    path = ROOT / "benchmarks" / "tabular" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tabular_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


replay = _load("replay")
build = _load("build")

H1, H2, LR = (16, 32, 64), (16, 32), (1e-3, 1e-2)


def _lat(h1: int, h2: int) -> float:
    return 0.01 + h1 / 2000 + h2 / 10000


def _acc(h1: int, h2: int, lr: float, seed: int) -> float:
    return 0.78 + h1 / 800 + h2 / 1600 + (0.02 if lr == 1e-2 else 0.0) + 0.004 * seed


def synthetic_table(tmp_path):
    """12 configurations; h1 = 64 breaks num_params <= 100000; accuracy grows with width."""
    archs, entries = {}, []
    for h1 in H1:
        for h2 in H2:
            arch = f"mlp_{h1}x{h2}"
            archs[arch] = {"metrics": {"latency_ms": _lat(h1, h2), "latency_ms_p90": _lat(h1, h2) * 1.1,
                                       "num_params": 200000 if h1 == 64 else 1000 * h1 + 100 * h2,
                                       "flops": 1000 * h1, "model_bytes": 4000 * h1},
                           "sem": {"latency_ms": 0.0001}}
            for lr in LR:
                accs = {str(s): _acc(h1, h2, lr, s) for s in (0, 1)}
                entries.append({"key": json.dumps([h1, h2, lr]), "arch_id": arch,
                                "params": {"hidden_size_1": h1, "hidden_size_2": h2, "lr": lr},
                                "val_acc": accs, "val_acc_mean": float(np.mean(list(accs.values())))})
    meta = {"name": "tiny", "space": "mlp", "grid": {"hidden_size_1": H1, "hidden_size_2": H2, "lr": LR},
            "fixed": {"dropout": 0.0, "epochs": 1, "batch_size": 64}, "seeds": [0, 1], "data": "synthetic",
            "profile": "cpu-mobile"}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"meta": meta, "archs": archs, "entries": entries}))
    return path


@pytest.fixture
def table(tmp_path):
    return replay.load_table(synthetic_table(tmp_path), latency_budget=0.03)


def test_lookup_matches_grid_values_and_seed_columns(table):
    p = {"hidden_size_1": 32, "hidden_size_2": 16, "lr": 0.01 * (1 + 1e-12)}  # float noise from a sampler
    assert table.key(p) == json.dumps([32, 16, 0.01])
    assert table.costs(p)["metrics"]["latency_ms"] == pytest.approx(_lat(32, 16))
    assert table.column(0) == "0" and table.column(3) == "1"
    assert table.val_acc(p, table.column(3)) == pytest.approx(_acc(32, 16, 1e-2, 1))
    with pytest.raises(replay.ReplayError, match="not one of the grid values"):
        table.key({"hidden_size_1": 20, "hidden_size_2": 16, "lr": 0.01})


def test_budget_and_feasible_share(table):
    # Mean val_acc >= 0.85 only for 32x16 (0.852) and 32x32 (0.862) with lr 1e-2, and for
    # h1 = 64, which breaks num_params; their latencies are 0.0276 and 0.0292 ms.
    assert table.feasible_share() == pytest.approx(2 / 12)
    assert replay.with_budget(table, 0.0285).feasible_share() == pytest.approx(1 / 12)
    assert replay.default_budget(table, share=1 / 12) == pytest.approx(0.028)  # 0.0276 rounded up
    assert replay.default_budget(table, share=2 / 12) == pytest.approx(0.03)
    with pytest.raises(replay.ReplayError, match="no latency budget"):
        replay.default_budget(table, share=0.5)
    with pytest.raises(replay.ReplayError, match="must be > 0"):
        replay.with_budget(table, 0.0)


def test_hypervolume_by_hand(table):
    # Two feasible points: (0.852, 0.0276 ms) and (0.862, 0.0292 ms); reference (0.85, 0.03 ms).
    a = (_acc(32, 16, 1e-2, 0) + _acc(32, 16, 1e-2, 1)) / 2
    b = (_acc(32, 32, 1e-2, 0) + _acc(32, 32, 1e-2, 1)) / 2
    la, lb = _lat(32, 16), _lat(32, 32)
    expected = (b - 0.85) * (0.03 - lb) + (a - 0.85) * (lb - la)
    keys = [json.dumps([32, 16, 0.01]), json.dumps([32, 32, 0.01])]
    assert replay.hypervolume_of(table, keys) == pytest.approx(expected, rel=1e-9)
    assert replay.exhaustive_hypervolume(table) == pytest.approx(expected, rel=1e-9)
    # Infeasible configurations add nothing: too inaccurate (h1 = 16), over num_params (h1 = 64).
    others = [json.dumps([16, 32, 0.01]), json.dumps([64, 32, 0.01])]
    assert replay.hypervolume_of(table, keys[:1] + others) == pytest.approx((a - 0.85) * (0.03 - la))
    assert replay.hypervolume_of(table, others) == 0.0


def test_curve_and_trials_to_target(table):
    k1, k2, bad = json.dumps([32, 16, 0.01]), json.dumps([32, 32, 0.01]), json.dumps([16, 16, 0.001])
    curve = replay.hv_curve(table, [bad, k1, k1, k2], trials=6)
    full = replay.exhaustive_hypervolume(table)
    assert curve[0] == 0.0 and curve[1] == curve[2] > 0.0
    assert curve[3] == curve[4] == curve[5] == pytest.approx(full)  # ended early: carried forward
    assert replay.trials_to_reach(curve, full) == 4.0
    assert replay.trials_to_reach(curve, curve[1]) == 2.0
    assert math.isinf(replay.trials_to_reach(curve, full * 1.01))
    s = replay.spread([7.0, 3.0, math.inf, 5.0])
    assert (s["min"], s["q25"], s["median"]) == (3.0, 4.5, 6.0) and math.isinf(s["q75"]) and math.isinf(s["max"])
    assert math.isinf(replay.spread([3.0, math.inf])["median"])
    assert replay.spread([3.0, 5.0, math.inf])["median"] == 5.0


@pytest.mark.parametrize("method", ["random", "sobol", "nsga2", "tpe"])
def test_short_replay(table, method):
    if method in ("nsga2", "tpe"):
        pytest.importorskip("optuna", reason="Optuna is the benchmarks' optional extra: pip install -e '.[bench]'")
    r = replay.replay(table, method, seed=1, trials=4, max_candidates=20)
    trained = [c for c in r["candidates"] if not c["over_budget"]]
    assert len(r["trained"]) == len(trained) == 4 and r["ended"] == "trials"
    assert r["column"] == "1"
    for c in r["candidates"]:
        assert c["key"] in table.entries
        if c["over_budget"]:
            assert c["val_acc"] is None  # never trained
        else:
            assert c["val_acc"] == table.entries[c["key"]]["val_acc"]["1"]


def test_over_budget_candidates_reach_ax_with_costs_only(table):
    prop = replay.AxProposer(table, "random", seed=0, trials=4)
    idx, params = prop.ask()
    costs = table.costs(params)
    prop.tell(idx, costs, None, over_budget=True)
    idx2, params2 = prop.ask()
    prop.tell(idx2, table.costs(params2), 0.9, over_budget=False)
    df = prop.client._experiment.lookup_data().df
    assert "val_acc" not in set(df[df.trial_index == idx].metric_name)
    assert {"latency_ms", "num_params", "val_acc"} <= set(df[df.trial_index == idx2].metric_name)
    assert prop.client._experiment.trials[idx].status.is_completed


def test_summary_target_and_verdict(table):
    k1, k2, bad = json.dumps([32, 16, 0.01]), json.dumps([32, 32, 0.01]), json.dumps([16, 16, 0.001])
    runs = [{"method": "sobol", "seed": s, "column": "0", "trained": [bad] * 47 + [k1],
             "candidates": [{"over_budget": []}] * 48,
             "gen_s": 1.0, "wall_s": 1.0, "ended": "trials"} for s in range(3)]
    runs += [{"method": "bo", "seed": s, "column": "1", "trained": [bad] * (10 + s) + [k1, k2] + [bad] * 40,
              "candidates": [{"over_budget": ["latency_ms"]}] + [{"over_budget": []}] * 48,
              "gen_s": 2.0, "wall_s": 3.0, "ended": "trials"} for s in range(3)]
    summ = replay.summarize(table, runs, trials=48)
    assert summ["target_hv"] == pytest.approx(replay.hypervolume_of(table, [k1]))
    bo = summ["methods"]["bo"]
    assert bo["trials_to_target"]["median"] == 12.0  # k1 arrives at training 11, 12, 13
    assert bo["fraction"]["48"]["median"] == pytest.approx(1.0)
    assert bo["over_budget"]["median"] == 1.0
    # On seed 1 alone 32x16 reaches 0.854 and 32x32 0.864: the same two points, so also all of it.
    assert bo["fraction_observed"]["48"]["median"] == pytest.approx(1.0)
    assert summ["methods"]["sobol"]["fraction_observed"]["48"]["median"] < 1.0
    md = replay.markdown(table, summ, {"latency_budget": 0.03, "feasible_share": table.feasible_share(),
                                       "bounds": ["val_acc >= 0.85"], "max_candidates": 192})
    assert "**met**; >= 95% of the exhaustive front's HV at 48 trials: **met**" in md


def test_build_grid_keys_and_cut_log_line(tmp_path):
    spec = build.TABLES["mlp_mnist"]
    configs = list(spec.configs())
    assert len(configs) == spec.size() == len({build.config_key(spec, p) for p in configs})
    assert all(p["epochs"] == 2 for p in configs)
    log = tmp_path / "t.jsonl"
    build.append_jsonl(log, {"kind": "meta"})
    with log.open("a") as f:
        f.write('{"kind": "train", "ke')  # a kill mid-write
    assert build.read_jsonl(log) == [{"kind": "meta"}]
