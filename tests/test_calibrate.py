"""Calibration of host latency to a device: reference set, device tables, the fit, its use.

The host side is always real: the reference models are exported and timed on this
machine (a short protocol keeps it fast). The "device" is either a synthetic table made
from those host figures through a known mapping plus noise, or this same host timed
by the exported ``bench_device.py``.
"""

import dataclasses
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from odnas.cost import calibrate as C
from odnas.records import CostRecord
from odnas.profiles import load_profile

TRUE_SCALE, TRUE_EXP, NOISE = 3.1, 0.9, 0.03


def _short(profile):
    # The plain protocol: the exported device script (bench_device.py) times that way, so
    # "this host as the device" compares like with like.
    return dataclasses.replace(profile, protocol=dataclasses.replace(
        profile.protocol, method="plain", warmup_runs=3, min_runs=15, min_time_s=0.0, max_time_s=0.5))


@pytest.fixture(scope="module")
def short():
    return _short(load_profile("cpu-mobile"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, short):
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("refs")
    C.export_references(out, short)
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def host(short, exported, cache_dir):
    """Real host latencies of every reference, measured once and cached for the module."""
    return C.measure_references(short, cache_dir=cache_dir, onnx_dir=exported)


class NoMeasuring:
    """A latency backend that fails the test if anything gets timed."""

    def measure(self, onnx_path, profile):
        raise AssertionError(f"measured {onnx_path} although the input was bad")


def _write(path, text):
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _synthetic_table(path, host, scale=TRUE_SCALE, exp=TRUE_EXP, seed=0, with_p90=True):
    rng = np.random.default_rng(seed)
    lines = ["model,latency_ms,latency_ms_p90,runs,notes"]
    for name in C.reference_names():
        d = scale * host[name]["latency_ms"] ** exp * math.exp(rng.normal(0, NOISE))
        d90 = scale * host[name]["latency_ms_p90"] ** exp * math.exp(rng.normal(0, NOISE)) if with_p90 else ""
        lines.append(f"{name},{d!r},{d90!r},1000,synthetic" if with_p90 else f"{name},{d!r},,1000,synthetic")
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- the reference set


def test_reference_set_is_fixed():
    # Renaming or dropping a reference breaks every device table made before: bump REFERENCE_SET instead.
    assert C.REFERENCE_SET == "odnas-ref-1"
    assert C.reference_names() == [
        "floor", "mlp_16x16", "mlp_64x64", "mlp_128x128", *(f"mcnn_{i:02d}" for i in range(1, 12))]
    ids = [r.arch_id() for r in C.REFERENCES]
    assert len(set(ids)) == len(ids), ids


def test_export_writes_models_manifest_template_and_scripts(exported, short):
    man = json.loads((exported / C.MANIFEST).read_text())
    assert man["reference_set"] == C.REFERENCE_SET and man["input_shape"] == [1, 8, 8]
    assert man["runtime"]["intra_op_threads"] == 1 and man["protocol"]["min_runs"] == 15
    assert [m["name"] for m in man["models"]] == C.reference_names()
    for m in man["models"]:
        assert (exported / m["file"]).stat().st_size == m["model_bytes"] > 0
    flops = [m["flops"] for m in man["models"]]
    assert max(flops) > 100 * min(flops)  # the set spans small to large models
    template = (exported / C.TEMPLATE_CSV).read_text().splitlines()
    assert template[0] == "model,latency_ms,latency_ms_p90,runs,notes" and len(template) == 16
    assert C.write_template(exported / C.TEMPLATE_CSV) == ""  # an unfilled template is rewritten
    (exported / "broken.csv").write_text("what,is,this\n")
    assert "does not read as a device table" in C.write_template(exported / "broken.csv")
    with pytest.raises(C.CalibrationError, match="0 reference model"):  # the unfilled template
        C.fit_calibration(short, exported / C.TEMPLATE_CSV, backend=NoMeasuring())


def test_host_latencies_span_the_candidates_range(host):
    ms = [host[n]["latency_ms"] for n in C.reference_names()]
    # cpu-mobile candidates on 1x8x8 measure ~0.05-0.5 ms on the reference host; the set
    # must reach below and above that, or scoring would extrapolate.
    assert max(ms) / min(ms) > 10, ms


# ---------------------------------------------------------------- the fit


def test_fit_recovers_a_known_mapping_within_its_held_out_error(short, host, cache_dir, exported, tmp_path):
    table = _synthetic_table(tmp_path / "device.csv", host)
    cal = C.fit_calibration(short, table, cache_dir=cache_dir, backend=None, out=tmp_path / "cal.json")
    print("\n" + C.format_calibration(cal))
    # The host side came from the cache: the very measurements the table was made from.
    assert [r["host_ms"] for r in cal.rows] == [host[n]["latency_ms"] for n in C.reference_names()]
    assert cal.n == 15 and cal.model == "loglinear" and not cal.missing
    assert abs(cal.b - TRUE_EXP) < 0.08 and abs(math.exp(cal.a) / TRUE_SCALE - 1) < 0.25, (cal.a, cal.b)
    assert cal.loo_median_rel_err < 2.5 * NOISE and cal.loo_max_rel_err < 0.15
    # Recovered within the reported held-out error, at each reference and between them.
    lo, hi = cal.host_range_ms
    for h in [*(r["host_ms"] for r in cal.rows), *np.geomspace(lo, hi, 25)]:
        truth = TRUE_SCALE * h ** TRUE_EXP
        assert abs(C.apply_calibration(h, cal) / truth - 1) <= cal.loo_max_rel_err, h
    assert cal.a_p90 is not None  # the table had p90s for every row
    assert C.apply_calibration_p90(hi, cal) == pytest.approx(TRUE_SCALE * hi ** TRUE_EXP, rel=0.15)
    # The record round-trips through JSON and maps the same.
    back = C.load_calibration(tmp_path / "cal.json")
    assert back.calibration_id == cal.calibration_id
    assert C.apply_calibration(0.1, back) == C.apply_calibration(0.1, cal.to_dict()) == C.apply_calibration(0.1, cal)
    assert math.isnan(C.apply_calibration(float("nan"), cal))


def test_ratio_model_and_a_single_bad_row(short, host, cache_dir, tmp_path):
    table = _synthetic_table(tmp_path / "device.csv", host, scale=2.5, exp=1.0, seed=1, with_p90=False)
    lines = table.read_text().splitlines()
    name, ms = lines[7].split(",")[:2]
    lines[7] = f"{name},{float(ms) * 3!r},,1000,throttled run"  # one row 3x off
    table.write_text("\n".join(lines) + "\n")
    cal = C.fit_calibration(short, table, model="ratio", cache_dir=cache_dir)
    assert cal.b == 1.0 and math.exp(cal.a) == pytest.approx(2.5, rel=0.05)
    bad = next(r for r in cal.rows if r["model"] == name)
    assert bad["loo_rel_err"] < -0.5  # the held-out check points at the bad row...
    assert cal.loo_median_rel_err < 0.1  # ...and the robust fit is not dragged by it
    assert any("held-out" in w for w in cal.warnings)
    assert cal.a_p90 is None and C.apply_calibration_p90(0.2, cal) == C.apply_calibration(0.2, cal)


@pytest.mark.slow  # plain timings on both sides: on a host with speed modes they are two draws up to ~2x apart
def test_this_host_as_the_device_gives_about_identity(short, exported, host, cache_dir):
    """bench_device.py (what a Linux board runs) times the exported files in a separate
    process; fitting that against this host's figures must give roughly device = host."""
    proc = subprocess.run([sys.executable, str(exported / C.BENCH_SCRIPT)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = C.read_device_table(exported / C.TEMPLATE_CSV)
    assert list(rows) == C.reference_names() and all(r.runs >= 3 for r in rows.values())
    cal = C.fit_calibration(short, exported / C.TEMPLATE_CSV, cache_dir=cache_dir)
    print("\n" + C.format_calibration(cal))
    # Loose: this machine is shared, so two timings of the same model can differ by tens of percent.
    assert 0.7 < cal.b < 1.3 and cal.spearman > 0.85
    assert 0.6 < C.apply_calibration(0.1, cal) / 0.1 < 1.6


# ---------------------------------------------------------------- bad input: one line, nothing measured

HEADER = "model,latency_ms\n"
ROWS = "".join(f"{n},{0.1 * (i + 1)}\n" for i, n in enumerate(C.reference_names()[:6]))


@pytest.mark.parametrize("content, expect", [
    ("", "empty table"),
    ("# only a comment\n", "empty table"),
    ("model,ms\nfloor,0.1\n", "missing column(s) latency_ms"),
    ("name,latency_ms\nfloor,0.1\n", "missing column(s) model"),
    ("model,latency_ms,device\nfloor,0.1,x\n", "unknown column(s) device"),
    (HEADER + ROWS + "resnet50,3.2\n", "'resnet50' is not in reference set odnas-ref-1"),
    (HEADER + ROWS + "mcnn_99,3.2\n", "'mcnn_99' is not in reference set"),
    (HEADER + ROWS.replace("0.2\n", "0\n", 1), "latency_ms = '0' must be a positive"),
    (HEADER + ROWS.replace("0.2\n", "-1.5\n", 1), "latency_ms = '-1.5' must be a positive"),
    (HEADER + ROWS.replace("0.2\n", "fast\n", 1), "latency_ms = 'fast' is not a number"),
    (HEADER + ROWS.replace("0.2\n", "nan\n", 1), "must be a positive"),
    (HEADER + ROWS + "floor,0.3\n", "'floor' appears twice"),
    (HEADER + ROWS.splitlines(True)[0] + ROWS.splitlines(True)[1], "2 reference model(s) with a device latency"),
    ("model,latency_ms,runs\nfloor,0.1,many\n", "runs = 'many' is not a whole number"),
    (HEADER + "floor,0.1,extra\n", "3 cells for 2 columns"),
])
def test_bad_device_table_is_one_line_error(short, tmp_path, content, expect):
    f = tmp_path / "device.csv"
    f.write_text(content)
    with pytest.raises(C.CalibrationError) as e:
        C.fit_calibration(short, f, backend=NoMeasuring())
    msg = str(e.value)
    assert expect in msg and str(f) in msg and "\n" not in msg, msg
    assert isinstance(e.value, ValueError)


def test_missing_table_and_no_device_data(short, tmp_path):
    with pytest.raises(C.CalibrationError, match="not found"):
        C.fit_calibration(short, tmp_path / "nope.csv", backend=NoMeasuring())
    with pytest.raises(C.CalibrationError, match="no calibration section"):
        C.fit_calibration(short, backend=NoMeasuring())
    with pytest.raises(C.CalibrationError, match="model 'cubic'"):
        C.fit_calibration(short, tmp_path / "nope.csv", model="cubic", backend=NoMeasuring())


@pytest.mark.parametrize("change, expect", [
    (lambda m: m.update(reference_set="odnas-ref-0"), "reference set 'odnas-ref-0'"),
    (lambda m: m.update(input_shape=[1, 28, 28]), "input shape 1x28x28, not 1x8x8"),
    (lambda m: m["runtime"].update(intra_op_threads=4), "intra_op_threads 4 (profile: 1)"),
    (lambda m: m.update(batch_size=8), "batch_size 8 (profile: 1)"),
])
def test_table_beside_a_manifest_for_other_settings_is_refused(short, tmp_path, change, expect):
    man = {"reference_set": C.REFERENCE_SET, "input_shape": [1, 8, 8], "batch_size": 1,
           "runtime": dataclasses.asdict(short.runtime)}
    change(man)
    (tmp_path / C.MANIFEST).write_text(json.dumps(man))
    f = _write(tmp_path / "device.csv", HEADER + ROWS)
    with pytest.raises(C.CalibrationError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        C.fit_calibration(short, f, input_shape="1x8x8", backend=NoMeasuring())


def test_inverted_table_is_refused(short, host, cache_dir, tmp_path):
    names = C.reference_names()
    inverted = tmp_path / "inv.csv"
    inverted.write_text(HEADER + "".join(f"{n},{1 / host[n]['latency_ms']!r}\n" for n in names))
    with pytest.raises(C.CalibrationError, match="do not grow with host latencies"):
        C.fit_calibration(short, inverted, cache_dir=cache_dir)


# ---------------------------------------------------------------- using a calibration


def test_calibrate_latency_and_cost_records(short, host, cache_dir, tmp_path):
    cal = C.fit_calibration(short, _synthetic_table(tmp_path / "d.csv", host), cache_dir=cache_dir)
    lat = host["mcnn_05"]
    c = C.calibrate_latency(lat, cal)
    assert c["latency_ms"] == C.apply_calibration(lat["latency_ms"], cal) and not c["extrapolated"]
    assert c["latency_ms_sem"] == pytest.approx(cal.b * c["latency_ms"] / lat["latency_ms"] * lat["latency_ms_sem"])
    assert C.calibrate_latency({**lat, "latency_ms": cal.host_range_ms[1] * 3}, cal)["extrapolated"]
    with pytest.raises(C.CalibrationError, match="intra_op_threads 2 vs 1"):
        C.calibrate_latency({**lat, "intra_op_threads": 2}, cal)
    with pytest.raises(C.CalibrationError, match="host 'elsewhere'"):
        C.calibrate_latency({**lat, "host": "elsewhere"}, cal)
    # Another CPU under the same host and CPU name is refused; a figure without a signature
    # (recorded before signatures were kept) is taken.
    assert cal.host["cpu_signature"] == lat["cpu_signature"]
    with pytest.raises(C.CalibrationError, match="cpu_signature 'other'"):
        C.calibrate_latency({**lat, "cpu_signature": "other"}, cal)
    assert C.calibrate_latency({**lat, "cpu_signature": None}, cal)["latency_ms"] == c["latency_ms"]
    # A cost-lane record (odnas.cost.lane.measure_candidate's shape) gets device latencies.
    rec = CostRecord(arch_id="x", space="mlp", profile=short.name, precision="fp32",
                     metrics={"num_params": 10, "latency_ms": lat["latency_ms"],
                              "latency_ms_p90": lat["latency_ms_p90"]},
                     sem={"latency_ms": lat["latency_ms_sem"]}, latency=lat)
    out = C.apply_to_record(rec, cal)
    assert out.metrics["latency_ms"] == pytest.approx(c["latency_ms"])
    assert out.host_metrics["latency_ms"] == lat["latency_ms"] and out.metrics["num_params"] == 10
    assert C.apply_to_record(out, cal) == out  # idempotent: computed from the host figures
    assert rec.metrics["latency_ms"] == lat["latency_ms"]  # input untouched
    budget = dataclasses.replace(short, budgets={"latency_ms": c["latency_ms"] * 0.99})
    assert budget.over_budget(out.metrics) == ["latency_ms"] and budget.over_budget(rec.metrics) == []


def _phone(tmp_path, short, host, more: str = ""):
    """A profile file timed as ``short`` with a calibration section on a synthetic device table."""
    _synthetic_table(tmp_path / "device.csv", host)
    p = short.protocol
    return _write(tmp_path / "phone.yaml", f"""
        name: phone
        runtime: {{provider: CPUExecutionProvider, intra_op_threads: 1, inter_op_threads: 1}}
        protocol: {{method: {p.method}, warmup_runs: {p.warmup_runs}, min_runs: {p.min_runs},
                   min_time_s: {p.min_time_s}, max_time_s: {p.max_time_s}, statistic: median}}
        calibration: {{table: device.csv, model: loglinear, device: synthetic phone}}
        {more}
    """)


def test_profile_section_drives_the_fit_and_the_run_keeps_it(short, host, cache_dir, tmp_path):
    prof = load_profile(str(_phone(tmp_path, short, host, "budgets: {latency_ms: 0.5}")))
    assert prof.calibration.table == str((tmp_path / "device.csv").resolve())
    cal = C.profile_calibration(prof, cache_dir=cache_dir)
    assert cal.device == "synthetic phone" and abs(cal.b - TRUE_EXP) < 0.08
    assert C.profile_calibration(short) is None
    run = tmp_path / "run"
    first = C.run_calibration(run, prof, cache_dir=cache_dir)
    (tmp_path / "device.csv").unlink()  # the run keeps its own copy of the fit
    again = C.run_calibration(run, prof, cache_dir=cache_dir)
    assert (run / "calibration.json").is_file() and again.calibration_id == first.calibration_id
    assert C.default_record_path(prof, None) == (tmp_path / "calibration.json").resolve()


def _spec(**kw):
    from odnas.profiles import CalibrationSpec

    return CalibrationSpec(**kw)


def test_inline_references_in_the_profile(short, host, cache_dir, tmp_path):
    refs = {n: 2.0 * host[n]["latency_ms"] for n in C.reference_names()[::2]}
    prof = dataclasses.replace(short, calibration=_spec(references=refs, model="ratio"))
    cal = C.fit_calibration(prof, cache_dir=cache_dir)
    assert cal.n == len(refs) == 8 and math.exp(cal.a) == pytest.approx(2.0)
    assert set(cal.missing) == set(C.reference_names()[1::2])
    with pytest.raises(C.CalibrationError, match="'floor' is also in the table"):
        table = _write(tmp_path / "d.csv", HEADER + ROWS)
        C.fit_calibration(prof, table, references={"floor": 1.0}, backend=NoMeasuring())


# ---------------------------------------------------------------- onnxruntime_perf_test


NEW_LOG = """\
Setting intra_op_num_threads to 1
Session creation time cost: 0.0101 s
First inference time cost: 1 ms
Total inference time cost: 0.0612 s
Total inference requests: 1000
Average inference time cost total: 0.0612 ms
Total inference run time: 0.0700 s
Min Latency: 5.1e-05 s
Max Latency: 0.00031 s
P50 Latency: 5.8e-05 s
P90 Latency: 7.25e-05 s
P95 Latency: 8e-05 s
"""
OLD_LOG = """\
Session creation time cost: 0.02 s
Total inference requests: 500
Average inference time cost: 0.113 ms
Total inference run time: 0.06 s
"""


def test_perf_test_output_is_parsed():
    r = C.parse_perf_test_output(NEW_LOG)
    assert r["latency_ms"] == pytest.approx(0.058) and r["latency_ms_p90"] == pytest.approx(0.0725)
    assert r["runs"] == 1000 and "P50" in r["notes"]
    assert C.parse_perf_test_output(NEW_LOG, "mean")["latency_ms"] == pytest.approx(0.0612)
    old = C.parse_perf_test_output(OLD_LOG)
    assert old["latency_ms"] == pytest.approx(0.113) and old["latency_ms_p90"] is None and "-s" in old["notes"]
    legacy = C.parse_perf_test_output("Average time cost:0.2 ms\nP50 Latency is 0.00019sec\n")
    assert legacy["latency_ms"] == pytest.approx(0.19)
    with pytest.raises(C.CalibrationError, match="did the run fail"):
        C.parse_perf_test_output("failed to initialize.\n")


def test_perf_test_flags_follow_the_profile(short):
    flags = C.perf_test_flags(short)
    assert flags[:5] == ["-I", "-m", "times", "-r", "1000"]
    assert " ".join(flags).endswith("-e cpu -x 1 -y 1 -o 99 -s -D")
    wide = dataclasses.replace(short, batch_size=4, runtime=dataclasses.replace(
        short.runtime, intra_op_threads=4, graph_optimization="basic"))
    flags = " ".join(C.perf_test_flags(wide, 200))
    assert "-x 4" in flags and "-D" not in flags and "-o 1" in flags and flags.endswith("-f batch:4")


def test_run_perf_test_script_and_logs_to_csv(short, exported, tmp_path):
    """The generated shell script, run under /bin/sh with a stand-in for the perf tool
    (which is not installed here), writes one log per model; perf-logs turns them into a CSV."""
    import shutil

    work = tmp_path / "dev"
    shutil.copytree(exported, work)
    fake = _write(tmp_path / "fake_perf_test", """
        #!/bin/sh
        # stand-in for onnxruntime_perf_test: prints its summary lines, the P50 growing with file size
        for a in "$@"; do case "$a" in *.onnx) m="$a";; esac; done
        size=$(wc -c < "$m")
        echo "Total inference requests: 7"
        echo "Average inference time cost total: 0.5 ms"
        echo "P50 Latency: $((size / 1000))e-06 s"
        echo "P90 Latency: $((size / 900))e-06 s"
    """)
    fake.chmod(0o755)
    proc = subprocess.run(["sh", str(work / C.PERF_SCRIPT)], env={"PERF_TEST": str(fake), "RUNS": "7",
                                                                  "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert any(ln.startswith("mcnn_11: ") and "P50 Latency" in ln for ln in proc.stdout.splitlines())
    csv_path = C.perf_logs_to_csv(work / "logs")
    assert csv_path == work / C.TEMPLATE_CSV
    rows = C.read_device_table(csv_path)
    assert list(rows) == C.reference_names()
    size = (work / "mcnn_11.onnx").stat().st_size
    assert rows["mcnn_11"].latency_ms == pytest.approx(size // 1000 * 1e-3) and rows["mcnn_11"].runs == 7
    # Exporting again into the folder (which writes the template) keeps the filled-in table.
    before = csv_path.read_text()
    assert "15 device latencies" in C.write_template(csv_path) and csv_path.read_text() == before
    (work / "logs" / "floor.txt").write_text("Segmentation fault\n")
    with pytest.raises(C.CalibrationError, match="floor.txt: no 'Average"):
        C.perf_logs_to_csv(work / "logs")
    with pytest.raises(C.CalibrationError, match="no NAME.txt log"):
        C.perf_logs_to_csv(tmp_path)


def test_light_imports():
    code = ("import sys, odnas.cost.calibrate, odnas.profiles; "
            "print(sorted({'numpy', 'torch', 'onnxruntime'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_measure_under_a_calibrated_profile_gives_device_estimates(short, host, cache_dir, tmp_path, monkeypatch,
                                                                    capsys):
    """As search, rescore and export do; measure gave host milliseconds before."""
    from odnas.cli import main

    _phone(tmp_path, short, host)
    monkeypatch.setenv("ODNAS_CACHE_DIR", str(cache_dir))  # the references' host figures, measured once above
    assert main(["measure", "--space", "mlp", "--profile", str(tmp_path / "phone.yaml"), "--random", "1",
                 "--json", "--quiet"]) == 0
    rec = json.loads(capsys.readouterr().out.splitlines()[0])
    dev, hst = rec["metrics"]["latency_ms"], rec["host_metrics"]["latency_ms"]
    assert dev == pytest.approx(TRUE_SCALE * hst ** TRUE_EXP, rel=0.2) and dev != hst


def test_cost_lane_scores_device_latency_and_caches_host_figures(tmp_path, short_profile):
    """The search's cost lane with a calibration: budgets see device milliseconds, the
    cache keeps the host record, and the host figures stay beside the device ones."""
    import math

    from odnas.cost.calibrate import Calibration, host_identity
    from odnas.cost.lane import CostLane
    from odnas.spaces import get_space

    profile = short_profile()
    cal = Calibration(model="ratio", a=math.log(3.0), b=1.0, n=15, loo_median_rel_err=0.01, loo_max_rel_err=0.02,
                      fit_max_rel_err=0.02, spearman=1.0, host_range_ms=(0.01, 1.0), device_range_ms=(0.03, 3.0),
                      host=host_identity(profile))
    lane = CostLane(get_space("mlp"), (1, 8, 8), 10, profile, tmp_path / "costs", calibration=cal)
    params = {"hidden_size_1": 32, "hidden_size_2": 16, "lr": 0.001, "dropout": 0.1, "epochs": 1, "batch_size": 32}
    rec = lane.costs(params)
    host = rec.host_metrics["latency_ms"]
    assert rec.metrics["latency_ms"] == pytest.approx(3.0 * host)
    cached = lane.cache.get(rec.arch_id)
    assert cached.metrics["latency_ms"] == pytest.approx(host) and cached.host_metrics is None
    again = lane.costs(params)  # from the cache, calibrated again, not twice
    assert again.metrics["latency_ms"] == pytest.approx(rec.metrics["latency_ms"]) and lane.measured == 1
    assert lane.over_budget({**rec.metrics, "latency_ms": 3.0 * host}) == (
        ["latency_ms"] if 3.0 * host > profile.budgets["latency_ms"] else [])
