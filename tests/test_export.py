"""The deployable artifact: trained weights, parity with PyTorch, a card that is enough to deploy."""

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from odnas.data import load_data
from odnas.export import ParityError, check_parity, export_artifact
from odnas.spaces import get_space
from odnas.jobs.train import fit

PARAMS = {"hidden_size_1": 64, "hidden_size_2": 32, "dropout": 0.1, "lr": 5e-3, "epochs": 3, "batch_size": 64}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("artifact")
    data = load_data("digits")
    space = get_space("mlp")
    torch.manual_seed(0)
    model = space.build(PARAMS, data.input_shape, data.num_classes)
    res = fit(model, data, PARAMS["lr"], PARAMS["epochs"], PARAMS["batch_size"], d / "trial")
    return d, data, space, model, res


def test_export_artifact_and_card(trained, short_profile):
    d, data, space, model, res = trained
    assert (d / "trial" / "progress.jsonl").read_text().count("\n") == 3
    assert list((d / "trial" / "tensorboard").glob("events.*"))
    card = export_artifact(model, d / "m.onnx", space="mlp", params=PARAMS, arch_id=space.arch_id(PARAMS),
                           data=data, profile=short_profile(), metrics={"val_acc": res["val_acc"]}).to_dict()
    on_disk = json.loads((d / "m.json").read_text())
    assert on_disk["onnx_sha256"] == card["onnx_sha256"]
    for key in ("arch_id", "space", "params", "metrics", "profile", "input", "labels", "data",
                "environment", "odnas_version", "onnx_sha256", "parity"):
        assert key in on_disk, key
    assert on_disk["input"]["normalize"]["scale"] == 16.0 and on_disk["input"]["dtype"] == "float32"
    assert on_disk["parity"]["top1_agreement"] == 1.0 and on_disk["parity"]["max_abs_diff"] < 1e-4
    assert abs(on_disk["metrics"]["val_acc_onnx"] - res["val_acc"]) < 1e-6
    assert res["val_acc"] > 0.8
    lat = on_disk["latency"]  # in words, with the figures a user needs to time it again
    assert lat["how"].startswith(f"{lat['statistic']} of {lat['runs']} runs after {lat['warmup_runs']} warm-up runs"
                                 if lat["method"] == "plain" else
                                 f"{lat['ratio']:.4g} x {lat['baseline_ms']:.4g} ms = {lat['latency_ms']:.4g} ms"), lat


def test_the_artifact_describes_itself_and_the_card_has_no_paths(trained, short_profile, tmp_path):
    from odnas.records import ModelCard

    d, data, space, model, res = trained
    out = tmp_path / "sub" / "k.onnx"
    out.parent.mkdir()
    card = export_artifact(model, out, space="mlp", params=PARAMS, arch_id=space.arch_id(PARAMS), data=data,
                           profile=short_profile(), metrics={"val_acc": res["val_acc"]},
                           run={"run_dir": "r", "trial": 3})
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["odnas.labels"]) == list(data.labels) == card.labels
    assert json.loads(props["odnas.normalize"])["scale"] == data.normalize["scale"]
    assert json.loads(props["odnas.input"])["shape"] == ["batch", *data.input_shape]
    assert props["odnas.arch_id"] == card.arch_id and props["odnas.profile"] == "cpu-mobile"
    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert props["odnas.card_sha256"] == ModelCard.from_dict(on_disk).content_sha256()  # ties file and card
    assert on_disk["onnx_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert on_disk["precisions"]["fp32"]["model_bytes"] == out.stat().st_size

    def strings(o):
        if isinstance(o, dict):
            return [s for v in o.values() for s in strings(v)]
        if isinstance(o, list):
            return [s for v in o for s in strings(v)]
        return [o] if isinstance(o, str) else []

    assert [s for s in strings(on_disk) if s.startswith(("/", str(Path.home())))] == []


def test_parity_catches_a_wrong_export(trained, tmp_path):
    d, data, space, model, _ = trained
    from odnas.cost.onnx import export_onnx

    other = space.build(PARAMS, data.input_shape, data.num_classes)  # untrained: different weights
    path = export_onnx(other, data.input_shape, tmp_path / "wrong.onnx")
    with pytest.raises(ParityError, match="disagrees"):
        check_parity(model, path, data.x_val)


def test_artifact_runs_without_torch_as_the_card_says(trained, short_profile, tmp_path):
    """A fresh process with only onnxruntime and numpy: torch and odnas are made unimportable."""
    d, data, space, model, res = trained
    export_artifact(model, tmp_path / "a.onnx", space="mlp", params=PARAMS, arch_id=space.arch_id(PARAMS),
                    data=data, profile=short_profile(), metrics={"val_acc": res["val_acc"]})
    from sklearn.datasets import load_digits

    dg = load_digits()
    np.save(tmp_path / "raw.npy", dg.images.astype(np.float32))
    np.save(tmp_path / "y.npy", dg.target)
    idx = np.sort(_val_index())
    np.save(tmp_path / "val_idx.npy", idx)
    script = textwrap.dedent(f"""
        import sys
        for banned in ("torch", "odnas", "sklearn"):
            sys.modules[banned] = None
        import json, numpy as np, onnxruntime as ort
        card = json.load(open({str(tmp_path / 'a.json')!r}))
        n = card["input"]["normalize"]
        raw = np.load({str(tmp_path / 'raw.npy')!r}); y = np.load({str(tmp_path / 'y.npy')!r})
        idx = np.load({str(tmp_path / 'val_idx.npy')!r})
        x = ((raw[idx] / n["scale"] - n["mean"]) / n["std"])[:, None].astype(card["input"]["dtype"])
        s = ort.InferenceSession({str(tmp_path / 'a.onnx')!r}, providers=["CPUExecutionProvider"])
        acc = float((s.run(None, {{card["input"]["name"]: x}})[0].argmax(1) == y[idx]).mean())
        print(json.dumps({{"acc": acc, "card": card["metrics"]["val_acc"]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    # The card's normalisation is rounded to 6 digits; accuracy must match to within one sample.
    assert abs(got["acc"] - got["card"]) <= 1 / 360 + 1e-9, got


def _val_index():
    from sklearn.model_selection import train_test_split
    from sklearn.datasets import load_digits

    y = load_digits().target
    _, va = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    return va


# ---------------------------------------------------------------- int8 and several profiles


def _int8(short_profile, **budgets):
    import dataclasses

    p = short_profile("cpu-mobile-int8")
    return dataclasses.replace(p, budgets=budgets) if budgets else p


def test_int8_export_card_has_both_precisions(trained, short_profile, tmp_path):
    import onnxruntime as ort

    d, data, space, model, res = trained
    search = {"val_acc": res["val_acc"], "latency_ms": 0.05, "model_bytes": 1234}
    card = export_artifact(model, tmp_path / "m.onnx", space="mlp", params=PARAMS, arch_id=space.arch_id(PARAMS),
                           data=data, profile=_int8(short_profile), metrics=search).to_dict()
    deployed, fp32 = tmp_path / "m.onnx", tmp_path / "m.fp32.onnx"
    assert card["precision"] == "int8" and card["artifact"] == deployed.name and fp32.is_file()
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(deployed)).graph.node}
    assert "QuantizeLinear" not in {n.op_type for n in onnx.load(str(fp32)).graph.node}
    assert card["parity"]["file"] == fp32.name and card["parity"]["top1_agreement"] == 1.0
    q = card["quantization"]
    assert q["mode"] == "static" and q["calibration"] == "training split" and q["calibration_samples"] == 256
    f, i = card["precisions"]["fp32"], card["precisions"]["int8"]
    assert i["deployed"] and not f["deployed"] and i["file"] == deployed.name
    # The int8 file was re-evaluated on the validation split: recompute it here.
    s = ort.InferenceSession(str(deployed), providers=["CPUExecutionProvider"])
    logits = s.run(None, {"input": data.x_val})[0]
    assert abs(i["val_acc_onnx"] - float(np.mean(logits.argmax(1) == data.y_val))) < 1e-12
    assert abs(f["val_acc_onnx"] - res["val_acc"]) < 1e-6
    assert i["top1_agreement_vs_fp32"] >= 0.95 and abs(i["val_acc_onnx"] - f["val_acc_onnx"]) <= 0.03
    assert i["n_val"] == len(data.y_val)
    # ... and re-measured: the card's figures are the int8 file's, the search's stay beside them.
    m = card["metrics"]
    assert m["latency_ms"] == i["latency_ms"] == card["latency"]["latency_ms"] > 0 and f["latency_ms"] > 0
    assert m["model_bytes"] == i["model_bytes"] == deployed.stat().st_size != f["model_bytes"]
    assert q["model_bytes"] == i["model_bytes"] and q["model_bytes_fp32"] == f["model_bytes"] == fp32.stat().st_size
    assert m["val_acc_onnx"] == i["val_acc_onnx"] and m["val_acc"] == res["val_acc"]
    assert m["latency_ms_search"] == 0.05 and m["model_bytes_search"] == 1234
    assert card["budgets"]["latency_ms"]["value"] == i["latency_ms"]
    assert card["onnx_sha256"] == i["sha256"] != f["sha256"]
    assert json.loads((tmp_path / "m.json").read_text())["precisions"]["int8"]["sha256"] == i["sha256"]
    print(f"mlp int8: val_acc {i['val_acc_onnx']:.4f} vs fp32 {f['val_acc_onnx']:.4f}, agreement "
          f"{i['top1_agreement_vs_fp32']:.4f}; {i['latency_ms']:.4f} vs {f['latency_ms']:.4f} ms; "
          f"{i['model_bytes']} vs {f['model_bytes']} bytes")


def test_int8_budgets_are_judged_on_int8_figures(trained, short_profile, tmp_path):
    d, data, space, model, res = trained
    kw = dict(space="mlp", params=PARAMS, arch_id=space.arch_id(PARAMS), data=data, metrics={"val_acc": res["val_acc"]})
    first = export_artifact(model, tmp_path / "a.onnx", profile=_int8(short_profile), **kw)
    b8, b32 = first.precisions["int8"]["model_bytes"], first.precisions["fp32"]["model_bytes"]
    assert b8 < b32  # the weights are int8; on this mlp that outweighs the extra Q/DQ nodes
    # A byte budget between the two sizes: met by the deployed int8 file, not by the fp32 one.
    card = export_artifact(model, tmp_path / "b.onnx", profile=_int8(short_profile, model_bytes=(b8 + b32) / 2,
                                                                      latency_ms=1e-6), **kw).to_dict()
    assert card["budgets"]["model_bytes"] == {"limit": (b8 + b32) / 2, "value": b8, "met": True}
    assert card["budgets"]["latency_ms"]["value"] == card["precisions"]["int8"]["latency_ms"]
    assert card["budgets"]["latency_ms"]["met"] is False  # 1 ns: the fresh figure decides, honestly


def test_multi_profile_card(trained, short_profile, tmp_path):
    from odnas.profiles import load_profile

    d, data, space, model, res = trained
    main = short_profile("cpu-mobile")
    # The search's latency breaks the budget; the card judges the file's fresh measurement.
    search = {"val_acc": res["val_acc"], "latency_ms": 99.0, "latency_ms_p90": 99.0}
    card = export_artifact(model, tmp_path / "m.onnx", space="mlp", params=PARAMS, arch_id=space.arch_id(PARAMS),
                           data=data, profile=main, metrics=search,
                           also_profiles=[short_profile("cpu-desktop"), _int8(short_profile), main,
                                          "cpu-mobile"]).to_dict()
    m = card["metrics"]
    limit = main.budgets["latency_ms"]
    assert m["latency_ms_search"] == 99.0 and m["latency_ms"] == card["latency"]["latency_ms"] < limit
    assert card["budgets"]["latency_ms"] == {"limit": limit, "value": m["latency_ms"], "met": True}
    assert card["precision"] == "fp32" and set(card["precisions"]) == {"fp32", "int8"}
    assert (tmp_path / "m.int8.onnx").is_file() and card["precisions"]["fp32"]["deployed"]
    profs = card["profiles"]
    # main again is the same profile, listed once; the shipped cpu-mobile (a longer protocol) is another
    shipped = "cpu-mobile (" + load_profile("cpu-mobile").source + ")"
    assert list(profs) == ["cpu-mobile", "cpu-desktop", "cpu-mobile-int8", shipped]
    assert profs[shipped]["latency"]["runs"] >= 100 and not profs[shipped]["main"]
    assert profs["cpu-mobile"]["main"] and profs["cpu-mobile"]["latency_ms"] == m["latency_ms"]
    desk = profs["cpu-desktop"]
    assert desk["precision"] == "fp32" and desk["batch_size"] == 8 and desk["file"] == "m.onnx"
    assert desk["latency"]["batch_size"] == 8 and desk["latency_ms"] != m["latency_ms"]
    assert 0 <= desk["latency_ms_sem"] and desk["latency_ms"] <= desk["latency_ms_p90"]
    assert desk["budgets"]["latency_ms"] == {"limit": 2.0, "value": desk["latency_ms"],
                                             "met": desk["latency_ms"] <= 2.0}
    assert desk["met"] == all(b["met"] for b in desk["budgets"].values())
    i8 = profs["cpu-mobile-int8"]
    assert i8["precision"] == "int8" and i8["file"] == "m.int8.onnx"
    assert set(i8["budgets"]) == set(_int8(short_profile).budgets)
    assert i8["model_bytes"] == (tmp_path / "m.int8.onnx").stat().st_size


def test_unknown_extra_profile_fails_before_writing(trained, tmp_path, short_profile):
    from odnas.profiles import ProfileError

    d, data, space, model, res = trained
    with pytest.raises(ProfileError, match="no such profile"):
        export_artifact(model, tmp_path / "m.onnx", space="mlp", params=PARAMS, arch_id=space.arch_id(PARAMS),
                        data=data, profile=short_profile(), metrics={"val_acc": res["val_acc"]},
                        also_profiles=["cpu-nowhere"])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("samples, told", [(64, "only an int8 export is calibrated"), (0, "give at least 1")])
def test_calibration_samples_without_an_int8_file_are_refused_before_writing(trained, tmp_path, short_profile,
                                                                            samples, told):
    from odnas.errors import QuantizeError

    with pytest.raises(QuantizeError, match=told):  # not ignored: an fp32 export has nothing to calibrate
        _export(trained, tmp_path / "m.onnx", short_profile(), calib_samples=samples)
    assert not list(tmp_path.iterdir())


def test_tensorboard_holds_the_trials_hyperparameters_and_costs(tmp_path):
    """The HParams view: a trial's parameters, its cost metrics and its val_acc."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    data = load_data("digits")
    space = get_space("mlp")
    params = {**PARAMS, "epochs": 1}
    torch.manual_seed(0)
    model = space.build(params, data.input_shape, data.num_classes)
    fit(model, data, params["lr"], 1, params["batch_size"], tmp_path, hparams=params,
        costs={"num_params": 1234.0, "latency_ms": 0.05})
    hparams, metrics = {}, set()
    for f in (tmp_path / "tensorboard").glob("events.*"):
        for event in EventFileLoader(str(f)).Load():
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name != "hparams":
                    continue
                pd = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                if pd.HasField("session_start_info"):
                    hparams.update({k: h.number_value or h.string_value
                                    for k, h in pd.session_start_info.hparams.items()})
                if pd.HasField("experiment"):
                    metrics |= {m.name.tag for m in pd.experiment.metric_infos}
    assert hparams["hidden_size_1"] == params["hidden_size_1"] and hparams["lr"] == pytest.approx(params["lr"])
    assert {"hp/val_acc", "hp/num_params", "hp/latency_ms"} <= metrics


def _export(trained, out, profile, **kw):
    d, data, space, model, res = trained
    return export_artifact(model, out, space="mlp", params=PARAMS, arch_id=space.arch_id(PARAMS), data=data,
                           profile=profile, metrics={"val_acc": res["val_acc"]}, **kw)


def test_a_failed_export_leaves_the_earlier_artifact_as_it_was(trained, short_profile, tmp_path, monkeypatch):
    import odnas.export as export_module

    _export(trained, tmp_path / "m.onnx", short_profile())
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    assert sorted(before) == ["m.json", "m.onnx"]

    def unreachable(*a, **k):
        raise RuntimeError("the device agent is not reachable (test)")

    monkeypatch.setattr(export_module, "_measure", unreachable)  # fails after the file is exported and checked
    with pytest.raises(RuntimeError, match="not reachable"):
        _export(trained, tmp_path / "m.onnx", short_profile())
    with pytest.raises(RuntimeError, match="not reachable"):
        _export(trained, tmp_path / "new.onnx", short_profile())
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before  # nothing new, nothing half-written


def test_an_export_into_a_folder_names_the_file_by_its_arch_id(trained, short_profile, tmp_path):
    from odnas.export import artifact_path

    arch = trained[2].arch_id(PARAMS)
    card = _export(trained, tmp_path, short_profile())
    assert (tmp_path / f"{arch}.onnx").is_file() and (tmp_path / f"{arch}.json").is_file()
    assert card.artifact == f"{arch}.onnx"
    assert artifact_path(f"{tmp_path}/new/", arch) == tmp_path / "new" / f"{arch}.onnx"
    assert artifact_path(tmp_path / "m", arch) == tmp_path / "m.onnx"


def _three_times_slower(profile):
    """A host-to-device mapping fitted on this host: the device is 3x slower."""
    import math

    from odnas.cost.calibrate import Calibration, host_identity

    return Calibration(model="ratio", a=math.log(3.0), b=1.0, n=15, loo_median_rel_err=0.01, loo_max_rel_err=0.02,
                       fit_max_rel_err=0.02, spearman=1.0, host_range_ms=(1e-4, 10.0), device_range_ms=(3e-4, 30.0),
                       host=host_identity(profile))


def test_under_a_calibrated_profile_the_card_and_its_budgets_carry_device_estimates(trained, short_profile,
                                                                                     tmp_path):
    """As in the search: budgets judge the device estimate, the host figure stays beside it."""
    profile = short_profile()
    cal = _three_times_slower(profile)
    card = _export(trained, tmp_path / "m.onnx", profile, calibration=cal).to_dict()
    est, m = card["latency"]["device_estimate"], card["metrics"]
    host = card["latency"]["latency_ms"]
    assert est["host_latency_ms"] == host and m["latency_ms"] == pytest.approx(3.0 * host)
    assert card["budgets"]["latency_ms"]["value"] == m["latency_ms"]
    main = card["profiles"][profile.name]
    assert main["latency_ms"] == m["latency_ms"] and main["calibration"]["calibration_id"] == cal.calibration_id
    assert card["precisions"]["fp32"]["latency_ms"] == m["latency_ms"]


def test_an_extra_profile_of_the_same_name_is_timed_under_its_own_mapping_not_the_main_ones(trained, short_profile,
                                                                                            tmp_path):
    import dataclasses

    profile = short_profile()
    cal = _three_times_slower(profile)
    other = dataclasses.replace(profile, source="/elsewhere/same-name.yaml", budgets={"num_params": 10**6})
    card = _export(trained, tmp_path / "m.onnx", profile, calibration=cal, also_profiles=[other]).to_dict()
    (key,) = [k for k, v in card["profiles"].items() if not v["main"]]
    assert key != profile.name and card["profiles"][key]["calibration"] is None  # no mapping of its own: host ms
    assert card["profiles"][profile.name]["calibration"]["calibration_id"] == cal.calibration_id


def test_a_new_export_leaves_no_other_precision_of_an_earlier_one_and_a_bad_path_is_one_line(trained, short_profile,
                                                                                             tmp_path):
    from odnas.errors import OutputError

    (tmp_path / "m.int8.onnx").write_bytes(b"an earlier export's int8 file")
    _export(trained, tmp_path / "m.onnx", short_profile())
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.json", "m.onnx"]
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="cannot write the artifact") as e:
        _export(trained, tmp_path / "file" / "m.onnx", short_profile())
    assert "\n" not in str(e.value)


def test_an_int8_file_slower_and_larger_than_its_fp32_one_is_pointed_out():
    from odnas.cli import _int8_note

    def card(q_ms, q_bytes, deployed=True):
        return {"latency": {"timed_on": "host h"}, "precisions": {
            "fp32": {"file": "m.fp32.onnx", "latency_ms": 0.031, "latency_ms_sem": 0.001, "model_bytes": 44344},
            "int8": {"file": "m.onnx", "latency_ms": q_ms, "latency_ms_sem": 0.001, "model_bytes": q_bytes,
                     "deployed": deployed}}}

    note = _int8_note(card(0.063, 59042))  # as a user saw: 2x slower, a third larger
    assert note and "slower and larger than m.fp32.onnx, timed on host h" in note
    assert _int8_note(card(0.032, 59042)) is None  # within noise on latency
    assert _int8_note(card(0.063, 30000)) is None  # smaller: what int8 may be for
    # fp32 deployed, int8 compared (--also-profile cpu-mobile-int8): said too, of the file compared
    assert "the int8 file m.onnx is slower and larger than the deployed fp32 one" in _int8_note(
        card(0.063, 59042, deployed=False))
    assert _int8_note(card(0.063, 30000, deployed=False)) is None


def test_an_early_stopped_trial_is_refused_for_what_it_is(monkeypatch, tmp_path):
    """Not "not within every budget": it may meet them all; it has no final weights."""
    from types import SimpleNamespace

    import odnas.export as export_module
    from odnas.errors import RunDirError
    from odnas.profiles import load_profile
    from odnas.records import TrialRow

    row = TrialRow(trial=10, state="early_stopped", arch_id="a", params={}, metrics={"val_acc": 0.9})
    run = SimpleNamespace(settings=SimpleNamespace(space="mlp"), profile=load_profile("cpu-mobile"), rows=[row])
    monkeypatch.setattr(export_module, "load_run", lambda d: run)
    with pytest.raises(RunDirError, match="trial 10 was stopped early: it has no final weights"):
        export_module.export_trial(tmp_path, tmp_path / "m.onnx", trial=10)


def test_export_picks_within_the_users_bounds_as_select_does(monkeypatch, tmp_path, capsys):
    """``select --max-latency-ms 2`` named one model and a plain ``export`` shipped the
    profile's pick, over the user's bound, its card saying every budget was met; then,
    near the bound, export picked on the search's figures where select re-times them."""
    from types import SimpleNamespace

    import odnas.export as export_module
    from odnas import rescore
    from odnas.cli import main
    from odnas.errors import RunDirError, SearchFailed
    from odnas.loop import store
    from odnas.profiles import load_profile
    from odnas.select import pick

    def row(trial, acc, ms):
        from odnas.records import TrialRow

        return TrialRow(trial=trial, state="completed", arch_id=f"a{trial}", params={}, trial_dir=str(tmp_path / "t"),
                        metrics={"val_acc": acc, "latency_ms": ms, "num_params": 1000, "model_bytes": 1e4})

    profile = load_profile("cpu-mobile")
    run = SimpleNamespace(settings=SimpleNamespace(space="mlp"), profile=profile,
                          rows=[row(3, 0.97, 0.05), row(4, 0.95, 0.02), row(5, 0.93, 0.01)])
    monkeypatch.setattr(export_module, "load_run", lambda d: run)
    monkeypatch.setattr(store, "load_run", lambda d: run)
    monkeypatch.setattr(export_module, "get_space", lambda name: SimpleNamespace(check_fixed=lambda p: None))
    with pytest.raises(RunDirError, match="trial 3 has no checkpoint"):  # the profile's pick
        export_module.export_trial(tmp_path, tmp_path / "m.onnx")
    with pytest.raises(RunDirError, match="trial 4 has no checkpoint"):  # the most accurate under 0.03 ms
        export_module.export_trial(tmp_path, tmp_path / "m.onnx", bounds=["latency_ms <= 0.03"])
    nothing = r"every budget and threshold and bound \(val_acc >= 0.85, .*, latency_ms <= 0.001\)"
    with pytest.raises(SearchFailed, match=nothing):
        export_module.export_trial(tmp_path, tmp_path / "m.onnx", bounds=["latency_ms <= 0.001"])
    with pytest.raises(RunDirError, match=r"has no trial 9 \(its trials are 3 to 5\)"):
        export_module.export_trial(tmp_path, tmp_path / "m.onnx", trial=9)

    # The command picks as select does: on the front timed again (trial 4 over 0.02 ms now)
    asked = []

    def confirmed(run_dir, extra, progress=None):
        asked.append(list(extra))
        fr = pick([r for r in run.rows if r.trial != 4], profile, extra)
        return {"pick": fr, "confirmed": [{"trial": 4, "crossed": list(extra)}]}

    monkeypatch.setattr(rescore, "confirm_front", confirmed)
    out = str(tmp_path / "m.onnx")
    assert main(["export", str(tmp_path), "-o", out, "--max-latency-ms", "0.02", "--quiet"]) == 2
    assert "trial 5 has no checkpoint" in capsys.readouterr().err and asked == [["latency_ms <= 0.02"]]
    assert main(["export", str(tmp_path), "-o", out, "--max-latency-ms", "0.005", "--quiet"]) == 3
    assert "once the front is timed again: trial 4 moved across a bound" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "-o", out, "--trial", "3", "--max-latency-ms", "0.02"]) == 2
    assert "--trial names the model; latency_ms <= 0.02 would pick one" in capsys.readouterr().err
