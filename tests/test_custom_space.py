"""A user's own space and data, in the user's own files (examples/custom_space/):
the space passes odnas's contract, and the CLI searches, selects and exports with it
on real TorchX local jobs; the job spec carries the reference to other schedulers too."""

import dataclasses
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import yaml

from odnas.data import DataError
from odnas.errors import SpaceError
from odnas.spaces import get_space
from odnas.testing import check_space
from tests.conftest import ROOT, run_cli, status_json

EXAMPLE = ROOT / "examples" / "custom_space"
SPACE = f"{EXAMPLE / 'kws_space.py'}:TinyKws"


def test_the_example_space_passes_the_contract():
    summary = check_space(SPACE, input_shapes=((1, 16, 16),), num_classes=4, samples=3)
    assert summary["space"] == "tiny-kws" and summary["distinct_arch_ids"] >= 2


@pytest.fixture(scope="module")
def kws_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("kws") / "kws.npz"
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(path)], check=True, capture_output=True)
    return path


def test_search_select_export_from_the_cli(kws_npz, tmp_path, short_profile_file):
    run = tmp_path / "run"
    run_cli("search", "--space", SPACE, "--data", f"npz:{kws_npz}", "--trials", "2", "--fix", "epochs=1",
            "--profile", str(short_profile_file()),
            "--parallel", "2", "--init-trials", "2", "--constraint", "latency_ms <= 1", "--run-dir", str(run),
            "--quiet", check=True, timeout=900, cwd=tmp_path)
    settings = json.loads((run / "odnas.json").read_text())
    assert settings["space"] == SPACE and settings["data"] == f"npz:{kws_npz}"  # what the jobs resolved
    assert settings["num_classes"] == 4 and settings["input_shape"] == [1, 16, 16]
    st = status_json(run)
    assert st["counts"].get("completed") == 2, st
    sel = json.loads(run_cli("select", str(run), "--json", "--no-confirm", check=True).stdout)
    assert sel["pick"], "the example should train a feasible model in one epoch"
    out = tmp_path / "kws.onnx"
    told = run_cli("export", str(run), "-o", str(out), "--max-latency-ms", "1", check=True).stdout
    assert "bound latency_ms <= 1.0: " in told, told  # judged again on the artifact's own figure
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["odnas.labels"]) == ["yes", "no", "up", "down"]
    assert props["odnas.arch_id"].startswith("kws_") and props["odnas.space"] == "tiny-kws"
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["labels"] == ["yes", "no", "up", "down"] and card["data"]["source"] == "npz:kws.npz"
    assert card["run"]["bounds"] == ["latency_ms <= 1.0"] and card["run"]["trial"] == sel["pick"]["trial"]


def test_the_job_spec_carries_the_reference_to_kubernetes(kws_npz):
    pytest.importorskip("kubernetes")
    from torchx.runner import get_runner

    from odnas.loop.runner import TrialRunner

    r = TrialRunner("/shared/runs/kws", {"space": SPACE, "data": f"npz:{kws_npz}", "profile": {},
                                         "input_shape": [1, 16, 16], "num_classes": 4, "scheduler": "kubernetes",
                                         "image": "registry.example/kws:1"})
    params = {"width": 8, "depth": 1, "kernel": 3, "pool": "avg", "lr": 0.01, "epochs": 1, "batch_size": 32}
    job = yaml.safe_load(repr(get_runner().dryrun(r.app_for(0, params), "kubernetes", cfg={"queue": "q"}).request))
    cmd = job["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["python", "-m", "odnas.jobs.trial"]
    assert cmd[cmd.index("--space") + 1] == SPACE and cmd[cmd.index("--data") + 1] == f"npz:{kws_npz}"


@pytest.mark.parametrize("bad, why", [
    ("examples/custom_space/nope.py:TinyKws", "no such file"),
    ("examples/custom_space/kws_space.py:Nope", "has no 'Nope'"),
    ("no_such_package.spaces:Kws", "cannot import 'no_such_package'"),
    ("odnas.profiles:load_profile", "making it raised TypeError"),
    ("odnas.profiles:HardwareProfile", "not an odnas.spaces.Space subclass"),
])
def test_a_bad_space_reference_is_one_line(bad, why):
    proc = run_cli("search", "--space", bad, "--trials", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and why in proc.stderr, proc.stderr


@pytest.mark.parametrize("make, why", [
    (lambda d: d / "missing.npz", "does not exist"),
    (lambda d: _npz(d, x=[[[1.0]]] * 4, y=[0, 0, 0, 0]), "only one class"),
    (lambda d: _npz(d, x=[[[1.0]]] * 4, y=[0, 1]), "x has 4 examples but y"),
    (lambda d: _npz(d, z=[1]), "no array x or y"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no class sub-folders"),
    (lambda d: _images(d, ok=False), "not a readable image"),
    (lambda d: _npz(d, x=np.where(np.arange(4 * 64).reshape(4, 1, 8, 8) == 5, np.nan, 1.0), y=[0, 1, 0, 1]),
     "x holds NaN or infinite values in 1 of 4 examples"),
    (lambda d: _npz(d, x=np.ones((4, 8, 8, 3)), y=[0, 1, 0, 1]), "looks channels-last (N, H, W, C)"),
    (lambda d: _npz(d, x=[[[1.0]]] * 4, y=[0, 1, np.nan, 1]), "y must be whole class numbers; it holds NaN"),
    (lambda d: _npz(d, x=[[[1.0]]] * 4, y=[0, 0.5, 1, 1.5]), "y must be whole class numbers; it holds 0.5"),
])
def test_bad_data_is_one_line(tmp_path, make, why):
    path = make(tmp_path)
    kind = "folder" if path.is_dir() or path.suffix != ".npz" else "npz"
    proc = run_cli("measure", "--data", f"{kind}:{path}", "--random", "1", "--space", "mlp")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and why in proc.stderr, proc.stderr


def test_channels_first_data_that_ends_in_a_small_axis_is_taken_as_it_is(tmp_path):
    from odnas.data import _check_xy

    for shape in [(4, 40, 101, 1), (4, 6, 128, 1), (4, 16, 16, 4)]:  # features, a sensor window, 16 channels
        _check_xy(np.ones(shape, "float32"), np.array([0, 1, 0, 1]), "x")  # raises DataError if refused
    with pytest.raises(DataError, match="looks channels-last"):  # while an image's 3 channels last still are
        _check_xy(np.ones((4, 8, 8, 3), "float32"), np.array([0, 1, 0, 1]), "x")


def _npz(d, **arrays):
    import numpy as np

    np.savez(d / "bad.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    return d / "bad.npz"


def _images(d, ok=True):
    import numpy as np
    from PIL import Image

    for c in ("cat", "dog"):
        (d / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((np.random.default_rng(i).random((10, 12)) * 255).astype("uint8")).save(
                d / "imgs" / c / f"{i}.png")
    if not ok:
        (d / "imgs" / "dog" / "broken.png").write_bytes(b"not a png")
    return d / "imgs"


def test_an_image_folder_loads_with_its_labels(tmp_path):
    from odnas.data import load_data

    d = load_data(f"folder:{_images(tmp_path)}@8x8")
    assert d.labels == ("cat", "dog") and d.input_shape == (1, 8, 8) and d.normalize["scale"] == 255.0
    assert len(d.y_train) + len(d.y_val) == 6


def test_a_lightning_datamodule_by_reference(tmp_path):
    """--data file.py:make, a function returning a LightningDataModule: its loaders are
    read once, its labels named by the module, its inputs taken as they come."""
    (tmp_path / "dm.py").write_text(textwrap.dedent("""
        import numpy as np
        import pytorch_lightning as pl
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        class Shapes(pl.LightningDataModule):
            labels = ["ring", "bar", "dot"]

            def setup(self, stage=None):
                rng = np.random.default_rng(0)
                y = rng.integers(0, 3, 90)
                x = rng.normal(0, 1, (90, 1, 6, 6)).astype("float32") + y[:, None, None, None]
                self.train = TensorDataset(torch.from_numpy(x[:60]), torch.from_numpy(y[:60]))
                self.val = TensorDataset(torch.from_numpy(x[60:]), torch.from_numpy(y[60:]))

            def train_dataloader(self):
                return DataLoader(self.train, batch_size=16)

            def val_dataloader(self):
                return DataLoader(self.val, batch_size=16)

        def make():
            return Shapes()
    """))
    from odnas.data import load_data

    d = load_data(f"{tmp_path / 'dm.py'}:make")
    assert d.labels == ("ring", "bar", "dot") and d.input_shape == (1, 6, 6)
    assert len(d.y_train) == 60 and len(d.y_val) == 30 and d.settings["validation"] == "given"
    assert d.normalize == {"scale": 1.0, "mean": 0.0, "std": 1.0}
    assert d.name == "dm.py:make" == d.settings["source"]  # the card names the file and function, not "make"
    by_class = load_data(f"{tmp_path / 'dm.py'}:Shapes")  # the class itself, as docs/plugins.md allows
    assert by_class.labels == d.labels and np.array_equal(by_class.x_val, d.x_val)


def test_a_datamodule_that_fails_is_one_line_naming_what_failed(tmp_path):
    from odnas.data import load_data
    from odnas.errors import DataError

    (tmp_path / "bad.py").write_text(textwrap.dedent("""
        import numpy as np
        import pytorch_lightning as pl

        class NoVal(pl.LightningDataModule):
            def train_dataloader(self):
                return [(np.zeros((2, 1, 4, 4), "float32"), np.array([0, 1]))]

        class Scalars(NoVal):
            def train_dataloader(self):
                return [(1, 2)]

        def raises():
            raise FileNotFoundError("/data/mine not found")

        def needs(root):
            return NoVal()
    """))
    for ref, told in [("NoVal", "NoVal.val_dataloader() raised MisconfigurationException: `val_dataloader` must "
                                "be implemented"),
                      ("raises", "raises() raised FileNotFoundError: /data/mine not found"),
                      ("Scalars", "the train batches' inputs and labels do not stack"),
                      ("needs", "needs() raised TypeError: needs() missing 1 required positional argument")]:
        with pytest.raises(DataError, match=re.escape(told)):
            load_data(f"{tmp_path / 'bad.py'}:{ref}")


def test_an_installed_packages_space_by_entry_point(monkeypatch, capsys):
    """A package that declares [project.entry-points."odnas.spaces"] tiny-kws = "...":
    the name alone finds it, and odnas spaces lists it (entry points stood in for)."""
    import importlib.metadata

    from odnas import plugins
    from odnas.spaces import get_space, list_spaces

    ep = importlib.metadata.EntryPoint(name="tiny-kws-ep", value="odnas.spaces.mlp:MLPSpace", group="odnas.spaces")
    typo = importlib.metadata.EntryPoint(name="typo", value="odnas.spaces.mlp:MLPSpaec", group="odnas.spaces")
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep, typo] if group == "odnas.spaces" else [])
    assert "tiny-kws-ep" in list_spaces() and get_space("tiny-kws-ep").name == "mlp"
    # Another package's broken entry point: one line when named, and it hides no other space
    with pytest.raises(SpaceError, match="odnas.spaces entry point 'typo' = 'odnas.spaces.mlp:MLPSpaec' does not "
                                         "load: AttributeError"):
        get_space("typo")
    from odnas.cli import main

    assert main(["spaces", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tiny-kws-ep"]["parameters"] > 0 and rows["typo"]["description"].startswith("does not load: ")
    assert rows["mlp"]["parameters"] > 0


BUGGY = textwrap.dedent("""
    from torch import nn
    from odnas.spaces import Choice, Range, Space

    class _B(Space):
        specs = (Choice("w", (4, 8)), Range("lr", 1e-3, 1e-1, "float", log=True), Range("epochs", 1, 2, "int"),
                 Choice("batch_size", (32, 64)))

        def arch_id(self, p):
            return f"b{p['w']}"

        def build(self, p, input_shape, num_classes):
            c, h, w = input_shape
            return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, p["w"]), nn.ReLU(), nn.Linear(p["w"], num_classes))

    class Hard2(_B):  # a head sized for another data set
        name = "hard2"

        def build(self, p, input_shape, num_classes):
            return super().build(p, input_shape, 2)

    class Rgb(_B):  # made for 3 channels; its smallest says so before the search
        name = "rgb"

        def build(self, p, input_shape, num_classes):
            return super().build(p, (3, *input_shape[1:]), num_classes)

        def smallest(self, fixed):
            return self.lowest(fixed)

    class Outside(_B):
        name = "outside"

        def smallest(self, fixed):
            return {**self.lowest(fixed), "w": 2}

    class Sometimes(_B):  # declines w=8: those candidates fail alone
        name = "sometimes"

        def build(self, p, input_shape, num_classes):
            if p["w"] == 8:
                raise ValueError("w=8 is not supported by my layer")
            return super().build(p, input_shape, num_classes)
""")


@pytest.mark.parametrize("cls, told", [
    ("Hard2", "space hard2, member b4: the model gives outputs of shape (2, 2) for a batch of 2 inputs (1, 8, 8); "
              "it must give (batch, 10)"),
    ("Rgb", "space rgb: its smallest member b4 does not run on inputs (1, 8, 8): RuntimeError: mat1 and mat2"),
    ("Outside", "space outside: smallest() gave a member outside the space: w=2 is not one of"),
])
def test_a_space_that_cannot_work_on_this_data_is_one_line_before_the_search(cls, told, tmp_path, capsys):
    """Before, a wrong head trained on silently or failed every trial in its loss, and a
    smallest member that does not build ended the budget check in a 60-frame traceback."""
    from odnas.cli import main

    (tmp_path / "buggy.py").write_text(BUGGY)
    code = main(["search", "--space", f"{tmp_path / 'buggy.py'}:{cls}", "--trials", "2", "--quiet",
                 "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and told in err, err
    assert not (tmp_path / "run").exists()


def test_measure_goes_on_past_a_candidate_the_space_declines(tmp_path, short_profile_file):
    (tmp_path / "buggy.py").write_text(BUGGY)
    proc = run_cli("measure", "--space", f"{tmp_path / 'buggy.py'}:Sometimes", "--random", "6", "--seed", "0",
                   "--profile", str(short_profile_file()), "--json", "--quiet")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    bad = [r for r in lines if "error" in r]
    assert proc.returncode == 0 and len(lines) == 6 and bad and len(bad) < 6, proc.stderr
    assert all(r["error"] == "ValueError: w=8 is not supported by my layer" and r["params"]["w"] == 8 for r in bad)
    assert all(r["metrics"]["latency_ms"] > 0 for r in lines if "error" not in r)
    assert proc.stderr.count("could not be measured") == len(bad) and "Traceback" not in proc.stderr


def test_a_model_onnx_cannot_take_is_one_line_without_torchs_ir_graph(tmp_path, capsys):
    """torch's TorchScript exporter logs whatever its setting says, and printed the whole
    IR graph (dozens of lines) to stdout, into ``--json`` records, beside the one-line reason."""
    (tmp_path / "fft.py").write_text(BUGGY + textwrap.dedent("""
        import torch

        class Rfft(nn.Module):
            def __init__(self, n):
                super().__init__()
                self.head = nn.Linear(64, n)

            def forward(self, x):
                return self.head(torch.fft.rfft(x.flatten(1)).abs()[:, :64].repeat(1, 2)[:, :64])

        class Fft(_B):
            name = "fft"

            def build(self, p, input_shape, num_classes):
                return Rfft(num_classes)
    """))
    (tmp_path / "fft.py").write_text((tmp_path / "fft.py").read_text() + textwrap.dedent("""
        class FftSmallest(Fft):
            def smallest(self, fixed):
                return self.lowest(fixed)
    """))
    # A search whose smallest member cannot be exported: one line before anything runs, for a
    # profile that times latency and one that only counts (nothing is timed without export).
    from odnas.cli import main

    for budget in ("latency_ms <= 1", "num_params <= 1e6"):
        run = tmp_path / f"run-{budget[:3]}"
        assert main(["search", "--space", f"{tmp_path / 'fft.py'}:FftSmallest", "--constraint", budget,
                     "--run-dir", str(run), "--quiet"]) == 2 and not run.exists()
        err = capsys.readouterr().err
        assert err.strip().splitlines() == [
            "odnas: error: space fft: its smallest member b4 could not be exported to ONNX and timed, so no "
            "candidate can be: UnsupportedOperatorError: Exporting the operator 'aten::fft_rfft' to ONNX opset "
            "version 17 is not supported"], err
    proc = run_cli("measure", "--space", f"{tmp_path / 'fft.py'}:Fft", "--random", "1", "--quiet", "--json")
    assert proc.returncode == 3 and "Torch IR graph" not in proc.stdout + proc.stderr, proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 2, proc.stderr  # the candidate's reason, and the verdict
    [rec] = [json.loads(line) for line in proc.stdout.splitlines()]  # --json: nothing else on stdout
    assert rec["error"].startswith("UnsupportedOperatorError: Exporting the operator 'aten::fft_rfft'"), rec


def test_a_run_whose_space_code_changed_since_is_refused_in_one_line(tmp_path):
    """Ax keeps the search space a run began with; a space file edited since (a new
    parameter) would have new candidates built without it, or fail every trial."""
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run

    space = tmp_path / "buggy.py"
    space.write_text(BUGGY)
    run = create_run(SearchConfig(space=f"{space}:Sometimes", trials=1, run_dir=str(tmp_path / "run")))
    kept = json.loads((run / "odnas.json").read_text())["space_specs"]
    assert [json.loads(line)["name"] for line in kept] == ["batch_size", "epochs", "lr", "w"]
    # The specs listed in another order: the same space
    space.write_text(BUGGY.replace('specs = (Choice("w", (4, 8)), ', 'specs = (').replace(
        'Choice("batch_size", (32, 64)))', 'Choice("batch_size", (32, 64)), Choice("w", (4, 8)))'))
    assert "Choice(\"w\", (4, 8)))" in space.read_text()
    from odnas.loop.store import load_run
    from odnas.spaces import check_unchanged, get_space

    check_unchanged(get_space(f"{space}:Sometimes"), load_run(run).settings)
    space.write_text(BUGGY.replace('Choice("w", (4, 8))', 'Choice("w", (4, 8, 16)), Choice("act", ("relu", "gelu"))'))
    for verb in (["resume", str(run)], ["select", str(run)], ["rescore", str(run), "--profile", "cpu-desktop"]):
        proc = run_cli(*verb)  # a fresh process: the edited file is what it imports
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "space 'sometimes' has changed since this run began (parameters act, w)" in proc.stderr, proc.stderr


def test_a_run_whose_space_builds_other_models_since_is_refused_in_one_line(tmp_path):
    """Costs are cached by arch id: a build() edited since the run began (same specs) had
    resumed searches take the old models' latencies for the new ones."""
    from odnas.cost.lane import CostCache, measure_candidate
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run
    from odnas.profiles import load_profile
    from odnas.spaces import get_space
    from odnas.testing import FakeLatencyBackend

    space = tmp_path / "buggy.py"
    space.write_text(BUGGY)
    run = create_run(SearchConfig(space=f"{space}:Sometimes", trials=1, run_dir=str(tmp_path / "run")))
    params = {"w": 4, "lr": 0.01, "epochs": 1, "batch_size": 32}
    rec = measure_candidate(get_space(f"{space}:Sometimes"), params, (1, 8, 8), 10, load_profile("cpu-mobile"),
                            backend=FakeLatencyBackend())
    assert len(rec.structure) == 16 and rec.params == params
    CostCache(run / "costs").put(rec)
    # Only a comment, and the same model: the run goes on (fails later for want of a scheduler, not here)
    space.write_text(BUGGY.replace("class Hard2(_B):", "# a comment\n    class Hard2(_B):"))
    from odnas.cost.lane import check_builds
    from odnas.loop.store import load_run

    check_builds(get_space(f"{space}:Sometimes"), load_run(run).settings, run)
    # Lazy modules take their shapes in the first forward pass, as the lane measured them
    lazy = tmp_path / "lazy.py"  # a file of its own: this process imported buggy.py already
    lazy.write_text(BUGGY.replace("nn.Linear(c * h * w, p[\"w\"])", "nn.LazyLinear(p[\"w\"])"))
    assert "LazyLinear" in lazy.read_text()
    rec = measure_candidate(get_space(f"{lazy}:Sometimes"), params, (1, 8, 8), 10, load_profile("cpu-mobile"),
                            backend=FakeLatencyBackend())
    CostCache(run / "costs").put(rec)
    check_builds(get_space(f"{lazy}:Sometimes"), load_run(run).settings, run)
    space.write_text(BUGGY.replace('nn.ReLU(), nn.Linear(p["w"], num_classes)',
                                   'nn.ReLU(), nn.Linear(p["w"], p["w"]), nn.Linear(p["w"], num_classes)'))
    for verb in (["resume", str(run)], ["rescore", str(run), "--profile", "cpu-desktop"]):
        proc = run_cli(*verb)  # a fresh process: the edited file is what it imports
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "space 'sometimes' has changed since this run began: its build() of b4 now gives another model" \
            in proc.stderr, proc.stderr


def test_a_default_run_dir_is_named_by_the_spaces_own_name(tmp_path, monkeypatch):
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run

    (tmp_path / "buggy.py").write_text(BUGGY)
    monkeypatch.chdir(tmp_path)
    run = create_run(SearchConfig(space=f"{tmp_path / 'buggy.py'}:Sometimes", trials=1))
    assert run.parent == tmp_path / "runs" and run.name.startswith("cpu-mobile-sometimes-"), run  # not -Sometimes-


MORE = BUGGY + textwrap.dedent("""
    class ArchRaises(_B):
        name = "arch-raises"

        def arch_id(self, p):
            return p["nope"]

    class NoModule(_B):
        name = "no-module"

        def build(self, p, input_shape, num_classes):
            return None

    class Pair(_B):
        name = "pair"

        def build(self, p, input_shape, num_classes):
            net = super().build(p, input_shape, num_classes)

            class Two(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.net = net

                def forward(self, x):
                    return self.net(x), x
            return Two()
""")


@pytest.mark.parametrize("argv, told", [
    (["--space", "{f}:ArchRaises"], "space arch-raises: arch_id() raised KeyError"),
    (["--space", "{f}:NoModule"], "build() returned a NoneType, not a torch.nn.Module"),
    (["--space", "{f}:Pair"], "the model returns a tuple, not a tensor of class scores"),
    (["--space", "{f}:Sometimes", "--fixed", "epochs=0"], "outside [1, 2]"),
    (["--space", "mlp", "--fixed", "epochs=1.5"], "epochs=1.5 is not a whole number"),
])
def test_more_spaces_that_cannot_work_are_one_line_before_the_search(argv, told, tmp_path, capsys):
    from odnas.cli import main

    (tmp_path / "more.py").write_text(MORE)
    code = main(["search", *[a.format(f=tmp_path / "more.py") for a in argv], "--trials", "2", "--quiet",
                 "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and told in err, err
    assert not (tmp_path / "run").exists()


def test_training_settings_a_trainer_cannot_take_are_refused():
    from odnas.cost.lane import check_training
    from odnas.errors import SpaceError
    from odnas.spaces import get_space

    mlp = get_space("mlp")
    good = {"lr": 0.01, "dropout": 0.1, "hidden_size_1": 16, "hidden_size_2": 16, "epochs": 1, "batch_size": 32}
    check_training(mlp, good, "a")
    for bad, told in [({"lr": -0.5}, "lr=-0.5 must be a positive number"),
                      ({"epochs": 0}, "epochs=0 must be a whole number of at least 1"),
                      ({"batch_size": 0}, "batch_size=0 must be")]:
        with pytest.raises(SpaceError, match=re.escape(told)):
            check_training(mlp, {**good, **bad}, "a")


def test_a_space_file_imports_a_module_beside_it(tmp_path):
    """As a script run with python would: the file's own folder is importable."""
    from odnas.spaces import get_space

    (tmp_path / "helpers_beside.py").write_text("WIDTHS = (4, 8)\n")
    text = BUGGY.replace("from torch import nn", "from torch import nn\nimport helpers_beside")
    (tmp_path / "uses.py").write_text(text + "\nclass Uses(_B):\n    name = 'uses'\n    specs = _B.specs\n")
    assert get_space(f"{tmp_path / 'uses.py'}:Uses").name == "uses"


TWO = textwrap.dedent("""
    from torch import nn
    from odnas.spaces import Choice, Range, Space

    class Two(Space):
        name = "two"
        specs = (Choice("w", (4, 8, 16)), Choice("act", ("relu", "tanh")), Range("lr", 1e-3, 1e-1, "float", log=True),
                 Range("epochs", 1, 2, "int"), Choice("batch_size", (32, 64)))

        def arch_id(self, p):
            return f"t{p['w']}" + ("" if OMITS_ACT else p["act"])

        def build(self, p, input_shape, num_classes):
            c, h, w = input_shape
            width = p["w"] * (2 if p["w"] == WIDER else 1)
            act = nn.ReLU() if p["act"] == "relu" else nn.Tanh()
            return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), act, nn.Linear(width, num_classes))
""")


def _two(tmp_path, name, omits_act=False, wider=0):
    path = tmp_path / f"{name}.py"  # a file per version: this process imports each once
    path.write_text(f"OMITS_ACT, WIDER = {omits_act}, {wider}\n" + TWO)
    return get_space(f"{path}:Two")


def test_a_re_timing_refuses_a_model_its_build_changed_even_off_the_newest_records(tmp_path):
    """select and rescore re-time trained models into caches of their own: a build()
    changed for one older arch only (past the newest records checked up front) was timed
    as that trial's figure, and the re-timing cache kept it after the code was restored."""
    from odnas.cost.lane import CostCache, CostLane
    from odnas.profiles import load_profile
    from odnas.testing import FakeLatencyBackend

    run = CostCache(tmp_path / "run-costs")
    search = CostLane(_two(tmp_path, "v1"), (1, 8, 8), 10, load_profile("cpu-mobile"), run.folder,
                      backend=FakeLatencyBackend())
    p4 = {"w": 4, "act": "relu", "lr": 0.01, "epochs": 1, "batch_size": 32}
    search.costs(p4)
    changed = _two(tmp_path, "v2", wider=4)  # only w=4 builds another model now

    def retimer(space):
        backend = FakeLatencyBackend()
        lane = CostLane(space, (1, 8, 8), 10, load_profile("cpu-mobile"), tmp_path / "confirm", backend=backend)
        lane.built_as = run
        return lane, backend

    lane, _ = retimer(changed)
    with pytest.raises(SpaceError, match="has changed since this run began: its build\\(\\) of t4relu now gives "
                                         "another model"):
        lane.costs(p4)
    assert not (tmp_path / "confirm").exists()  # nothing timed for it
    # A re-timing cache holding another build of the arch (timed before this check, or
    # by a build() since restored) is not reused: the model is timed again.
    stale = dataclasses.replace(search.costs(p4), structure="0" * 16, metrics={"latency_ms": 99.0})
    CostCache(tmp_path / "confirm").put(stale)
    lane, backend = retimer(_two(tmp_path, "v3"))
    assert lane.costs(p4).metrics["latency_ms"] != 99.0 and backend.calls == 1


def test_an_arch_id_that_names_two_networks_is_one_line_at_the_second(tmp_path):
    from odnas.cost.lane import CostLane
    from odnas.profiles import load_profile
    from odnas.testing import FakeLatencyBackend

    lane = CostLane(_two(tmp_path, "omits", omits_act=True), (1, 8, 8), 10, load_profile("cpu-mobile"),
                    tmp_path / "costs", backend=FakeLatencyBackend())
    lane.costs({"w": 8, "act": "relu", "lr": 0.01, "epochs": 1, "batch_size": 32})
    # the same network, trained otherwise: the cached figure
    lane.costs({"w": 8, "act": "relu", "lr": 0.05, "epochs": 1, "batch_size": 32})
    with pytest.raises(SpaceError, match="arch_id\\(\\) gives t8 to two different networks \\(they differ in "
                                         "act\\); costs are cached by arch id, so it must name every parameter"):
        lane.costs({"w": 8, "act": "tanh", "lr": 0.02, "epochs": 1, "batch_size": 32})


def test_resume_checks_every_model_the_run_measured(tmp_path):
    """Not the newest three alone: a build() changed for an older arch would have the
    resumed run train models of two codes under one name."""
    import os

    from odnas.cost.lane import CostCache, measure_candidate
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run
    from odnas.profiles import load_profile
    from odnas.testing import FakeLatencyBackend

    space = tmp_path / "two.py"
    space.write_text("OMITS_ACT, WIDER = False, 0\n" + TWO)
    run = create_run(SearchConfig(space=f"{space}:Two", trials=1, run_dir=str(tmp_path / "run")))
    for i, w in enumerate((4, 8, 16)):
        for act in ("relu", "tanh"):
            params = {"w": w, "act": act, "lr": 0.01, "epochs": 1, "batch_size": 32}
            rec = measure_candidate(get_space(f"{space}:Two"), params, (1, 8, 8), 10,
                                    load_profile("cpu-mobile"), backend=FakeLatencyBackend())
            CostCache(run / "costs").put(rec)
            os.utime(run / "costs" / f"{rec.arch_id}.json", (1000 + 10 * i, 1000 + 10 * i))  # w=4 oldest
    space.write_text("OMITS_ACT, WIDER = False, 4\n" + TWO)
    proc = run_cli("resume", str(run))  # a fresh process: the edited file is what it imports
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "its build() of t4" in proc.stderr and "now gives another model" in proc.stderr, proc.stderr


def test_sixteen_bit_greyscale_images_keep_their_contrast(tmp_path):
    """Pillow's conversion to 8 bits clips 16-bit values: a folder of 16-bit PNGs came out
    almost all white, with nothing said."""
    from PIL import Image

    from odnas.data import read_image_folder

    for c, level in (("dark", 8000), ("light", 56000)):
        (tmp_path / c).mkdir()
        for i in range(3):
            ramp = np.linspace(0, level, 64, dtype=np.uint16).reshape(8, 8)
            im = Image.new("I;16", (8, 8))
            im.frombytes((ramp + i).astype("<u2").tobytes(), "raw", "I;16")
            im.save(tmp_path / c / f"{i}.png")
    x, y, labels = read_image_folder(tmp_path, (8, 8))
    assert labels == ("dark", "light") and x.shape == (6, 1, 8, 8)
    dark, light = x[y == 0].max(), x[y == 1].max()
    assert abs(int(dark) - round(8000 * 255 / 65535)) <= 1 and abs(int(light) - round(56000 * 255 / 65535)) <= 1
    assert (x == 255).mean() < 0.05
    # A 12-bit sensor's values in 16-bit files keep their 12-bit scale, one scale for the
    # whole folder (its 32-bit TIFF of 0..200 too); such a TIFF alone is 8-bit, as it is.
    for c, top, mode in (("dark", 4095, "I;16"), ("light", 200, "I")):
        for f in (tmp_path / c).iterdir():
            f.unlink()
        ramp = np.linspace(0, top, 64).reshape(8, 8)
        if mode == "I":
            Image.fromarray(ramp.astype("int32"), mode="I").save(tmp_path / c / "0.tif")
        else:
            im = Image.new("I;16", (8, 8))
            im.frombytes(ramp.astype("<u2").tobytes(), "raw", "I;16")
            im.save(tmp_path / c / "0.png")
    x, y, _ = read_image_folder(tmp_path, (8, 8))
    assert int(x[y == 0].max()) == 255 and int(x[y == 1].max()) == round(200 * 255 / 4095)
    from odnas.data import _full_scale

    with Image.open(tmp_path / "light" / "0.tif") as tif:
        assert _full_scale([tif]) == 255.0


def test_validation_labels_the_training_split_never_has_are_refused(tmp_path):
    from odnas.data import load_data

    path = tmp_path / "d.npz"
    y = np.array([0, 1] * 4)
    np.savez(path, x=np.ones((8, 4, 4), "float32"), y=y, x_val=np.ones((8, 4, 4), "float32"), y_val=y + 5)
    with pytest.raises(DataError, match="validation labels 5, 6 never occur in the training split"):
        load_data(f"npz:{path}")


def test_select_and_rescore_re_time_against_the_run_s_own_records(tmp_path):
    """Their lanes time into caches of their own, and check each model against the
    search's record of it (the run's costs), not against their own cache alone."""
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run
    from odnas.profiles import load_profile
    from odnas.rescore import _lane
    from odnas.rundir import read_settings
    from odnas.testing import FakeLatencyBackend

    run = create_run(SearchConfig(space="mlp", trials=1, run_dir=str(tmp_path / "run")))
    lane = _lane(run, read_settings(run), load_profile("cpu-mobile"), tmp_path / "confirm", FakeLatencyBackend())
    assert lane.built_as is not None and lane.built_as.folder == run / "costs"
    assert lane.cache.folder == tmp_path / "confirm"
