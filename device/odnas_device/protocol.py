"""The reference-normalised timing protocol, as pure functions over "run once" callables.

Some hosts (KVM guests among them) run in speed modes up to ~1.9x apart that hold
for a fraction of a second to minutes and slow every model in a process by about the
same factor (not quite the same: see below). A single median then says more about the host's mode than about the model.
What survives a mode is a *ratio*: the candidate and a fixed reference model timed in
alternating short bursts slow down together. So:

- ``sessions`` fresh sessions of the candidate (each new session lands at its own
  speed, about +-10%, so one long session is not enough), each with ``rounds``
  rounds of a candidate burst and a reference burst of ``burst_runs`` runs, in
  alternating order; a session's ratio is the median over its rounds of
  candidate burst median / reference burst median, and the figure's ratio is the
  mean over sessions (trimmed of the extremes from six on; more sessions are
  added, up to three times as many, while they disagree);
- only rounds in the fast mode count, where the host is seen to switch: a round whose
  reference burst is outside the fast band of the measurement's own fastest reference
  bursts, or whose candidate burst is outside the fast band of the candidate's median
  in such rounds, is left out,
  and a session with fewer than half its rounds left gives no ratio. A slow mode does
  not slow every model by quite the same factor: on a 2-core EPYC guest it slowed the
  0.1 ms reference 1.7-2.2x and 13-25 us MLPs about 1.5x, so ratios from slow rounds
  read 10-20% low (docs/benchmarks.md, "Speed modes that do not cancel"). Sessions
  are added, up to three times as many, until enough have fast rounds; with too few
  even then, every round counts, as without modes. (The fast band is the
  measurement's own, not the baseline's: a baseline cached on a faster host of the
  same name would otherwise leave no round fast, and stretch every timing.)
- ``latency_ms = ratio x baseline``, where the baseline is the reference's time in
  the host's fast mode (the median of its fastest band of burst medians) over a
  calibration of ``calibration_s`` seconds, kept per host (``odnas.cost.reference``);
- the standard error is the between-session standard error of the ratio plus, in
  quadrature, ``RESIDUAL_REL`` of it: what a process's own placement adds and
  cannot be seen within it.

``docs/benchmarks.md`` ("reproducibility") has the measurements behind every number.
A ``clock`` (nanoseconds) is passed in, so tests drive the protocol with a simulated
host whose modes switch on a simulated clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

Run = Callable[[], object]
Clock = Callable[[], int]

#: Relative standard error added in quadrature to the between-session error of the
#: ratio. Without it the error bar covered 90% of differences between processes on a
#: host with modes; with it, 97-100% (docs/benchmarks.md, "reproducibility").
RESIDUAL_REL = 0.015
#: The fast mode's bursts: within this factor of the reference's 5th-percentile burst (the
#: baseline's band); a round is in the fast mode when its reference burst is within it of
#: the measurement's own 5th-percentile reference burst, and its candidate burst within it
#: of the candidate's median over such rounds.
FAST_BAND = 1.25
#: Reference bursts whose p90/p10 exceeds this show speed modes (a quiet host: ~1.05).
MODES_RATIO = 1.25
#: Fewest runs in a burst when a slow candidate's bursts are shortened to fit the budget.
MIN_BURST = 5
#: Sessions are added (up to ``max_sessions``) while the session ratios' relative
#: standard error is above this: on a quiet host 8 sessions reach it.
TARGET_REL_SE = 0.015


@dataclass(frozen=True)
class Burst:
    """``n`` timed runs: their median and 90th percentile, in milliseconds."""

    median_ms: float
    p90_ms: float


@dataclass(frozen=True)
class Rounds:
    """What one candidate's rounds gave (figures in ms, ratios unitless)."""

    session_ratios: tuple[float, ...]  # per session counted: median over its rounds of candidate/reference
    ratio: float  # mean of the session ratios
    ratio_sem: float  # between-session SE with the residual term
    raw_ms: float  # median of the candidate's burst medians (not normalised: mode-dependent)
    tail: float  # median over bursts of the candidate's p90/median within a burst
    runs: int  # candidate runs timed (warm-ups excluded)
    sessions: int = 0  # sessions timed (those counted in ``session_ratios`` and any left out)
    fast_only: bool = False  # ratios from fast-mode rounds alone (see the module doc)


def burst(run: Run, n: int, clock: Clock) -> Burst:
    """Time ``run`` ``n`` times back to back."""
    t = np.empty(n)
    for i in range(n):
        a = clock()
        run()
        t[i] = clock() - a
    t /= 1e6
    return Burst(float(np.median(t)), float(np.percentile(t, 90)))


def rounds(open_candidate: Callable[[], Run], reference: Callable[[], Run], *, sessions: int, rounds: int,
           burst_runs: int, warmup_runs: int, clock: Clock, budget_s: float | None = None,
           max_sessions: int | None = None, modes: bool = False) -> Rounds:
    """Run the protocol on one candidate. ``open_candidate()`` and ``reference()`` open a
    fresh session each and return its "run once" callable.

    With ``budget_s``, bursts are shortened (to no fewer than ``MIN_BURST`` runs) so
    that the timed rounds of a slow candidate fit in about that many seconds, judged
    from the first session's warm-ups. With ``max_sessions``, sessions are added past
    ``sessions`` while the ratios still disagree by more than ``TARGET_REL_SE``
    (another program competing for the core makes sessions noisy), up to that many.
    With ``modes`` (the host's calibration shows speed modes), only fast-mode rounds
    count (``fast_ratios``): sessions are added until ``sessions`` such agree, up to
    ``max_sessions``; with fewer than ``fewest_fast(sessions)`` of them by then (half,
    and two at least where two or more were asked for), every round counts.
    """
    timed: list[np.ndarray] = []  # per session: its rounds' (candidate, reference) burst medians
    cand_medians, tails = [], []
    limit = max(sessions, max_sessions or sessions)
    runs = 0

    def counted() -> list[float]:
        return fast_ratios(timed) if modes else session_ratios(timed)

    while len(timed) < sessions or (len(timed) < limit and not enough(counted(), sessions)):
        cand, ref = open_candidate(), reference()
        t_c = _warm(cand, warmup_runs, clock)
        t_r = _warm(ref, warmup_runs, clock)
        if not timed and budget_s is not None and t_c + t_r > 0:
            fits = int(budget_s * 1e3 / (sessions * rounds * (t_c + t_r)))
            burst_runs = max(MIN_BURST, min(burst_runs, fits))
        pairs = []
        for i in range(rounds):
            # Alternate which goes first, so a mode switch inside a round cuts both ways.
            if i % 2:
                r = burst(ref, burst_runs, clock)
                c = burst(cand, burst_runs, clock)
            else:
                c = burst(cand, burst_runs, clock)
                r = burst(ref, burst_runs, clock)
            pairs.append((c.median_ms, r.median_ms))
            cand_medians.append(c.median_ms)
            tails.append(c.p90_ms / c.median_ms)
        timed.append(np.asarray(pairs))
        runs += rounds * burst_runs
    fast = fast_ratios(timed) if modes else []
    fast_only = len(fast) >= fewest_fast(sessions)
    return summarize(fast if fast_only else session_ratios(timed), cand_medians, tails, runs,
                     sessions=len(timed), fast_only=fast_only)


def fewest_fast(sessions: int) -> int:
    """The fewest sessions with fast rounds a figure may rest on alone: half of those
    asked for, and never one where two or more were (one session's placement is what
    sessions are there to average out; ``RESIDUAL_REL``)."""
    return min(sessions, max(2, math.ceil(sessions / 2)))


def session_ratios(timed: Sequence[np.ndarray]) -> list[float]:
    """Each session's ratio: the median over its rounds of candidate / reference."""
    return [float(np.median(s[:, 0] / s[:, 1])) for s in timed]


def fast_ratios(timed: Sequence[np.ndarray]) -> list[float]:
    """Session ratios from fast-mode rounds alone: rounds whose reference burst is within
    ``FAST_BAND`` of the 5th percentile of every reference burst so far, and whose
    candidate burst is within ``FAST_BAND`` of the candidate's median over such rounds
    (sessions land about +-10% apart; a slow mode is 1.5x and more). A session with
    fewer than half its rounds so gives none."""
    if not timed:
        return []
    every = np.concatenate(timed)
    ref_band = float(np.percentile(every[:, 1], 5)) * FAST_BAND
    ref_fast = every[:, 1] <= ref_band
    cand_fast = float(np.median(every[ref_fast, 0])) * FAST_BAND
    out = []
    for s in timed:
        fast = (s[:, 1] <= ref_band) & (s[:, 0] <= cand_fast)
        if 2 * fast.sum() >= len(s):
            out.append(float(np.median(s[fast, 0] / s[fast, 1])))
    return out


def enough(ratios: Sequence[float], sessions: int) -> bool:
    """Whether session ratios settle a figure: ``sessions`` of them, agreeing within
    ``TARGET_REL_SE``."""
    return len(ratios) >= sessions and _rel_se(ratios) <= TARGET_REL_SE


def _warm(run: Run, n: int, clock: Clock) -> float:
    """Run ``n`` warm-ups; the median of their times in ms (0 when none). The median,
    because a session's first runs pay for allocation and would make it look slow."""
    times = []
    for _ in range(n):
        a = clock()
        run()
        times.append(clock() - a)
    return float(np.median(times)) / 1e6 if times else 0.0


def _rel_se(ratios: Sequence[float]) -> float:
    r = np.asarray(ratios, dtype=float)
    return float(r.std(ddof=1) / math.sqrt(len(r)) / r.mean()) if len(r) > 1 else float("inf")


def summarize(session_ratios: Sequence[float], cand_medians: Sequence[float], tails: Sequence[float],
              runs: int, sessions: int | None = None, fast_only: bool = False) -> Rounds:
    """The figure's ratio is the mean of the session ratios, trimmed of the highest and
    the lowest from six sessions on (one session hit by another program should not
    move it); its error is the untrimmed between-session error, which that session
    does widen, plus the residual term."""
    r = np.asarray(session_ratios, dtype=float)
    ratio = float(np.sort(r)[1:-1].mean() if len(r) >= 6 else r.mean())
    between = float(r.std(ddof=1) / math.sqrt(len(r))) if len(r) > 1 else ratio * RESIDUAL_REL
    return Rounds(session_ratios=tuple(float(x) for x in r), ratio=ratio,
                  ratio_sem=math.hypot(between, RESIDUAL_REL * ratio),
                  raw_ms=float(np.median(cand_medians)), tail=float(np.median(tails)), runs=runs,
                  sessions=len(r) if sessions is None else sessions, fast_only=fast_only)


def calibrate(reference: Callable[[], Run], seconds: float, *, burst_runs: int, warmup_runs: int,
              clock: Clock, session_s: float = 1.0) -> list[float]:
    """The reference's burst medians over ``seconds`` (of ``clock`` time), with a fresh
    session every ``session_s`` so that one session's placement does not set the baseline."""
    out: list[float] = []
    start = clock()
    while (clock() - start) / 1e9 < seconds or not out:
        run = reference()
        for _ in range(warmup_runs):
            run()
        opened = clock()
        while (clock() - opened) / 1e9 < session_s and ((clock() - start) / 1e9 < seconds or not out):
            out.append(burst(run, burst_runs, clock).median_ms)
    return out


def baseline_ms(burst_medians: Sequence[float]) -> float:
    """The reference's fast-mode time: the median of its bursts in the fast band (within
    ``FAST_BAND`` of the 5th percentile). A low percentile alone would pick the luckiest
    sessions and put every figure a few percent low; the band's median is a typical
    session in the fast mode, and slow-mode bursts (1.6-1.9x) fall outside it."""
    b = np.asarray(burst_medians, dtype=float)
    return float(np.median(b[b <= np.percentile(b, 5) * FAST_BAND]))


@dataclass(frozen=True)
class Modes:
    """How the reference's burst medians spread: whether the host switches speed modes."""

    present: bool
    spread: float  # p90 / p10 of the burst medians
    fast_share: float  # share of bursts in the fast band
    bursts: int


def modes(burst_medians: Sequence[float]) -> Modes:
    b = np.asarray(burst_medians, dtype=float)
    lo, hi = np.percentile(b, 10), np.percentile(b, 90)
    spread = float(hi / lo) if lo > 0 else float("nan")
    return Modes(present=bool(spread > MODES_RATIO), spread=spread,
                 fast_share=float(np.mean(b <= np.percentile(b, 5) * FAST_BAND)), bursts=len(b))
