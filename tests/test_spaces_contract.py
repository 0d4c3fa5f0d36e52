"""Contract: every registered space x every shipped profile builds, counts, exports, checks, measures."""

import json
import random
import re

import pytest

from odnas.errors import SpaceError
from odnas.records import CostRecord

from odnas.cost.count import count
from odnas.cost.lane import measure_candidate
from odnas.profiles import list_profiles
from odnas.spaces import get_space, list_spaces

SHAPES = [(1, 8, 8), (1, 28, 28)]


@pytest.mark.parametrize("space_name", list_spaces())
@pytest.mark.parametrize("profile_name", list_profiles())
def test_space_profile_contract(space_name, profile_name, short_profile):
    space, profile = get_space(space_name), short_profile(profile_name)
    rng = random.Random(7)
    for _ in range(2):
        params = space.sample(rng)
        rec = measure_candidate(space, params, (1, 8, 8), 10, profile)
        m = rec.metrics
        assert rec.arch_id == space.arch_id(params)
        assert m["num_params"] > 0 and m["flops"] > 0 and m["model_bytes"] > 0
        assert 0 < m["latency_ms"] <= m["latency_ms_p90"]
        assert rec.sem["latency_ms"] >= 0
        lat = rec.latency
        assert lat["runs"] >= profile.protocol.min_runs or lat["measure_s"] >= profile.protocol.max_time_s
        assert lat["warmup_runs"] == profile.protocol.warmup_runs
        assert lat["batch_size"] == profile.batch_size and lat["ort_version"] and lat["cpu_model"]
        assert CostRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec  # a record is JSON


@pytest.mark.parametrize("space_name", list_spaces())
def test_a_shipped_spaces_smallest_member_counts_no_more_than_any_other(space_name):
    """``smallest()`` is what a search measures to refuse budgets no candidate can meet:
    no member drawn at random may count fewer parameters or FLOPs than it."""
    space = get_space(space_name)
    small = space.smallest({})
    assert small is not None and space.arch_id(small) == space.arch_id(space.lowest())
    floor = count(space.build(small, (1, 8, 8), 10), (1, 8, 8))
    rng = random.Random(3)
    for _ in range(12):  # odnas.testing.check_space does the same over its few members, for users' spaces
        c = count(space.build(space.sample(rng), (1, 8, 8), 10), (1, 8, 8))
        assert c.num_params >= floor.num_params and c.flops >= floor.flops


@pytest.mark.parametrize("space_name", list_spaces())
def test_every_shipped_space_passes_check_space(space_name):
    from odnas.testing import check_space

    summary = check_space(space_name, input_shapes=SHAPES, samples=2)  # build, count, ONNX parity, arch ids
    assert summary["members"] == 2 and summary["distinct_arch_ids"] == 2


def test_check_space_catches_a_broken_space():
    from odnas.spaces import Space
    from odnas.spaces.base import Range
    from odnas.testing import check_space

    class SharedId(Space):  # two widths, one arch id: the cost cache would mix them
        name, specs = "shared-id", (Range("w", 4, 64, "int"), Range("lr", 1e-3, 1e-2), Range("epochs", 1, 2, "int"),
                                    Range("batch_size", 16, 32, "int"))

        def build(self, params, input_shape, num_classes):
            from torch import nn

            w = int(params["w"])
            return nn.Sequential(nn.Flatten(), nn.Linear(64, w), nn.Linear(w, num_classes))

        def arch_id(self, params):
            return "always-the-same"

    with pytest.raises(AssertionError, match="share arch_id"):
        check_space(SharedId, input_shapes=((1, 8, 8),), samples=4)
    with pytest.raises(SpaceError, match="must set name and specs"):
        check_space(type("Empty", (Space,), {}))

    class WrongSmallest(SharedId):  # names its widest member the smallest: budgets would be refused wrongly
        name = "wrong-smallest"

        def arch_id(self, params):
            return f"w{int(params['w'])}"

        def smallest(self, fixed=None):
            return self.lowest({"w": 64})

    class LrInId(SharedId):  # one network, a new arch id per learning rate: its costs measured again each time
        name = "lr-in-id"

        def arch_id(self, params):
            return f"w{int(params['w'])}_lr{params['lr']}"

    with pytest.raises(AssertionError, match="changes with the training settings"):
        check_space(LrInId, input_shapes=((1, 8, 8),), samples=2)

    with pytest.raises(AssertionError, match="fewer than smallest"):
        check_space(WrongSmallest, input_shapes=((1, 8, 8),), samples=3, profiles=["cpu-mobile"])
    assert check_space(type("Right", (WrongSmallest,), {"smallest": lambda self, fixed=None: self.lowest(fixed)}),
                       input_shapes=((1, 8, 8),), samples=3, profiles=["cpu-mobile"])["smallest"] == "w4"


T = ("Range('lr', 1e-3, 1e-1, 'float', log=True), Range('epochs', 1, 3, 'int'), "
     "Choice('batch_size', (32, 64))")


@pytest.mark.parametrize("specs, told", [
    ("(Range('w', 10, 2, 'int'), " + T + ")", "lower bound 10 must be below the upper 2"),
    ("(Range('w', 0.0, 0.5, 'float', log=True), " + T + ")", "a log scale needs a lower bound above 0"),
    ("(Range('w', 1, 8, 'integer'), " + T + ")", "kind 'integer' must be 'int' or 'float'"),
    ("(Range('w', 1, float('inf')), " + T + ")", "must be finite numbers"),
    ("(Choice('w', ()), " + T + ")", "Choice 'w' has no values"),
    ("(Choice('w', (1, 'two', 3.0)), " + T + ")", "values must be of one type"),
    ("(Choice('w', (0, 0.25, 0.5)), " + T + ")", "values must be of one type, here float, int"),
    ("(Range('w', 1.2, 1.8, 'int'), " + T + ")", "an int range needs whole-number bounds"),
    ("(Choice('w', (1, 2), dependents={2: ('w2',)}), " + T + ")", "dependents name 'w2', which no spec is"),
    ("(Choice('w', ([1], [2])), " + T + ")", "values must be numbers, strings or booleans, not list"),
    ("(Choice('w', (1, 1)), " + T + ")", "lists a value twice"),
    ("(Choice('w', (1, 2), dependents={2: ('v',)}), Range('v', 1, 4, 'int'), Range('v', 1, 4, 'int'), " + T + ")",
     "two specs are named 'v'"),  # after a choice's dependents, names are still all the specs
    ("(Choice('lr', (1, 2)), " + T + ")", "two specs are named 'lr'"),
    ("(Choice('w', (1, 2)), Range('lr', 1e-3, 1e-1))", "has no batch_size, epochs specs, which training() reads"),
])
def test_specs_ax_cannot_take_are_refused_in_one_line_before_anything_is_made(specs, told, tmp_path):
    """Before, Ax's own error was a traceback from create_run, and the run dir it left
    could be neither searched again nor resumed."""
    (tmp_path / "sp.py").write_text(
        "from odnas.spaces import Choice, Range, Space\n"
        "class S(Space):\n"
        "    name = 's'\n"
        f"    specs = {specs}\n"
        "    def build(self, params, input_shape, num_classes): raise NotImplementedError\n"
        "    def arch_id(self, params): return 's'\n")
    with pytest.raises(SpaceError, match=f"space '.*sp.py:S'.*{re.escape(told)}"):
        get_space(f"{tmp_path / 'sp.py'}:S")


def test_smallest_honours_fixed_values_and_declines_where_a_fixed_value_breaks_the_order():
    mlp, cnn = get_space("mlp"), get_space("mobile-cnn")
    assert mlp.arch_id(mlp.smallest({"hidden_size_1": 128})) == "mlp_128x16"
    # Stage 3 held present: a present stage 2 halves its resolution first, and can make it cheaper.
    held = {"s3_depth": 2}
    with_s2 = {**cnn.lowest(held), "s2_depth": 1}
    assert count(cnn.build(with_s2, (1, 8, 8), 10), (1, 8, 8)).flops < \
        count(cnn.build(cnn.lowest(held), (1, 8, 8), 10), (1, 8, 8)).flops
    assert cnn.smallest(held) is None and cnn.smallest({**held, "s2_depth": 0}) is not None


def test_arch_id_is_canonical():
    space = get_space("mobile-cnn")
    p = space.sample(random.Random(0))
    q = dict(p, lr=0.02, epochs=1, batch_size=32)  # training settings are not architecture
    assert space.arch_id(p) == space.arch_id(q)
    r = dict(p, kernel=3 if p["kernel"] != 3 else 5)
    assert space.arch_id(r) != space.arch_id(p)
    absent = dict(p, s3_depth=0)  # parameters of an absent stage do not change the architecture
    assert space.arch_id(dict(absent, s3_width=32)) == space.arch_id(dict(absent, s3_width=8))
    # The compact and the per-stage space name the same network the same way.
    xl = get_space("mobile-cnn-xl")
    same = dict(p, **{f"s{i}_{k}": p[k] for i in (1, 2, 3) for k in ("kernel", "expand", "se")})
    assert xl.arch_id(same) == space.arch_id(p)
    mlp = get_space("mlp")
    a = {"hidden_size_1": 64, "hidden_size_2": 32, "dropout": 0.1, "lr": 1e-3, "epochs": 2, "batch_size": 32}
    assert mlp.arch_id(a) == mlp.arch_id(dict(a, dropout=0.4)) == "mlp_64x32"


def test_mlp_space_is_the_ax_tutorial_space():
    specs = {s.name: s for s in get_space("mlp").specs}
    assert (specs["hidden_size_1"].lo, specs["hidden_size_1"].hi, specs["hidden_size_1"].log) == (16, 128, True)
    assert (specs["lr"].lo, specs["lr"].hi, specs["lr"].log) == (1e-4, 1e-2, True)
    assert (specs["dropout"].lo, specs["dropout"].hi) == (0.0, 0.5)
    assert (specs["epochs"].lo, specs["epochs"].hi, specs["epochs"].kind) == (1, 4, "int")
    assert specs["batch_size"].values == (32, 64, 128, 256) and specs["batch_size"].ordered


def test_fvcore_convention_and_uncounted_ops():
    from torch import nn

    c = count(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (1, 8, 8))
    assert c.flops == 640  # one multiply-add = one flop
    cnn = get_space("mobile-cnn")
    p = dict(cnn.sample(random.Random(0)), se=1, hardswish=1)
    c = count(cnn.build(p, (1, 8, 8), 10), (1, 8, 8))
    assert any("hardswish" in op for op in c.uncounted_ops), c.uncounted_ops
    assert any("mul" in op for op in c.uncounted_ops), c.uncounted_ops  # squeeze-excite's gate


def test_ax_parameters_and_fixed():
    from odnas.loop.adapter import ax_parameters

    space = get_space("mlp")
    names = [p.name for p in ax_parameters(space.searched({"epochs": 1}))]
    assert "epochs" not in names and "lr" in names
    with pytest.raises(SpaceError, match="no parameter"):
        space.searched({"epochz": 1})
    with pytest.raises(SpaceError, match="outside"):
        space.searched({"dropout": 1.5})
    with pytest.raises(SpaceError, match="not one of"):
        space.searched({"batch_size": 0})


def test_latency_records_from_other_hosts_refuse_to_compare():
    import dataclasses

    from odnas.profiles import load_profile
    from odnas.testing import FakeLatencyBackend
    from odnas.cost.onnx import export_onnx
    from torch import nn

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (1, 8, 8), Path(d) / "m.onnx")
        a = FakeLatencyBackend().measure(path, load_profile("cpu-mobile"))
    b = dataclasses.replace(a, latency_ms=2 * a.latency_ms)
    assert abs(b.ratio_to(a) - 2.0) < 1e-12
    with pytest.raises(ValueError, match="host"):
        dataclasses.replace(b, host="elsewhere").ratio_to(a)
