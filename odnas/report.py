"""The report of a run: trade-offs under the budgets, model fit and parameter effects.

``write_report(run_dir)`` reads the run's stored Ax experiment and writes one HTML
file that opens offline (plotly.js inlined) plus a PNG copy of every figure beside
it. Ax draws what Ax knows (cross-validation, sensitivity, contours); the trade-off
plots are drawn here because they need the budgets, the feasible front and the
trials that were never trained. A partial run still gets a report that says what is
missing and why.
"""

from __future__ import annotations

import datetime
import html
import itertools
import math
import shlex
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from odnas.loop.adapter import experiment_of, generation_strategy_of
from odnas.loop.runner import failure_reason
from odnas.loop.store import load_client, quiet_logs, trial_table
from odnas.profiles import METRIC_SIGN, HardwareProfile, parse_bound, profile_from_dict
from odnas.records import RunSettings, TrialRow
from odnas.rundir import LOG_NAME, driver_running, read_settings, trial_begun
from odnas.select import front, proxy_correlations
from odnas.steps import Step, fmt_value as _fmt, silent

REPORT_DIR = "report"
REPORT_NAME = "report.html"
#: Trained trials needed before this module fits a surrogate of its own (when the
#: run's generation strategy has none, e.g. ``--method sobol`` or still initialising).
MIN_TRAINED = 3
#: Monte-Carlo points per Sobol index. Ax's own default (10^4) takes minutes on a
#: 27-parameter space; a thousand is plenty to rank parameters.
SOBOL_SAMPLES = 1024
#: Parameters shown in each sensitivity plot.
TOP_K = 8
Z95 = 1.959963984540054
UNTRAINED_STATES = ("over_budget", "failed", "running")
STATE_LABEL = {"completed": "trained", "early_stopped": "early stopped", "over_budget": "over budget",
               "failed": "failed", "running": "running"}
# Plotly marker symbol, matplotlib marker: the shape says the state, the colour the trial index.
STATE_MARKER = {"completed": ("circle", "o"), "early_stopped": ("diamond", "D"),
                "over_budget": ("triangle-up", "^"), "failed": ("x", "X"), "running": ("circle-open", "o")}
BUDGET_COLOR = "#d62728"
THRESHOLD_COLOR = "#555555"
FRONT_COLOR = "#e377c2"


@dataclass
class Figure:
    """One figure: an interactive plotly version and a static matplotlib one."""

    key: str  # file stem of the PNG, and the HTML anchor
    title: str
    caption: str  # HTML
    plotly: Any  # plotly.graph_objects.Figure
    draw_png: Callable[[Any], None]  # draws onto an empty matplotlib Figure


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""  # HTML
    body: str = ""  # HTML shown before the figures (tables)
    figures: list[Figure] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # plain sentences


# ----------------------------------------------------------------- entry point


def write_report(run_dir: str | Path, out: str | Path | None = None, progress: Step | None = None) -> Path:
    """Write the HTML report of ``run_dir`` and a PNG per figure; returns the HTML path.

    ``out`` is the HTML file (``.html``) or a folder to put ``report.html`` in;
    by default ``RUN_DIR/report/report.html``. PNGs go beside the HTML file.
    Works on running, partial and failed runs: what cannot be shown is named.
    ``progress(text)`` is told each step.
    """
    step = progress or silent
    run_dir = Path(run_dir)
    settings = read_settings(run_dir)
    out = Path(out) if out is not None else run_dir / REPORT_DIR / REPORT_NAME
    if out.suffix.lower() not in (".html", ".htm"):
        out = out / REPORT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    with quiet_logs(run_dir / LOG_NAME), _torch_threads(1):
        client, _ = load_client(run_dir, readonly=True)
        sections = build_sections(run_dir, settings, client, step)
        step(f"writing {out.name} and a PNG per figure")
        for sec in sections:
            for fig in sec.figures:
                save_png(fig, out.parent / f"{fig.key}.png")
        out.write_text(render_html(run_dir, settings.to_dict(), sections), encoding="utf-8")
    return out


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Fit Ax's small GPs on one thread: their matrices are tiny, and with every core
    busy (trials training beside the report) several threads wait on each other;
    5x slower was measured on 2 busy cores."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def build_sections(run_dir: Path, settings: RunSettings, client, step: Step = silent) -> list[Section]:
    """Every section of the report, from a loaded ``ax.api.Client``."""
    profile = profile_from_dict(settings.profile)
    typed = trial_table(experiment_of(client), run_dir)
    fr = [r.to_dict() for r in front(typed, profile)]
    # The sections below render plain dicts (one per trial, ``TrialRow.to_dict``).
    rows = [r.to_dict() for r in typed]
    settings = settings.to_dict()
    overview = overview_section(rows, fr, settings, profile, driving=driver_running(run_dir))
    sections = [overview, front_section(rows, fr, profile, run_dir), tradeoff_section(rows, fr, profile)]
    step("fitting the surrogate model")
    model = Surrogate.fit(client, rows)
    step("cross-validating the surrogate (leave one out)")
    sections.append(cv_section(client, model, profile))
    step("contour plots of the surrogate")
    sections.append(effects_section(client, model, profile))
    sections += [proxies_section(rows, profile, run_dir), trials_section(rows), settings_section(settings)]
    return sections


# ----------------------------------------------------------------- pure helpers


def tradeoff_pairs(profile: HardwareProfile) -> list[tuple[str, str]]:
    """(x, y) metric pairs to plot: each pair of objectives, then val_acc against
    each budgeted cost metric. Accuracy is always on y, a cost on x."""
    pairs: list[tuple[str, str]] = []
    for a, b in itertools.combinations(profile.objective_metrics, 2):
        pairs.append((b, a) if METRIC_SIGN[a] > 0 else (a, b))  # two costs: the first on x
    for m in profile.budgets:
        if (m, "val_acc") not in pairs:
            pairs.append((m, "val_acc"))
    return pairs


def reference_point(profile: HardwareProfile) -> dict[str, float]:
    """The objective thresholds Ax uses as the hypervolume reference point.

    For each objective, the tightest bound on the side that counts (``>=`` for
    accuracy, ``<=`` for a cost) among the thresholds and budgets. An objective
    with no bound is absent (Ax infers that coordinate itself).
    """
    ref: dict[str, float] = {}
    bounds = [parse_bound(t) for t in profile.thresholds] + [(m, "<=", v) for m, v in profile.budgets.items()]
    for m in profile.objective_metrics:
        want = ">=" if METRIC_SIGN[m] > 0 else "<="
        vals = [v for name, op, v in bounds if name == m and op == want]
        if vals:
            ref[m] = max(vals) if want == ">=" else min(vals)
    return ref


def cv_stats(observed: Sequence[float], predicted: Sequence[float], observed_ci: Sequence[float],
             predicted_ci: Sequence[float]) -> dict[str, float]:
    """Summary of leave-one-out predictions of one metric (all arrays of shape ``(n,)``).

    ``coverage``: the share of held-out values inside the 95% predictive interval,
    i.e. ``|observed - predicted| <= sqrt(predicted_ci**2 + observed_ci**2)`` where
    both ``*_ci`` are 95% half-widths (the model's uncertainty widened by the
    observation's own noise). About 0.95 is calibrated; much lower means the model
    is over-confident. ``spearman``: rank correlation of predicted with observed
    (1 ranks perfectly); NaN with fewer than 3 points or a constant column.
    ``r2``: coefficient of determination. ``n``: number of held-out points.
    """
    import numpy as np

    o, p = np.asarray(observed, float), np.asarray(predicted, float)
    oc = np.nan_to_num(np.asarray(observed_ci, float))
    pc = np.nan_to_num(np.asarray(predicted_ci, float))
    n = len(o)
    out = {"n": float(n), "coverage": math.nan, "spearman": math.nan, "r2": math.nan}
    if n == 0:
        return out
    out["coverage"] = float(np.mean(np.abs(o - p) <= np.sqrt(pc**2 + oc**2) + 1e-12))
    if n >= 3 and np.ptp(o) > 0 and np.ptp(p) > 0:
        from odnas.select import spearman

        out["spearman"] = spearman(p, o)
    ss = float(np.sum((o - o.mean()) ** 2))
    if n >= 2 and ss > 0:
        out["r2"] = 1.0 - float(np.sum((o - p) ** 2)) / ss
    return out


def export_command(run_dir: str | Path, row: Mapping[str, Any]) -> str:
    """The ``odnas export`` command line for one trial."""
    name = f"{row.get('arch_id') or 'trial' + str(row['trial'])}.onnx"
    return f"odnas export {shlex.quote(str(run_dir))} --trial {row['trial']} -o {shlex.quote(name)}"


def _bound_text(m: str, op: str, v: float) -> str:
    return f"{m} {'≤' if op == '<=' else '≥'} {v:g}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _trained(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["state"] in ("completed", "early_stopped") and "val_acc" in r["metrics"]]


# ----------------------------------------------------------------- overview + tables


def overview_section(rows, fr, settings, profile: HardwareProfile, driving: bool = False) -> Section:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    planned = int(settings.get("trials", len(rows)))
    sec = Section("overview", "Overview")
    states = " · ".join(f"{STATE_LABEL.get(k, k)} {v}" for k, v in sorted(counts.items())) or "no trials"
    budgets = ", ".join(_bound_text(m, "<=", v) for m, v in profile.budgets.items()) or "none"
    thresholds = ", ".join(_bound_text(*parse_bound(t)) for t in profile.thresholds) or "none"
    sec.body = (
        "<table class='kv'>"
        f"<tr><th>trials</th><td>{len(_trained(rows))} of {planned} planned trainings done, "
        f"{_plural(len(rows), 'candidate')}: {html.escape(states)}</td></tr>"
        f"<tr><th>profile</th><td>{html.escape(profile.name)} — {html.escape(profile.description)}</td></tr>"
        f"<tr><th>objective</th><td><code>{html.escape(profile.objective)}</code></td></tr>"
        f"<tr><th>budgets</th><td>{html.escape(budgets)} "
        "(a model over any budget is never trained or selected)</td></tr>"
        f"<tr><th>thresholds</th><td>{html.escape(thresholds)}</td></tr>"
        f"<tr><th>space · data</th><td>{html.escape(str(settings.get('space')))} · "
        f"{html.escape(str(settings.get('data')))}</td></tr>"
        f"<tr><th>feasible front</th><td>{_plural(len(fr), 'model')}</td></tr></table>"
    )
    trained = len(_trained(rows))
    if trained < planned:
        capped = len(rows) >= int(settings.get("max_candidates") or 10 ** 9)
        sec.missing.append(f"The run is partial: {trained} of {planned} planned trainings done "
                           + ("(its search is still running; report again when it ends)." if driving else
                              f"(its {len(rows)} candidates reached the cap: `odnas resume --max-candidates N` "
                              "tries more, or a new search with looser budgets)." if capped else
                              "(continue it with `odnas resume`)."))
    if counts.get("running"):
        # As status tells them: a trial left in a warm worker's inbox when the driver stopped has not begun
        queued = 0 if driving else sum(1 for r in rows if r["state"] == "running" and r.get("trial_dir")
                                       and not trial_begun(r["trial_dir"]))
        if counts["running"] > queued:
            sec.missing.append(f"{_plural(counts['running'] - queued, 'trial')} still running: no accuracy yet, "
                               "shown on the cost axis only.")
        if queued:
            sec.missing.append(f"{_plural(queued, 'trial')} queued, not started (`odnas resume` starts "
                               f"{'them' if queued != 1 else 'it'}): shown on the cost axis only.")
    failed = [r for r in rows if r["state"] == "failed"]
    if failed:
        reasons = "; ".join(f"trial {r['trial']}: {_failure(r)}" for r in failed[:5])
        sec.missing.append(f"{_plural(len(failed), 'trial')} failed, so {'it has' if len(failed) == 1 else 'they have'}"
                           f" no accuracy ({reasons}"
                           f"{'; …' if len(failed) > 5 else ''}).")
    if not _trained(rows):
        sec.missing.append("No trial has been trained yet (every finished candidate was over a budget, "
                           "failed, or is still running), so there is no accuracy to show.")
    elif not fr:
        sec.missing.append("No trained model meets every budget and threshold, so the feasible front is empty.")
    return sec


def _failure(row: Mapping[str, Any]) -> str:
    """Why a trial failed: Ax's record, else what its trial dir says."""
    if row.get("reason"):
        return str(row["reason"])
    if row.get("trial_dir"):
        return failure_reason({"trial_dir": row["trial_dir"]})
    return "no reason recorded"


def front_section(rows, fr, profile: HardwareProfile, run_dir: Path) -> Section:
    sec = Section("front", "Feasible Pareto front",
                  intro="Trained models within every budget and threshold that no other such model beats "
                        f"on every objective (<code>{html.escape(profile.objective)}</code>), most accurate first. "
                        "Each row's command exports the model as ONNX with its model card.")
    if not fr:
        sec.body = "<p class='none'>No model on the feasible front yet.</p>"
        return sec
    cols = ["val_acc", "latency_ms", "latency_ms_p90", "num_params", "flops", "model_bytes"]
    head = "".join(f"<th>{c}</th>" for c in ["trial", "arch id", *cols, "export"])
    body = "".join(
        "<tr>" + f"<td>{r['trial']}</td><td><code>{html.escape(str(r['arch_id']))}</code></td>"
        + "".join(f"<td class='num'>{_fmt(r['metrics'].get(c))}</td>" for c in cols)
        + f"<td><code class='cmd'>{html.escape(export_command(run_dir, r))}</code></td></tr>"
        for r in fr)
    sec.body = f"<div class='scroll'><table class='grid'><tr>{head}</tr>{body}</table></div>"
    return sec


def proxies_section(rows, profile: HardwareProfile, run_dir: Path) -> Section:
    """Spearman of ``flops`` and ``num_params`` with measured ``latency_ms``, per profile:
    the run's own, and every profile it was rescored under (``odnas rescore``)."""
    import json

    per = [(profile.name, proxy_correlations([TrialRow.from_dict(r) for r in rows]))]
    for path in sorted((run_dir / "rescore").glob("*.json")):
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        rescored = [TrialRow.from_dict(r, source=str(path)) for r in res["rows"]]
        per.append((f"{res['profile']['name']} (rescored)", proxy_correlations(rescored)))
    sec = Section("proxies", "Proxies against measured latency",
                  intro="<p>How well the cheap proxies rank candidates by the latency odnas measured "
                        "(Spearman rank correlation over the run's candidates). Below about 0.95, ranking by "
                        "FLOPs or parameter count would pick other models than measuring does.</p>")
    body = "".join(f"<tr><td>{html.escape(name)}</td><td class='num'>{c['n']}</td>"
                   f"<td class='num'>{_fmt(c['flops'])}</td><td class='num'>{_fmt(c['num_params'])}</td></tr>"
                   for name, c in per)
    sec.body = ("<table class='grid'><tr><th>profile</th><th>candidates</th><th>Spearman flops</th>"
                f"<th>Spearman num_params</th></tr>{body}</table>")
    if all(c["flops"] is None for _, c in per):
        sec.missing.append("Fewer than 3 measured candidates: no correlation yet.")
    return sec


def trials_section(rows) -> Section:
    sec = Section("trials", "All trials")
    if not rows:
        sec.body = "<p class='none'>No trials yet.</p>"
        return sec
    cols = ["val_acc", "latency_ms", "num_params", "flops"]
    head = "".join(f"<th>{c}</th>" for c in ["trial", "state", *cols, "arch id", "note"])
    body = []
    for r in rows:
        note = ("over " + ", ".join(r["over_budget"])) if r["over_budget"] else (
            _failure(r) if r["state"] == "failed" else (r["reason"] or ""))
        body.append(
            f"<tr class='{r['state']}'><td>{r['trial']}</td><td>{STATE_LABEL.get(r['state'], r['state'])}</td>"
            + "".join(f"<td class='num'>{_fmt(r['metrics'].get(c))}</td>" for c in cols)
            + f"<td><code>{html.escape(str(r['arch_id'] or ''))}</code></td><td>{html.escape(note)}</td></tr>")
    sec.body = f"<table class='grid'><tr>{head}</tr>{''.join(body)}</table>"
    return sec


def settings_section(settings: Mapping[str, Any]) -> Section:
    import yaml

    keys = ["space", "data", "data_dir", "data_seed", "fixed", "method", "seed", "init_trials", "trials",
            "max_candidates", "parallel", "early_stopping", "early_stopping_from", "early_stopping_against",
            "retries", "trial_timeout_s", "workers", "scheduler", "resources", "threads", "created"]
    kv = "".join(f"<tr><th>{k}</th><td>{html.escape(_fmt(settings.get(k)))}</td></tr>" for k in keys)
    versions = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in (settings.get("versions") or {}).items())
    prof = yaml.safe_dump(settings.get("profile", {}), sort_keys=False).rstrip()
    sec = Section("settings", "Settings")
    sec.body = (f"<div class='cols'><div><h3>Run</h3><table class='kv'>{kv}</table>"
                f"<h3>Versions</h3><table class='kv'>{versions}</table></div>"
                f"<div><h3>Profile</h3><pre>{html.escape(prof)}</pre></div></div>")
    return sec


# ----------------------------------------------------------------- trade-off plots


def tradeoff_section(rows, fr, profile: HardwareProfile) -> Section:
    sec = Section("tradeoffs", "Trade-offs",
                  intro="Every trial is a point coloured by its index (later trials are yellower); the shape says "
                        "its state. Trials with no accuracy (over a budget, so never trained; failed; still "
                        "running) sit on the strip under each plot at their measured cost. The feasible Pareto "
                        "front is ringed (and joined where the plot is the objective plane); dashed red lines "
                        "are budgets, dotted grey lines thresholds, the star the reference point.")
    if not any(r["metrics"] for r in rows):
        sec.missing.append("No trial has measured costs yet, so there are no trade-off plots.")
        return sec
    for x, y in tradeoff_pairs(profile):
        sec.figures.append(tradeoff_figure(rows, fr, profile, x, y))
    return sec


def _use_log(values: Sequence[float]) -> bool:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) > 20


def tradeoff_figure(rows, fr, profile: HardwareProfile, x: str, y: str) -> Figure:
    """``y`` against ``x`` for every trial, with budgets, thresholds, the reference
    point and the feasible front drawn in. Trials with ``x`` but no ``y`` (never
    trained, failed, running) go on a strip under the plot."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    on_plane = [r for r in rows if x in r["metrics"] and y in r["metrics"]]
    strip = [r for r in rows if x in r["metrics"] and y not in r["metrics"]]
    no_x = [r for r in rows if x not in r["metrics"]]
    strip_states = [s for s in UNTRAINED_STATES if any(r["state"] == s for r in strip)]
    cmax = max([r["trial"] for r in rows] + [1])
    objective_plane = {x, y} <= set(profile.objective_metrics)
    # With more than two objectives a 2-D view of the front is not a front: ring it, don't join it.
    join = objective_plane and len(profile.objective_metrics) == 2
    ref = reference_point(profile) if objective_plane else {}
    star = (ref[x], ref[y]) if x in ref and y in ref else None
    budgets = {m: v for m, v in profile.budgets.items() if m in (x, y)}
    thresholds = [(m, op, v) for m, op, v in map(parse_bound, profile.thresholds)
                  if m in (x, y) and not (m in budgets and op == "<=")]
    log_x = _use_log([r["metrics"][x] for r in rows if x in r["metrics"]] + list(budgets.values()))
    fr_xy = sorted([r for r in fr if x in r["metrics"] and y in r["metrics"]], key=lambda r: r["metrics"][x])

    def hover(r) -> str:
        m = r["metrics"]
        return (f"trial {r['trial']} · {STATE_LABEL.get(r['state'], r['state'])}<br>{r['arch_id']}<br>"
                + "<br>".join(f"{k} {_fmt(m[k])}" for k in ("val_acc", "latency_ms", "num_params") if k in m)
                + (f"<br>over {', '.join(r['over_budget'])}" if r["over_budget"] else ""))

    def marker(state: str, pts) -> dict:
        return dict(symbol=STATE_MARKER[state][0], size=11, color=[r["trial"] for r in pts],
                    coloraxis="coloraxis", line=dict(width=1, color="#333"))

    # ---- plotly
    if strip_states:
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.82, 0.18], vertical_spacing=0.04)
        rc, strip_rc = dict(row=1, col=1), dict(row=2, col=1)
    else:
        fig, rc, strip_rc = go.Figure(), {}, {}
    for state in STATE_MARKER:
        if pts := [r for r in on_plane if r["state"] == state]:
            fig.add_trace(go.Scatter(
                x=[r["metrics"][x] for r in pts], y=[r["metrics"][y] for r in pts], mode="markers",
                name=f"{STATE_LABEL[state]} ({len(pts)})", text=[hover(r) for r in pts], hoverinfo="text",
                marker=marker(state, pts)), **rc)
        if pts := [r for r in strip if r["state"] == state]:
            fig.add_trace(go.Scatter(
                x=[r["metrics"][x] for r in pts], y=[STATE_LABEL[state]] * len(pts), mode="markers",
                name=f"{STATE_LABEL[state]}, no {y} ({len(pts)})", text=[hover(r) for r in pts], hoverinfo="text",
                marker=marker(state, pts)), **strip_rc)
    if fr_xy:
        fig.add_trace(go.Scatter(
            x=[r["metrics"][x] for r in fr_xy], y=[r["metrics"][y] for r in fr_xy],
            mode="lines+markers" if join else "markers", line=dict(color=FRONT_COLOR, width=2, shape="hv"),
            marker=dict(symbol="circle-open", size=20, color=FRONT_COLOR, line=dict(width=2.5)),
            name=f"feasible Pareto front ({len(fr_xy)})", text=[hover(r) for r in fr_xy], hoverinfo="text"), **rc)
    if star:
        fig.add_trace(go.Scatter(
            x=[star[0]], y=[star[1]], mode="markers", name=f"reference point ({star[0]:g}, {star[1]:g})",
            marker=dict(symbol="star", size=20, color="gold", line=dict(width=1.5, color="black"))), **rc)
    lines = [(m, v, f"budget {_bound_text(m, '<=', v)}", BUDGET_COLOR, "dash") for m, v in budgets.items()]
    lines += [(m, v, f"threshold {_bound_text(m, op, v)}", THRESHOLD_COLOR, "dot") for m, op, v in thresholds]
    for m, v, text, color, dash in lines:
        style = dict(line=dict(color=color, dash=dash), annotation_text=text, annotation_font_color=color)
        if m == x:
            fig.add_vline(x=v, annotation_position="top left", **style, **rc)
            if strip_states:
                fig.add_vline(x=v, line=dict(color=color, dash=dash), **strip_rc)
        else:
            fig.add_hline(y=v, annotation_position="bottom right", **style, **rc)
    fig.update_layout(
        height=560, margin=dict(l=70, r=30, t=40, b=60), template="plotly_white",
        coloraxis=dict(colorscale="Viridis", cmin=0, cmax=cmax, colorbar=dict(title="trial", len=0.6, y=0.62)),
        legend=dict(orientation="h", yanchor="top", y=-0.14, x=0))
    fig.update_yaxes(title_text=y, **rc)
    fig.update_xaxes(title_text=x + (" (log scale)" if log_x else ""), **strip_rc)
    if strip_states:
        fig.update_yaxes(type="category", categoryorder="array",
                         categoryarray=[STATE_LABEL[s] for s in strip_states], **strip_rc)
    if log_x:
        fig.update_xaxes(type="log")

    # ---- matplotlib
    def draw(mfig) -> None:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        if strip_states:
            top, bottom = mfig.subplots(2, 1, sharex=True, gridspec_kw=dict(height_ratios=[5, 1], hspace=0.08))
        else:
            top, bottom = mfig.subplots(), None
        norm = Normalize(0, cmax)
        for state in STATE_MARKER:
            if pts := [r for r in on_plane if r["state"] == state]:
                _mpl_scatter(top, [r["metrics"][x] for r in pts], [r["metrics"][y] for r in pts],
                             [r["trial"] for r in pts], state, norm, f"{STATE_LABEL[state]} ({len(pts)})")
            if pts := [r for r in strip if r["state"] == state]:
                _mpl_scatter(bottom, [r["metrics"][x] for r in pts], [strip_states.index(state)] * len(pts),
                             [r["trial"] for r in pts], state, norm, f"{STATE_LABEL[state]}, no {y} ({len(pts)})")
        if log_x:
            top.set_xscale("log")
        if fr_xy:
            fx, fy = [r["metrics"][x] for r in fr_xy], [r["metrics"][y] for r in fr_xy]
            if join:
                top.step(fx, fy, where="post", color=FRONT_COLOR, lw=2, zorder=3)
            top.scatter(fx, fy, s=260, facecolors="none", edgecolors=FRONT_COLOR, linewidths=2.2, zorder=4,
                        label=f"feasible Pareto front ({len(fr_xy)})")
        if star:
            top.scatter(*star, marker="*", s=320, color="gold", edgecolors="black", zorder=5,
                        label=f"reference point ({star[0]:g}, {star[1]:g})")
        for m, v, text, color, dash in lines:
            kw = dict(color=color, ls="--" if dash == "dash" else ":", lw=1.5)
            if m == x:
                top.axvline(v, label=text, **kw)
                if bottom is not None:
                    bottom.axvline(v, **kw)
            else:
                top.axhline(v, label=text, **kw)
        _include(top, [v for m, v, *_ in lines if m == x] + ([star[0]] if star else []), axis="x")
        _include(top, [v for m, v, *_ in lines if m == y] + ([star[1]] if star else []), axis="y")
        top.set_ylabel(y)
        top.set_title(f"{y} vs {x}")
        top.grid(alpha=0.3)
        last = top
        if bottom is not None:
            bottom.set_yticks(range(len(strip_states)), [STATE_LABEL[s] for s in strip_states])
            bottom.set_ylim(-0.7, len(strip_states) - 0.3)
            bottom.grid(alpha=0.3, axis="x")
            last = bottom
        last.set_xlabel(x + (" (log scale)" if log_x else ""))
        axes = [a for a in (top, bottom) if a is not None]
        handles, labels = (sum(z, []) for z in zip(*(a.get_legend_handles_labels() for a in axes)))
        top.legend(handles, labels, fontsize=7, loc="best", framealpha=0.85)
        mfig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=axes, label="trial", shrink=0.7)

    caption = (f"<b>{y}</b> against <b>{x}</b>. "
               + (f"{_plural(len(strip), 'trial')} without {y} on the strip. " if strip else "")
               + (f"{_plural(len(no_x), 'trial')} without {x} (not measured) left out. " if no_x else "")
               + ("" if join else "The front is over all objectives: its members are ringed, not joined. ")
               + ("No reference point drawn: an objective has no threshold or budget, so Ax infers it."
                  if objective_plane and not star else ""))
    return Figure(f"tradeoff_{y}_vs_{x}", f"{y} vs {x}", caption, fig, draw)


def _mpl_scatter(ax, xs, ys, idx, state: str, norm, label: str) -> None:
    import matplotlib as mpl

    if state == "running":  # open circle: the colour goes on the edge
        ax.scatter(xs, ys, marker="o", s=70, facecolors="none", edgecolors=mpl.colormaps["viridis"](norm(idx)),
                   linewidths=1.8, label=label, zorder=3)
    else:
        ax.scatter(xs, ys, c=idx, cmap="viridis", norm=norm, marker=STATE_MARKER[state][1],
                   s=90 if state == "failed" else 70, edgecolors="#333", linewidths=0.8, label=label, zorder=3)


def _include(ax, values: Sequence[float], axis: str) -> None:
    """Widen an axis so lines drawn at ``values`` are inside it (matplotlib does not
    count ``axvline``/``axhline`` when it autoscales)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return
    log = (ax.get_xscale() if axis == "x" else ax.get_yscale()) == "log"
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    vlo, vhi = min(values), max(values)
    if log:
        vlo, vhi = vlo / 1.15, vhi * 1.15
    else:
        pad = 0.04 * ((max(hi, vhi) - min(lo, vlo)) or 1.0)
        vlo, vhi = vlo - pad, vhi + pad
    lims = (min(lo, vlo), max(hi, vhi))
    ax.set_xlim(*lims) if axis == "x" else ax.set_ylim(*lims)


# ----------------------------------------------------------------- the surrogate


@dataclass
class Surrogate:
    """The model the analyses use: the run's own (from its generation strategy) when
    it has one, else one fitted here on the same data; or None and the reason."""

    adapter: Any = None  # ax.adapter.torch.TorchAdapter
    own: bool = True  # True: the generation strategy's model; False: fitted for the report
    source: str = ""
    why_not: str = ""

    @classmethod
    def fit(cls, client, rows) -> "Surrogate":
        from ax.adapter.torch import TorchAdapter

        exp, gs = experiment_of(client), generation_strategy_of(client)
        trained = _trained(rows)
        # Models, the search's and the report's, fit completed trials' val_acc only (odnas.loop.config)
        stopped = sum(r["state"] == "early_stopped" for r in trained)
        whose = "ones'" if stopped != 1 else "one's"
        fitted = _plural(len(trained) - stopped, "trained trial") + (
            f" (the {stopped} early-stopped {whose} partial val_acc left out, as in the search)" if stopped else "")
        try:
            adapter = gs.fit(experiment=exp)
        except Exception as e:  # noqa: BLE001 — Ax raises many kinds; the report names it and goes on
            adapter, gs_error = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:
            gs_error = ""
        node = gs.current_node_name
        # The search models only the metrics that steer it (odnas.loop.config); the
        # report checks and plots every metric, so a model of them all is fitted here.
        partial = isinstance(adapter, TorchAdapter) and bool(set(exp.metrics) - set(adapter.outcomes))
        if isinstance(adapter, TorchAdapter) and adapter.can_predict and not partial:
            return cls(adapter, True, (
                f"the run's own surrogate (Ax generation node <code>{html.escape(node)}</code>, "
                f"{type(adapter.generator).__name__}), fitted on {fitted}"))
        if len(trained) < MIN_TRAINED:
            return cls(why_not=(
                f"There is no surrogate model to check: the run has {_plural(len(trained), 'trained trial')} "
                f"(at least {MIN_TRAINED} are needed) and its generation strategy is at node '{node}', "
                "which has no model yet" + (f" ({gs_error})" if gs_error else "") + "."))
        from ax.adapter.registry import Generators

        from ax.adapter.base import DataLoaderConfig

        done = [r["trial"] for r in rows if r["state"] in ("completed", "early_stopped", "over_budget")]
        try:
            # As the search fits (odnas.loop.config): an early-stopped trial's val_acc is a
            # partial curve, not what its model reaches, so only completed trials' is fitted.
            adapter = Generators.BOTORCH_MODULAR(
                experiment=exp, data=exp.lookup_data(trial_indices=done),
                data_loader_config=DataLoaderConfig(fit_only_completed_map_metrics=True))
        except Exception as e:  # noqa: BLE001
            return cls(why_not=f"Ax could not fit a surrogate to this run's data ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else 'no message'}).")
        why = ("its model (the run's own surrogate) covers only the metrics in the objective and bounds"
               if partial else "which has no model (quasi-random methods never have one)")
        return cls(adapter, False, (
            f"a BoTorch surrogate fitted for this report on {fitted}, every metric: "
            f"the run's generation strategy is at node <code>{html.escape(node)}</code>, {why}"))

    def compute(self, client, analysis):
        """One Ax analysis card (an error card if it cannot be computed)."""
        if self.own:
            return client.compute_analyses([analysis], display=False)[0]
        return analysis.compute_or_error_card(experiment=experiment_of(client),
                                              generation_strategy=generation_strategy_of(client), adapter=self.adapter)

    def metric_names(self, exp) -> list[str]:
        sigs = getattr(self.adapter, "metric_signatures", set())
        return [m.name for s, m in exp.signature_to_metric.items() if s in sigs]


def _card_error(card) -> str | None:
    """The reason an Ax card is an error / not-applicable card, else None."""
    name = type(card).__name__
    if name in ("ErrorAnalysisCard", "NotApplicableStateAnalysisCard"):
        text = str(card.blob) if name == "NotApplicableStateAnalysisCard" else str(card.subtitle)
        return text.strip().splitlines()[0] if text.strip() else name
    return None


def _metric_order(profile: HardwareProfile, names: Sequence[str]) -> list[str]:
    first = list(profile.objective_metrics) + [m for m in profile.budgets if m not in profile.objective_metrics]
    first += [parse_bound(t)[0] for t in profile.thresholds]
    rank = {m: i for i, m in enumerate(dict.fromkeys(first))}
    return sorted(names, key=lambda m: (rank.get(m, len(rank)), m))


# ----------------------------------------------------------------- cross-validation


def cv_section(client, model: Surrogate, profile: HardwareProfile) -> Section:
    sec = Section("model-fit", "Model fit: leave-one-out cross-validation",
                  intro="Ax predicts each trial from its surrogate conditioned on all the other trials (leave-one-out, "
                        "hyperparameters kept from the full fit). Points "
                        "on the dotted diagonal are predicted exactly; bars are 95% intervals (horizontal: the "
                        "observation's noise, vertical: the model's uncertainty). <b>Coverage</b> is the share of "
                        "left-out trials inside the 95% predictive interval (about 0.95 is calibrated, far lower "
                        "means the model is over-confident); <b>Spearman ρ</b> says whether the model ranks "
                        "trials the right way, which is what the optimiser needs.")
    if model.adapter is None:
        sec.missing.append(model.why_not)
        return sec
    sec.intro += f"<br>Surrogate: {model.source}."
    from ax.analysis.plotly.cross_validation import CrossValidationPlot

    names = _metric_order(profile, model.metric_names(experiment_of(client)))
    card = model.compute(client, CrossValidationPlot(metric_names=names, folds=-1, untransform=True))
    if (err := _card_error(card)) is not None:
        sec.missing.append(f"Ax could not cross-validate the surrogate: {err}")
        return sec
    # One child card per metric, in the order asked for, then Ax's R² summary table.
    stats_rows = []
    for metric, child in zip(names, getattr(card, "children", [])):
        df = child.df
        if df.empty or not {"observed", "predicted"} <= set(df.columns):
            sec.missing.append(f"{metric}: Ax made no cross-validation predictions for it.")
            continue
        st = cv_stats(df["observed"], df["predicted"], df["observed_95_ci"], df["predicted_95_ci"])
        stats_rows.append((metric, st))
        if st["n"] < 3:
            sec.missing.append(f"{metric}: only {int(st['n'])} held-out point(s), too few to judge the fit "
                               "(rank correlation needs at least 3).")
        fig = child.get_figure()
        lo, hi = _cv_range(df)
        fig.update_layout(title=dict(text=f"{metric}: LOO-CV"), height=430, template="plotly_white",
                          margin=dict(l=60, r=20, t=40, b=50))
        # Ax's diagonal spans the intervals too; redraw it over the range shown.
        fig.layout.shapes = ()
        fig.add_shape(type="line", x0=lo, y0=lo, x1=hi, y1=hi, line=dict(color="gray", dash="dot"))
        fig.update_xaxes(title=f"observed {metric}", range=[lo, hi])
        fig.update_yaxes(title=f"predicted {metric} (left out)", range=[lo, hi])
        sec.figures.append(Figure(f"cv_{metric}", f"LOO-CV: {metric}", html.escape(_stats_line(st)), fig,
                                  _cv_drawer(df, metric, st)))
    head = "<tr><th>metric</th><th>n</th><th>coverage of 95% intervals</th><th>Spearman ρ</th><th>R²</th></tr>"
    body = "".join(f"<tr><td>{m}</td><td class='num'>{int(s['n'])}</td><td class='num'>{_fmt(s['coverage'])}</td>"
                   f"<td class='num'>{_fmt(s['spearman'])}</td><td class='num'>{_fmt(s['r2'])}</td></tr>"
                   for m, s in stats_rows)
    sec.body = f"<table class='grid' id='cv-summary'>{head}{body}</table>"
    return sec


def _stats_line(st: Mapping[str, float]) -> str:
    return (f"n = {int(st['n'])} · coverage of 95% intervals {_fmt(st['coverage'])} · Spearman ρ "
            f"{_fmt(st['spearman'])} · R² {_fmt(st['r2'])}")


def _cv_range(df) -> tuple[float, float]:
    """Axis range of a CV plot: every point, and the intervals only up to half the
    points' span (a model that knows nothing has intervals that hide the points)."""
    import numpy as np

    pts = np.concatenate([df["observed"].to_numpy(float), df["predicted"].to_numpy(float)])
    cis = np.concatenate([df["observed_95_ci"].fillna(0).to_numpy(float),
                          df["predicted_95_ci"].fillna(0).to_numpy(float)])
    lo, hi = float(pts.min()), float(pts.max())
    span = hi - lo or abs(hi) * 0.1 or 1.0
    pad = max(min(float(cis.max(initial=0.0)), 0.5 * span), 0.05 * span)
    return lo - pad, hi + pad


def _cv_drawer(df, metric: str, st: Mapping[str, float]) -> Callable[[Any], None]:
    def draw(mfig) -> None:
        ax = mfig.subplots()
        o, p = df["observed"].to_numpy(float), df["predicted"].to_numpy(float)
        oc, pc = df["observed_95_ci"].fillna(0).to_numpy(float), df["predicted_95_ci"].fillna(0).to_numpy(float)
        ax.errorbar(o, p, xerr=oc, yerr=pc, fmt="o", color="#1f77b4", ecolor="#1f77b480", capsize=2)
        lo, hi = _cv_range(df)
        ax.plot([lo, hi], [lo, hi], ls=":", color="gray")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(f"observed {metric}")
        ax.set_ylabel(f"predicted {metric} (left out)")
        ax.set_title(f"{metric}: LOO-CV\n{_stats_line(st)}", fontsize=9)
        ax.grid(alpha=0.3)
    return draw


# ----------------------------------------------------------------- parameter effects


def effects_section(client, model: Surrogate, profile: HardwareProfile) -> Section:
    sec = Section("effects", "Parameter effects",
                  intro="Which parameters the surrogate says matter (total-order Sobol indices, signed by the "
                        "direction of the effect; categorical parameters have no direction), and the surrogate's "
                        "prediction over the two most important ones, the other parameters held where Ax says "
                        "(black crosses are tried values). Trust these only as far as the model-fit section allows.")
    if model.adapter is None:
        sec.missing.append("No parameter-effect plots for the same reason: no surrogate model.")
        return sec
    exp = experiment_of(client)
    modelled = set(model.metric_names(exp))
    targets = list(dict.fromkeys(["val_acc", *profile.objective_metrics, "latency_ms"]))
    wanted = [m for m in targets if m in modelled]
    sec.missing += [f"{m} is not modelled yet (no observations), so its effects are not shown."
                    for m in targets if m not in modelled]
    if not wanted:
        return sec
    import pandas as pd
    from ax.analysis.plotly.sensitivity import _prepare_card_components
    from ax.analysis.plotly.surface.contour import ContourPlot
    from ax.analysis.plotly.surface.slice import SlicePlot
    from ax.utils.sensitivity.sobol_measures import ax_parameter_sens

    # Ax's SensitivityAnalysisPlot always draws 10^4 Monte-Carlo points per index (minutes
    # on mobile-cnn); the same computation with fewer points, drawn by Ax's own function.
    tunable = set(exp.search_space.tunable_parameters)
    try:
        sens = ax_parameter_sens(model.adapter, metrics=wanted, order="total", num_mc_samples=SOBOL_SAMPLES,
                                 exclude_task=True)
    except Exception as e:  # noqa: BLE001 — the report names the failure and goes on
        sec.missing.append(f"Ax could not compute parameter sensitivities ({type(e).__name__}: {e}).")
        return sec
    for metric in wanted:
        values = {p: float(v) for p, v in sens.get(metric, {}).items() if p in tunable}
        total = sum(abs(v) for v in values.values())
        if not values or total == 0 or not math.isfinite(total):
            sec.missing.append(f"{metric}: the surrogate shows no parameter effect (flat model).")
            continue
        df = pd.DataFrame([{"metric_name": metric, "parameter_name": p, "sensitivity": v / total}
                           for p, v in values.items()])
        _, fig = _prepare_card_components(data=df, metric_name=metric, metric_label=metric, top_k=TOP_K)
        fig.update_layout(title=dict(text=f"sensitivity of {metric}"), height=460, template="plotly_white")
        sec.figures.append(Figure(f"sensitivity_{metric}", f"Sensitivity of {metric}",
                                  f"Top {min(TOP_K, len(values))} of {len(values)} parameters, shares of the total "
                                  "(absolute values sum to 1).", fig, _sens_drawer(df, metric)))
        top = sorted(values, key=lambda p: -abs(values[p]))[:2]
        analysis = ContourPlot(top[0], top[1], metric_name=metric) if len(top) == 2 else SlicePlot(top[0], metric)
        card = model.compute(client, analysis)
        if (err := _card_error(card)) is not None:
            sec.missing.append(f"{metric}: Ax could not draw the surface over {' and '.join(top)}: {err}")
            continue
        sfig = card.get_figure()
        sfig.update_layout(title=dict(text=card.title), height=460, template="plotly_white")
        kind = "contour" if len(top) == 2 else "slice"
        caption = html.escape(card.subtitle.split(". This plot")[0]) + "."  # Ax's first sentence
        sec.figures.append(Figure(f"{kind}_{metric}", card.title, caption, sfig,
                                  _surface_drawer(card.df, metric, top, exp)))
    return sec


def _sens_drawer(df, metric: str) -> Callable[[Any], None]:
    def draw(mfig) -> None:
        ax = mfig.subplots()
        d = df.assign(a=df["sensitivity"].abs()).sort_values("a", ascending=True).tail(TOP_K)
        colors = ["#2ca02c" if v >= 0 else "#d62728" for v in d["sensitivity"]]
        ax.barh(d["parameter_name"], d["a"], color=colors)
        ax.set_xlabel(f"share of total sensitivity of {metric} (green: increases it, red: decreases it)")
        ax.set_title(f"sensitivity of {metric} (total-order Sobol)")
        ax.grid(alpha=0.3, axis="x")
    return draw


def _surface_drawer(df, metric: str, params: Sequence[str], exp) -> Callable[[Any], None]:
    import numpy as np

    def axis(values, name):
        vals = list(values)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        log = bool(getattr(exp.search_space.parameters[name], "log_scale", False))
        return vals, numeric, log

    def draw(mfig) -> None:
        ax = mfig.subplots()
        col = f"{metric}_mean"
        if len(params) == 1:
            p = params[0]
            d = df.sort_values(p)
            xs, numeric, log = axis(d[p], p)
            pos = np.asarray(xs, float) if numeric else np.arange(len(xs))
            m, s = d[col].to_numpy(float), d[f"{metric}_sem"].to_numpy(float)
            ax.plot(pos, m, color="#1f77b4")
            ax.fill_between(pos, m - Z95 * s, m + Z95 * s, alpha=0.2)
            if not numeric:
                ax.set_xticks(pos, [str(v) for v in xs])
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(p)
            ax.set_ylabel(f"predicted {metric}")
        else:
            px, py = params
            grid = df.pivot_table(index=py, columns=px, values=col, aggfunc="mean")
            xs, xnum, xlog = axis(grid.columns, px)
            ys, ynum, ylog = axis(grid.index, py)
            z = grid.to_numpy(float)
            if xnum and ynum and len(xs) >= 3 and len(ys) >= 3 and not np.isnan(z).any():
                cs = ax.contourf(np.asarray(xs, float), np.asarray(ys, float), z, levels=14, cmap="viridis")
                xmap, ymap = (lambda v: float(v)), (lambda v: float(v))
                if xlog:
                    ax.set_xscale("log")
                if ylog:
                    ax.set_yscale("log")
            else:
                cs = ax.pcolormesh(np.arange(len(xs) + 1) - 0.5, np.arange(len(ys) + 1) - 0.5,
                                   np.ma.masked_invalid(z), cmap="viridis", shading="flat")
                ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs], rotation=30 if len(xs) > 6 else 0)
                ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys])
                xmap = {v: i for i, v in enumerate(xs)}.get
                ymap = {v: i for i, v in enumerate(ys)}.get
            sampled = df[df["sampled"]] if "sampled" in df.columns else df.iloc[:0]
            pts = [(xmap(a), ymap(b)) for a, b in zip(sampled[px], sampled[py])]
            pts = [(a, b) for a, b in pts if a is not None and b is not None]
            if pts:
                ax.scatter(*zip(*pts), marker="x", color="black", s=30, label="tried")
            mfig.colorbar(cs, ax=ax, label=f"predicted {metric}")
            ax.set_xlabel(px)
            ax.set_ylabel(py)
        ax.set_title(f"{metric} over {' and '.join(params)} (surrogate mean)", fontsize=10)
    return draw


# ----------------------------------------------------------------- output


def save_png(fig: Figure, path: Path) -> None:
    """The static copy of a figure (matplotlib, Agg; no display needed)."""
    from matplotlib.figure import Figure as MplFigure

    mfig = MplFigure(figsize=(8, 6) if fig.key.startswith("tradeoff") else (7, 5), layout="constrained")
    fig.draw_png(mfig)
    mfig.savefig(path, dpi=110)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1200px;padding:0 20px 60px;
color:#222;line-height:1.45}
h1{margin:24px 0 4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:40px}h3{margin:16px 0 6px}
.sub{color:#666;margin:0 0 16px}nav a{margin-right:14px}
table{border-collapse:collapse;font-size:14px;margin:8px 0}
table.grid td,table.grid th{border:1px solid #ddd;padding:4px 8px;text-align:left}table.grid th{background:#f4f4f4}
table.kv th{text-align:left;padding:2px 14px 2px 0;color:#555;font-weight:600;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.over_budget td{color:#8a4b00}tr.failed td{color:#b00020}tr.running td{color:#666;font-style:italic}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px;font-size:13px}code.cmd{white-space:nowrap}
pre{background:#f7f7f7;padding:10px;border-radius:4px;font-size:13px;overflow-x:auto}
.missing{background:#fff6e0;border-left:4px solid #f0ad00;padding:8px 16px;margin:12px 0}
.missing li{margin:4px 0}.none{color:#777;font-style:italic}
.figs{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:18px}
@media (max-width:900px){.figs{grid-template-columns:minmax(0,1fr)}}
.figs.wide{grid-template-columns:1fr}.scroll{overflow-x:auto}figure>div{min-width:0}
figure{margin:0;min-width:0;border:1px solid #e5e5e5;border-radius:6px;padding:8px}
figcaption{font-size:13px;color:#444;margin-top:4px}figcaption a{color:#888;font-size:12px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:24px}
"""


def render_html(run_dir: Path, settings: Mapping[str, Any], sections: Sequence[Section]) -> str:
    """One self-contained HTML page: plotly.js is inlined once, nothing is fetched."""
    first = True
    parts = []
    missing = [m for s in sections for m in s.missing]
    nav = " ".join(f"<a href='#{s.id}'>{html.escape(s.title.split(':')[0])}</a>" for s in sections)
    for sec in sections:
        figs = []
        for f in sec.figures:
            f.plotly.update_layout(width=None, autosize=True)
            div = f.plotly.to_html(full_html=False, include_plotlyjs=first, div_id=f"fig-{f.key}",
                                   default_width="100%", default_height=f"{f.plotly.layout.height or 450}px",
                                   config={"displaylogo": False, "responsive": True})
            first = False
            figs.append(f"<figure id='{f.key}'>{div}<figcaption>{f.caption} "
                        f"<a href='{html.escape(f.key)}.png'>PNG</a></figcaption></figure>")
        miss = "".join(f"<li>{html.escape(m)}</li>" for m in sec.missing)
        parts.append(
            f"<section id='{sec.id}'><h2>{html.escape(sec.title)}</h2>"
            + (f"<p>{sec.intro}</p>" if sec.intro else "")
            + (f"<ul class='missing'>{miss}</ul>" if miss and sec.id != "overview" else "")
            + sec.body
            + (f"<div class='figs {'wide' if sec.id == 'tradeoffs' else ''}'>{''.join(figs)}</div>" if figs else "")
            + "</section>")
    summary = ("<div class='missing'><b>Missing from this report, and why:</b><ul>"
               + "".join(f"<li>{html.escape(m)}</li>" for m in missing) + "</ul></div>") if missing else ""
    title = f"odnas report: {run_dir.name}"
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='sub'>Run dir <code>{html.escape(str(run_dir))}</code> · "
        f"{html.escape(str(settings.get('space')))} under {html.escape(settings['profile']['name'])} · "
        f"written {now}</p><nav>{nav}</nav>{summary}{''.join(parts)}</body></html>")
