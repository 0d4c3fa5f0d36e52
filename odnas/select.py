"""Selection: the feasible Pareto front and a budgeted pick.

The core is pure functions on arrays and plain rows (``pareto_mask``, ``feasible``,
``front``, ``pick``) on ``TrialRow`` records (``odnas.loop.store.trial_table`` makes
them from a stored experiment). Nothing here knows Ax.
A model over any hard budget is never feasible, so never on the front or picked.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from odnas.errors import SelectError
from odnas.profiles import METRIC_SIGN, HardwareProfile, never_met, parse_bound
from odnas.records import TrialRow


def pareto_mask(y: np.ndarray) -> np.ndarray:
    """Non-dominated rows of ``y`` (shape ``n x m``, every column **maximised**).

    Returns a boolean array of shape ``(n,)``. Duplicated points are all kept.
    """
    y = np.asarray(y, dtype=float)
    n = len(y)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        dominated = np.all(y >= y[i], axis=1) & np.any(y > y[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def meets(metrics: Mapping[str, float], bounds: Sequence[str]) -> bool:
    """Whether ``metrics`` satisfy every Ax bound string (a missing metric fails)."""
    for b in bounds:
        m, op, v = parse_bound(b)
        x = metrics.get(m)
        if x is None or not math.isfinite(float(x)):
            return False
        if (op == "<=" and x > v) or (op == ">=" and x < v):
            return False
    return True


def feasible(row: TrialRow, profile: HardwareProfile, extra: Sequence[str] = ()) -> bool:
    """A trained model within every budget, threshold and extra bound."""
    m = row.metrics
    return (row.state == "completed" and "val_acc" in m
            and not profile.over_budget(m)
            and meets(m, profile.bounds() + list(extra)))


def objective_matrix(rows: Sequence[TrialRow], objectives: Sequence[str]) -> np.ndarray:
    """Rows' objective values, signed so that every column is maximised."""
    return np.array([[METRIC_SIGN[o] * float(r.metrics[o]) for o in objectives] for r in rows]).reshape(
        len(rows), len(objectives))


def front(rows: Sequence[TrialRow], profile: HardwareProfile,
          extra: Sequence[str] = ()) -> list[TrialRow]:
    """The feasible Pareto front over the profile's objectives, most accurate first."""
    ok = [r for r in rows if feasible(r, profile, extra)]
    if not ok:
        return []
    mask = pareto_mask(objective_matrix(ok, profile.objective_metrics))
    return sorted([r for r, keep in zip(ok, mask) if keep], key=_rank)


def pick(rows: Sequence[TrialRow], profile: HardwareProfile,
         extra: Sequence[str] = ()) -> TrialRow | None:
    """The most accurate feasible model (ties: cheaper first), or None."""
    f = front(rows, profile, extra)
    return f[0] if f else None


def _rank(r: TrialRow) -> tuple:
    m = r.metrics
    return (-m["val_acc"], m.get("latency_ms", 0.0), m.get("num_params", 0), r.trial)


def select_bounds(max_latency_ms: float | None = None, min_acc: float | None = None) -> list[str]:
    """``select``'s extra bounds as Ax bound strings; one no model can meet is refused
    (``--min-acc 90`` for 90%), rather than timing the front to find nothing."""
    if max_latency_ms is not None and not (max_latency_ms > 0 and math.isfinite(max_latency_ms)):
        raise SelectError(f"--max-latency-ms {max_latency_ms:g}: must be a positive number of milliseconds"
                          + (" (leave it out for no limit)" if max_latency_ms == math.inf else ""))
    if min_acc is not None and not (math.isfinite(min_acc) and min_acc >= 0):
        raise SelectError(f"--min-acc {min_acc:g}: must be a number between 0 and 1 (leave it out for no bound)")
    if min_acc is not None and (why := never_met("val_acc", ">=", min_acc)):
        raise SelectError(f"--min-acc {min_acc:g}: {why}")
    out = []
    if max_latency_ms is not None:
        out.append(f"latency_ms <= {max_latency_ms}")
    if min_acc is not None:
        out.append(f"val_acc >= {min_acc}")
    return out


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume dominated by ``points`` (n x m, maximised) above ``ref`` (m,)."""
    import torch
    from botorch.utils.multi_objective.hypervolume import Hypervolume

    pts = np.asarray(points, dtype=float)
    pts = pts[np.all(pts > ref, axis=1)] if len(pts) else pts
    if len(pts) == 0:
        return 0.0
    return float(Hypervolume(torch.tensor(ref, dtype=torch.double)).compute(torch.tensor(pts, dtype=torch.double)))


def proxy_correlations(rows: Sequence[TrialRow]) -> dict[str, float | None]:
    """Spearman rank correlation of ``flops`` and ``num_params`` with measured
    ``latency_ms`` over every measured candidate (None below 3 candidates)."""
    pts = [r.metrics for r in rows if all(k in r.metrics for k in ("latency_ms", "flops", "num_params"))]
    out: dict[str, float | None] = {"n": len(pts)}
    for proxy in ("flops", "num_params"):
        out[proxy] = spearman([m[proxy] for m in pts], [m["latency_ms"] for m in pts]) if len(pts) >= 3 else None
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho, ties given their average rank (as ``scipy.stats.spearmanr``, whose
    import alone takes a second that ``odnas status`` would spend); NaN if either
    side is constant."""
    def ranks(x: Sequence[float]) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        inverse = np.unique(x, return_inverse=True)[1]
        order = np.argsort(x, kind="stable")
        r = np.empty(len(order))
        r[order] = np.arange(1, len(order) + 1)
        return (np.bincount(inverse, r) / np.bincount(inverse))[inverse]

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
