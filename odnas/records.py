"""Typed, versioned records: what odnas writes to a run dir and reads back.

Each record is a dataclass with a ``schema_version`` and ``to_dict`` / ``from_dict``.
``from_dict`` accepts every version this odnas has written (a record written before
versions existed counts as version 0 and gets today's defaults) and refuses a newer
one with one line, so an old run dir still loads and a new one is never misread.
Standard library only: every layer may import this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from odnas.errors import RunDirError


def _check_version(cls_name: str, d: Mapping[str, Any], current: int, source: str) -> int:
    v = d.get("schema_version", 0)
    if not isinstance(v, int) or v > current:
        raise RunDirError(f"{source}: {cls_name} schema_version {v!r} is newer than this odnas reads "
                          f"(up to {current}); upgrade odnas to read it")
    return v


def _known(cls, d: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


class _Versioned:
    """``to_dict`` and a ``from_dict`` that reads every version up to ``SCHEMA_VERSION``
    (unknown keys ignored, missing ones defaulted) and refuses a newer one."""

    SCHEMA_VERSION: ClassVar[int] = 1
    WHAT: ClassVar[str] = "record"
    KEEP_NONE: ClassVar[bool] = False  # keep fields that are None in to_dict

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return d if self.KEEP_NONE else {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None):
        _check_version(cls.WHAT, d, cls.SCHEMA_VERSION, source or cls.WHAT)
        return cls(**{**_known(cls, d), "schema_version": cls.SCHEMA_VERSION})


# ------------------------------------------------------------------ latency


@dataclass(frozen=True)
class LatencyKey:
    """What must match for two latency figures to be compared (pyperf's checked metadata):
    the host and its CPU, the ONNX Runtime build, and the session settings.

    The CPU is its name and its signature (``odnas_device.timing.cpu_signature``): hosts
    are often all called ``vm`` with a CPU that calls itself "AMD EPYC" whatever its
    generation, and a run resumed on other hardware must not take the first host's
    figures for its own. A record from before the signature was kept (or from an agent
    that does not report it) has none; that field is then not checked."""

    host: str
    cpu_model: str
    ort_version: str
    provider: str
    intra_op_threads: int
    inter_op_threads: int
    batch_size: int
    graph_optimization: str
    device_id: str | None = None  # a device agent's machine id (None: the search's own host)
    cpu_signature: str | None = None  # None: not recorded, so not checked

    #: Fields whose absence on either side (None) means "not recorded", not a difference.
    CHECKED_IF_KNOWN: ClassVar[tuple[str, ...]] = ("cpu_signature",)

    @classmethod
    def same(cls, name: str, a: Any, b: Any) -> bool:
        """Whether two values of field (or calibration host key) ``name`` agree."""
        return a == b or (name in cls.CHECKED_IF_KNOWN and (a is None or b is None))

    @classmethod
    def of(cls, latency: Mapping[str, Any]) -> "LatencyKey":
        """The key of a latency record (``LatencyResult.to_dict()`` or a stored one)."""
        return cls(**{f.name: latency.get(f.name) for f in dataclasses.fields(cls)})

    def differs(self, other: "LatencyKey") -> list[str]:
        """Names of the fields that differ (empty: comparable)."""
        return [f.name for f in dataclasses.fields(self)
                if not self.same(f.name, getattr(self, f.name), getattr(other, f.name))]


# ------------------------------------------------------------------ cost lane


@dataclass(frozen=True)
class CostRecord(_Versioned):
    """One candidate's costs, as the cost lane measured them (``costs/ARCH_ID.json``).

    ``metrics`` carry units in their names (``num_params``, ``flops`` with one
    multiply-add = one flop, ``model_bytes``, ``latency_ms``, ``latency_ms_p90``);
    ``sem`` their standard errors; ``latency`` the full latency record with its
    environment. Under a calibrated profile ``metrics`` are device estimates and
    ``host_metrics`` keeps what the host measured.
    """

    WHAT: ClassVar[str] = "cost record"

    arch_id: str
    space: str
    profile: str
    precision: str
    metrics: dict[str, float]
    sem: dict[str, float] = field(default_factory=dict)
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    host_metrics: dict[str, float] | None = None
    # what was built (``odnas.cost.lane.structure_digest``) and from which parameters, so a
    # run resumed after its space's build() changed is told, not given old costs; "" and
    # None in records from before
    structure: str = ""
    params: dict[str, Any] | None = None
    schema_version: int = _Versioned.SCHEMA_VERSION

    @property
    def latency_key(self) -> LatencyKey:
        return LatencyKey.of(self.latency)


# ------------------------------------------------------------------ run settings


@dataclass
class RunSettings:
    """A search's settings, frozen into ``RUN/odnas.json`` when the run is made.

    ``profile`` is the effective profile as a dict (flags applied), ``input_shape``
    and ``num_classes`` come from the data, ``threads`` is per training job.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    space: str
    profile: dict[str, Any]
    input_shape: list[int]
    num_classes: int
    data: str = "digits"
    data_dir: str | None = None
    data_seed: int = 0
    trials: int = 16
    max_candidates: int = 64
    parallel: int = 2
    seed: int = 0
    method: str = "bo"
    init_trials: int | None = None
    scheduler: str = "local_cwd"
    scheduler_cfg: dict[str, str] = field(default_factory=dict)
    resources: str | None = None
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[str] = field(default_factory=list)
    threads: int = 1
    fixed: dict[str, Any] = field(default_factory=dict)
    tolerated_failure_rate: float = 0.5
    poll_s: float = 1.0
    retries: int = 0
    trial_timeout_s: float | None = None
    early_stopping: bool = False
    early_stopping_from: int = 1  # the first epoch after which early stopping may stop a trial
    early_stopping_against: str = "all"  # runs from before the setting used Ax's rule against all trials
    isolation: str = "pause"
    workers: str = "warm"  # "warm": long-lived TorchX workers fork a child per trial; "fresh": a job per trial
    lookahead: int = 0  # warm only: trials queued per worker beyond the one it trains (generated while it trains)
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    # the space's specs as the run began (``odnas.spaces.spec_lines``); empty in runs from before
    space_specs: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "run settings") -> "RunSettings":
        _check_version("run settings", d, cls.SCHEMA_VERSION, source)
        missing = [k for k in ("space", "profile", "input_shape", "num_classes") if k not in d]
        if missing:
            raise RunDirError(f"{source} lacks {', '.join(missing)}; the run dir's settings are damaged")
        known = _known(cls, d)
        if known.get("max_candidates") is None:  # version 0 could leave it out
            known["max_candidates"] = 4 * int(known.get("trials", 16))
        return cls(**{**known, "schema_version": cls.SCHEMA_VERSION})


# ------------------------------------------------------------------ trials


#: The states a trial row can be in, for people and for selection.
TRIAL_STATES = ("running", "completed", "over_budget", "failed", "early_stopped")


@dataclass(frozen=True)
class TrialRow(_Versioned):
    """One trial of a run as selection, status and the report see it.

    ``metrics`` hold ``val_acc`` (trained trials) and the cost metrics; ``sem`` their
    standard errors; ``over_budget`` the budgets a candidate broke (it was never trained).
    """

    WHAT: ClassVar[str] = "trial row"
    KEEP_NONE: ClassVar[bool] = True

    trial: int
    state: str
    arch_id: str | None
    params: dict[str, Any]
    metrics: dict[str, float]
    sem: dict[str, float] = field(default_factory=dict)
    over_budget: list[str] = field(default_factory=list)
    reason: str | None = None
    trial_dir: str | None = None
    retry_of: int | None = None
    latency_confirmed: bool = False
    search_metrics: dict[str, float] | None = None  # the search's figures, when these were measured again
    schema_version: int = _Versioned.SCHEMA_VERSION

    def replace(self, **changes: Any) -> "TrialRow":
        return dataclasses.replace(self, **changes)

    @property
    def trained(self) -> bool:
        """A model was trained: completed (not over a budget, which is its own state) or early-stopped."""
        return self.state in ("completed", "early_stopped")

    def flat(self) -> dict[str, Any]:
        """One flat record: ``trial``, ``state``, ``arch_id``, ``reason``, ``retry_of``,
        then ``p.NAME`` per parameter, the metrics by name, and ``sem.NAME``."""
        return {"trial": self.trial, "state": self.state, "arch_id": self.arch_id, "reason": self.reason,
                "retry_of": self.retry_of, **{f"p.{k}": v for k, v in sorted(self.params.items())},
                **dict(sorted(self.metrics.items())), **{f"sem.{k}": v for k, v in sorted(self.sem.items())}}



# ------------------------------------------------------------------ model card


@dataclass
class ModelCard(_Versioned):
    """What an artifact is (``NAME.json`` beside ``NAME.onnx``): the model, its figures
    under each profile with their error bars, budgets met, input contract and provenance.
    Paths on the card are relative to the card's folder or the run dir, never absolute."""

    WHAT: ClassVar[str] = "model card"

    arch_id: str
    space: str
    params: dict[str, Any]
    precision: str
    metrics: dict[str, Any]
    budgets: dict[str, dict[str, Any]]
    profile: dict[str, Any]
    input: dict[str, Any]
    output: dict[str, Any]
    labels: list[str]
    data: dict[str, Any]
    parity: dict[str, Any]
    precisions: dict[str, dict[str, Any]]
    profiles: dict[str, dict[str, Any]]
    latency: dict[str, Any]
    onnx: dict[str, Any]
    environment: dict[str, Any]
    odnas_version: str
    created: str
    onnx_sha256: str
    artifact: str
    quantization: dict[str, Any] | None = None
    run: dict[str, Any] | None = None
    schema_version: int = _Versioned.SCHEMA_VERSION

    def content_sha256(self) -> str:
        """A hash of the card's content without the files' own hashes (which change when
        the hash is written into the files): the ONNX file's ``odnas.card_sha256``."""
        import hashlib
        import json

        def strip(o: Any) -> Any:
            if isinstance(o, dict):
                return {k: strip(v) for k, v in o.items() if k not in ("sha256", "onnx_sha256")}
            if isinstance(o, list):
                return [strip(v) for v in o]
            return o

        text = json.dumps(strip(self.to_dict()), sort_keys=True, default=float)
        return hashlib.sha256(text.encode()).hexdigest()


def trials_frame(rows: list[TrialRow]):
    """A pandas DataFrame, one row per trial (``TrialRow.flat``)."""
    import pandas as pd

    return pd.DataFrame.from_records([r.flat() for r in rows])
