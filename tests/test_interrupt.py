"""A clean interrupt: Ctrl-C (SIGINT) on a real search ends it with one line, exit code
130 and the resume command, and `odnas resume` then finishes it without retraining;
`odnas stop` from another shell ends a search cleanly."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, run_cli, status_json, told

FAST = ["--profile", "cpu-mobile", "--space", "mlp", "--fix", "epochs=1", "--parallel", "2", "--init-trials", "2"]


def _start(run: Path, trials: int, *more: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "odnas", "search", *FAST, "--trials", str(trials),
                             "--run-dir", str(run), *more], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(cond, proc, limit_s=240.0) -> None:
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < limit_s, "timed out"
        time.sleep(0.2)


def _trained(run: Path) -> list[Path]:
    return sorted(run.glob("trials/*/result.json"))


def test_sigint_ends_a_search_cleanly_and_resume_finishes_it(tmp_path):
    run = tmp_path / "run"
    proc = _start(run, 4)
    _wait_for(lambda: len(_trained(run)) >= 1, proc)  # one model trained, others on the way
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    lines = told(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("odnas: interrupted:") and f"odnas resume {run}" in lines[0], lines[0]
    assert "1 trained model kept" in lines[0] or "2 trained models kept" in lines[0], lines[0]
    assert f"Run dir: {run}" in out  # printed when the search started
    kept = {p.parent.name for p in _trained(run)}
    res = run_cli("resume", str(run), "--quiet", "--json", check=True, timeout=900)
    st = status_json(run)
    assert st["counts"].get("completed", 0) + st["counts"].get("early_stopped", 0) >= 4, st["counts"]
    outcome = json.loads(res.stdout)
    assert outcome["run_dir"] == str(run) and outcome["complete"] and outcome["trained"] >= outcome["trials_planned"]
    again = run_cli("resume", str(run), "--quiet", check=True)  # nothing left: it says how to do more
    assert f"all 4 planned trainings are done; `odnas resume {run} --trials N`" in again.stderr, again.stderr
    # Nothing trained twice: one progress line per trained trial (1 epoch each).
    for d in kept:
        assert (run / "trials" / d / "progress.jsonl").read_text().count("\n") == 1


def test_odnas_stop_asks_the_driver_to_finish(tmp_path):
    run = tmp_path / "run"
    stopped = run_cli("stop", str(tmp_path))
    assert stopped.returncode == 2 and "not an odnas run dir" in stopped.stderr
    proc = _start(run, 6, "--json")
    _wait_for(lambda: len(_trained(run)) >= 1, proc)
    ask = run_cli("stop", str(run), check=True)
    assert "stop at its next poll" in ask.stdout
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "stopped on request" in err and f"odnas resume {run}" in err, (out, err)
    outcome = json.loads(out)  # exit 0, as asked; a script tells it from a finished search by "complete"
    assert not outcome["complete"] and outcome["trials_planned"] == 6 and 1 <= outcome["trained"] < 6, outcome
    import re

    said = re.search(r"(\d+) queued trials? had not started", err)
    st = status_json(run)  # status, read later, counts as queued at most what the stop summary did: a worker
    queued = [r for r in st["trials"] if r.get("queued")]  # may begin a queued trial as it is being stopped
    assert len(queued) == st["counts"].get("queued", 0) <= (int(said.group(1)) if said else 0), (err, st["counts"])
    assert all(not (run / "trials" / f"{r['trial']:04d}" / "job.json").exists() for r in queued)
    assert not (run / "stop").exists()
    again = run_cli("stop", str(run))
    assert again.returncode == 2 and "no driver is running" in again.stderr


def test_the_interrupt_summary_tells_jobs_that_run_on_from_queued_trials_that_do_not(tmp_path, monkeypatch):
    """A trial handed to a warm worker that had not begun it is not run once the driver is
    gone (the worker exits when idle); only jobs that started are "left to finish"."""
    from types import SimpleNamespace

    import odnas.loop.driver as driver
    from odnas.records import TrialRow

    def trial_dir(i: int, started: bool, result: bool = False) -> str:
        d = tmp_path / "trials" / f"{i:04d}"
        d.mkdir(parents=True)
        if started:
            (d / "job.json").write_text("{}")
        if result:
            (d / "result.json").write_text("{}")
        return str(d)

    def row(i: int, state: str, started: bool, result: bool = False, arch: str = "a") -> TrialRow:
        return TrialRow(trial=i, state=state, arch_id=arch, params={}, metrics={},
                        trial_dir=trial_dir(i, started, result))

    rows = [row(0, "completed", True, True), row(1, "running", True), row(2, "running", False),
            row(3, "running", False), row(4, "running", False), row(5, "running", False, arch="")]
    meta = {0: {"worker": 0}, 1: {"worker": 1}, 2: {"worker": 0}, 3: {"app_handle": "local_cwd://x"},  # 3: fresh
            4: {"worker": 1}, 5: {}}  # 5: made, its cost lane cut short: never launched
    (tmp_path / "workers" / "1").mkdir(parents=True)  # worker 1 has forked trial 4's child, not yet begun
    (tmp_path / "workers" / "1" / "worker.json").write_text(json.dumps({"trial": rows[4].trial_dir}))
    for r in rows:  # where the runner sent each: a worker's slot, or a fresh job's handle
        (Path(r.trial_dir) / "launch.json").write_text(json.dumps(meta[r.trial]))
    exp = SimpleNamespace(trials={i: SimpleNamespace(run_metadata=m) for i, m in meta.items()})
    monkeypatch.setattr(driver, "trial_table", lambda e, d: rows)
    text = driver.interrupt_summary(exp, tmp_path)
    assert text.startswith("1 trained model kept; 3 training jobs are left to finish, and resume reattaches to "
                           "them; 1 queued trial had not started, and resume starts it; 1 candidate not costed or "
                           "launched yet, and resume does it."), text
    from odnas.cli import _note, _queued

    # status, with the driver gone, tells the queued trial from the started ones (a fresh
    # job, trial 3, runs once launched: not queued)
    queued = _queued(rows, driver=False)
    notes = {r.trial: _note(r, SimpleNamespace(thresholds=(), budget_constraints=list), driver=False,
                            queued=r.trial in queued) for r in rows}
    assert [t for t, n in notes.items() if n == "queued, not started; resume starts it"] == [2], notes
    (Path(rows[1].trial_dir) / "result.json").write_text("{}")  # trial 1's job finished after the driver
    assert _note(rows[1], SimpleNamespace(thresholds=(), budget_constraints=list), driver=False) == (
        "trained after the driver stopped; resume records it")


def test_an_interrupt_before_the_drivers_own_handling_names_the_run_dir_to_resume(tmp_path, monkeypatch, capsys):
    import odnas.cost.lane as lane
    import odnas.loop.driver as driver
    from odnas.cli import main

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lane, "check_budgets", lambda *a, **k: None)
    monkeypatch.setattr(driver, "run_loop", interrupted)
    run = tmp_path / "run"
    assert main(["search", "--space", "mlp", "--trials", "1", "--quiet", "--run-dir", str(run), "--json"]) == 130
    out, err = capsys.readouterr()
    told = f"interrupted; the run dir is made. Go on with: odnas resume {run}"
    assert err.strip().splitlines() == [f"odnas: {told}"], err
    outcome = json.loads(out)  # --json: what the run dir holds, for a script
    assert outcome["error"] == told and outcome["exit_code"] == 130 and outcome["counts"] == {}
    assert (run / "odnas.json").is_file()
    monkeypatch.setattr(driver, "resume", interrupted)
    assert main(["resume", str(run), "--quiet"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [f"odnas: interrupted. Go on with: odnas resume {run}"]


def test_status_of_a_run_left_short_with_nothing_running_says_how_to_go_on(tmp_path, capsys):
    """Killed while its run dir was made, or stopped between trials: no trial runs, and
    status said nothing of resume (and ended its first line with a bare separator)."""
    from odnas.cli import main
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run

    run = create_run(SearchConfig(space="mlp", trials=3, run_dir=str(tmp_path / "run")))
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{run}: 0/3 trained, 0 candidates", out
    assert f"No driver is running, and 3 of the 3 trainings asked for are not done: `odnas resume {run}` goes on." \
        in out, out


def test_status_notes_are_cut_at_a_word_and_an_early_stop_says_where(tmp_path):
    from types import SimpleNamespace

    from odnas.cli import _note
    from odnas.records import TrialRow

    prof = SimpleNamespace(thresholds=(), budget_constraints=list)
    long = "the warm worker serving it died (killed by a signal, or out of memory); the trial died with it " * 2
    row = TrialRow(trial=0, state="failed", arch_id="a", params={}, metrics={}, reason=long)
    note = _note(row, prof)
    assert note.endswith(" …") and len(note) <= 102 and long.startswith(note[:-2]) and long[len(note) - 2] == " "
    d = tmp_path / "0001"
    d.mkdir()
    (d / "progress.jsonl").write_text('{"epoch": 1, "val_acc": 0.8}\n{"epoch": 2, "val_acc": 0.886}\n')
    row = TrialRow(trial=1, state="early_stopped", arch_id="a", params={}, metrics={}, trial_dir=str(d),
                   reason="Trial objective values at progressions in [2.00, 2.00] are all worse than 50.0-th ...")
    assert _note(row, prof) == "early-stopped at epoch 2, val_acc 0.886"
