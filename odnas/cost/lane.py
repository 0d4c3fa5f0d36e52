"""Measure one candidate's costs, and cache them by arch id.

Costs depend on the architecture only, so the model is built untrained, counted,
exported and timed once per arch id on the driver's host. The cache is a folder of
JSON files, one per arch id, so a resumed search never measures twice. Under an
int8 profile the file timed (and sized) is the int8 one a target would run, since
budgets apply to the deployed precision.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from odnas.cost.calibrate import apply_to_record, run_calibration
from odnas.cost.count import count
from odnas.cost.device import DeviceError, DeviceLatencyBackend, backend_for
from odnas.cost.latency import LatencyBackend, OrtLatencyBackend, measure_latency
from odnas.cost.onnx import export_onnx
from odnas.cost.quiet import measurement_window
from odnas.errors import SearchError, SpaceError
from odnas.profiles import HardwareProfile, profile_from_dict
from odnas.records import CostRecord, RunSettings
from odnas.rundir import COSTS_DIR, SETTINGS_NAME, local_jobs, read_json, write_json_atomic
from odnas.spaces import get_space
from odnas.steps import Step


#: Budgets on metrics the lane times: a budget is refused up front only when the smallest
#: member is over it by more than this share and three standard errors (timings vary a
#: little from session to session; counts do not, and are held to the budget exactly).
TIMED_METRICS = ("latency_ms", "latency_ms_p90")
TIMING_MARGIN = 0.10

#: Calibration inputs the lane quantizes with: few, because only the graph matters for latency.
LANE_CALIB_SAMPLES = 32


def measure_candidate(space, params: Mapping[str, Any], input_shape: Sequence[int], num_classes: int,
                      profile: HardwareProfile, backend: LatencyBackend | None = None,
                      calib_x: np.ndarray | None = None, window=None) -> CostRecord:
    """Build, count, export and time one candidate.

    Under ``precision: int8`` the untrained model is quantized statically (QDQ, as
    ``odnas.export`` deploys it) before it is timed and sized. ``calib_x`` (N, C, H, W)
    are training inputs to calibrate on (the first ``LANE_CALIB_SAMPLES`` are used);
    without them, standard-normal inputs stand in and the record's
    ``quantization.calibration`` says ``random-normal``. Calibration values move
    quantization scales, not the graph, so either gives the deployed file's latency.
    ``window`` is a context-manager factory the timing runs inside (``odnas.cost.quiet``),
    so only the timing, not the export, holds the machine quiet.
    """
    import torch

    torch.manual_seed(0)
    model = space.build(params, input_shape, num_classes)
    check_output(model, input_shape, num_classes)
    structure = structure_digest(model)
    counts = count(model, input_shape)
    quant = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{space.arch_id(params)}.onnx"
        export_onnx(model, input_shape, path)
        if profile.precision == "int8":
            from odnas.cost.quantize import quantize_model, random_calibration_inputs

            if calib_x is None:
                x, source = random_calibration_inputs(input_shape, LANE_CALIB_SAMPLES), "random-normal"
            else:
                x, source = np.asarray(calib_x)[:LANE_CALIB_SAMPLES], "training split"
            # Export picks per-tensor or per-channel weights by accuracy once trained; the lane
            # takes per-channel, the larger file of the two (more scales) and as fast within ~2%.
            int8 = path.with_name(f"{path.stem}.int8.onnx")
            quant = quantize_model(path, int8, x, mode="static", per_channel=True, calibration=source)
            path = int8
        with window() if window is not None else contextlib.nullcontext():
            lat = measure_latency(path, profile, backend or backend_for(profile))
        model_bytes = path.stat().st_size
    return CostRecord(
        arch_id=space.arch_id(params), space=space.name, profile=profile.name, precision=profile.precision,
        metrics={"num_params": counts.num_params, "flops": counts.flops, "model_bytes": model_bytes,
                 "latency_ms": lat.latency_ms, "latency_ms_p90": lat.latency_ms_p90},
        sem={"latency_ms": lat.latency_ms_sem}, uncounted_ops=dict(counts.uncounted_ops),
        latency=lat.to_dict(), quantization=quant.to_dict() if quant is not None else None,
        structure=structure, params=dict(params),
    )


def structure_digest(model) -> str:
    """What a built model is made of, as a short hash: each module's name and class, and
    each parameter's and buffer's name, shape and dtype. Two builds with the same digest
    have the same layers and sizes (an activation applied in ``forward`` alone is not seen)."""
    import hashlib

    lines = [f"m {n} {type(m).__module__}.{type(m).__qualname__}" for n, m in model.named_modules()]
    lines += [f"p {n} {tuple(t.shape)} {t.dtype}" for n, t in model.named_parameters()]
    lines += [f"b {n} {tuple(t.shape)} {t.dtype}" for n, t in model.named_buffers()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


#: Cost records rebuilt before a run is re-timed (select, rescore), to refuse a changed
#: space at once; every model timed after is checked against its own record as well.
BUILDS_CHECKED = 3


def check_builds(space, settings: RunSettings, run_dir: str | Path, k: int | None = BUILDS_CHECKED) -> None:
    """One line if the space no longer builds what the run measured: the ``k`` newest
    cost records that kept their structure (every one when ``k`` is None) are built
    again and compared. A run keeps the space it began with; costs cached by arch id
    would otherwise be reused for models that are not the ones trained now, and a
    resumed run would train models of two codes under one name. Records from before
    structures were kept are not checked."""
    recs = []
    for path in sorted(Path(run_dir, COSTS_DIR).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        raw = read_json(path)
        if isinstance(raw, dict) and raw.get("structure") and isinstance(raw.get("params"), dict):
            recs.append(raw)
            if k is not None and len(recs) == k:
                break
    for raw in recs:
        try:
            changed = "another model" if built_structure(space, raw["params"], settings.input_shape,
                                                         settings.num_classes) != raw["structure"] else None
        except Exception as e:  # noqa: BLE001 -- the user's build(): any error, one line
            changed = f"an error ({type(e).__name__}: {_first_line(e)})"
        if changed:
            raise space_changed(space.name, raw["arch_id"], changed)


def built_structure(space, params: Mapping[str, Any], input_shape: Sequence[int], num_classes: int) -> str:
    """The structure digest of the model ``space`` builds for ``params`` now, built as
    the lane builds it (seeded) and run once (lazy modules take their shapes)."""
    import torch

    torch.manual_seed(0)
    return run_digest(space.build(params, input_shape, num_classes), input_shape, num_classes)


def run_digest(model, input_shape: Sequence[int], num_classes: int) -> str:
    """``model``'s structure digest as a cost record keeps it: taken after a batch has run
    through it, as the lane ran it (``measure_candidate``), so lazy modules have their shapes."""
    check_output(model, input_shape, num_classes)
    return structure_digest(model)


def space_changed(space_name: str, arch_id: str, gives: str) -> SpaceError:
    return SpaceError(f"space {space_name!r} has changed since this run began: its build() of {arch_id} now gives "
                      f"{gives}; a run keeps the space it began with: restore its code, or start a new search")


class NamesTwoNetworks(SpaceError):
    """A space's ``arch_id()`` gives one name to two different networks: the run keeps
    its space, so resuming it meets the same; a new search with the fix does not."""


class WrongOutput(ValueError):
    """A model that does not give one score per class."""


def check_output(model, input_shape: Sequence[int], num_classes: int) -> None:
    """A model must map a batch to one score per class: ``(batch, num_classes)``. A head
    sized for another data set trains on and scores nonsense (10 outputs for 4 classes),
    or fails in the loss minutes later; this says so before anything is timed."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise WrongOutput(f"build() returned a {type(model).__name__}, not a torch.nn.Module")
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, *input_shape))
    model.train(was)
    if not isinstance(out, torch.Tensor):
        raise WrongOutput(f"the model returns a {type(out).__name__}, not a tensor of class scores "
                          f"(batch, {num_classes})")
    shape = tuple(out.shape)
    if shape != (2, num_classes):
        raise WrongOutput(f"the model gives outputs of shape {shape} for a batch of 2 inputs {tuple(input_shape)}; "
                         f"it must give (batch, {num_classes}): one score per class of the data")


class CostCache:
    """``DIR/ARCH_ID.json`` records; writes are atomic so a kill never leaves half a file."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def get(self, arch_id: str) -> CostRecord | None:
        path = self.folder / f"{arch_id}.json"
        raw = read_json(path)
        return CostRecord.from_dict(raw, source=str(path)) if isinstance(raw, dict) else None

    def put(self, record: CostRecord) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / f"{record.arch_id}.json", record.to_dict())


class CostLane:
    """Costs of a candidate, measured on the driver one at a time, cached by arch id.

    Latency is timed on this host, or on the device agent of the profile's ``device``
    section (``odnas.cost.device``). A cached record is reused only when its latency
    was taken under the same ``LatencyKey`` (host or device, CPU, ONNX Runtime
    version, session settings) the lane would time under now; otherwise the
    candidate is measured again.
    """

    def __init__(self, space, input_shape, num_classes: int, profile: HardwareProfile,
                 cache_dir: str | Path, backend: LatencyBackend | None = None, calibration=None,
                 isolation: str = "pause", local_jobs: Callable[[], list[int]] | None = None) -> None:
        self.space, self.input_shape, self.num_classes = space, tuple(input_shape), num_classes
        self.profile = profile
        self.cache = CostCache(cache_dir)
        # One host backend for the lane's life: it keeps the host's reference baseline in memory.
        self._given = backend
        self._host = OrtLatencyBackend()
        self._device: DeviceLatencyBackend | None = None
        self.say: Callable[[str], None] | None = None  # where a device agent's retries are told (default stderr)
        self._trust_cache = backend is not None  # a test backend's records are valid where it made them
        self.calibration = calibration  # host -> device mapping (odnas.cost.calibrate), or None
        self.isolation = isolation  # odnas.cost.quiet mode: pause local jobs while timing
        self.local_jobs = local_jobs or (lambda: [])  # pids of the jobs to pause while timing
        self.holds: list[Callable[[], Any]] = []  # context managers that keep other work still while timing
        #: The run's own records when this lane re-times a run into another cache (select,
        #: rescore): each model must be built as the search built it. None: its own cache.
        self.built_as: CostCache | None = None
        self.measured = 0  # measurements made by this process (cache misses)
        self.seconds = 0.0  # wall time spent measuring (cache misses)

    @classmethod
    def for_run(cls, run_dir: str | Path, settings: RunSettings,
                backend: LatencyBackend | None = None) -> "CostLane":
        """The lane of a run dir: its space, data shape and effective profile, its cost
        cache, its calibration, and its local jobs to pause while timing."""
        profile = profile_from_dict(settings.profile, source=f"{run_dir}/{SETTINGS_NAME}")
        calibration = run_calibration(run_dir, profile) if backend is None else None
        return cls(get_space(settings.space), settings.input_shape, settings.num_classes,
                   profile, Path(run_dir) / COSTS_DIR, backend, calibration,
                   isolation=settings.isolation, local_jobs=lambda: local_jobs(run_dir))

    @property
    def backend(self) -> LatencyBackend:
        """What times a candidate under the lane's profile now: the backend given, the
        profile's device agent, or this host."""
        if self._given is not None:
            return self._given
        if self.profile.device is not None:
            if self._device is None or self._device.spec != self.profile.device:
                self._device = DeviceLatencyBackend.of(self.profile, **({"log": self.say} if self.say else {}))
            return self._device
        return self._host

    @property
    def on_device(self) -> bool:
        return self._given is None and self.profile.device is not None

    @contextlib.contextmanager
    def window(self):
        """Quiet for a timing: the run's local jobs paused (``odnas.cost.quiet``) and
        whatever the owner holds still (the driver's candidate generation)."""
        with contextlib.ExitStack() as stack:
            for hold in self.holds:
                stack.enter_context(hold())
            yield stack.enter_context(measurement_window(self.isolation, self.local_jobs))

    def host_check(self):
        """The reference baseline this lane's timings are scaled by (``odnas.cost.reference
        .Baseline``), calibrated now, in a quiet window, if this host has none yet; None
        when the backend or the profile's protocol uses no reference."""
        if not isinstance(self.backend, OrtLatencyBackend) or self.profile.protocol.method != "reference":
            return None
        with self.window():
            return self.backend.baseline(self.profile, self.input_shape)

    def calibration_due(self) -> float:
        """Seconds the lane's first timing will spend calibrating the reference of this host
        (``host_check``) or of the device first; 0 when it is cached there, or without one."""
        due = getattr(self.backend, "calibration_due", None)
        return due(self.profile, self.input_shape) if due is not None else 0.0

    def _comparable(self, rec: CostRecord) -> bool:
        """Whether a cached record was timed where the lane times now (its backend's ``key``)."""
        if self._trust_cache:
            return True
        return not rec.latency_key.differs(self.backend.key(self.profile))

    def cached(self, params: Mapping[str, Any]) -> bool:
        """Whether ``costs(params)`` will read a record, not measure."""
        arch = self.space.arch_id(params)
        rec = self.cache.get(arch)
        return rec is not None and not self._other_build(rec, self._built_as(arch, rec)) and self._comparable(rec)

    def _built_as(self, arch: str, rec: CostRecord | None) -> CostRecord | None:
        """What ``arch`` was built as in the search: the run's record (``built_as``), or this cache's."""
        return self.built_as.get(arch) if self.built_as is not None else rec

    @staticmethod
    def _other_build(rec: CostRecord, ref: CostRecord | None) -> bool:
        """Whether ``rec`` timed another build of the arch than ``ref`` (a build() changed
        since, and restored): its figure is not reused."""
        return bool(ref is not None and rec.structure and ref.structure and rec.structure != ref.structure)

    def costs(self, params: Mapping[str, Any]) -> CostRecord:
        arch = self.space.arch_id(params)
        rec = self.cache.get(arch)
        ref = self._built_as(arch, rec)
        if ref is not None and ref.structure:
            # A cached figure is for one network; so is a re-timing of a trained one. The
            # model built now must be that network: not one of a build() changed since,
            # nor another network the space's arch_id() gives the same name.
            try:
                now = built_structure(self.space, params, self.input_shape, self.num_classes)
            except Exception as e:  # noqa: BLE001 -- the user's build() gave this network before
                raise space_changed(self.space.name, arch, f"an error ({type(e).__name__}: {_first_line(e)})") \
                    from None
            if now != ref.structure:
                raise self._not_the_same(arch, params, ref)
            if rec is not None and self._other_build(rec, ref):
                rec = None
        # A latency from another host, ORT build or setting is not comparable: measure again.
        if rec is None or not self._comparable(rec):
            t0 = time.perf_counter()
            # A device is timed where it is: nothing here needs to hold still for it.
            rec = measure_candidate(self.space, params, self.input_shape, self.num_classes, self.profile,
                                    backend=self.backend, window=None if self.on_device else self.window)
            self.cache.put(rec)  # measured figures (host or device): never calibrated estimates
            self.measured += 1
            self.seconds += time.perf_counter() - t0
        if self.calibration is not None:
            rec = apply_to_record(rec, self.calibration)  # budgets then judge device milliseconds
        return rec

    def _not_the_same(self, arch: str, params: Mapping[str, Any], ref: CostRecord) -> SpaceError:
        """Why ``params`` builds another network than ``ref`` was timed on: its arch id
        names two networks (``ref``'s own params still build ``ref``'s), or build() changed."""
        if ref.params and dict(ref.params) != dict(params):
            try:
                same = built_structure(self.space, ref.params, self.input_shape, self.num_classes) == ref.structure
            except Exception:  # noqa: BLE001 -- the user's build(): then it changed
                same = False
            if same:
                differ = sorted(k for k in set(ref.params) | set(params) if ref.params.get(k) != params.get(k))
                try:  # training settings (lr, epochs, batch_size) are not the network's
                    settings = set(self.space.training(params))
                except Exception:  # noqa: BLE001 -- the user's training(): list every difference
                    settings = set()
                differ = [k for k in differ if k not in settings] or differ
                return NamesTwoNetworks(f"space {self.space.name!r}: arch_id() gives {arch} to two different networks "
                                  f"(they differ in {', '.join(differ)}); costs are cached by arch id, so it must "
                                  "name every parameter build() uses")
        return space_changed(self.space.name, arch, "another model")

    def over_budget(self, metrics: Mapping[str, float]) -> list[str]:
        return self.profile.over_budget(metrics)


def calibration_note(seconds: float, device: bool = False) -> str:
    return (f"timing {'the device' if device else 'this host'}'s latency reference first: about {seconds:.0f} s, "
            f"once per {'device' if device else 'host'} and input shape")


def check_member(space, settings: RunSettings) -> dict[str, Any] | None:
    """One member built and run before a search starts: the space's smallest, which must
    be a member that builds and gives one score per class (one line if not); without a
    smallest, its lowest member's output is checked if it builds (a space may decline
    some members: their candidates fail alone). Returns the smallest, or None."""
    import torch

    try:
        smallest = space.smallest(settings.fixed)
    except Exception as e:  # noqa: BLE001 -- the user's smallest(): any error, one line
        raise SpaceError(f"space {space.name}: smallest() raised {type(e).__name__}: {_first_line(e)}") from None
    if smallest is not None and not isinstance(smallest, Mapping):
        raise SpaceError(f"space {space.name}: smallest() returned a {type(smallest).__name__}, not a dict of "
                         "parameters (or None)")
    params = smallest if smallest is not None else space.lowest(settings.fixed)
    try:
        space.check_fixed(params)  # every value in its spec's domain
    except SpaceError as e:
        who = "smallest() gave a member" if smallest is not None else "its lowest member is"
        raise SpaceError(f"space {space.name}: {who} outside the space: {e}") from None
    try:
        arch = space.arch_id(params)
    except Exception as e:  # noqa: BLE001 -- the user's arch_id()
        raise SpaceError(f"space {space.name}: arch_id() raised {type(e).__name__} for {dict(params)}: "
                         f"{_first_line(e)}") from None
    check_training(space, params, arch)
    torch.manual_seed(0)
    try:
        model = space.build(params, settings.input_shape, settings.num_classes)
    except Exception as e:  # noqa: BLE001
        if smallest is None:
            return None
        raise SpaceError(f"space {space.name}: its smallest member {params} does not build for inputs "
                         f"{tuple(settings.input_shape)}, {settings.num_classes} classes: "
                         f"{type(e).__name__}: {_first_line(e)}") from None
    try:
        check_output(model, settings.input_shape, settings.num_classes)
    except WrongOutput as e:  # a head sized for another data set
        raise SpaceError(f"space {space.name}, member {arch}: {e}") from None
    except Exception as e:  # noqa: BLE001 -- a forward that fails on these inputs
        if smallest is None:
            return None
        raise SpaceError(f"space {space.name}: its smallest member {arch} does not run on inputs "
                         f"{tuple(settings.input_shape)}: {type(e).__name__}: {_first_line(e)}") from None
    return smallest


def check_training(space, params: Mapping[str, Any], arch: str) -> None:
    """A member's training settings are ones a trainer takes: a positive finite learning
    rate, and whole epochs and batch size of at least 1 (``--fixed epochs=0`` failed
    every trial in its trainer)."""
    import math
    import numbers

    try:
        t = dict(space.training(params))
    except Exception as e:  # noqa: BLE001 -- the user's training()
        raise SpaceError(f"space {space.name}: training() raised {type(e).__name__} for {arch}: "
                         f"{_first_line(e)}") from None
    bad = []
    lr = t.get("lr")
    if not (isinstance(lr, numbers.Real) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        bad.append(f"lr={lr!r} must be a positive number")
    for k in ("epochs", "batch_size"):
        v = t.get(k)
        if not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1):
            bad.append(f"{k}={v!r} must be a whole number of at least 1")
    if bad:
        raise SpaceError(f"space {space.name}, member {arch}: training settings {'; '.join(bad)}")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _not_exported(space, params: Mapping[str, Any], e: Exception) -> SpaceError:
    return SpaceError(f"space {space.name}: its smallest member {space.arch_id(params)} could not be exported to "
                      f"ONNX and timed, so no candidate can be: {type(e).__name__}: {_first_line(e)}")


def check_budgets(settings: RunSettings, backend: LatencyBackend | None = None, progress: Step | None = None) -> None:
    """Refuse, before a search starts, budgets that even the space's smallest member breaks.

    Every candidate of such a search is measured over budget, untrained, until the
    candidate cap ends it (minutes, one line, exit 3); this says so before anything is
    trained, with the smallest member's figure, as a ``SearchError`` (exit 2). The
    smallest member (``Space.smallest``, given the ``--fixed`` values) is counted, and
    exported and timed under the profile when a budget is on latency or file size.
    Nothing is checked for a space that names no smallest member or a profile without
    budgets; latency budgets are not judged under a host-to-device calibration (they
    bound estimates the search makes with it), and a device agent that cannot be
    reached is left to the search to report. ``progress`` is told when the latency
    reference of this host, or of the device, is calibrated first (about 30 s, once per
    host or device)."""
    profile = profile_from_dict(settings.profile, source=SETTINGS_NAME)
    space = get_space(settings.space)
    params = check_member(space, settings)
    if params is None or not profile.budgets:
        return
    judged = set(profile.budgets) - (set(TIMED_METRICS) if profile.calibration is not None else set())
    if judged & {*TIMED_METRICS, "model_bytes"}:
        with tempfile.TemporaryDirectory() as tmp:
            lane = CostLane(space, settings.input_shape, settings.num_classes, profile, tmp, backend=backend)
            try:
                if progress is not None and (due := lane.calibration_due()):
                    progress(calibration_note(due, isinstance(lane.backend, DeviceLatencyBackend)))
                rec = lane.costs(params)
            except DeviceError:
                return
            except SpaceError:
                raise
            except Exception as e:  # noqa: BLE001 -- the user's model: it must export to ONNX to be timed
                raise _not_exported(space, params, e) from None
        metrics, sem = rec.metrics, rec.sem
    else:
        import torch

        torch.manual_seed(0)
        model = space.build(params, settings.input_shape, settings.num_classes)
        counts = count(model, settings.input_shape)
        metrics, sem = {"num_params": counts.num_params, "flops": counts.flops}, {}
        with tempfile.TemporaryDirectory() as tmp:  # every candidate is exported to be timed
            try:
                export_onnx(model, settings.input_shape, Path(tmp) / "smallest.onnx")
            except Exception as e:  # noqa: BLE001
                raise _not_exported(space, params, e) from None

    def clearly_over(m: str) -> bool:
        if m not in TIMED_METRICS:
            return True  # counted: exact
        # A p90 is at least the median, whose standard error the record has: the p90 budget
        # is clearly broken when the median clearly is.
        v, limit = float(metrics["latency_ms"]), profile.budgets[m]
        return v > limit * (1 + TIMING_MARGIN) and v - 3 * float(sem.get("latency_ms", 0.0)) > limit

    broken = [m for m in profile.over_budget({k: v for k, v in metrics.items() if k in judged}) if clearly_over(m)]
    if broken:
        timed = set(broken) & set(TIMED_METRICS)
        where = f" on {'the device' if profile.device is not None else 'this host'}" if timed else ""
        held = f" with --fixed {' '.join(f'{k}={v}' for k, v in settings.fixed.items())}" if settings.fixed else ""
        limits = ", ".join(f"{m} <= {profile.budgets[m]:g}" for m in broken)
        has = ", ".join(f"{m} {metrics[m]:.4g}" if m in TIMED_METRICS else f"{m} {int(metrics[m])}" for m in broken)
        raise SearchError(f"budget{'s' * (len(broken) > 1)} {limits} cannot be met: the smallest architecture of "
                          f"space {space.name}{held} ({space.arch_id(params)}) has {has}{where}; loosen "
                          f"{'them' if len(broken) > 1 else 'it'} with --constraint or in the profile")
