"""Faults, for real: training jobs that fail in every way a job fails, and a driver
SIGKILLed at chosen moments, then resumed. Real Ax, TorchX local jobs, Lightning, SQLite."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, run_status, status_json, told

FAULTS = Path(__file__).parent / "faults"
FAST = ["--profile", "cpu-mobile", "--space", "mlp", "--fix", "epochs=1", "--quiet"]


def _env(faults: str, slots: Path) -> dict[str, str]:
    slots.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "PYTHONPATH": f"{FAULTS}{os.pathsep}{ROOT}", "ODNAS_TEST_FAULTS": faults,
            "ODNAS_TEST_FAULT_DIR": str(slots)}


@pytest.mark.parametrize("workers", ["warm", pytest.param("fresh", marks=pytest.mark.slow)])
def test_each_failure_kind_is_recorded_retried_and_the_search_goes_on(tmp_path, workers):
    """Jobs fail in six ways (raise, OOM, NaN loss, exit without a result, hang, SIGKILL),
    and on warm workers a seventh (the worker SIGKILLed while its child trains), 2 at a
    time; each failed trial has its reason and one retry with the same parameters, and
    both candidates end up trained."""
    d, slots = tmp_path / "run", tmp_path / "slots"
    kinds = ["raise", "oom", "nan", "exit0", "hang", "kill"] + (["killworker"] if workers == "warm" else [])
    # The hang holds its slot for the whole timeout. Its clock starts in the job: a warm
    # worker's child trains at once (a second or two here), a fresh job imports torch first.
    timeout = "20" if workers == "warm" else "45"
    proc = subprocess.run(
        [sys.executable, str(FAULTS / "driver.py"), "none", "0", "search", *FAST, "--trials", "2", "--parallel", "2",
         "--init-trials", "2", "--retries", "7", "--trial-timeout", timeout, "--max-failure-rate", "0.9",
         "--run-dir", str(d)],
        cwd=ROOT, env={**_env(",".join(kinds), slots), "ODNAS_TEST_WORKERS": workers}, capture_output=True,
        text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    st = status_json(d)
    rows = {r["trial"]: r for r in st["trials"]}
    assert st["counts"] == {"failed": len(kinds), "completed": 2}
    pid_kind = dict(p.read_text().split() for p in slots.glob("slot-*"))
    expected = {"raise": "injected failure", "oom": "out of memory", "nan": "NonFiniteLossError",
                "exit0": "exited without error but wrote no result", "hang": "timed out",
                "kill": "without writing its result (killed by a signal", "killworker": "warm worker serving it died"}
    seen = []
    for r in rows.values():
        job = json.loads((Path(r["trial_dir"]) / "job.json").read_text())
        kind = pid_kind.get(str(job["pid"]))
        if r["state"] == "failed":
            seen.append(kind)
            assert expected[kind] in (r["reason"] or ""), (kind, r["reason"])
            retry = [x for x in rows.values() if x["retry_of"] == r["trial"]]
            assert len(retry) == 1 and retry[0]["params"] == r["params"]
        else:
            assert kind is None  # the completed attempts were the fault-free ones
    assert sorted(seen) == sorted(kinds)
    roots = [r for r in rows.values() if r["retry_of"] is None]
    assert len(roots) == 2 and len({json.dumps(r["params"], sort_keys=True) for r in roots}) == 2
    text = run_status(d)
    assert "out of memory" in text and "retry of trial" in text


def test_too_many_failures_is_one_line_and_keeps_completed_trials(tmp_path):
    d = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "odnas", "search", *FAST, "--trials", "6", "--parallel", "2", "--init-trials", "6",
         "--max-failure-rate", "0.3", "--run-dir", str(d)],
        cwd=ROOT, env=_env("none,raise,raise,raise,raise,raise", tmp_path / "slots"), capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # the search ran but could not succeed
    err = told(proc.stderr)
    assert len(err) == 1 and "too many trials failed" in err[0] and "Traceback" not in proc.stderr
    st = status_json(d)
    assert st["counts"]["completed"] == 1 and st["counts"]["failed"] >= 3


def _results(d: Path) -> list[Path]:
    """Every result a training wrote, moved-aside dirs included."""
    return list((d / "trials").glob("*/result.json"))


@pytest.mark.parametrize("moment,n", [
    pytest.param("generation", 3, marks=pytest.mark.slow),  # the 5th moment, "while trials run", is in test_search_e2e
    ("deploy", 3),
    ("storage", 20),  # of about 34 SQL flushes in this search
])
def test_driver_sigkill_at_a_moment_then_resume(tmp_path, moment, n):
    """SIGKILL the driver during candidate generation, right after a job was launched
    but before Ax saved it, or inside an uncommitted storage write; ``odnas resume``
    keeps completed trials, reattaches or re-queues the rest and trains nothing twice."""
    d = tmp_path / "run"
    args = ["search", *FAST, "--trials", "5", "--parallel", "2", "--init-trials", "2", "--run-dir", str(d)]
    drv = subprocess.run([sys.executable, str(FAULTS / "driver.py"), moment, str(n), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert drv.returncode == -signal.SIGKILL, f"the driver was not killed at {moment} #{n}: {drv.stderr[-2000:]}"
    with sqlite3.connect(d / "experiment.sqlite") as db:  # readable right after the kill
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    before = {p.parent.name: p.read_text() for p in _results(d)}
    proc = run_cli("resume", str(d), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    st = status_json(d)
    assert st["counts"].get("completed") == 5 and st["counts"].get("running", 0) == 0, st["counts"]
    for name, text in before.items():
        assert (d / "trials" / name / "result.json").read_text() == text  # kept as it was
    completed = [r for r in st["trials"] if r["state"] == "completed"]
    assert len(_results(d)) == len(completed), "a candidate was trained twice"
    for r in completed:
        assert len((Path(r["trial_dir"]) / "progress.jsonl").read_text().splitlines()) == 1
    if moment == "deploy":  # the job Ax never saved was adopted, not moved aside and redone
        assert not list((d / "trials").glob("*.orphan-*"))
