"""End to end, as a user runs it: real Ax, real TorchX local jobs, real Lightning, real ONNX Runtime."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from tests.conftest import ROOT, run_cli, run_status, status_json

FAST = ["--space", "mlp", "--fix", "epochs=1", "--parallel", "2", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e") / "run"
    proc = run_cli("search", "--profile", "cpu-mobile", "--trials", "5", "--run-dir", str(d), *FAST,
                   "--init-trials", "3", "--constraint", "val_acc >= 0.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return d, proc


def test_search_prints_front_and_writes_run_dir(run):
    d, proc = run
    assert "Feasible Pareto front" in proc.stdout and str(d) in proc.stdout
    assert "Traceback" not in proc.stderr and "[INFO" not in proc.stdout + proc.stderr
    assert (d / "experiment.sqlite").is_file() and (d / "odnas.log").stat().st_size > 0
    # Ax's lines reach the log once each (the Orchestrator's own file handler doubled them).
    log = (d / "odnas.log").read_text().splitlines()
    deployed = [x for x in log if "Running trials" in x]
    assert deployed and not any(x.startswith("[INFO") for x in deployed), deployed[:4]  # Ax's own file format
    trained = [t for t in (d / "trials").iterdir() if (t / "result.json").exists()]
    assert trained, "no trial trained"
    for t in trained:
        assert (t / "model.pt").is_file() and list((t / "tensorboard").glob("events.*"))
        curve = [json.loads(x) for x in (t / "progress.jsonl").read_text().splitlines()]
        assert [c["epoch"] for c in curve] == [1]  # --fix epochs=1
    assert list((d / "costs").glob("mlp_*.json"))


def test_status_select_export(run, tmp_path):
    d, _ = run
    st = json.loads(run_cli("status", str(d), "--json", check=True).stdout)
    assert st["counts"]["completed"] == 5 and sum(st["counts"].values()) == len(st["trials"])
    assert len(st["trials"]) <= 20  # max_candidates = 4 x trials
    assert st["driver_running"] is False and st["as_of"] is None  # as the table says, with its notes
    assert all("note" in t for t in st["trials"])
    proc = run_cli("select", str(d), "--json", check=True)
    sel = json.loads(proc.stdout)  # stdout holds the JSON alone; the steps go to stderr
    assert "odnas: timing trial" in proc.stderr
    pick = sel["pick"]
    assert pick and pick["trial"] in st["front"]
    budgets = json.loads((d / "odnas.json").read_text())["profile"]["budgets"]
    for r in sel["front"]:
        assert all(r["metrics"][m] <= lim for m, lim in budgets.items())
    out = tmp_path / "m.onnx"
    proc = run_cli("export", str(d), "-o", str(out), check=True)
    assert "Parity with PyTorch" in proc.stdout
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["run"]["trial"] == pick["trial"] and card["artifact"] == out.name
    assert set(card["budgets"]) == set(budgets) and all(b["met"] for b in card["budgets"].values())
    assert card["metrics"]["latency_ms_artifact"] > 0  # the file itself was timed too
    onnx.checker.check_model(onnx.load(str(out)))
    assert abs(card["metrics"]["val_acc_onnx"] - card["metrics"]["val_acc"]) < 1e-6


def test_resume_refuses_fewer_trainings_than_are_trained_and_changes_nothing(run):
    d, _ = run
    before = (d / "odnas.json").read_text()
    db = (d / "experiment.sqlite").stat().st_mtime_ns
    proc = run_cli("resume", str(d), "--trials", "2", "--quiet")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "odnas: error: --trials 2: 5 models are trained already, and --trials counts them; give more than 5 to "
        "train more (nothing was changed)"], proc.stderr
    assert (d / "odnas.json").read_text() == before and (d / "experiment.sqlite").stat().st_mtime_ns == db


def test_status_reads_the_drivers_trial_table_without_ax_while_it_is_as_new_as_the_experiment(run, tmp_path):
    """The driver leaves trials.json as new as the experiment: ``odnas status`` reads it
    without importing Ax, and it holds what the experiment holds. Once the experiment
    is newer (a driver killed after its last save), status reads the experiment; while
    a driver holds the run, its table (at most a poll old) is read."""
    import shutil

    from odnas.loop.store import load_run, trial_table
    from odnas.rundir import driver_lock, read_trials

    d = tmp_path / "copy"
    shutil.copytree(run[0], d)  # keeps the files' times
    probe = ("import json, sys; from odnas.cli import main; main(['status', sys.argv[1], '--json']); "
             "print(json.dumps(sorted(m for m in ('ax', 'torch', 'botorch') if m in sys.modules)), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe, str(d)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []  # neither Ax nor torch was imported
    select = probe.replace("'status', sys.argv[1], '--json'", "'select', sys.argv[1], '--no-confirm', '--json'")
    pick = subprocess.run([sys.executable, "-c", select, str(d)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert pick.returncode == 0 and json.loads(pick.stderr.strip().splitlines()[-1]) == [], pick.stderr  # nor here
    assert [r["trial"] for r in json.loads(pick.stdout)["front"]] == json.loads(proc.stdout)["front"]
    seen = {r["trial"]: r for r in json.loads(proc.stdout)["trials"]}
    stored = trial_table(load_run(d).experiment, d)  # the rows the experiment holds
    assert sorted(seen) == [r.trial for r in stored]
    for r in stored:
        s = seen[r.trial]
        assert (s["state"], s["params"], s["arch_id"], s["trial_dir"]) == (r.state, r.params, r.arch_id, r.trial_dir)
        assert s["metrics"] == pytest.approx(r.metrics, rel=1e-8)  # Ax stores 10 decimals
    db = d / "experiment.sqlite"
    later = (d / "trials.json").stat().st_mtime + 5
    os.utime(db, (later, later))  # the experiment changed after the table was written
    assert read_trials(d) is None
    assert status_json(d)["counts"] == json.loads(proc.stdout)["counts"]  # from the experiment now
    with driver_lock(d):
        assert read_trials(d) is not None  # the running driver's table


class _Slower:
    """The real ONNX Runtime measurement, reported 20x slower: a front that no longer fits."""

    def measure(self, onnx_path, profile):
        import dataclasses

        from odnas.cost.latency import OrtLatencyBackend

        r = OrtLatencyBackend().measure(onnx_path, profile)
        return dataclasses.replace(r, latency_ms=r.latency_ms * 20, latency_ms_p90=r.latency_ms_p90 * 20)


def test_select_confirms_the_front_with_a_longer_protocol(run, tmp_path):
    import shutil

    from odnas.rescore import confirm_front

    d, _ = run
    sel = json.loads(run_cli("select", str(d), "--json", check=True).stdout)
    assert sel["confirmed"] and {c["trial"] for c in sel["confirmed"]} >= {r["trial"] for r in sel["front"]}
    for c in sel["confirmed"]:
        assert c["runs"] >= 200 and c["crossed"] == [] and abs(c["change"]) < 0.5
    copy = tmp_path / "copy"
    shutil.copytree(d, copy, ignore=shutil.ignore_patterns("confirm"))
    res = confirm_front(copy, backend=_Slower())
    assert res["front"] == [] and res["pick"] is None
    from odnas.profiles import load_profile

    budget = f"latency_ms <= {load_profile('cpu-mobile').budgets['latency_ms']:g}"
    assert res["confirmed"] and all(budget in c["crossed"] for c in res["confirmed"])
    text = run_cli("select", str(copy), check=False)
    assert text.returncode == 3 and "confirmed" in text.stdout  # the front emptied: exit 3


class _Faster:
    """The real ONNX Runtime measurement, reported 2x faster: the longer protocol's figure under a bound."""

    def measure(self, onnx_path, profile):
        import dataclasses

        from odnas.cost.latency import OrtLatencyBackend

        r = OrtLatencyBackend().measure(onnx_path, profile)
        return dataclasses.replace(r, latency_ms=r.latency_ms / 2, latency_ms_p90=r.latency_ms_p90 / 2)


def test_select_confirms_a_model_the_search_timed_just_over_the_users_bound(run, tmp_path):
    """``select --max-latency-ms`` judges the figure it shows, the confirmed one: the most
    accurate model, timed 2% over the bound in the search and under it when confirmed, is
    the pick."""
    import shutil

    from odnas.rescore import confirm_front
    from odnas.select import front

    d, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(d, copy, ignore=shutil.ignore_patterns("confirm"))
    from odnas.loop.store import load_run

    loaded = load_run(copy)
    best = front(loaded.rows, loaded.profile)[0]
    bound = f"latency_ms <= {best.metrics['latency_ms'] * 0.98!r}"
    res = confirm_front(copy, [bound], backend=_Faster())
    assert res["pick"].trial == best.trial, res["front"]
    c = {c["trial"]: c for c in res["confirmed"]}[best.trial]
    assert c["entered"] == [bound] and c["crossed"] == [] and c["confirmed"]["latency_ms"] < c["search"]["latency_ms"]


def test_export_of_a_run_with_nothing_feasible_says_which_bound_and_exits_as_select_does(run, tmp_path):
    import shutil

    d, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    settings = json.loads((copy / "odnas.json").read_text())
    settings["profile"]["thresholds"] = ["val_acc >= 0.9999"]  # a bar no model of the run clears
    (copy / "odnas.json").write_text(json.dumps(settings))
    out = tmp_path / "m.onnx"
    proc = run_cli("export", str(copy), "-o", str(out))
    assert proc.returncode == 3 and "meets every budget and threshold (val_acc >= 0.9999" in proc.stderr, proc.stderr
    proc = run_cli("export", str(copy), "-o", str(out), "--json")  # a document on stdout, as select gives
    doc = json.loads(proc.stdout)
    assert proc.returncode == 3 and doc["exit_code"] == 3 and "(val_acc >= 0.9999" in doc["error"], proc.stdout
    sel = run_cli("select", str(copy), "--no-confirm", "--json")
    assert sel.returncode == 3  # the same answer from both; with --json, the error as search and resume give it
    assert json.loads(sel.stdout) == {"front": [], "pick": None, "confirmed": None, "exit_code": 3,
                                      "error": "no trained model meets every budget and bound"}
    sel = run_cli("select", str(copy), "--no-confirm")  # and how far the bar is, without a status lookup
    rows = [r for r in status_json(copy)["trials"] if r["state"] == "completed"]
    best = max(rows, key=lambda r: (r["metrics"]["val_acc"], -r["trial"]))
    assert sel.returncode == 3 and (f"the most accurate is trial {best['trial']} (val_acc "
                                    f"{best['metrics']['val_acc']:.4f}, ") in sel.stdout, sel.stdout
    trial = [r["trial"] for r in status_json(copy)["trials"] if r["state"] == "completed"][0]
    proc = run_cli("export", str(copy), "--trial", str(trial), "-o", str(out))
    assert proc.returncode == 2 and f"trial {trial} misses val_acc >= 0.9999" in proc.stderr, proc.stderr
    assert not out.exists()


def test_export_of_a_trial_whose_space_code_no_longer_holds_it_is_one_line(run, tmp_path):
    """The run's space is now code whose hidden_size_1 range leaves the trial's value out:
    the weights are for a model the space no longer builds."""
    import shutil
    import textwrap

    d, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    row = [r for r in status_json(copy)["trials"] if r["trial"] in status_json(copy)["front"]][0]  # exportable
    h = int(row["params"]["hidden_size_1"])
    (tmp_path / "narrow.py").write_text(textwrap.dedent(f"""
        from odnas.spaces import Range
        from odnas.spaces.mlp import MLPSpace

        class Narrow(MLPSpace):
            specs = tuple(Range("hidden_size_1", {h + 1}, {h + 50}, "int") if s.name == "hidden_size_1" else s
                          for s in MLPSpace.specs)
    """))
    settings = json.loads((copy / "odnas.json").read_text())
    settings["space"] = f"{tmp_path / 'narrow.py'}:Narrow"
    (copy / "odnas.json").write_text(json.dumps(settings))
    out = tmp_path / "m.onnx"
    proc = run_cli("export", str(copy), "--trial", str(row["trial"]), "-o", str(out))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"trial {row['trial']}'s parameters no longer fit space" in proc.stderr and "hidden_size_1=" in proc.stderr
    assert not out.exists()


def test_export_of_a_trial_whose_space_now_builds_another_model_is_one_line(run, tmp_path):
    """Weights load into a model with the same shapes (a changed activation, say): the
    artifact would not be the model trained. The lane kept what it built; export checks."""
    import shutil

    d, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    row = [r for r in status_json(copy)["trials"] if r["trial"] in status_json(copy)["front"]][0]
    record = copy / "costs" / f"{row['arch_id']}.json"
    kept = json.loads(record.read_text())
    assert len(kept["structure"]) == 16  # what the lane built for this arch id
    record.write_text(json.dumps({**kept, "structure": "0" * 16}))  # as if build() had built another model then
    out = tmp_path / "m.onnx"
    proc = run_cli("export", str(copy), "--trial", str(row["trial"]), "-o", str(out), "--quiet")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"its build() of {row['arch_id']} now gives another model than the one trained" in proc.stderr
    assert not out.exists()


def test_rescore_under_another_profile_without_retraining(run, short_profile_file):
    d, _ = run
    before = {p: p.stat().st_mtime for p in (d / "trials").glob("*/model.pt")}
    desktop = short_profile_file("cpu-desktop")  # the shipped profile with a short timing protocol
    proc = run_cli("rescore", str(d), "--profile", str(desktop), "--json")
    res = json.loads(proc.stdout)
    assert proc.returncode == (0 if res["front"] else 3), proc.stderr  # nothing feasible: exit 3, as select's
    st = status_json(d)
    trained = {r["trial"] for r in st["trials"] if r["state"] == "completed"}
    assert {r["trial"] for r in res["rows"]} == trained and res["profile"]["name"] == "cpu-desktop"
    for r in res["rows"]:  # batch 8 on every core: other figures than the search's batch-1 ones
        assert r["metrics"]["latency_ms"] != r["search_metrics"]["latency_ms"]
        assert r["over_budget"] == (["latency_ms"] if r["metrics"]["latency_ms"] > 2 else [])
        assert r["misses"] == (["val_acc >= 0.85"] if r["metrics"]["val_acc"] < 0.85 else [])
    assert set(res["front"]) <= trained and (d / "rescore" / "cpu-desktop.json").is_file()
    assert {p: p.stat().st_mtime for p in (d / "trials").glob("*/model.pt")} == before  # nothing retrained
    again = run_cli("rescore", str(d), "--profile", str(desktop))
    text = again.stdout
    assert again.returncode == proc.returncode, again.stderr
    assert text.count("misses val_acc >= 0.85") == sum(bool(r["misses"]) for r in res["rows"]), text
    assert "Feasible Pareto front under cpu-desktop" in text and "on this host (0 new measurements" in text
    assert "reading trial" in again.stderr and "measuring" not in again.stderr  # says what it does: reads
    bad = run_cli("rescore", str(d), "--profile", "no-such-profile")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    import yaml  # a bar no model of the run clears: exit 3, the JSON saying why, as select's does

    strict = yaml.safe_load(desktop.read_text())
    desktop.write_text(yaml.safe_dump({**strict, "thresholds": ["val_acc >= 0.9999"]}))
    proc = run_cli("rescore", str(d), "--profile", str(desktop), "--json")
    res = json.loads(proc.stdout)
    assert proc.returncode == 3 and res["front"] == [] and res["exit_code"] == 3, proc.stderr
    assert res["error"] == "no trained model meets every budget and threshold of cpu-desktop"
    assert all(r["misses"] == ["val_acc >= 0.9999"] for r in res["rows"])


def test_budget_is_hard(tmp_path):
    """A budget tighter than most candidates: nothing over it is trained, listed or exported."""
    d = tmp_path / "tight"
    proc = run_cli("search", "--profile", "cpu-mobile", "--trials", "4", "--run-dir", str(d), *FAST,
                   "--init-trials", "4", "--constraint", "num_params <= 5000")
    assert proc.returncode == 0, proc.stderr
    st = status_json(d)
    over = [r for r in st["trials"] if r["state"] == "over_budget"]
    for r in st["trials"]:
        if r["metrics"]["num_params"] > 5000:
            assert r["state"] == "over_budget" and "val_acc" not in r["metrics"]
            assert not (d / "trials" / f"{r['trial']:04d}" / "job.json").exists()  # never trained
    sel = json.loads(run_cli("select", str(d), "--json").stdout)
    assert all(r["metrics"]["num_params"] <= 5000 for r in sel["front"])
    assert over, "the budget should have caught at least one candidate"
    proc = run_cli("export", str(d), "--trial", str(over[0]["trial"]), "-o", str(tmp_path / "x.onnx"))
    assert proc.returncode == 2 and "over budget" in proc.stderr


def test_a_search_that_cannot_succeed_still_tells_a_json_reader_what_it_left(tmp_path):
    """Exit 3 under --json: the outcome on stdout with the reason, the one line on stderr."""
    d = tmp_path / "capped"
    proc = run_cli("search", "--space", "mlp", "--trials", "1", "--max-candidates", "2", "--method", "sobol",
                   "--constraint", "num_params <= 1700", "--run-dir", str(d), "--json", "--quiet")
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout)
    assert out["run_dir"] == str(d) and out["counts"] == {"over_budget": 2} and out["pick"] is None
    assert out["exit_code"] == 3 and "candidate cap" in out["error"]
    assert proc.stderr.strip().splitlines() == [f"odnas: error: {out['error']}"]
    # The run goes on with a higher cap, which counts the candidates made (no resume took one before)
    assert f"`odnas resume {d} --max-candidates 4` tries more" in out["error"], out["error"]
    st = run_cli("status", str(d), check=True).stdout  # status says the same, not a plain resume that does nothing
    assert (f"are not done: `odnas resume {d} --max-candidates 4` goes on (the run reached its cap of 2 "
            "candidates)") in st, st
    proc = run_cli("resume", str(d), "--max-candidates", "2", "--quiet")
    assert proc.returncode == 2 and "made 2 candidates already" in proc.stderr, proc.stderr
    proc = run_cli("resume", str(d), "--max-candidates", "3", "--json", "--quiet")
    out = json.loads(proc.stdout)
    assert sum(out["counts"].values()) == 3 and proc.returncode == (0 if out["counts"].get("completed") else 3), out
    assert json.loads((d / "odnas.json").read_text())["max_candidates"] == 3


def test_bad_inputs_are_one_line_errors(tmp_path):
    # In fresh processes, as a user meets them; tests/test_bad_input.py runs forty-odd more
    # cases (these among them) through the same entry point in-process, in seconds.
    cases = [
        (["search", "--profile", "nope"], "no such profile"),
        (["search", "--data", "mnist", "--data-dir", str(tmp_path / "missing")], "does not exist"),
        (["search", "--scheduler", "nomad"], "TorchX knows"),  # found only after Ax and TorchX are imported
        (["status", str(tmp_path)], "not an odnas run dir"),
    ]
    for args, expect in cases:
        proc = run_cli(*args, "--run-dir", str(tmp_path / "r")) if args[0] == "search" else run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert expect in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _count_results(d: Path) -> int:
    return len(list((d / "trials").glob("*/result.json"))) if (d / "trials").is_dir() else 0


def test_sigkill_driver_and_resume(tmp_path):
    """Kill the driver with SIGKILL mid-run; resume keeps every completed trial and retrains none."""
    d = tmp_path / "killed"
    cmd = [sys.executable, "-m", "odnas", "search", "--profile", "cpu-mobile", "--trials", "6",
           "--run-dir", str(d), *FAST, "--init-trials", "3"]
    drv = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while _count_results(d) < 2 and time.time() - t0 < 300:
        time.sleep(0.5)
    assert _count_results(d) >= 2, "no trial finished in time"
    os.kill(drv.pid, signal.SIGKILL)
    drv.wait()
    before = {p.parent.name: json.loads(p.read_text()) for p in (d / "trials").glob("*/result.json")}
    proc = run_cli("resume", str(d), "--quiet", check=True)
    assert "Feasible Pareto front" in proc.stdout
    st = status_json(d)
    assert st["counts"]["completed"] == 6 and st["counts"].get("running", 0) == 0
    for name, res in before.items():  # kept, and not trained again
        assert json.loads((d / "trials" / name / "result.json").read_text()) == res
        lines = (d / "trials" / name / "progress.jsonl").read_text().splitlines()
        assert len(lines) == 1, f"trial {name} trained twice"
    completed_idx = {f"{r['trial']:04d}" for r in st["trials"] if r["state"] == "completed"}
    assert set(before) <= completed_idx


def test_killed_trial_fails_with_its_reason_and_the_search_goes_on(tmp_path):
    """SIGKILL one training job: that trial is FAILED with the reason shown, the rest complete."""
    d = tmp_path / "jobkill"
    cmd = [sys.executable, "-m", "odnas", "search", "--profile", "cpu-mobile", "--trials", "3",
           "--run-dir", str(d), "--space", "mlp", "--fix", "epochs=4", "--parallel", "1", "--quiet",
           "--init-trials", "3"]
    drv = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    victim = None
    while victim is None and time.time() - t0 < 120:
        jobs = sorted((d / "trials").glob("*/job.json")) if (d / "trials").is_dir() else []
        if jobs:
            victim = jobs[0]
            os.kill(json.loads(victim.read_text())["pid"], signal.SIGKILL)
        time.sleep(0.2)
    assert victim is not None, "no job started"
    out, err = drv.communicate(timeout=300)
    assert drv.returncode == 0, err
    st = status_json(d)
    killed = [r for r in st["trials"] if f"{r['trial']:04d}" == victim.parent.name][0]
    assert killed["state"] == "failed" and "killed by a signal" in (killed["reason"] or ""), killed
    assert st["counts"]["completed"] == 3
    text = run_status(d)
    assert "without writing its result (killed by a signal" in text
    front = st["front"]
    said = [line for line in text.splitlines() if line.startswith("Feasible Pareto front: ")]
    assert said == ["Feasible Pareto front: " + (f"trial{'s' if len(front) > 1 else ''} {', '.join(map(str, front))}"
                                                 if front else "none")], said  # trial numbers; "none": not "yet"


def test_two_drivers_are_refused(tmp_path):
    from odnas.errors import SearchError
    from odnas.rundir import driver_lock

    d = tmp_path / "locked"
    d.mkdir()
    (d / "odnas.json").write_text("{}")
    with driver_lock(d):
        proc = subprocess.run([sys.executable, "-c", (
            "from pathlib import Path; from odnas.rundir import driver_lock\n"
            f"with driver_lock(Path({str(d)!r})): pass")], capture_output=True, text=True)
        assert proc.returncode != 0 and "already being searched" in proc.stderr
    with driver_lock(d):  # free again afterwards
        pass
    with driver_lock(d):
        with pytest.raises(SearchError, match="already being searched"):
            with driver_lock(d):  # a second lock in the same process is refused too
                pass


def test_stored_metrics_keep_their_direction_for_early_stopping(tmp_path):
    """Early stopping needs lower_is_better on val_acc, also after the experiment is reloaded."""
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run, early_stopping_strategy
    from odnas.loop.store import load_run
    from odnas.rundir import read_settings

    d = create_run(SearchConfig(space="mlp", trials=2, run_dir=str(tmp_path / "es"), early_stopping=True))
    assert read_settings(d).early_stopping is True
    exp = load_run(d).experiment
    assert exp.metrics["val_acc"].lower_is_better is False
    assert all(exp.metrics[m].lower_is_better is True for m in ("latency_ms", "num_params", "flops"))
    strategy = early_stopping_strategy()
    assert list(strategy.metric_signatures) == ["val_acc"] and strategy.min_progression == 1
    assert early_stopping_strategy(2).min_progression == 2


def test_early_stopping_from_an_epoch_is_kept_with_the_run_and_checked(tmp_path, capsys):
    """``--early-stopping-from 2`` turns early stopping on, deciding from epoch 2; the
    setting is stored, so a resumed driver decides the same way. Epoch 0 is refused."""
    from odnas.cli import main
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run
    from odnas.rundir import read_settings

    d = create_run(SearchConfig(space="mlp", trials=2, run_dir=str(tmp_path / "es2"), early_stopping=True,
                                early_stopping_from=2))
    s = read_settings(d)
    assert (s.early_stopping, s.early_stopping_from) == (True, 2)
    rc = main(["search", "--space", "mlp", "--trials", "1", "--run-dir", str(tmp_path / "bad"),
               "--early-stopping-from", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--early-stopping-from 0" in err[0], err
    assert not (tmp_path / "bad").exists()


def test_the_cheaper_peers_rule_compares_a_trial_only_with_trials_that_cost_no_more(monkeypatch):
    """A cheap model is judged against cheaper ones only (none here: it runs on), an
    expensive one against all that cost no more; Ax's rule as it is (against="all")
    stops the cheap one for its low accuracy."""
    from types import SimpleNamespace

    import pandas as pd
    from ax.early_stopping.strategies import PercentileEarlyStoppingStrategy

    from odnas.loop.driver import CheaperPeersRule, early_stopping_strategy

    monkeypatch.setattr(PercentileEarlyStoppingStrategy, "is_eligible", lambda self, **kw: (True, None))
    latency = {0: 1.0, 1: 1.1, 2: 1.2, 3: 3.0, 4: 0.5, 5: 4.0}
    acc = {0: 0.50, 1: 0.55, 2: 0.60, 3: 0.90, 4: 0.40, 5: 0.45}
    exp = SimpleNamespace(
        optimization_config=SimpleNamespace(objective=SimpleNamespace(metric_names=["val_acc", "latency_ms"])),
        trials={i: SimpleNamespace(run_metadata={"costs": {"latency_ms": v}}) for i, v in latency.items()})
    wide = pd.DataFrame({i: [a] for i, a in acc.items()}, index=[1])
    rule = early_stopping_strategy(1)
    assert isinstance(rule, CheaperPeersRule)

    def stops(r, i):
        return r._should_stop_trial_early(trial_index=i, experiment=exp, wide_df=wide, long_df=None, minimize=False)[0]

    assert not stops(rule, 4)  # the cheapest: nothing could dominate it yet
    assert stops(rule, 5)  # the dearest, and below the median of all that cost less
    assert not stops(rule, 3)  # dear, but the most accurate
    assert stops(early_stopping_strategy(1, against="all"), 4)


def test_resume_max_candidates_counts_as_the_cap_does_failed_trials_aside(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from odnas.errors import SearchError
    from odnas.loop import driver
    from odnas.loop.config import SearchConfig
    from odnas.records import TrialRow

    run = driver.create_run(SearchConfig(space="mlp", trials=3, max_candidates=8, run_dir=str(tmp_path / "r")))
    states = ["over_budget"] * 5 + ["completed"] * 3 + ["failed"] * 3  # 8 count against the cap, 11 in all
    rows = [TrialRow(trial=i, state=s, arch_id="a", params={}, metrics={}) for i, s in enumerate(states)]
    monkeypatch.setattr(driver, "load_run", lambda d: SimpleNamespace(rows=rows))
    went_on = []
    monkeypatch.setattr(driver, "run_loop", lambda *a, **k: went_on.append(k["max_candidates"]))
    with pytest.raises(SearchError, match=r"made 8 candidates already \(failed ones aside\).*more than 8"):
        driver.resume(run, max_candidates=8)
    driver.resume(run, max_candidates=10)  # two more: refused before, as if the failed ones counted
    assert went_on == [10]


def test_json_keeps_the_progress_on_stderr_not_in_the_log(tmp_path):
    """The loop points fd 2 at the run's log while it runs (for Ax's own handlers); the
    progress of a --json search went there with it, and stderr had none."""
    d = tmp_path / "capped"
    proc = run_cli("search", "--space", "mlp", "--trials", "1", "--max-candidates", "2", "--method", "sobol",
                   "--constraint", "num_params <= 1700", "--run-dir", str(d), "--json")
    assert proc.returncode == 3, proc.stderr
    json.loads(proc.stdout)  # stdout is the document alone
    progress = [ln for ln in proc.stderr.splitlines() if ln.startswith("[") and "trained 0/1" in ln]
    assert progress, proc.stderr
    assert "trained 0/1" not in (d / "odnas.log").read_text()
