"""Broken invocations, as users make them: each ends with one line on stderr, the
documented exit code, no traceback, and nothing half-written.

The CLI runs in this process (``odnas.cli.main``), so forty-odd cases cost seconds;
tests elsewhere run the same paths in fresh processes.
"""

import json
import textwrap
from pathlib import Path

import pytest

from odnas.cli import main

GOOD = textwrap.dedent("""
    name: t
    runtime: {provider: CPUExecutionProvider, intra_op_threads: 1}
    protocol: {method: plain, warmup_runs: 1, min_runs: 3, min_time_s: 0.0, max_time_s: 0.2}
    objective: "val_acc, -latency_ms"
    budgets: {latency_ms: 1}
""")


def profile(tmp_path: Path, text: str, name: str = "p.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def broken(tmp_path, change):
    """GOOD with one line replaced or added."""
    old, new = change
    text = GOOD.replace(old, new) if old else GOOD + new + "\n"
    assert text != GOOD
    return profile(tmp_path, text)


PROFILES = {  # case: (line replaced or None to add, its new text, what the one line must say)
    "not YAML": (None, "budgets: {latency_ms: [1, 2", "not valid YAML at line"),
    "unknown key": (None, "speed: fast", "key 'speed' = 'fast': unknown key; allowed: batch_size"),
    "unknown runtime key": ("intra_op_threads: 1}", "intra_op_threads: 1, threads: 4}",
                            "key 'runtime.threads' = 4: unknown key"),
    "threads negative": ("intra_op_threads: 1", "intra_op_threads: -1",
                         "'runtime.intra_op_threads' = -1: must be >= 0"),
    "threads a word": ("intra_op_threads: 1", "intra_op_threads: many", "= 'many': must be a whole number"),
    "unknown provider": ("CPUExecutionProvider", "TPUExecutionProvider",
                         "'runtime.provider' = 'TPUExecutionProvider': must be one of CPUExecutionProvider"),
    "unknown protocol method": ("method: plain", "method: fastest", "'protocol.method' = 'fastest': must be one of"),
    "max time below min time": ("min_time_s: 0.0", "min_time_s: 0.5",
                                "'protocol.max_time_s' = 0.2: must be >= protocol.min_time_s (0.5)"),
    "max time not positive": ("max_time_s: 0.2", "max_time_s: 0.0", "'protocol.max_time_s' = 0.0: must be > 0"),
    "budget on an unknown metric": ("latency_ms: 1}", "latency_ms: 1, speed: 3}",
                                    "'budgets.speed' = 3: unknown budget metric"),
    "budget not positive": ("latency_ms: 1}", "latency_ms: 0}", "'budgets.latency_ms' = 0: must be > 0"),
    "accuracy in percent": (None, "thresholds: ['val_acc >= 85']", "(for 85% write 0.85)"),
    "thresholds not a list": (None, "thresholds: val_acc >= 0.9", "'thresholds' = 'val_acc >= 0.9': must be a list"),
    "a bound that is not a bound": (None, "thresholds: ['val_acc is high']",
                                    "is not of the form 'metric <= number' or 'metric >= number'"),
    "objective on an unknown metric": ('"val_acc, -latency_ms"', '"val_acc, -speed"', "unknown metric 'speed'"),
    # PyYAML's safe loader refuses the tag: no code runs
    "runs code": (None, "description: !!python/object/apply:os.system ['touch /tmp/odnas-pwned']",
                  "not valid YAML at line"),
    "a threshold on a budgeted metric": (None, "thresholds: ['latency_ms <= 0.5']",
                                         "latency_ms <= is given in budgets.latency_ms (1) already; keep one"),
    "one metric bounded twice": (None, "thresholds: ['val_acc >= 0.5', 'val_acc >= 0.6']",  # the last was kept
                                 "val_acc >= is given in thresholds already; keep one"),
    "a key given twice": (None, "batch_size: 1\nbatch_size: 4",  # PyYAML kept the last silently
                          "key 'batch_size' is given twice"),
}


@pytest.mark.parametrize("case", list(PROFILES))
def test_broken_profiles(case, tmp_path, capsys):
    old, new, why = PROFILES[case]
    path = broken(tmp_path, (old, new))
    _fails(capsys, ["search", "--profile", path, "--run-dir", str(tmp_path / "run")], 2, why=why)
    assert not (tmp_path / "run").exists()  # nothing half-written
    assert not Path("/tmp/odnas-pwned").exists()


def test_a_profile_that_is_a_list_not_a_mapping(tmp_path, capsys):
    path = profile(tmp_path, "- name: t\n- runtime: {}\n")
    _fails(capsys, ["search", "--profile", path, "--run-dir", str(tmp_path / "run")], 2,
           why="expected a mapping of keys, got list")


SEARCH_FLAGS = {
    "no trials": (["--trials", "0"], 2, '--trials and --parallel must be at least 1'),
    "one bound given twice": (["--constraint", "flops <= 1e9", "--constraint", "flops <= 2e9"], 2,
                              "flops <= is given already ('flops <= 1e9'); keep one"),  # last won
    "early stopping after the last epoch": (["--fixed", "epochs=3", "--early-stopping-from", "5"], 2,
                                            'trials train 3 epochs at most, so early stopping could stop none'),
    "no parallel slots": (["--parallel", "0"], 2, '--trials and --parallel must be at least 1'),
    "no initial trials": (["--init-trials", "0"], 2, '--init-trials 0: must be at least 1'),
    "a negative candidate cap": (["--max-candidates", "-5"], 2, '--max-candidates -5: must be at least --trials'),
    "a candidate cap under the trainings": (["--trials", "4", "--max-candidates", "3"], 2,
                                            '--max-candidates 3: must be at least --trials (4)'),
    "unknown method": (["--method", "guess"], 2, "invalid choice: 'guess'"),
    "unknown parameter fixed": (["--fix", "epochz=1"], 2, "has no parameter 'epochz'; it has batch_size, epochs"),
    "fix without a value": (["--fix", "epochs"], 2, 'expected NAME=VALUE'),
    "fix out of range": (["--space", "mlp", "--fix", "dropout=3"], 2, 'dropout=3 is outside [0, 0.5]'),
    "env without a value": (["--env", "HOME"], 2, "--env 'HOME': expected KEY=VALUE"),
    "env with a bad name": (["--env", "1X=y"], 2, 'a variable name is letters, digits and _'),
    "unknown scheduler": (["--scheduler", "nomad"], 2, "--scheduler 'nomad': TorchX knows local_docker, local_cwd"),
    "a container scheduler without an image": (["--scheduler", "local_docker"], 2,
                                               "--scheduler local_docker runs each job in a container: give --image"),
    "scheduler config not key=value": (["--scheduler-cfg", "queue"], 2, "'queue' is not key=value"),
    "resources not numbers": (["--resources", "cpu=x"], 2, "cpu='x': expected a whole number"),
    "resources with an unknown key": (["--resources", "tpu=1"], 2, "unknown keys ['tpu']"),
    "a mount without a destination": (["--mount", "type=bind,src=/tmp"], 2, 'expected type=volume,src=CLAIM,dst=/path'),
    "failure rate over 1": (["--max-failure-rate", "2"], 2, 'must be between 0 and 1'),
    "negative retries": (["--retries", "-1"], 2, '--retries -1: must be 0 or more'),
    "zero timeout": (["--trial-timeout", "0"], 2, 'must be a positive number of seconds'),
    "unknown isolation": (["--isolation", "loud"], 2, "invalid choice: 'loud'"),
    "negative budget": (["--constraint", "latency_ms <= -1"], 2, 'a budget must be > 0'),
    "accuracy over 1": (["--constraint", "val_acc >= 1.5"], 2, 'no model reaches 1.5'),
    "accuracy under 0": (["--constraint", "val_acc <= -0.1"], 2, 'no model stays under -0.1'),
    "bound on an unknown metric": (["--constraint", "speed <= 1"], 2, "unknown metric 'speed'"),
    "a bound that does not parse": (["--constraint", "latency_ms < 1"], 2, "is not of the form 'metric <= number'"),
    "objective on an unknown metric": (["--objective", "val_acc, -speed"], 2, "unknown metric 'speed'; use val_acc"),
    "unknown space": (["--space", "resnet-9000"], 2, "unknown space 'resnet-9000'; choose from mlp"),
    "a space file without its class": (["--space", "my_space.py"], 2,
                                       "space 'my_space.py': name the class in the file too, as my_space.py:ClassName"),
    "space file missing": (["--space", "nope/space.py:Space"], 2, 'no such file'),
    "unknown data set": (["--data", "imagenet"], 2, "unknown data set 'imagenet'"),
    "missing MNIST folder": (["--data", "mnist", "--data-dir", "/nonexistent/mnist"], 2,
                             'data folder /nonexistent/mnist does not exist'),
    "a data folder for a data set that reads none": (["--data-dir", "/tmp"], 2,
                                                     '--data digits does not (did you mean --data mnist?)'),
    "missing npz": (["--data", "npz:/nonexistent/x.npz"], 2, 'npz file /nonexistent/x.npz does not exist'),
    "missing image folder": (["--data", "folder:/nonexistent/images"], 2,
                             'image folder /nonexistent/images does not exist'),
    "data module that does not import": (["--data", "no_such_pkg.data:make"], 2, "cannot import 'no_such_pkg'"),
    "unknown profile": (["--profile", "tpu-pod"], 2, 'tpu-pod: no such profile; shipped profiles are'),
}


@pytest.mark.parametrize("case", list(SEARCH_FLAGS))
def test_broken_search_flags(case, tmp_path, capsys):
    args, code, why = SEARCH_FLAGS[case]
    _fails(capsys, ["search", *args, "--run-dir", str(tmp_path / "run")], code, why=why)
    assert not (tmp_path / "run").exists()  # checked before anything is written


@pytest.mark.parametrize("bound, told", [("num_params <= 100", "budget num_params <= 100 cannot be met"),
                                          ("latency_ms <= 1e-6", "budget latency_ms <= 1e-06 cannot be met")])
def test_a_budget_even_the_smallest_candidate_breaks_is_refused_before_the_search(bound, told, tmp_path, capsys):
    """Not after the candidate cap: the smallest architecture is counted (and timed, for
    a latency budget) first, and its figure is in the one line."""
    path = profile(tmp_path, GOOD)
    _fails(capsys, ["search", "--profile", path, "--space", "mlp", "--constraint", bound,
                    "--run-dir", str(tmp_path / "run")], 2, why=told)
    assert not (tmp_path / "run").exists()


def test_yaml_merge_keys_and_a_lower_bound_beside_a_budget_still_load(tmp_path):
    from odnas.profiles import load_profile

    p = load_profile(profile(tmp_path, GOOD.replace("budgets: {latency_ms: 1}",
                                                    "budgets: {<<: {latency_ms: 1}, num_params: 100000}")))
    assert p.budgets == {"latency_ms": 1.0, "num_params": 100000.0}
    p = load_profile(profile(tmp_path, GOOD + "thresholds: ['num_params >= 1000']\n"))  # a floor, the budget a ceiling
    assert p.thresholds == ("num_params >= 1000",)


def test_a_fixed_value_that_is_not_a_number_is_said_to_be_so(tmp_path, capsys):
    _fails(capsys, ["search", "--space", "mlp", "--fixed", "lr=abc", "--run-dir", str(tmp_path / "run")], 2,
           why="lr='abc' is not a number; lr is a float in [0.0001, 0.01]")


def test_the_search_header_names_a_profile_file_by_its_profile_and_counts_in_the_singular(tmp_path, capsys):
    path = profile(tmp_path, GOOD)
    assert main(["search", "--profile", path, "--space", "mlp", "--trials", "1", "--constraint", "num_params <= 100",
                 "--run-dir", str(tmp_path / "run")]) == 2  # refused just after the header: nothing runs
    header = capsys.readouterr().out.splitlines()[0]
    assert f"profile t ({path})," in header and ", 1 trial, " in header, header


def test_budgets_are_refused_only_when_the_smallest_is_clearly_over(tmp_path):
    """Counts are held to a budget exactly; a timing only when it is over by more than
    the timing margin, so session-to-session variation never refuses a search that
    could run."""
    from odnas.cost.lane import TIMING_MARGIN, check_budgets
    from odnas.errors import SearchError
    from odnas.loop.config import SearchConfig, make_settings
    from odnas.testing import FakeLatencyBackend

    backend = FakeLatencyBackend()
    settings = lambda *bounds: make_settings(SearchConfig(profile=profile(tmp_path, GOOD), space="mlp",  # noqa: E731
                                                          constraints=bounds))
    check_budgets(settings())  # GOOD's 1 ms: met
    with pytest.raises(SearchError, match="it with --constraint"):
        check_budgets(settings("latency_ms <= 1e-4"), backend)
    measured = backend.calls
    with pytest.raises(SearchError) as e:
        check_budgets(settings("latency_ms <= 1e-4"), backend)
    ms = float(e.value.args[0].split("has latency_ms ")[1].split()[0])
    check_budgets(settings(f"latency_ms <= {ms / (1 + TIMING_MARGIN / 2)}"), backend)  # over, within the margin
    with pytest.raises(SearchError, match="mlp_16x16"):
        check_budgets(settings(f"latency_ms <= {ms / (1 + 2 * TIMING_MARGIN)}"), backend)
    # A p90 budget is judged by the median, which a p90 is at least.
    check_budgets(settings(f"latency_ms_p90 <= {ms / (1 + TIMING_MARGIN / 2)}"), backend)
    with pytest.raises(SearchError, match="latency_ms_p90"):
        check_budgets(settings(f"latency_ms_p90 <= {ms / (1 + 2 * TIMING_MARGIN)}"), backend)
    n = 16 * 16 + 16 + 64 * 16 + 16 + 16 * 10 + 10  # mlp_16x16 on 8x8 digits
    check_budgets(settings(f"num_params <= {n}"), backend)
    with pytest.raises(SearchError, match=f"has num_params {n}"):
        check_budgets(settings(f"num_params <= {n - 1}"), backend)
    assert backend.calls > measured


def test_the_budget_check_holds_fixed_values_and_skips_what_the_space_cannot_say(tmp_path):
    from odnas.cost.lane import check_budgets
    from odnas.errors import SearchError
    from odnas.loop.config import SearchConfig, make_settings

    plain = profile(tmp_path, "objective: val_acc\n", "plain.yaml")
    settings = lambda space, budget, **fixed: make_settings(SearchConfig(  # noqa: E731
        profile=plain, space=space, constraints=(f"flops <= {budget}",), fixed=fixed))
    with pytest.raises(SearchError, match=r"with --fixed hidden_size_1=128 \(mlp_128x16\) has flops 10400"):
        check_budgets(settings("mlp", 5000, hidden_size_1=128))  # mlp_16x16 counts 1440
    check_budgets(settings("mlp", 5000, hidden_size_1=16))
    # mobile-cnn with stage 3 held present: its lowest member counts 21968 FLOPs, but one with
    # a stage 2 counts 20528 and meets 21000; the space declines to name a smallest, and
    # nothing is refused. With stage 2 held absent too, the lowest member is the smallest.
    check_budgets(settings("mobile-cnn", 21000, s3_depth=2))
    with pytest.raises(SearchError, match="flops <= 21000 cannot be met.* has flops 21968"):
        check_budgets(settings("mobile-cnn", 21000, s3_depth=2, s2_depth=0))


def test_a_used_run_dir_is_refused_before_the_budget_check(empty_run, tmp_path, capsys, monkeypatch):
    import odnas.cost.lane

    def never(*a, **k):
        raise AssertionError("the budget check ran")

    monkeypatch.setattr(odnas.cost.lane, "check_budgets", never)
    _fails(capsys, ["search", "--space", "mlp", "--run-dir", str(empty_run)], 2, "already holds a search")


def test_a_first_search_on_a_host_says_it_calibrates_the_latency_reference(tmp_path, capsys, monkeypatch,
                                                                           short_profile_file):
    """Not 30 s of silence: the note, then (here) the refusal; a host with the baseline
    cached is not told again."""
    monkeypatch.setenv("ODNAS_CACHE_DIR", str(tmp_path / "new-host"))
    argv = ["search", "--profile", str(short_profile_file()), "--space", "mlp", "--constraint", "latency_ms <= 1e-6",
            "--run-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "timing this host's latency reference first" in err[0] and "cannot be met" in err[1], err
    assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def empty_run(tmp_path_factory):
    """A run dir made by create_run whose search never ran a trial."""
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run

    return create_run(SearchConfig(space="mlp", trials=1, run_dir=str(tmp_path_factory.mktemp("r") / "run")))


def test_a_run_dir_whose_setup_fails_is_left_as_it_was_found(tmp_path, monkeypatch):
    """All or nothing: a half-made run dir could be neither searched again nor resumed.
    What Ax refuses is one line; a folder the user made is kept, with only odnas's files gone."""
    from ax.exceptions.core import UserInputError

    from odnas.errors import SearchError
    from odnas.loop import driver
    from odnas.loop.config import SearchConfig

    def refused(*a, **k):
        raise UserInputError("Upper bound of w must be strictly larger than lower.")

    monkeypatch.setattr(driver, "run_calibration", refused)  # a step after the settings are written
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    for run_dir, left in [(tmp_path / "new", None), (tmp_path / "mine", ["notes.txt"])]:
        with pytest.raises(SearchError, match="Ax refused this search's setup: Upper bound of w"):
            driver.create_run(SearchConfig(space="mlp", trials=1, run_dir=str(run_dir)))
        assert (sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else None) == left


def test_odnas_own_refusal_while_a_run_is_made_is_not_put_on_ax(tmp_path, monkeypatch):
    """A device table timed under other settings was told as "Ax refused this search's setup"."""
    from odnas.errors import CalibrationError
    from odnas.loop import driver
    from odnas.loop.config import SearchConfig

    def refused(*a, **k):
        raise CalibrationError("refs/device_latency.csv: the device was timed with different settings")

    monkeypatch.setattr(driver, "run_calibration", refused)
    with pytest.raises(CalibrationError, match="^refs/device_latency.csv: the device was timed"):
        driver.create_run(SearchConfig(space="mlp", trials=1, run_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_a_run_dir_whose_making_was_killed_is_told_and_made_again(tmp_path):
    """SIGKILL (or SIGTERM, before the driver's handlers) while a run dir was made left
    settings and a database without a generation strategy: resume failed on an
    AssertionError, status on Ax's ObjectNotFoundError, search said to resume."""
    from odnas.loop import driver
    from odnas.loop.config import SearchConfig
    from tests.conftest import run_cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("the user's")
    for name in ("making", "odnas.json", "experiment.sqlite"):  # what a killed making leaves
        (run / name).write_text("{}" if name == "odnas.json" else "")
    for verb in (["status", str(run)], ["resume", str(run)], ["report", str(run)]):
        proc = run_cli(*verb)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "was being made when its search stopped" in proc.stderr and "Traceback" not in proc.stderr
    made = driver.create_run(SearchConfig(space="mlp", trials=1, run_dir=str(run)))
    assert sorted(p.name for p in made.iterdir() if not p.name.startswith("experiment.sqlite-")) == [
        "experiment.sqlite", "notes.txt", "odnas.json", "odnas.log"]
    assert run_cli("status", str(run)).returncode == 0


def test_a_run_dir_another_search_is_making_now_is_left_to_it(tmp_path):
    """The marker of a making that is alive: a second search deleted the first one's
    files and made the dir its own; the first then failed on its own marker."""
    import json

    from odnas.errors import RunDirError, SearchError
    from odnas.loop import driver
    from odnas.loop.config import SearchConfig
    from odnas.rundir import mark_making, read_settings

    run = tmp_path / "run"
    run.mkdir()
    mark_making(run)  # this process: alive
    (run / "odnas.json").write_text("{}")
    (run / "experiment.sqlite").write_text("")
    with pytest.raises(SearchError, match="is being made by another search now"):
        driver.create_run(SearchConfig(space="mlp", trials=1, run_dir=str(run)))
    with pytest.raises(RunDirError, match="is being made by a search that has just started"):
        read_settings(run)
    assert sorted(p.name for p in run.iterdir()) == ["experiment.sqlite", "making", "odnas.json"]  # untouched
    import os
    import time

    os.utime(run / "making", (time.time() - 3600, time.time() - 3600))  # slow (a first calibration): still its
    with pytest.raises(SearchError, match="is being made by another search now"):
        driver.create_run(SearchConfig(space="mlp", trials=1, run_dir=str(run)))
    rec = json.loads((run / "making").read_text())
    (run / "making").write_text(json.dumps({**rec, "pid": "x"}))  # not a marker this odnas reads: over
    with pytest.raises(RunDirError, match="was being made when its search stopped"):
        read_settings(run)
    (run / "making").write_text(json.dumps({**rec, "proc_start": -1}))  # a pid since reused: that making is gone
    driver.create_run(SearchConfig(space="mlp", trials=1, run_dir=str(run)))
    assert not (run / "making").exists() and read_settings(run).trials == 1


def test_a_search_that_ends_with_no_feasible_model_points_to_status_and_resume_not_export(empty_run, capsys):
    from odnas.cli import _print_outcome

    _print_outcome(empty_run, quiet=True)  # what `odnas search` prints last
    out = capsys.readouterr().out
    assert "(none yet" in out and f"odnas resume {empty_run} (the 1 training still to do)" in out, out
    assert "odnas export" not in out and "odnas select" not in out, out


def test_run_dirs_in_odd_states(empty_run, tmp_path, capsys):
    cases = [
        (["status", str(tmp_path)], 2, "not an odnas run dir"),
        (["select", str(tmp_path / "nope")], 2, f"run dir {tmp_path / 'nope'} does not exist"),
        (["export", str(tmp_path), "-o", str(tmp_path / "m.onnx")], 2, "not an odnas run dir"),
        (["resume", str(tmp_path)], 2, "not an odnas run dir"),
        (["report", str(tmp_path)], 2, "not an odnas run dir"),
        (["rescore", str(empty_run), "--profile", "tpu-pod"], 2, "no such profile"),
        (["rescore", str(empty_run), "--profile", "cpu-desktop"], 2, "no trained model yet"),
        (["export", str(empty_run), "-o", str(tmp_path / "m.onnx")], 2, "no trained model"),
        (["export", str(empty_run), "--trial", "7", "-o", str(tmp_path / "m.onnx")], 2, "has no trial 7"),
        (["select", str(empty_run), "--no-confirm"], 3, None),  # ran, but nothing is feasible
        (["select", str(empty_run), "--min-acc", "90"], 2, "for 90% write 0.9"),  # not after timing the front
        (["select", str(empty_run), "--min-acc", "nan"], 2, "must be a number between 0 and 1"),
        (["select", str(empty_run), "--min-acc", "-0.1"], 2, "must be a number between 0 and 1"),
        (["select", str(empty_run), "--max-latency-ms", "inf"], 2, "leave it out for no limit"),
        (["select", str(empty_run), "--max-latency-ms", "1e400"], 2, "leave it out for no limit"),
        (["select", str(empty_run), "--max-latency-ms", "0"], 2, "must be a positive number"),
        (["resume", str(empty_run), "--trials", "0"], 2, "--trials must be at least 1"),
    ]
    for args, code, why in cases:
        _fails(capsys, args, code, why, one_line=why is not None)
    assert not (tmp_path / "m.onnx").exists()
    # A run dir whose settings are damaged, or written by a newer odnas.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "odnas.json").write_text("{not json")
    _fails(capsys, ["status", str(bad)], 2, "not valid JSON")
    settings = json.loads((empty_run / "odnas.json").read_text())
    (bad / "odnas.json").write_text(json.dumps({**settings, "schema_version": 99}))
    _fails(capsys, ["status", str(bad)], 2, "newer than this odnas reads")


def test_other_commands(tmp_path, capsys):
    cases = [
        (["profiles", "show"], 2, "needs a profile name"),
        (["profiles", "show", "tpu-pod"], 2, "no such profile"),
        (["measure", "--space", "nope"], 2, "unknown space"),
        (["measure", "--data-dir", str(tmp_path)], 2, "does not (did you mean --data mnist?)"),
        (["measure", "--random", "1", "--profile", str(tmp_path / "missing.yaml")], 2, "not found"),
        (["doctor", "--input-shape", "big"], 2, "--input-shape"),
        (["doctor", "--models", "1"], 2, "--models"),
        (["doctor", "--device", "notaurl"], 2, "expected http://HOST:PORT"),  # refused before "Timing on ..."
        (["calibrate", "fit", "--profile", "cpu-mobile", "--table", str(tmp_path / "none.csv")], 2, "not found"),
        (["calibrate", "perf-logs", str(tmp_path / "none")], 2, None),
        (["calibrate", "export", "--input-shape", "28x28", "-o", str(tmp_path / "refs")], 2, "C x H x W"),
        (["calibrate", "export", "--input-shape", "1x28x28x3", "-o", str(tmp_path / "refs")], 2, "C x H x W"),
    ]
    for args, code, why in cases:
        _fails(capsys, args, code, why)
    assert not (tmp_path / "refs").exists()  # refused before a reference model is written


def _fails(capsys, argv, code, why=None, one_line=True):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: a bad flag or choice
        rc = e.code
    out = capsys.readouterr()
    assert rc == code, (argv, rc, out.err[-2000:])
    assert "Traceback" not in out.err, (argv, out.err)
    if one_line:
        assert len(out.err.strip().splitlines()) == 1, (argv, out.err)
        assert out.err.strip(), argv
    if why:
        assert why in out.err, (argv, out.err)


def test_steps_go_to_stderr_as_lines_and_quiet_silences_them(capfd):
    from odnas.cli import _Steps

    with _Steps() as steps:
        steps("loading the run")
    with _Steps(quiet=True) as steps:
        steps("timing")
    out, err = capfd.readouterr()
    assert out == "" and err == "odnas: loading the run\n"


def test_every_argument_of_every_command_has_help():
    import argparse

    from odnas.cli import build_parser

    missing = []

    def walk(parser, path):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, [*path, name])
            elif a.help is None:
                missing.append(f"odnas {' '.join(path)} {'/'.join(a.option_strings) or a.dest}")

    walk(build_parser(), [])
    assert not missing, missing


def test_a_bad_input_is_told_before_ax_is_imported(empty_run, tmp_path):
    """A broken search, or a path that is no run, is one line in under a second, not
    after Ax's or torch's import (seconds): every check that needs neither comes first.
    Only the objective's syntax, which Ax parses, waits for Ax."""
    import shutil
    import subprocess
    import sys

    from odnas.rundir import write_trials

    tabled = tmp_path / "tabled"  # a run whose driver wrote its (empty) trial table: read without Ax
    shutil.copytree(empty_run, tabled)
    write_trials(tabled, [])

    probe = ("import sys; from odnas.cli import main; code = main(sys.argv[1:]); "
             "print(code, sorted(m for m in ('ax', 'botorch', 'torch') if m in sys.modules))")
    cases = [["search", "--profile", "nope"], ["search", "--data", "mnist", "--data-dir", str(tmp_path / "none")],
             ["search", "--scheduler", "nomad"], ["search", "--fix", "nope=1"], ["status", str(tmp_path)],
             ["select", str(tmp_path)], ["export", str(tmp_path), "-o", str(tmp_path / "m.onnx")],
             ["resume", str(tmp_path)], ["report", str(tmp_path)]]
    out = ["-o", str(tmp_path / "m.onnx")]
    cases += [["export", str(tabled), "--trial", "7", *out], ["export", str(tabled), *out]]
    for args in cases:
        extra = ["--run-dir", str(tmp_path / "r")] if args[0] == "search" else []
        proc = subprocess.run([sys.executable, "-c", probe, *args, *extra], capture_output=True, text=True, timeout=120)
        assert proc.stdout.strip() == "2 []", (args, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    assert not (tmp_path / "r").exists()
