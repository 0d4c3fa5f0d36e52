"""Ax metrics that read a trial's results: ``val_acc`` from its trial dir, costs from
the cost lane's figures kept in the trial's run metadata.

Everything they need is in the run metadata (JSON), so Ax stores and rebuilds them
with the experiment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from odnas.loop.adapter import import_ax
from odnas.rundir import RESULT_NAME, read_curve, read_json, resolve_trial_dir

import_ax()

from ax.api.protocols.metric import IMetric  # noqa: E402
from ax.core.base_trial import BaseTrial  # noqa: E402
from ax.core.data import Data  # noqa: E402
from ax.utils.common.result import Ok  # noqa: E402



class ValAccMetric(IMetric):
    """``val_acc`` read from the trial dir: the curve while running, the result at the end."""

    def __init__(self, name: str = "val_acc") -> None:
        super().__init__(name=name)
        self.lower_is_better = False  # set here, not stored: a reloaded metric gets it too

    def fetch(self, trial_index: int, trial_metadata: Mapping[str, Any]) -> tuple[int, float]:
        # Stored trial dirs are relative to the run dir; where it is now, the runner knows.
        tdir = resolve_trial_dir(getattr(self, "_run_dir", None), trial_metadata["trial_dir"])
        res = read_json(tdir / RESULT_NAME)
        if res is not None:
            return int(res["epochs"]), float(res["val_acc"])
        curve = read_curve(tdir)
        if not curve:
            raise RuntimeError(f"no val_acc yet in {tdir}")
        return int(curve[-1]["epoch"]), float(curve[-1]["val_acc"])

    def fetch_trial_data(self, trial: BaseTrial, **kwargs: Any):
        # A candidate over a budget is never trained: it has no accuracy, on purpose.
        if trial.run_metadata.get("over_budget"):
            return Ok(value=Data())
        self._run_dir = getattr(trial.experiment.runner, "run_dir", None)  # not stored: Ax keeps init args only
        return super().fetch_trial_data(trial, **kwargs)

    @classmethod
    def is_available_while_running(cls) -> bool:
        # Not without early stopping: Ax fetches and saves every running trial's data on
        # every poll when any metric is, which cost 0.4 s of storage writes per poll.
        return False


class ValAccCurveMetric(ValAccMetric):
    """``val_acc`` read while the trial runs too: the learning curve early stopping needs."""

    @classmethod
    def is_available_while_running(cls) -> bool:
        return True


class CostMetric(IMetric):
    """A cost metric (params, FLOPs, bytes, latency) from the cost lane, kept in run metadata."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name)
        self.lower_is_better = True

    def fetch(self, trial_index: int, trial_metadata: Mapping[str, Any]) -> tuple[int, tuple[float, float]]:
        value = float(trial_metadata["costs"][self.name])
        # Counts are exact (SEM 0); a timing without a recorded SEM is noisy, not exact.
        default = float("nan") if self.name.startswith("latency") else 0.0
        sem = float(trial_metadata.get("costs_sem", {}).get(self.name, default))
        return 0, (value, sem)

    @classmethod
    def is_available_while_running(cls) -> bool:
        return False  # known at deploy, but fetched with the result: see ValAccMetric


