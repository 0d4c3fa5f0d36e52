"""The HTML report: pure helpers on hand-made values, then whole reports of small
runs built in a second (trials attached to a real stored Ax experiment with made-up
metrics, no training), and the report rendered in headless Chromium."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from odnas.profiles import load_profile, profile_from_dict
from odnas.report import cv_stats, export_command, reference_point, tradeoff_pairs, write_report

LATENCY_BUDGET = 0.06
PROFILE_YAML = f"""
name: test-mobile
description: made-up budgets for report tests
objective: "val_acc, -latency_ms"
thresholds: ["val_acc >= 0.7"]
budgets: {{latency_ms: {LATENCY_BUDGET}, num_params: 12000}}
"""


# ------------------------------------------------------------------ pure helpers


def test_tradeoff_pairs_objectives_then_budgets():
    p = profile_from_dict({"name": "p", "objective": "val_acc, -latency_ms",
                           "budgets": {"latency_ms": 1.0, "num_params": 5000}})
    assert tradeoff_pairs(p) == [("latency_ms", "val_acc"), ("num_params", "val_acc")]
    p3 = profile_from_dict({"name": "p", "objective": "val_acc, -latency_ms, -num_params",
                            "budgets": {"model_bytes": 1e5}})
    assert tradeoff_pairs(p3) == [("latency_ms", "val_acc"), ("num_params", "val_acc"),
                                  ("latency_ms", "num_params"), ("model_bytes", "val_acc")]


def test_reference_point_takes_the_tightest_bound_per_objective():
    p = profile_from_dict({"name": "p", "objective": "val_acc, -latency_ms",
                           "thresholds": ["val_acc >= 0.8", "val_acc >= 0.9", "latency_ms <= 3", "latency_ms >= 0.1"],
                           "budgets": {"latency_ms": 2.0, "num_params": 10}})
    assert reference_point(p) == {"val_acc": 0.9, "latency_ms": 2.0}
    assert reference_point(profile_from_dict({"name": "p", "objective": "val_acc, -latency_ms"})) == {}


def test_cv_stats_by_hand():
    # |o - p| = 0, 0.5, 3 against sqrt(1^2 + 0^2) = 1: two of three inside.
    st = cv_stats([1.0, 2.0, 3.0], [1.0, 2.5, 6.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    assert st["n"] == 3 and st["coverage"] == pytest.approx(2 / 3)
    assert st["spearman"] == pytest.approx(1.0)
    assert st["r2"] == pytest.approx(1 - (0 + 0.25 + 9) / 2)
    # The observation's own noise widens the interval: 3 <= sqrt(2.5^2 + 2^2).
    assert cv_stats([3.0], [6.0], [2.0], [2.5])["coverage"] == 1.0
    few = cv_stats([1.0, 2.0], [2.0, 1.0], [0, 0], [0, 0])
    assert math.isnan(few["spearman"]) and few["coverage"] == 0.0


def test_export_command_quotes_paths():
    row = {"trial": 3, "arch_id": "mlp_32x16"}
    assert export_command("runs/a b", row) == "odnas export 'runs/a b' --trial 3 -o mlp_32x16.onnx"


# ------------------------------------------------------------------ small runs


def _costs(p) -> dict[str, float]:
    h1, h2 = int(p["hidden_size_1"]), int(p["hidden_size_2"])
    n = 64 * h1 + h1 + h1 * h2 + h2 + 10 * h2 + 10
    lat = 0.02 + 4e-6 * n
    return {"num_params": float(n), "flops": float(n - h1 - h2 - 10), "model_bytes": 4.0 * n + 600,
            "latency_ms": lat, "latency_ms_p90": 1.1 * lat}


def _acc(p, idx: int) -> float:
    h1, h2 = int(p["hidden_size_1"]), int(p["hidden_size_2"])
    return min(0.99, 0.5 + 0.1 * math.log2(h1 / 16) + 0.05 * math.log2(h2 / 16) - 0.3 * p["dropout"]
               + random.Random(idx).gauss(0, 0.01))


def make_run(run_dir: Path, n: int, method: str = "bo", failed=(), running: int = 0, over=(),
             planned: int | None = None) -> Path:
    """A stored run of the ``mlp`` space whose ``n`` trials are attached with made-up
    costs and accuracies, the way the closed loop stores them (costs in run metadata;
    a trial over a budget completed with costs only). Trials in ``over`` are made 3x
    slower; the last ``running`` trials stay running; ``planned`` trials were asked for."""
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run
    from odnas.loop.store import load_client, quiet_logs
    from odnas.rundir import read_settings
    from odnas.spaces import get_space

    prof = run_dir.parent / f"{run_dir.name}-profile.yaml"
    prof.write_text(PROFILE_YAML)
    run_dir = create_run(SearchConfig(profile=str(prof), space="mlp", trials=planned or n, run_dir=str(run_dir),
                                      method=method, init_trials=4, seed=0))
    from odnas.loop.adapter import experiment_of, save_trials

    profile = profile_from_dict(read_settings(run_dir).profile)
    space = get_space("mlp")
    rng = random.Random(7)
    client, storage = load_client(run_dir)
    with quiet_logs(run_dir / "odnas.log"):
        for i in range(n):
            params = space.sample(rng)
            idx = client.attach_trial(params)
            costs = _costs(params)
            if i in over:
                costs = {**costs, "latency_ms": 3 * costs["latency_ms"], "latency_ms_p90": 3 * costs["latency_ms_p90"]}
            meta = {"arch_id": space.arch_id(params), "costs": costs, "costs_sem": {"latency_ms": 0.001},
                    "trial_dir": str(run_dir / "trials" / f"{idx:04d}")}
            breaks = profile.over_budget(costs)
            if breaks:
                meta["over_budget"] = breaks
            trial = experiment_of(client).trials[idx]
            trial.update_run_metadata(meta)
            if i in failed:
                client.mark_trial_failed(idx, failed_reason="job died without writing its result")
            elif i >= n - running:
                save_trials(experiment_of(client), [trial], storage)
            else:
                data = {m: (v, 0.001 if m.startswith("latency") else 0.0) for m, v in costs.items()}
                if not breaks:
                    data["val_acc"] = _acc(params, idx)
                client.complete_trial(idx, raw_data=data)
    return run_dir


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("full") / "run", 10, failed=(5,), running=1)


@pytest.fixture(scope="module")
def full_report(full_run) -> Path:
    return write_report(full_run)


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("partial") / "run", 3, over=(0,), failed=(1,), running=1, planned=6)


def _text(html_path: Path) -> str:
    s = re.sub(r"<script.*?</script>", " ", html_path.read_text(), flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", s))


def _figure_keys(html_path: Path) -> list[str]:
    return re.findall(r'<div id="fig-([^"]+)"', html_path.read_text())


def test_run_has_every_state(full_run):
    from odnas.loop.store import load_run

    states = {r.state for r in load_run(full_run).rows}
    assert {"completed", "over_budget", "failed", "running"} <= states


def test_report_is_one_offline_html_file(full_run, full_report):
    assert full_report == full_run / "report" / "report.html"
    page = full_report.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page), "plotly.js must be inlined, not fetched"
    assert not re.search(r"<link[^>]*href=[\"']https?:", page)
    assert page.count("<script") >= 1 and "Plotly.newPlot" in page
    text = _text(full_report)
    for want in ("Feasible Pareto front", "Trade-offs", "leave-one-out", "Parameter effects", "Settings",
                 "coverage of 95% intervals", "Spearman", "test-mobile", "versions".title()):
        assert want in text, want
    assert "trial 5: job died without writing its result" in text
    assert "still running" in text


def test_report_shows_proxy_correlations_per_profile(full_run, full_report):
    from odnas.loop.store import load_run
    from odnas.select import proxy_correlations

    run = load_run(full_run)
    profile, c = run.profile, proxy_correlations(run.rows)
    text = _text(full_report)
    assert "Proxies against measured latency" in text and "Spearman flops" in text
    assert f"{profile.name} {c['n']} {c['flops']:.4g}" in " ".join(text.split())


def test_report_has_the_expected_figures(full_report):
    keys = _figure_keys(full_report)
    assert {"tradeoff_val_acc_vs_latency_ms", "tradeoff_val_acc_vs_num_params"} <= set(keys)
    assert "cv_val_acc" in keys and "cv_latency_ms" in keys
    assert {"sensitivity_val_acc", "sensitivity_latency_ms"} <= set(keys)
    assert any(k.startswith(("contour_val_acc", "slice_val_acc")) for k in keys)
    assert any(k.startswith(("contour_latency_ms", "slice_latency_ms")) for k in keys)


def test_front_table_has_export_commands(full_run, full_report):
    from odnas.loop.store import load_run
    from odnas.select import front

    run = load_run(full_run)
    fr = front(run.rows, run.profile)
    assert fr, "the made-up run should have a feasible front"
    page = full_report.read_text()
    for r in fr:
        assert f"odnas export {full_run} --trial {r.trial} -o {r.arch_id}.onnx" in page


def test_every_figure_has_a_png_that_is_not_blank(full_report):
    import matplotlib.image as mpimg

    keys = _figure_keys(full_report)
    assert keys
    for k in keys:
        png = full_report.parent / f"{k}.png"
        assert png.is_file(), png
        img = mpimg.imread(png)
        assert img.shape[0] > 200 and img.shape[1] > 200
        assert img[..., :3].var() > 1e-3, f"{png} looks blank"


def _db_dump(run_dir: Path) -> str:
    import sqlite3

    con = sqlite3.connect(run_dir / "experiment.sqlite")
    con.execute("PRAGMA wal_checkpoint(FULL)")
    try:
        return "\n".join(con.iterdump())
    finally:
        con.close()


def test_partial_run_says_what_is_missing(partial_run, tmp_path, capfd):
    before = _db_dump(partial_run)
    out = write_report(partial_run, tmp_path / "partial.html")
    assert _db_dump(partial_run) == before, "a report must never write to the run's storage"
    assert out == tmp_path / "partial.html" and out.is_file()
    text = _text(out)
    assert "Missing from this report" in text
    assert "No trial has been trained yet" in text
    assert "no surrogate model" in text.lower() and "at least 3 are needed" in text
    assert "still running" in text and "0 of 6 planned trainings done" in text and "odnas resume" in text
    assert "trial 1: job died without writing its result" in text
    # Trade-off plots still show the untrained trials on the cost axis.
    assert "tradeoff_val_acc_vs_latency_ms" in _figure_keys(out)
    assert (tmp_path / "tradeoff_val_acc_vs_latency_ms.png").is_file()
    err = capfd.readouterr().err
    assert "ax." not in err and "INFO" not in err, err  # Ax's chatter goes to odnas.log


def test_a_report_of_a_run_being_searched_does_not_send_the_user_to_resume(partial_run, tmp_path):
    from odnas.rundir import driver_lock

    with driver_lock(partial_run):  # as a running search holds it
        text = _text(write_report(partial_run, tmp_path / "live.html"))
    assert "its search is still running" in text and "odnas resume" not in text
    assert "early_stopping" in text and "max_candidates" in text  # every setting the run was made with


def test_a_trial_left_in_a_warm_workers_inbox_is_queued_in_the_report_as_in_status(partial_run, tmp_path):
    import shutil

    from odnas.loop.store import load_run

    run = tmp_path / "copy"
    shutil.copytree(partial_run, run)
    [queued] = [r for r in load_run(run).rows if r.state == "running"]
    tdir = run / "trials" / f"{queued.trial:04d}"
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / "launch.json").write_text(json.dumps({"worker": 0, "params": queued.params}))  # never served
    text = _text(write_report(run, tmp_path / "q.html"))
    assert "1 trial queued, not started (`odnas resume` starts it)" in text and "trial still running" not in text


def test_report_out_may_be_a_folder(partial_run, tmp_path):
    assert write_report(partial_run, tmp_path / "r") == tmp_path / "r" / "report.html"


def test_surrogate_fitted_for_the_report_when_the_run_has_none(tmp_path):
    """A quasi-random run never has a model of its own; the report fits one."""
    from odnas.loop.adapter import experiment_of
    from odnas.loop.store import load_client, quiet_logs, trial_table
    from odnas.report import Surrogate

    run = make_run(tmp_path / "sobol", 5, method="sobol")
    client, _ = load_client(run, readonly=True)
    with quiet_logs(run / "odnas.log"):
        model = Surrogate.fit(client, [r.to_dict() for r in trial_table(experiment_of(client), run)])
    assert model.adapter is not None and not model.own, model.why_not
    assert "fitted for this report" in model.source


def test_the_reports_surrogate_leaves_out_early_stopped_partial_curves_as_the_search_does(tmp_path):
    """An early-stopped trial's val_acc is its curve at the epoch it stopped: the search
    fits completed trials' only, and the report's own surrogate fitted it as if final."""
    from odnas.loop.adapter import experiment_of
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run
    from odnas.loop.store import load_client, quiet_logs, trial_table
    from odnas.report import Surrogate
    from odnas.spaces import get_space

    run = create_run(SearchConfig(space="mlp", trials=8, run_dir=str(tmp_path / "es"), method="sobol",
                                  early_stopping=True))
    space, rng = get_space("mlp"), random.Random(7)
    client, _ = load_client(run)
    with quiet_logs(run / "odnas.log"):
        for i in range(8):
            p = space.sample(rng)
            idx = client.attach_trial(p)
            experiment_of(client).trials[idx].update_run_metadata({"arch_id": space.arch_id(p), "costs": _costs(p)})
            client.attach_data(idx, {"val_acc": (0.1, 0.0)}, progression=1)
            if i < 2:
                client.mark_trial_early_stopped(idx)
            else:
                client.complete_trial(idx, raw_data={**{m: (v, 0.0) for m, v in _costs(p).items()},
                                                     "val_acc": (_acc(p, idx), 0.0)}, progression=2)
        model = Surrogate.fit(client, [r.to_dict() for r in trial_table(experiment_of(client), run)])
    fitted = model.adapter.get_training_data().observation_data
    assert sorted({i for i, *_ in fitted.index}) == [2, 3, 4, 5, 6, 7], fitted.index
    assert "on 6 trained trials (the 2 early-stopped ones' partial val_acc left out" in model.source, model.source


def test_not_a_run_dir_is_a_user_error(tmp_path):
    from odnas.errors import RunDirError

    with pytest.raises(RunDirError, match="not an odnas run dir"):
        write_report(tmp_path)


# ------------------------------------------------------------------ in a browser

CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(not CHROMIUM, reason="needs chromium (apt-get install chromium)")
def test_every_figure_renders_with_data_in_chromium(full_report, tmp_path):
    """Open the report offline in headless Chromium and check that plotly drew
    every figure, each with data points."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
           full_report.resolve().as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    keys = _figure_keys(full_report)
    parts = re.split(r'<div id="fig-([^"]+)"', dom)
    rendered = {parts[i]: parts[i + 1].split("<figcaption")[0] for i in range(1, len(parts), 2)}
    assert set(rendered) == set(keys)
    for key, body in rendered.items():
        assert "main-svg" in body, f"{key}: plotly drew nothing"
        assert re.search(r'class="(point|trace contour)', body), f"{key}: no data points"
    # The first trade-off plot shows every trial that has costs: 10 trials, 1 legend
    # marker per trace at most, so at least 10 points.
    assert len(re.findall(r'class="point', rendered["tradeoff_val_acc_vs_latency_ms"])) >= 10


@pytest.mark.slow
def test_report_of_a_real_search(tmp_path):
    """End to end: a real (tiny) search, then its report."""
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import search

    run = search(SearchConfig(profile="cpu-mobile", space="mlp", trials=4, parallel=2, run_dir=str(tmp_path / "r")))
    out = write_report(run)
    assert out.is_file() and _figure_keys(out)
    assert load_profile("cpu-mobile").name in _text(out)


def test_the_report_tells_its_steps(partial_run, tmp_path):
    steps: list[str] = []
    write_report(partial_run, tmp_path / "r.html", progress=steps.append)
    assert steps[0] == "fitting the surrogate model" and steps[-1].startswith("writing r.html")
    assert any("surrogate" in s for s in steps)


def test_a_run_that_reached_its_candidate_cap_is_sent_to_a_higher_cap_not_a_plain_resume():
    from odnas.profiles import load_profile
    from odnas.report import overview_section

    rows = [{"trial": i, "state": "over_budget", "metrics": {"num_params": 9.0}} for i in range(3)]
    sec = overview_section(rows, [], {"trials": 2, "max_candidates": 3}, load_profile("cpu-mobile"))
    said = " ".join(sec.missing)
    assert "0 of 2 planned trainings done" in said and "reached the cap" in said
    assert "`odnas resume --max-candidates N` tries more" in said and "continue it with `odnas resume`" not in said
    assert "0 of 2 planned trainings done, 3 candidates" in sec.body


def test_report_json_gives_absolute_paths(partial_run, tmp_path, monkeypatch, capsys):
    from odnas.cli import main

    monkeypatch.chdir(tmp_path)  # the report written relative to here, its paths said in full
    assert main(["report", str(partial_run), "-o", "rel", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["report"] == str(tmp_path / "rel" / "report.html") and all(p.startswith(str(tmp_path))
                                                                         for p in out["png"]) and out["png"]
