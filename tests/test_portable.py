"""Run dirs are portable: trial paths are stored relative to the run dir, so a run
copied or moved elsewhere still reads, exports and resumes; and saving the
experiment logs no warning about the runner's live parts."""

import json
import shutil
from pathlib import Path

import yaml

from odnas.loop.config import SearchConfig
from odnas.loop.driver import create_run, resume, run_loop
from odnas.loop.store import load_run
from odnas.rundir import resolve_trial_dir
from odnas.testing import FakeLatencyBackend, InProcessJobs
from tests.conftest import run_cli


def test_a_moved_run_dir_reads_exports_and_resumes(tmp_path, short_profile):
    profile = tmp_path / "quick.yaml"  # cpu-mobile with a short timing protocol
    profile.write_text(yaml.safe_dump(short_profile().to_dict()))
    jobs = InProcessJobs(train=True)  # real trainings, in this process
    first = tmp_path / "here" / "run"
    cfg = SearchConfig(profile=str(profile), space="mlp", data="digits", trials=2, parallel=1, run_dir=str(first),
                       method="sobol", seed=0, threads=1, fixed={"epochs": 1}, scheduler=InProcessJobs.SCHEDULER,
                       constraints=("val_acc >= 0.1",))  # one epoch: any trained model is a pick
    run_dir = create_run(cfg, schedulers=jobs.schedulers())
    run_loop(run_dir, cost_backend=FakeLatencyBackend(), schedulers=jobs.schedulers())

    moved = tmp_path / "elsewhere" / "moved-run"
    moved.parent.mkdir()
    shutil.move(str(run_dir), str(moved))
    assert not first.exists()

    run = load_run(moved)
    trained = [r for r in run.rows if r.state == "completed"]
    assert len(trained) == 2
    for r in trained:  # stored relative, read where the run is now
        assert not Path(run.experiment.trials[r.trial].run_metadata["trial_dir"]).is_absolute()
        assert Path(r.trial_dir).parent.parent == moved and (Path(r.trial_dir) / "result.json").is_file()

    out = tmp_path / "model.onnx"
    proc = run_cli("export", str(moved), "-o", str(out), "--json", check=True)
    card = json.loads(proc.stdout)
    assert out.is_file() and card["parity"]["top1_agreement"] == 1.0
    assert card.pop("written") == {"artifact": str(out.resolve()), "card": str(out.with_suffix(".json").resolve()),
                                   "others": []}  # where the files are: said on stdout, not in the card
    assert str(tmp_path) not in out.with_suffix(".json").read_text()  # the card names no path of this machine
    assert card == json.loads(out.with_suffix(".json").read_text())  # and stdout is the card besides

    resume(moved, trials=3, cost_backend=FakeLatencyBackend(), schedulers=jobs.schedulers())
    rows = load_run(moved).rows
    assert sum(r.state == "completed" for r in rows) == 3  # one more, the first two kept
    assert all(Path(r.trial_dir).parent.parent == moved for r in rows)
    assert "copying db_ids" not in (moved / "odnas.log").read_text()  # Ax saved with no warning


def test_trial_dirs_stored_absolute_by_older_runs_resolve_where_the_run_is_now(tmp_path):
    assert resolve_trial_dir(tmp_path, "/old/place/run/trials/0007") == tmp_path / "trials" / "0007"
    assert resolve_trial_dir(tmp_path, "trials/0007") == tmp_path / "trials" / "0007"
    assert resolve_trial_dir(tmp_path, None) is None
