import json
import textwrap

import pytest

from odnas.profiles import ProfileError, list_profiles, load_profile, parse_bound
from tests.conftest import run_cli

GOOD = textwrap.dedent("""
    name: mine
    runtime: {provider: CPUExecutionProvider, intra_op_threads: 1, inter_op_threads: 1, graph_optimization: all}
    batch_size: 1
    protocol: {warmup_runs: 5, min_runs: 10, min_time_s: 0.1, statistic: median}
    objective: "val_acc, -latency_ms"
    thresholds: ["val_acc >= 0.8"]
    budgets: {latency_ms: 2}
""")


def test_shipped_profiles_load_and_are_frozen():
    names = list_profiles()
    assert {"cpu-mobile", "cpu-desktop", "mcu-tiny"} <= set(names)
    for n in names:
        p = load_profile(n)
        assert p.name == n and p.budgets, n
        with pytest.raises(Exception):
            p.name = "x"  # frozen
    mobile = load_profile("cpu-mobile")
    assert mobile.runtime.intra_op_threads == 1 and mobile.batch_size == 1
    assert "latency_ms" in mobile.budgets
    assert load_profile("cpu-desktop").runtime.intra_op_threads == 0  # all cores


def test_user_path_profile(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(GOOD)
    p = load_profile(str(f))
    assert p.name == "mine" and p.budgets == {"latency_ms": 2.0}
    assert p.budget_constraints() == ["latency_ms <= 2"]
    assert p.over_budget({"latency_ms": 2.5, "num_params": 1}) == ["latency_ms"]
    assert p.over_budget({"latency_ms": 2.0}) == []


@pytest.mark.parametrize("edit, key, value", [
    (lambda s: s + "colour: blue\n", "colour", "blue"),
    (lambda s: s.replace("batch_size: 1", "batch_size: one"), "batch_size", "one"),
    (lambda s: s.replace("latency_ms: 2}", "latency_ms: 0}"), "budgets.latency_ms", "0"),
    (lambda s: s.replace("latency_ms: 2}", "latency_ms: -1}"), "budgets.latency_ms", "-1"),
    (lambda s: s.replace("provider: CPUExecutionProvider", "provider: TPUProvider"), "runtime.provider", "TPUProvider"),
    (lambda s: s.replace('"val_acc, -latency_ms"', '"val_acc, -speed"'), "objective", "speed"),
    (lambda s: s.replace('"val_acc, -latency_ms"', '"val_acc, latency_ms"'), "objective", "latency_ms"),
    (lambda s: s.replace("latency_ms: 2}", "watts: 2}"), "budgets.watts", "2"),
    (lambda s: s.replace("min_runs: 10", "min_runs: 2.5"), "protocol.min_runs", "2.5"),
    (lambda s: s.replace('["val_acc >= 0.8"]', '["val_acc is high"]'), "thresholds[0]", "val_acc is high"),
])
def test_broken_profile_names_file_key_and_value(tmp_path, edit, key, value):
    f = tmp_path / "broken.yaml"
    f.write_text(edit(GOOD))
    with pytest.raises(ProfileError) as e:
        load_profile(str(f))
    msg = str(e.value)
    assert str(f) in msg and f"'{key}'" in msg and value in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("content, expect",
                         [("", "empty"), ("a: [1, 2\n", "not valid YAML"), ("- 1\n- 2\n", "mapping")])
def test_empty_or_not_yaml(tmp_path, content, expect):
    f = tmp_path / "p.yaml"
    f.write_text(content)
    with pytest.raises(ProfileError, match=expect):
        load_profile(str(f))


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        load_profile(str(tmp_path / "nope.yaml"))
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile("cpu-nope")


def test_parse_bound():
    assert parse_bound("latency_ms <= 2") == ("latency_ms", "<=", 2.0)
    assert parse_bound(" val_acc>=0.94 ") == ("val_acc", ">=", 0.94)
    with pytest.raises(ValueError):
        parse_bound("latency_ms < 2")


def test_cli_profiles_list_and_show_json():
    out = run_cli("profiles", "list", "--json", check=True)
    profs = json.loads(out.stdout)
    assert len(profs) >= 3 and {"cpu-mobile", "cpu-desktop"} <= {p["name"] for p in profs}
    show = json.loads(run_cli("profiles", "show", "cpu-mobile", "--json", check=True).stdout)
    assert show["runtime"]["intra_op_threads"] == 1


def test_cli_bad_profile_is_one_line_exit_2(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(GOOD.replace("latency_ms: 2}", "latency_ms: -3}"))
    proc = run_cli("profiles", "show", str(f))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "budgets.latency_ms" in lines[0] and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- calibration section

CALIBRATED = GOOD + textwrap.dedent("""
    calibration:
      table: device.csv
      references: {floor: 0.05, mcnn_01: 0.09}
      model: ratio
      input_shape: [1, 28, 28]
      device: Pixel 6, ORT 1.20, 1 big core
""")


def test_calibration_section_loads_and_round_trips(tmp_path):
    import yaml

    from odnas.profiles import profile_from_dict

    (tmp_path / "device.csv").write_text("model,latency_ms\n")
    f = tmp_path / "phone.yaml"
    f.write_text(CALIBRATED)
    p = load_profile(str(f))
    c = p.calibration
    assert c.table == str((tmp_path / "device.csv").resolve())  # relative to the profile file
    assert c.references == {"floor": 0.05, "mcnn_01": 0.09} and c.model == "ratio"
    assert c.input_shape == (1, 28, 28) and c.device.startswith("Pixel 6")
    d = p.to_dict()
    assert d["calibration"]["input_shape"] == [1, 28, 28]
    yaml.safe_dump(d)  # what `odnas profiles show` prints
    # A run dir stores to_dict(); it loads back even after the table has moved.
    (tmp_path / "device.csv").unlink()
    back = profile_from_dict(json.loads(json.dumps(d)), source="run/settings.json")
    assert back.calibration == c and {**back.to_dict(), "source": d["source"]} == d
    only_table = GOOD + "calibration: {table: device.csv}\n"
    (tmp_path / "device.csv").write_text("model,latency_ms\n")
    f.write_text(only_table)
    c = load_profile(str(f)).calibration
    assert c.model == "loglinear" and c.references == {} and c.input_shape == ()


def test_profiles_without_calibration_are_unchanged():
    for n in list_profiles():
        p = load_profile(n)
        assert p.calibration is None and "calibration" not in p.to_dict()


@pytest.mark.parametrize("section, key, value", [
    ("calibration: {table: missing.csv}", "calibration.table", "missing.csv"),
    ("calibration: {table: 3}", "calibration.table", "3"),
    ("calibration: {}", "calibration", "{}"),
    ("calibration: [device.csv]", "calibration", "device.csv"),
    ("calibration: {table: device.csv, colour: blue}", "calibration.colour", "blue"),
    ("calibration: {table: device.csv, model: cubic}", "calibration.model", "cubic"),
    ("calibration: {references: {floor: -1}}", "calibration.references.floor", "-1"),
    ("calibration: {references: {floor: fast}}", "calibration.references.floor", "fast"),
    ("calibration: {references: [floor, 0.1]}", "calibration.references", "floor"),
    ("calibration: {table: device.csv, input_shape: [1, 0, 8]}", "calibration.input_shape", "[1, 0, 8]"),
    ("calibration: {table: device.csv, input_shape: 1x8x8}", "calibration.input_shape", "1x8x8"),
])
def test_broken_calibration_names_file_key_and_value(tmp_path, section, key, value):
    (tmp_path / "device.csv").write_text("model,latency_ms\n")
    f = tmp_path / "broken.yaml"
    f.write_text(GOOD + section + "\n")
    with pytest.raises(ProfileError) as e:
        load_profile(str(f))
    msg = str(e.value)
    assert str(f) in msg and f"'{key}'" in msg and value in msg, msg
    assert "\n" not in msg


def test_a_profile_name_that_is_not_shipped_suggests_the_users_file_or_the_closest_name(tmp_path, monkeypatch):
    from odnas.errors import ProfileError
    from odnas.profiles import load_profile

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProfileError, match=r"cpu_mobile: no such profile \(did you mean cpu-mobile\?\); shipped"):
        load_profile("cpu_mobile")
    (tmp_path / "my-phone.yaml").write_text("name: my-phone\n")
    with pytest.raises(ProfileError, match=r"my-phone: no such profile \(did you mean the file ./my-phone.yaml\?\)"):
        load_profile("my-phone")
    with pytest.raises(ProfileError, match="tpu-pod: no such profile; shipped"):  # nothing close: no guess
        load_profile("tpu-pod")
