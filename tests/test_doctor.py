"""``odnas doctor`` on this host: the real timings it reports, and the advice it draws
from them."""

import json

from odnas.cli import main
from odnas.cost.doctor import advice, format_report


def test_doctor_times_this_host_and_says_what_to_do(short_profile_file, capsys):
    rc = main(["doctor", "--profile", str(short_profile_file()), "--models", "2", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert r["host"]["cores"] >= 1 and r["floor_ms"] > 0
    assert r["reference"]["baseline_ms"] > 0 and r["reference"]["modes"]["bursts"] > 0
    assert list(r["retest"]) == ["reference", "plain"]  # the profile's protocol, and plain beside it
    for s in r["retest"].values():
        assert len(s["latency_ms"]) == 2 and all(x > 0 and y > 0 for x, y in s["latency_ms"])
        # the spread is worked out from the pairs it shows
        assert s["max_abs_diff"] == max(abs(x / y - 1) for x, y in s["latency_ms"]) >= s["median_abs_diff"]
    assert r["advice"] and r["advice"] == advice(r)
    text = format_report(r)
    assert "What to do:" in text and all(t in text for t in r["advice"])


def _report(**over):
    r = {"host": {"cpu_model": "x", "cores": 2, "onnxruntime": "1", "load_average": 0.2},
         "profile": "p", "input_shape": [1, 8, 8], "floor_ms": 0.001,
         "reference": {"baseline_ms": 0.05, "calibration_s": 5, "modes": {"present": False, "spread": 1.05,
                                                                          "fast_share": 1.0, "bursts": 40}},
         "retest": {"reference": {"median_abs_diff": 0.01}, "plain": {"median_abs_diff": 0.02}}}
    for k, v in over.items():
        r[k] = v
    return r


def test_advice_follows_what_was_found():
    calm = advice(_report())
    assert calm[0] == "No speed modes seen: timings on this host are stable." and len(calm) == 2
    assert calm[-1].startswith("For figures in a device's milliseconds, calibrate against it")
    modes = _report(reference={"baseline_ms": 0.05, "modes": {"present": True, "spread": 1.6, "fast_share": 0.4}},
                    retest={"reference": {"median_abs_diff": 0.01}, "plain": {"median_abs_diff": 0.3}})
    said = " ".join(advice(modes))
    assert "switches speed modes" in said and "move by 30%" in said and "Keep protocol.method: reference" in said
    spread = " ".join(advice(_report(retest={"reference": {"median_abs_diff": 0.2}})))
    assert "retest spread is 20.0%: raise protocol.sessions" in spread
    floor = " ".join(advice(_report(floor_ms=0.03)))
    assert "harness floor (0.0300 ms) is 60% of the reference" in floor
    busy = " ".join(advice(_report(host={"cpu_model": "x", "cores": 2, "onnxruntime": "1", "load_average": 3.0})))
    assert "Load average 3.0: other work is running" in busy
