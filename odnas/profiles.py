"""Hardware profiles: a named deployment target loaded from ``profiles/NAME.yaml``.

A profile says how a candidate is measured (ONNX Runtime settings, batch size, the
measurement protocol), what the search optimises (an Ax objective string plus
objective thresholds) and what may never be shipped (hard budgets). Loading
validates everything and names the file, the key and the bad value.
This module imports only the standard library and PyYAML so ``odnas --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from odnas.errors import ProfileError

#: Metrics odnas produces. Units live in the names (see docs).
ACCURACY_METRICS = ("val_acc",)
COST_METRICS = ("num_params", "flops", "model_bytes", "latency_ms", "latency_ms_p90")
KNOWN_METRICS = ACCURACY_METRICS + COST_METRICS
#: Direction of every metric: +1 maximise, -1 minimise.
METRIC_SIGN = {"val_acc": 1, **{m: -1 for m in COST_METRICS}}

PROVIDERS = (
    "CPUExecutionProvider",
    "XnnpackExecutionProvider",
    "CoreMLExecutionProvider",
    "NnapiExecutionProvider",
    "QNNExecutionProvider",
    "OpenVINOExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
)
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
STATISTICS = ("median", "mean")
PRECISIONS = ("fp32", "int8")
PROTOCOL_METHODS = ("reference", "plain")
#: Forms of the host -> device latency mapping (see ``odnas.calibrate``).
CALIBRATION_MODELS = ("loglinear", "ratio")

_BOUND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")




@dataclass(frozen=True)
class Runtime:
    """ONNX Runtime session settings. ``intra_op_threads: 0`` lets ORT use all cores."""

    provider: str = "CPUExecutionProvider"
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: str = "all"


@dataclass(frozen=True)
class Protocol:
    """How latency is measured (``odnas_device.protocol``).

    ``method: reference`` (the default) times the candidate against a fixed reference
    model: ``sessions`` fresh sessions of ``rounds`` alternating bursts of
    ``burst_runs`` runs each, after ``warmup_runs`` warm-ups; the figure is the ratio
    times the reference's fast-mode time, calibrated once per host over
    ``calibration_s`` seconds. Bursts shrink to keep a slow candidate near
    ``max_time_s``. ``method: plain`` runs warm-ups, then repeats until both
    ``min_runs`` and ``min_time_s`` are met (or ``max_time_s`` passes) and reports the
    ``statistic``: figures that move with the host's speed mode.
    """

    method: str = "reference"
    warmup_runs: int = 10
    sessions: int = 8
    rounds: int = 6
    burst_runs: int = 40
    calibration_s: float = 30.0
    min_runs: int = 50
    min_time_s: float = 0.2
    max_time_s: float = 5.0
    statistic: str = "median"


@dataclass(frozen=True)
class CalibrationSpec:
    """Latencies of odnas's reference models measured on the real device, from which
    ``odnas.calibrate`` fits a mapping from this host's latency to the device's.

    ``table`` is a CSV (``model,latency_ms[,latency_ms_p90,runs,notes]``), stored as an
    absolute path; ``references`` are inline rows ``{model: latency_ms}``; both may be
    given. ``input_shape`` is the (C, H, W) the references were exported with; empty
    means "as recorded beside the table, else 1x8x8". ``device`` is free text.
    """

    table: str = ""
    references: Mapping[str, float] = field(default_factory=dict)
    model: str = "loglinear"
    input_shape: tuple[int, ...] = ()
    device: str = ""


@dataclass(frozen=True)
class DeviceSpec:
    """Time candidates on a device through its agent (``odnas-device serve``) instead of
    on the search's host. The token is read from the environment variable ``token_env``
    when a timing is asked for, and is never stored. A timing that fails because the
    device went away is tried ``retries`` more times, ``retry_wait_s`` apart and
    doubling, before the search stops; one that takes longer than ``timeout_s`` stops it
    at once. A device's figures need no ``calibration``: a profile with both ignores it."""

    url: str
    token_env: str = "ODNAS_DEVICE_TOKEN"
    timeout_s: float = 300.0
    retries: int = 3
    retry_wait_s: float = 5.0


_URL = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?/?$")


def check_device_url(url: str) -> str:
    """``url`` without a trailing slash, or ProfileError: the agent's base address."""
    if not isinstance(url, str) or not _URL.match(url.strip()):
        raise ProfileError(f"device url {url!r}: expected http://HOST:PORT, as odnas-device serve prints it")
    return url.strip().rstrip("/")


@dataclass(frozen=True)
class HardwareProfile:
    """A deployment target. Frozen: a loaded profile never changes under a search."""

    name: str
    description: str = ""
    runtime: Runtime = field(default_factory=Runtime)
    batch_size: int = 1
    protocol: Protocol = field(default_factory=Protocol)
    objective: str = "val_acc, -latency_ms"
    thresholds: tuple[str, ...] = ()
    budgets: Mapping[str, float] = field(default_factory=dict)
    precision: str = "fp32"
    source: str = ""
    #: device latencies of reference models; when set, latency_ms means device milliseconds
    calibration: CalibrationSpec | None = None
    #: a device agent that times every candidate; when set, latency_ms is timed on the device
    device: DeviceSpec | None = None

    @property
    def objective_metrics(self) -> tuple[str, ...]:
        return tuple(t.strip().lstrip("-+").strip() for t in self.objective.split(","))

    def budget_constraints(self) -> list[str]:
        """Budgets as Ax constraint strings, e.g. ``["latency_ms <= 0.2"]``."""
        return [f"{m} <= {_fmt(v)}" for m, v in self.budgets.items()]

    def bounds(self) -> list[str]:
        """Every bound a feasible model meets, thresholds then budgets, as Ax constraint strings."""
        return list(self.thresholds) + self.budget_constraints()

    def over_budget(self, metrics: Mapping[str, float]) -> list[str]:
        """Names of the budgets that ``metrics`` break. A missing metric breaks nothing;
        a NaN one breaks its budget (it cannot be shown to be within it)."""
        return [
            m for m, limit in self.budgets.items()
            if m in metrics and metrics[m] is not None and not float(metrics[m]) <= limit
        ]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["thresholds"] = list(self.thresholds)
        d["budgets"] = dict(self.budgets)
        if self.calibration is None:
            del d["calibration"]  # profiles without one print and store as before
        else:
            d["calibration"]["references"] = dict(self.calibration.references)
            d["calibration"]["input_shape"] = list(self.calibration.input_shape)
        if self.device is None:
            del d["device"]
        return d


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) >= 1 else repr(float(v))


def profiles_dir() -> Path:
    return Path(__file__).resolve().parent / "_profiles"


def list_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


class _TwiceError(ValueError):
    pass


class _OnceLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (where PyYAML keeps
    the last silently: ``batch_size: 1`` then ``batch_size: 4`` would be 4)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # merge keys (<<) first, as the base class does
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    twice = key in seen
                except TypeError:  # an unhashable key: the base class says so in YAML's terms
                    break
                if twice:
                    raise _TwiceError(f"key {key!r} is given twice (line {key_node.start_mark.line + 1}); keep one")
                seen.add(key)
        return super().construct_mapping(node, deep)


def _did_you_mean(text: str) -> str:
    """A file of the user's beside them (``my-phone`` for ``./my-phone.yaml``), else the
    closest shipped name (``cpu_mobile``)."""
    import difflib

    for ext in (".yaml", ".yml"):
        if Path(text + ext).is_file():
            return f" (did you mean the file ./{text}{ext}?)"
    close = difflib.get_close_matches(text, list_profiles(), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load a shipped profile by name (``cpu-mobile``) or a user's YAML file by path."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file() or "/" in text):
        path = profiles_dir() / f"{text}.yaml"
        if not path.is_file():
            raise ProfileError(f"{text}: no such profile{_did_you_mean(text)}; shipped profiles are "
                               f"{', '.join(list_profiles())} (or pass a path to a YAML file)")
    if not path.is_file():
        raise ProfileError(f"{path}: profile file not found")
    try:
        raw = yaml.load(path.read_text(), Loader=_OnceLoader)  # noqa: S506 -- a SafeLoader
    except _TwiceError as e:
        raise ProfileError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ProfileError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        raise ProfileError(f"{path}: file is empty")
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    profile = profile_from_dict(raw, source=str(path), default_name=path.stem, base_dir=path.resolve().parent)
    # Here, not in profile_from_dict: a run stored before this check still loads.
    seen = {(m, "<=") for m in profile.budgets}  # a budget is an upper bound
    for i, t in enumerate(profile.thresholds):
        metric, op, value = parse_bound(t)
        if why := never_met(metric, op, value):
            _Validator(str(path)).fail(f"thresholds[{i}]", t, why)
        if (metric, op) in seen:  # one of the two would be dropped without a word
            where = f"budgets.{metric} ({profile.budgets[metric]:g})" if op == "<=" and metric in profile.budgets \
                else "thresholds"
            _Validator(str(path)).fail(f"thresholds[{i}]", t, f"{metric} {op} is given in {where} already; keep one")
        seen.add((metric, op))
    return profile


def profile_from_dict(
    raw: Mapping[str, Any], source: str = "<dict>", default_name: str = "custom",
    base_dir: str | Path | None = None,
) -> HardwareProfile:
    """Validate ``raw`` into a profile. ``base_dir`` is the folder relative paths (the
    calibration table) start from; given, the table must exist. Without it (a profile
    stored in a run dir) paths are taken as they are, so a moved table does not stop
    an old run from loading."""
    v = _Validator(source)
    top = v.keys(raw, "", {
        "name", "description", "runtime", "batch_size", "protocol",
        "objective", "thresholds", "budgets", "precision", "source", "calibration", "device",
    })
    name = v.typed(top, "name", str, default_name)
    runtime_raw = v.keys(top.get("runtime") or {}, "runtime.", {f.name for f in dataclasses.fields(Runtime)})
    runtime = Runtime(
        provider=v.choice(runtime_raw, "runtime.provider", PROVIDERS, Runtime.provider),
        intra_op_threads=v.integer(runtime_raw, "runtime.intra_op_threads", Runtime.intra_op_threads, lo=0),
        inter_op_threads=v.integer(runtime_raw, "runtime.inter_op_threads", Runtime.inter_op_threads, lo=0),
        graph_optimization=v.choice(
            runtime_raw, "runtime.graph_optimization", GRAPH_OPTIMIZATION_LEVELS, Runtime.graph_optimization
        ),
    )
    proto_raw = v.keys(top.get("protocol") or {}, "protocol.", {f.name for f in dataclasses.fields(Protocol)})
    protocol = Protocol(
        method=v.choice(proto_raw, "protocol.method", PROTOCOL_METHODS, Protocol.method),
        warmup_runs=v.integer(proto_raw, "protocol.warmup_runs", Protocol.warmup_runs, lo=0),
        sessions=v.integer(proto_raw, "protocol.sessions", Protocol.sessions, lo=2),
        rounds=v.integer(proto_raw, "protocol.rounds", Protocol.rounds, lo=1),
        burst_runs=v.integer(proto_raw, "protocol.burst_runs", Protocol.burst_runs, lo=5),
        calibration_s=v.number(proto_raw, "protocol.calibration_s", Protocol.calibration_s, lo=0.0, strict=True),
        min_runs=v.integer(proto_raw, "protocol.min_runs", Protocol.min_runs, lo=3),
        min_time_s=v.number(proto_raw, "protocol.min_time_s", Protocol.min_time_s, lo=0.0),
        max_time_s=v.number(proto_raw, "protocol.max_time_s", Protocol.max_time_s, lo=0.0, strict=True),
        statistic=v.choice(proto_raw, "protocol.statistic", STATISTICS, Protocol.statistic),
    )
    if protocol.max_time_s < protocol.min_time_s:
        v.fail("protocol.max_time_s", protocol.max_time_s, f"must be >= protocol.min_time_s ({protocol.min_time_s})")
    objective = v.typed(top, "objective", str, HardwareProfile.objective)
    _check_objective(v, objective)
    thresholds = top.get("thresholds") or []
    if not isinstance(thresholds, list):
        v.fail("thresholds", thresholds, "must be a list of Ax constraint strings such as 'val_acc >= 0.9'")
    for i, t in enumerate(thresholds):
        _check_bound(v, f"thresholds[{i}]", t)
    budgets_raw = top.get("budgets") or {}
    if not isinstance(budgets_raw, dict):
        v.fail("budgets", budgets_raw, "must be a mapping such as {latency_ms: 2}")
    budgets: dict[str, float] = {}
    for m, val in budgets_raw.items():
        if m not in COST_METRICS:
            v.fail(f"budgets.{m}", val, f"unknown budget metric; use one of {', '.join(COST_METRICS)}")
        budgets[m] = v.number(budgets_raw, f"budgets.{m}", None, lo=0.0, strict=True, raw_key=m)
    return HardwareProfile(
        name=name,
        description=v.typed(top, "description", str, ""),
        runtime=runtime,
        batch_size=v.integer(top, "batch_size", 1, lo=1),
        protocol=protocol,
        objective=objective,
        thresholds=tuple(str(t).strip() for t in thresholds),
        budgets=budgets,
        precision=v.choice(top, "precision", PRECISIONS, "fp32"),
        source=source,
        calibration=_calibration(v, top.get("calibration"), base_dir),
        device=_device(v, top.get("device")),
    )


def _device(v: "_Validator", raw: Any) -> DeviceSpec | None:
    if raw is None:
        return None
    raw = v.keys(raw, "device.", {f.name for f in dataclasses.fields(DeviceSpec)})
    url = v.typed(raw, "device.url", str, "")
    try:
        url = check_device_url(url)
    except ProfileError as e:
        v.fail("device.url", url, str(e).split(": ", 1)[1])
    token_env = v.typed(raw, "device.token_env", str, DeviceSpec.token_env)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", token_env):
        v.fail("device.token_env", token_env, "must be the name of an environment variable")
    return DeviceSpec(url=url, token_env=token_env,
                      timeout_s=v.number(raw, "device.timeout_s", DeviceSpec.timeout_s, lo=0.0, strict=True),
                      retries=v.integer(raw, "device.retries", DeviceSpec.retries, lo=0),
                      retry_wait_s=v.number(raw, "device.retry_wait_s", DeviceSpec.retry_wait_s, lo=0.0))


def with_device(profile: HardwareProfile, url: str | None) -> HardwareProfile:
    """``profile`` timed on the agent at ``url`` (``--device``), keeping the profile's other
    device settings; ``url`` None leaves it as it is. A device's own figures replace a
    host -> device calibration, so the calibration section is dropped."""
    if not url:
        return profile
    spec = dataclasses.replace(profile.device, url=check_device_url(url)) if profile.device \
        else DeviceSpec(url=check_device_url(url))
    return dataclasses.replace(profile, device=spec, calibration=None)


def _calibration(v: "_Validator", raw: Any, base_dir: str | Path | None) -> CalibrationSpec | None:
    if raw is None:
        return None
    raw = v.keys(raw, "calibration.", {f.name for f in dataclasses.fields(CalibrationSpec)})
    table = v.typed(raw, "calibration.table", str, "").strip()
    if table:
        path = Path(table).expanduser()
        if not path.is_absolute():
            path = Path(base_dir or ".") / path
        path = path.resolve()
        if base_dir is not None and not path.is_file():
            v.fail("calibration.table", table, f"no such file ({path}); paths are relative to the profile file")
        table = str(path)
    refs_raw = raw.get("references") or {}
    if not isinstance(refs_raw, dict):
        v.fail("calibration.references", refs_raw, "must be a mapping of reference model to device latency_ms")
    references: dict[str, float] = {}
    for name in refs_raw:
        if not isinstance(name, str) or not name:
            v.fail("calibration.references", name, "model names must be strings")
        references[name] = v.number(refs_raw, f"calibration.references.{name}", None, lo=0.0, strict=True,
                                    raw_key=name)
    if not table and not references:
        v.fail("calibration", dict(raw), "needs a 'table' (CSV of device latencies) or inline 'references'")
    shape = raw.get("input_shape") or []
    if (not isinstance(shape, list) or len(shape) not in (0, 3)
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)):
        v.fail("calibration.input_shape", shape, "must be three positive whole numbers (C, H, W), e.g. [1, 8, 8]")
    return CalibrationSpec(
        table=table,
        references=references,
        model=v.choice(raw, "calibration.model", CALIBRATION_MODELS, CalibrationSpec.model),
        input_shape=tuple(shape),
        device=v.typed(raw, "calibration.device", str, ""),
    )


def parse_bound(text: str) -> tuple[str, str, float]:
    """``"latency_ms <= 2"`` -> ``("latency_ms", "<=", 2.0)``; raises ValueError."""
    m = _BOUND.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not of the form 'metric <= number' or 'metric >= number'")
    return m.group(1), m.group(2), float(m.group(3))


def check_objective(objective: str) -> None:
    """Validate an Ax objective string over odnas metrics; raises ProfileError."""
    _check_objective(_Validator("--objective"), objective)


def _check_objective(v: "_Validator", objective: str) -> None:
    terms = [t.strip() for t in objective.split(",")]
    if not terms or any(not t for t in terms):
        v.fail("objective", objective, "must be a comma-separated Ax objective such as 'val_acc, -latency_ms'")
    for t in terms:
        sign = -1 if t.startswith("-") else 1
        metric = t.lstrip("-+").strip()
        if metric not in KNOWN_METRICS:
            v.fail("objective", objective, f"unknown metric {metric!r}; use {', '.join(KNOWN_METRICS)}")
        if sign != METRIC_SIGN[metric]:
            want = metric if METRIC_SIGN[metric] > 0 else f"-{metric}"
            v.fail("objective", objective, f"{t!r} optimises the wrong way; write {want!r}")


def never_met(metric: str, op: str, value: float) -> str | None:
    """Why a bound no model can meet whatever the space is, or None: accuracy is a
    fraction from 0 to 1, and '85' for 85% is the usual slip."""
    if metric in ACCURACY_METRICS and op == ">=" and value > 1:
        return f"{metric} is a fraction from 0 to 1, so no model reaches {value:g}" + (
            f" (for {value:g}% write {value / 100:g})" if value <= 100 else "")
    if metric in ACCURACY_METRICS and op == "<=" and value < 0:
        return f"{metric} is a fraction from 0 to 1, so no model stays under {value:g}"
    return None


def _check_bound(v: "_Validator", key: str, text: Any) -> None:
    try:
        metric, _, _ = parse_bound(text)
    except ValueError as e:
        v.fail(key, text, str(e))
    if metric not in KNOWN_METRICS:
        v.fail(key, text, f"unknown metric {metric!r}; use {', '.join(KNOWN_METRICS)}")


class _Validator:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: Any, why: str) -> None:
        raise ProfileError(f"{self.source}: key '{key}' = {value!r}: {why}")

    def keys(self, raw: Any, prefix: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(raw, dict):
            self.fail(prefix.rstrip(".") or "<top>", raw, "must be a mapping")
        for k in raw:
            if k not in allowed:
                self.fail(f"{prefix}{k}", raw[k], f"unknown key; allowed: {', '.join(sorted(allowed))}")
        return raw

    def typed(self, raw: Mapping[str, Any], key: str, typ: type, default: Any) -> Any:
        val = raw.get(key.split(".")[-1], default)
        if not isinstance(val, typ):
            self.fail(key, val, f"must be a {typ.__name__}")
        return val

    def choice(self, raw: Mapping[str, Any], key: str, options: tuple[str, ...], default: str) -> str:
        val = raw.get(key.split(".")[-1], default)
        if val not in options:
            self.fail(key, val, f"must be one of {', '.join(options)}")
        return val

    def integer(self, raw: Mapping[str, Any], key: str, default: int, lo: int) -> int:
        val = raw.get(key.split(".")[-1], default)
        if isinstance(val, bool) or not isinstance(val, int):
            self.fail(key, val, "must be a whole number")
        if val < lo:
            self.fail(key, val, f"must be >= {lo}")
        return val

    def number(
        self, raw: Mapping[str, Any], key: str, default: float | None, lo: float,
        strict: bool = False, raw_key: str | None = None,
    ) -> float:
        val = raw.get(raw_key or key.split(".")[-1], default)
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
            self.fail(key, val, "must be a finite number")
        if val < lo or (strict and val <= lo):
            self.fail(key, val, f"must be {'>' if strict else '>='} {lo:g}")
        return float(val)
