"""The reference-normalised timing protocol against a simulated host whose speed modes
switch on a simulated clock, and against the real ONNX Runtime in fresh processes."""

import json
import subprocess
import sys

import numpy as np
import pytest

from odnas_device import protocol as P


class ModeHost:
    """A simulated host: ``run`` of a model advances a simulated clock by the model's
    time, times the slow mode's factor while the host is in it, times a per-session
    placement draw and a little per-run noise. Modes switch after random dwell times."""

    def __init__(self, slow=1.85, mean_dwell_s=0.3, fast_share=0.4, seed=0, mode_skew=0.0, placement=0.04):
        self.now_ns, self.rng = 0, np.random.default_rng(seed)
        self.slow, self.dwell, self.fast_share = slow, mean_dwell_s, fast_share
        self.skew, self.placement = mode_skew, placement
        self.fast = bool(self.rng.random() < fast_share)
        self.switch_at = self._dwell()

    def _dwell(self):
        mean = self.dwell * (self.fast_share if self.fast else 1 - self.fast_share) * 2
        return self.now_ns + int(self.rng.exponential(mean) * 1e9)

    def clock(self) -> int:
        return self.now_ns

    def opener(self, base_ms: float, reference: bool = False):
        def open_session():
            draw = 1.0 + self.rng.normal(0, self.placement)

            def run():
                while self.now_ns >= self.switch_at:
                    self.fast = not self.fast
                    self.switch_at = self._dwell()
                # ``mode_skew``: the slow mode slows the candidate a little more than the reference.
                factor = 1.0 if self.fast else self.slow * (1.0 if reference else 1.0 + self.skew)
                self.now_ns += int(base_ms * factor * draw * (1 + abs(self.rng.normal(0, 0.01))) * 1e6)

            return run

        return open_session


def _measure(host, cand_ms, ref_ms=0.07, fast=True, **kw):
    """As ``odnas_device.timing.measure`` times on a host with modes: calibrate the
    baseline, then the rounds, counting fast-mode rounds only (``fast``)."""
    opts = dict(sessions=8, rounds=6, burst_runs=40, warmup_runs=5, max_sessions=24, clock=host.clock) | kw
    base = P.baseline_ms(P.calibrate(host.opener(ref_ms, True), 5.0, burst_runs=40, warmup_runs=5,
                                     clock=host.clock))
    r = P.rounds(host.opener(cand_ms), host.opener(ref_ms, True), modes=fast, **opts)
    return r.ratio * base, r.ratio_sem * base, r


@pytest.mark.parametrize("cand_ms", [0.03, 0.12, 0.4])
def test_the_figure_lands_on_the_fast_mode(cand_ms):
    """With modes 1.85x apart, the figure is the model's fast-mode time, not a mix."""
    for seed in range(4):
        ms, sem, r = _measure(ModeHost(seed=seed), cand_ms)
        assert ms == pytest.approx(cand_ms, rel=0.06), (seed, ms)
        assert abs(ms - cand_ms) < 4 * sem


@pytest.mark.parametrize("cand_ms", [0.015, 0.03])
def test_a_slow_mode_that_slows_the_candidate_less_does_not_pull_the_figure_down(cand_ms):
    """As measured on a 2-core EPYC guest: the slow mode slowed the reference ~1.85x and
    13-25 us MLPs ~1.5x, so ratios of slow rounds read low. Where a measurement sees
    both modes, counting fast rounds only lands near the fast-mode time, where counting
    every round (as before) did not; where it sees one mode throughout, both read alike,
    and counting fast rounds is never much worse."""
    mixed = 0
    for seed in range(8):
        f = _measure(ModeHost(seed=seed, mode_skew=-0.2, fast_share=0.4), cand_ms)[0] / cand_ms - 1
        e = _measure(ModeHost(seed=seed, mode_skew=-0.2, fast_share=0.4), cand_ms, fast=False)[0] / cand_ms - 1
        assert abs(f) <= abs(e) + 0.05, (seed, f, e)
        if abs(f - e) > 0.05:  # the two readings part: the measurement saw both modes
            mixed += 1
            assert abs(f) < 0.06 and abs(f) < abs(e), (seed, f, e)
    assert mixed >= 2  # the case is exercised


def test_a_baseline_from_a_faster_host_does_not_stretch_the_timing():
    """The fast band is the measurement's own: a host slower throughout than the one
    its cached baseline came from (a host of the same name on other hardware) times
    its 8 sessions, as without modes, and lands on its own ratio."""
    host = ModeHost(slow=1.0, placement=0.005)
    kw = dict(sessions=8, rounds=4, burst_runs=20, warmup_runs=3, max_sessions=24, clock=host.clock)
    r = P.rounds(host.opener(0.1), host.opener(0.07, True), modes=True, **kw)
    assert r.fast_only and r.sessions == len(r.session_ratios) == 8
    assert r.ratio == pytest.approx(0.1 / 0.07, rel=0.02)


def test_a_figure_never_rests_on_one_fast_session_where_more_were_asked_for():
    """Two sessions asked for, and the host in its slow mode for all of the second: one
    session with fast rounds is half of two, but a figure from it alone would carry its
    placement unaveraged, so every round of both counts, as without modes."""
    now, opened = [0], []

    def opener(base_ms):
        def open_session():
            opened.append(base_ms)
            slow = 1.85 if len(opened) > 2 else 1.0  # a session opens its candidate, then its reference

            def run():
                now[0] += int(base_ms * slow * 1e6)

            return run

        return open_session

    kw = dict(sessions=2, rounds=4, burst_runs=10, warmup_runs=2, max_sessions=2, clock=lambda: now[0])
    r = P.rounds(opener(0.1), opener(0.07), modes=True, **kw)
    assert len(P.fast_ratios([np.ones((4, 2)), np.full((4, 2), [1.0, 1.85])])) == 1  # one session is fast
    assert r.sessions == 2 and not r.fast_only and len(r.session_ratios) == 2
    assert [P.fewest_fast(n) for n in (1, 2, 3, 4, 8)] == [1, 2, 2, 2, 4]


def test_the_plain_median_does_not():
    """The same host timed the plain way: figures depend on the mode it was in."""
    figures = []
    for seed in range(6):
        host = ModeHost(seed=seed, mean_dwell_s=2.0)
        run = host.opener(0.12)()
        figures.append(P.burst(run, 2000, host.clock).median_ms)
    assert max(figures) / min(figures) > 1.3


def test_the_error_grows_when_modes_do_not_cancel_exactly():
    """A slow mode that slows the candidate 5% more than the reference leaves ratios that
    move with the mode: the between-session error shows it."""
    quiet = [_measure(ModeHost(slow=1.0, seed=s), 0.12)[2].ratio_sem for s in range(4)]
    modes = [_measure(ModeHost(slow=1.85, mode_skew=0.05, seed=s), 0.12)[2].ratio_sem for s in range(4)]
    assert np.median(modes) > np.median(quiet)


def test_the_error_covers_a_retest():
    """Two measurements of the same models on a host with modes differ by at most 3
    combined standard errors."""
    z = []
    for m, cand in enumerate([0.03, 0.06, 0.12, 0.25, 0.4]):
        a = _measure(ModeHost(seed=10 + m), cand)
        b = _measure(ModeHost(seed=50 + m), cand)
        z.append(abs(a[0] - b[0]) / np.hypot(a[1], b[1]))
    assert max(z) <= 3.0, z


def test_bursts_shrink_to_fit_the_budget():
    host = ModeHost(slow=1.0, placement=0.0)
    kw = dict(sessions=4, rounds=4, burst_runs=40, warmup_runs=3, clock=host.clock)
    r = P.rounds(host.opener(2.0), host.opener(0.07, True), budget_s=1.0, **kw)
    assert 4 * 4 * 25 <= r.runs <= 4 * 4 * 30  # 16 rounds of (2 + 0.07) ms pairs fit ~30-run bursts in 1 s
    r = P.rounds(host.opener(2.0), host.opener(0.07, True), budget_s=0.1, **kw)
    assert r.runs == 4 * 4 * P.MIN_BURST
    r = P.rounds(host.opener(0.01), host.opener(0.07, True), budget_s=1.0, **kw)
    assert r.runs == 4 * 4 * 40


def test_modes_are_detected_from_the_calibration():
    quiet = ModeHost(slow=1.0)
    noisy = ModeHost(slow=1.85)
    cal = dict(burst_runs=40, warmup_runs=5)
    assert not P.modes(P.calibrate(quiet.opener(0.07, True), 5.0, clock=quiet.clock, **cal)).present
    m = P.modes(P.calibrate(noisy.opener(0.07, True), 5.0, clock=noisy.clock, **cal))
    assert m.present and 1.6 < m.spread < 2.3 and 0.2 < m.fast_share < 0.7


def test_real_onnxruntime_retest_in_fresh_processes(tmp_path, short_profile):
    """Three candidates timed by the real backend in two fresh processes (sharing the
    host's baseline, as every odnas process does) agree within 20%, not the ~60% of a
    speed mode."""
    import dataclasses
    import random

    import torch

    from odnas.cost.onnx import export_onnx
    from odnas.spaces import get_space

    space, rng = get_space("mobile-cnn"), random.Random(1)
    paths = []
    for i in range(3):
        torch.manual_seed(0)
        paths.append(str(export_onnx(space.build(space.sample(rng), (1, 8, 8), 10), (1, 8, 8), tmp_path / f"{i}.onnx")))
    prof = short_profile()
    prof = dataclasses.replace(prof, protocol=dataclasses.replace(prof.protocol, sessions=6, rounds=4, burst_runs=20,
                                                                  calibration_s=3.0, max_time_s=2.0))
    spec = json.dumps({"paths": paths, "profile": prof.to_dict(), "method": "reference"})
    runs = [json.loads(subprocess.run([sys.executable, "-m", "odnas.cost.doctor", spec], capture_output=True,
                                      text=True, check=True, timeout=300).stdout) for _ in range(2)]
    for a, b in zip(*runs):
        assert a["method"] == "reference" and a["baseline_ms"] == b["baseline_ms"]
        # The speed modes this guards against put fresh processes about 60% apart. This
        # short protocol, beside the other test worker's trainings, has put a 0.02 ms model
        # 14% apart once in CI; the full protocol's reproducibility is measured by
        # benchmarks/reproducibility.py (docs/benchmarks.md), not here.
        assert abs(a["latency_ms"] / b["latency_ms"] - 1) < 0.20, (a["latency_ms"], b["latency_ms"])
        assert a["ratio"] > 0 and a["latency_ms_sem"] > 0


def test_sessions_are_added_only_while_they_disagree():
    kw = dict(sessions=8, rounds=4, burst_runs=20, warmup_runs=3, max_sessions=24)
    calm = ModeHost(slow=1.0, placement=0.005)
    r = P.rounds(calm.opener(0.1), calm.opener(0.07, True), clock=calm.clock, **kw)
    assert len(r.session_ratios) == 8
    noisy = ModeHost(slow=1.0, placement=0.25, seed=3)  # another program keeps hitting sessions
    r = P.rounds(noisy.opener(0.1), noisy.opener(0.07, True), clock=noisy.clock, **kw)
    assert len(r.session_ratios) > 8 and r.ratio_sem / r.ratio > P.RESIDUAL_REL


def test_a_host_without_a_baseline_is_told_how_long_calibrating_it_will_take(tmp_path, short_profile, monkeypatch):
    """The first timing on a host calibrates its reference first (30 s under the shipped
    profiles): ``calibration_due`` says so before, and 0 once the cache holds it."""
    import dataclasses

    from odnas.cost.latency import OrtLatencyBackend

    monkeypatch.setenv("ODNAS_CACHE_DIR", str(tmp_path / "cache"))
    prof = short_profile()
    prof = dataclasses.replace(prof, protocol=dataclasses.replace(prof.protocol, calibration_s=0.3))
    assert OrtLatencyBackend().calibration_due(prof, (1, 8, 8)) == 0.3
    OrtLatencyBackend().baseline(prof, (1, 8, 8))
    assert OrtLatencyBackend().calibration_due(prof, (1, 8, 8)) == 0.0  # a fresh backend reads the cache
    longer = dataclasses.replace(prof, protocol=dataclasses.replace(prof.protocol, calibration_s=1.3))
    assert abs(OrtLatencyBackend().calibration_due(longer, (1, 8, 8)) - 1.0) < 1e-9  # extends what is cached
    assert OrtLatencyBackend().calibration_due(prof, (1, 28, 28)) == 0.3  # another input shape: its own


def test_a_baseline_cached_on_other_hardware_of_the_same_name_is_not_reused(tmp_path, short_profile, monkeypatch):
    """The cache outlives a host: a disk kept across machines called ``vm`` whose CPU
    says only "AMD EPYC" must not hand one generation's baseline to another. The
    baseline is cached under the CPU's signature (family, model, stepping, cache), so
    the other machine calibrates its own."""
    import dataclasses

    from odnas.cost.latency import OrtLatencyBackend
    from odnas_device import timing

    monkeypatch.setenv("ODNAS_CACHE_DIR", str(tmp_path / "cache"))
    prof = short_profile()
    prof = dataclasses.replace(prof, protocol=dataclasses.replace(prof.protocol, calibration_s=0.3))
    OrtLatencyBackend().baseline(prof, (1, 8, 8))
    assert OrtLatencyBackend().calibration_due(prof, (1, 8, 8)) == 0.0
    assert timing.identity()["cpu_signature"] == timing.cpu_signature() and len(timing.cpu_signature()) == 12
    monkeypatch.setattr(timing, "cpu_signature", lambda: "0123456789ab")  # same name, other hardware
    assert OrtLatencyBackend().calibration_due(prof, (1, 8, 8)) == 0.3
    OrtLatencyBackend().baseline(prof, (1, 8, 8))
    assert len(list((tmp_path / "cache" / "reference").glob("baseline-*.json"))) == 2


def test_a_reference_timing_says_in_words_how_it_was_made():
    """A card's latency is a ratio times the reference's fast-mode time; a user timing the
    file with a plain loop (on a busy machine) read up to 2.5x more, with nothing to say why."""
    from odnas.cost.latency import LatencyResult

    r = LatencyResult(latency_ms=0.01914, latency_ms_p90=0.02, latency_ms_mean=0.01914, latency_ms_sem=0.0003,
                      runs=1920, warmup_runs=20, measure_s=0.24, statistic="reference-ratio", batch_size=1,
                      provider="CPUExecutionProvider", intra_op_threads=1, inter_op_threads=1, graph_optimization="all",
                      ort_version="1.32.0", cpu_model="AMD EPYC", host="vm", method="reference", ratio=0.3142,
                      baseline_ms=0.06092, reference_id="80bc90110559", raw_ms=0.01928, sessions=8, rounds=6,
                      burst_runs=40, fast_only=True)
    assert r.how.startswith("0.3142 x 0.06092 ms = 0.01914 ms: the model's time as a ratio to a fixed reference model "
                            "(80bc90110559) timed in alternating bursts of 40 runs, 6 rounds in each of 8 fresh "
                            "sessions, the ratio taken over its fast-mode rounds"), r.how
    assert "batch 1, 1 intra-op thread," in r.how and "own median burst time then was 0.01928 ms" in r.how
    plain = LatencyResult.from_dict({**r.to_dict(), "method": "plain", "statistic": "median", "runs": 200})
    assert plain.how.startswith("median of 200 runs after 20 warm-up runs in one session (batch 1"), plain.how


@pytest.mark.parametrize("method", ["reference", "plain"])
def test_a_model_with_a_thousand_times_the_work_times_slower(tmp_path, short_profile, method):
    """The figure is the candidate's own: a wide MLP (about 5.8M multiply-adds) against a
    narrow one (about 6.4k) through the real backend, under each protocol. Shape and
    reproducibility checks elsewhere would pass with the wrong model timed."""
    import dataclasses

    import torch

    from odnas.cost.latency import OrtLatencyBackend, measure_latency
    from odnas.cost.onnx import export_onnx

    def mlp(width: int):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, width), torch.nn.ReLU(),
                                   torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))

    prof = short_profile()
    prof = dataclasses.replace(prof, protocol=dataclasses.replace(prof.protocol, method=method))
    ms = {w: measure_latency(export_onnx(mlp(w), (1, 28, 28), tmp_path / f"{w}.onnx"), prof,
                             OrtLatencyBackend()).latency_ms for w in (8, 2048)}
    # The narrow model's time is mostly ONNX Runtime's per-run floor; the wide one's is
    # arithmetic, at least tens of times the floor on any CPU this runs on.
    assert ms[2048] > 5 * ms[8], ms
