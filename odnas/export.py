"""The deployable artifact: ``NAME.onnx`` with trained weights, checked, plus ``NAME.json``.

``export_artifact`` exports a trained model, runs ``onnx.checker``, compares ONNX
Runtime against PyTorch on real validation inputs (max abs difference and top-1
agreement; past the tolerance it fails loudly), re-measures the file's latency
under the profile and writes the model card. The card tells a deployer everything
needed to feed the file: input name, shape, dtype and normalisation, and labels.

Files: ``NAME.onnx`` is always the deployed file, in the profile's precision. Under
an int8 profile the fp32 file it was quantized from sits beside it as
``NAME.fp32.onnx`` (the parity check runs on that one); under an fp32 profile with
an int8 extra profile, the int8 file is ``NAME.int8.onnx``. The card's budgets are
judged on the deployed file's own, freshly measured, figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from odnas.cost.calibrate import calibrate_latency, profile_calibration, run_calibration
from odnas.cost.count import count
from odnas.cost.device import backend_for
from odnas.cost.lane import run_digest, space_changed
from odnas.cost.latency import check_runnable
from odnas.cost.latency import measure_latency as _measure
from odnas.cost.onnx import INPUT_NAME, OPSET, export_onnx
from odnas.cost.quiet import measurement_window
from odnas.data import load_data
from odnas.errors import (OutputError, ParityError, ProfileError, QuantizeError, RunDirError, SearchFailed,
                          SpaceError)
from odnas.loop.store import load_run
from odnas.profiles import HardwareProfile, load_profile
from odnas.records import ModelCard
from odnas.rundir import CHECKPOINT_NAME, COSTS_DIR, read_json
from odnas.select import feasible, meets, pick
from odnas.spaces import get_space
from odnas.steps import Step, silent

NORMALIZE_FORMULA = "x = (raw / scale - mean) / std, raw = the data set's pixel values"


def check_parity(model, onnx_path: str | Path, x: np.ndarray, atol: float = 1e-3,
                 min_agreement: float = 0.999) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime on ``x`` (N, C, H, W) and compare logits.

    Raises ``ParityError`` when the max abs difference exceeds ``atol`` or top-1
    agreement falls below ``min_agreement``.
    """
    import onnxruntime as ort
    import torch

    model = model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    diff = float(np.max(np.abs(ref - got)))
    agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
    result = {"max_abs_diff": diff, "top1_agreement": agree, "n": int(len(x)), "atol": atol}
    if not diff <= atol or agree < min_agreement:
        raise ParityError(f"{onnx_path}: ONNX Runtime disagrees with PyTorch "
                          f"(max abs diff {diff:.3g} > {atol:g} or top-1 agreement {agree:.4f} < {min_agreement})")
    return result


def onnx_logits(onnx_path: str | Path, x: np.ndarray) -> np.ndarray:
    """Logits (N, classes) of ``x`` (N, C, H, W) under ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def budget_report(profile: HardwareProfile, metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{metric: {limit, value, met}}`` for each of the profile's budgets; a NaN or
    missing value is not shown to be within its budget, so it is not met."""
    out = {}
    for m, lim in profile.budgets.items():
        v = metrics.get(m)
        v = float("nan") if v is None else float(v)
        out[m] = {"limit": lim, "value": v, "met": v <= lim}
    return out


def _resolve_profiles(main: HardwareProfile, also: Sequence[str | HardwareProfile]) -> dict[str, HardwareProfile]:
    """Main profile first, then the extras by name; checked before anything is written."""
    out = {main.name: main}
    for p in also:
        prof = p if isinstance(p, HardwareProfile) else load_profile(p)
        key = prof.name
        if key in out and out[key] != prof:
            # e.g. the shipped cpu-mobile beside a run's cpu-mobile with --constraint overrides
            key = f"{prof.name} ({prof.source or 'given'})"
        if key in out and out[key] != prof:
            raise ProfileError(f"two different profiles are named {key!r}; rename one")
        out[key] = prof
    for prof in out.values():
        check_runnable(prof)
    return out


def artifact_path(out: str | Path, arch_id: str) -> Path:
    """Where ``export`` writes the deployed file for ``-o out``: ``out`` with ``.onnx``
    added if missing, or ``ARCH_ID.onnx`` inside ``out`` when that is a folder (one that
    exists, or a path ending in a separator)."""
    text = str(out)
    out = Path(out)
    if out.is_dir() or text.endswith(("/", os.sep)):
        return out / f"{arch_id}.onnx"
    return out if out.suffix.lower() == ".onnx" else out.with_name(out.name + ".onnx")


def export_artifact(model, out: str | Path, *, space: str, params: Mapping[str, Any], arch_id: str,
                    data, profile: HardwareProfile, metrics: Mapping[str, Any],
                    atol: float = 1e-3,
                    also_profiles: Sequence[str | HardwareProfile] = (),
                    calib_samples: int | None = None, run: Mapping[str, Any] | None = None,
                    calibration=None, progress: Step | None = None) -> ModelCard:
    """Write ``out`` (.onnx, the deployed file; ``artifact_path``) and its card
    ``out.with_suffix('.json')``; return the card.

    All or nothing: the files are made in a temporary folder beside ``out`` and moved
    into place only once every check and timing has passed, the card last, so a failed
    export leaves an earlier artifact of the same name as it was.

    Under a profile with a ``calibration`` section, latencies on the card and the budgets
    it judges are the device estimates, as in the search (``calibration``: the mapping to
    use for ``profile``, e.g. the run's own; else the profile's, fitted or cached), with
    the host figures beside them (``latency.device_estimate``, ``profiles[NAME].calibration``).

    ``metrics`` are the search's figures for the trial (``val_acc`` and costs). Under
    ``precision: int8`` the fp32 file is exported and checked for parity, then
    quantized (static, calibrated on ``calib_samples`` training inputs, default
    ``odnas.quantize.CALIB_SAMPLES``); both files are timed under the profile and
    scored on the validation split, and the card holds both side by side
    (``card["precisions"]``) with the int8 file's top-1 agreement with fp32.
    ``also_profiles`` (names, paths or profiles) adds ``card["profiles"][NAME]``: the
    latency of the file in that profile's precision, measured under that profile, and
    whether that profile's budgets are met. The main profile is listed there too.
    """
    step = progress or silent
    out = artifact_path(out, arch_id).absolute()
    # Before anything is written: the profiles, and each one's host-to-device mapping
    # (fitted on this host, or refused with the reason, before minutes of export).
    profiles = _resolve_profiles(profile, also_profiles)
    if calib_samples is not None and (calib_samples < 1 or all(p.precision != "int8" for p in profiles.values())):
        raise QuantizeError(f"--calib-samples {calib_samples}: " + (
            "give at least 1" if calib_samples < 1 else
            f"only an int8 export is calibrated, and {', '.join(profiles)} "
            f"{'is' if len(profiles) == 1 else 'are'} fp32 (add --also-profile cpu-mobile-int8, or leave it out)"))
    cals: dict[int, Any] = {}
    for prof in profiles.values():
        if prof is profile and calibration is not None:
            cals[id(prof)] = calibration
        else:
            if prof.calibration is not None and prof.device is None:
                step(f"fitting {prof.name}'s host-to-device latency mapping (cached once fitted on this host)")
            cals[id(prof)] = profile_calibration(prof)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.")
    except OSError as e:
        raise OutputError(f"cannot write the artifact at {out}: {e.strerror or e}") from None
    with work as tmp:
        card = _export_into(Path(tmp) / out.name, model, space=space, params=params, arch_id=arch_id,
                            data=data, profile=profile, profiles=profiles, cals=cals, metrics=metrics,
                            atol=atol, calib_samples=calib_samples, run=run, step=step)
        made = sorted(Path(tmp).iterdir(), key=lambda f: f.suffix == ".json")  # the card last
        try:
            for f in made:
                os.replace(f, out.parent / f.name)
        except OSError as e:
            raise OutputError(f"cannot write the artifact at {out}: {e.strerror or e}") from None
    stem = out.name[:-len(".onnx")]
    for left in (f"{stem}.fp32.onnx", f"{stem}.int8.onnx"):  # an earlier export's other precision, not this one's
        if left not in {f.name for f in made}:
            (out.parent / left).unlink(missing_ok=True)
    return card


def _export_into(out: Path, model, *, space, params, arch_id, data, profile, profiles, cals, metrics, atol,
                 calib_samples, run, step) -> ModelCard:
    """``export_artifact``'s work, every file written under ``out``'s (temporary) folder."""
    import onnx
    import onnxruntime as ort
    import torch

    from odnas import __version__

    def measure_latency(path, prof):
        """One timing at a time on this host (or on its device), as in the cost lane: the
        host's record, and the figures the card carries (device estimates under a
        calibrated profile, as the search's were)."""
        step(f"timing {path.name} under {prof.name}" + (f" on the device at {prof.device.url}" if prof.device else ""))
        with measurement_window("lock") if prof.device is None else contextlib.nullcontext():
            lat = _measure(path, prof, backend_for(prof))
        cal = cals[id(prof)]
        est = calibrate_latency(lat, cal) if cal is not None else None
        shown = {"latency_ms": lat.latency_ms, "latency_ms_p90": lat.latency_ms_p90,
                 "latency_ms_sem": lat.latency_ms_sem} if est is None else est
        return lat, shown, est

    precisions = {p.precision for p in profiles.values()}
    stem = out.with_suffix("")
    files = {"fp32": out if profile.precision == "fp32" else stem.with_name(stem.name + ".fp32.onnx")}
    if "int8" in precisions:
        files["int8"] = out if profile.precision == "int8" else stem.with_name(stem.name + ".int8.onnx")

    step(f"exporting {files['fp32'].name} and checking it against PyTorch")
    export_onnx(model, data.input_shape, files["fp32"])
    parity = check_parity(model, files["fp32"], data.x_val, atol=atol)
    parity["file"] = files["fp32"].name
    logits = {"fp32": onnx_logits(files["fp32"], data.x_val)}
    quant = None
    if "int8" in files:
        from odnas.cost.quantize import CALIB_SAMPLES, calibration_inputs, quantize_model

        calib = calibration_inputs(data.x_train, calib_samples or CALIB_SAMPLES, seed=0)
        step(f"quantizing to int8 on {len(calib)} training inputs")
        quant = quantize_model(files["fp32"], files["int8"], calib, calibration="training split")
        logits["int8"] = onnx_logits(files["int8"], data.x_val)
    for prec, path in files.items():  # before sizes and hashes are taken: the files describe themselves
        set_metadata(path, describe(arch_id, space, data, profile, prec))
    if quant is not None:  # the sizes of the files as shipped, metadata included, as precisions.* gives them
        quant = dataclasses.replace(quant, model_bytes_fp32=files["fp32"].stat().st_size,
                                    model_bytes=files["int8"].stat().st_size)
    counts = count(model, data.input_shape)

    # Every file is timed under the main profile (the side-by-side figures), and under
    # each extra profile the file in that profile's precision is timed again.
    lat_main = {prec: measure_latency(path, profile) for prec, path in files.items()}
    figures: dict[str, dict[str, Any]] = {}
    for prec, path in files.items():
        _, shown, _ = lat_main[prec]
        figures[prec] = {
            "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "model_bytes": path.stat().st_size, "val_acc_onnx": float(np.mean(logits[prec].argmax(1) == data.y_val)),
            "latency_ms": shown["latency_ms"], "latency_ms_p90": shown["latency_ms_p90"],
            "latency_ms_sem": shown["latency_ms_sem"], "deployed": path == out,
        }
    if "int8" in figures:
        figures["int8"]["top1_agreement_vs_fp32"] = float(np.mean(logits["int8"].argmax(1) == logits["fp32"].argmax(1)))
        figures["int8"]["max_abs_logit_diff_vs_fp32"] = float(np.max(np.abs(logits["int8"] - logits["fp32"])))
        figures["int8"]["n_val"] = int(len(data.y_val))

    deployed = figures[profile.precision]
    lat, shown, est = lat_main[profile.precision]
    # Budgets are judged on the deployed file's own figures; the search's (measured on
    # the untrained candidate when the search ran) are kept beside them as *_search.
    merged = {"num_params": counts.num_params, "flops": counts.flops, **metrics}
    for m in ("latency_ms", "latency_ms_p90", "model_bytes"):
        if m in metrics:
            merged[f"{m}_search"] = metrics[m]
    merged.update({"model_bytes": deployed["model_bytes"], "latency_ms": shown["latency_ms"],
                   "latency_ms_p90": shown["latency_ms_p90"], "latency_ms_sem": shown["latency_ms_sem"],
                   "val_acc_onnx": deployed["val_acc_onnx"], "latency_ms_artifact": shown["latency_ms"],
                   "latency_ms_artifact_p90": shown["latency_ms_p90"]})

    per_profile: dict[str, dict[str, Any]] = {}
    for name, prof in profiles.items():
        prec = prof.precision
        plat, pshown, pest = lat_main[prec] if prof is profile else measure_latency(files[prec], prof)
        pm = {"num_params": counts.num_params, "flops": counts.flops, "model_bytes": figures[prec]["model_bytes"],
              "latency_ms": pshown["latency_ms"], "latency_ms_p90": pshown["latency_ms_p90"]}
        budgets = budget_report(prof, pm)
        per_profile[name] = {
            "precision": prec, "file": figures[prec]["file"], "main": prof is profile,
            "latency_ms": pshown["latency_ms"], "latency_ms_p90": pshown["latency_ms_p90"],
            "latency_ms_sem": pshown["latency_ms_sem"],
            "model_bytes": figures[prec]["model_bytes"], "val_acc_onnx": figures[prec]["val_acc_onnx"],
            "batch_size": prof.batch_size, "intra_op_threads": plat.intra_op_threads,
            "budgets": budgets, "met": all(b["met"] for b in budgets.values()),
            "latency": {**plat.to_dict(), "how": plat.how}, "timed_on": plat.source, "calibration": pest,
            "source": Path(prof.source).name if prof.source else None,
        }

    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    card = ModelCard(
        arch_id=arch_id, space=space, params=dict(params), precision=profile.precision, metrics=merged,
        budgets=budget_report(profile, merged), profile=portable_profile(profile),
        input={
            "name": INPUT_NAME, "shape": ["batch", *data.input_shape], "dtype": "float32",
            "layout": "NCHW",
            "normalize": {**data.normalize, "formula": NORMALIZE_FORMULA},
        },
        output={"name": "logits", "shape": ["batch", data.num_classes], "meaning": "unnormalised class scores"},
        labels=list(data.labels), data=data.describe(), parity=parity, precisions=figures,
        quantization=quant.to_dict() if quant is not None else None, profiles=per_profile,
        latency={**lat.to_dict(), "timed_on": lat.source, "how": lat.how,
                 **({"device_estimate": est} if est else {})},
        onnx={"opset": OPSET, "ir_version": onnx.load(str(out)).ir_version, "checker": "passed"},
        environment={"python": platform.python_version(), "torch": torch.__version__,
                     "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "platform": platform.platform()},
        odnas_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        onnx_sha256="", artifact=out.name, run=dict(run) if run else None,
    )
    # The card's hash takes the placeholder's place: same length, so sizes stay as measured.
    for prec, path in files.items():
        set_metadata(path, {CARD_HASH_KEY: card.content_sha256()})
        figures[prec]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    card.onnx_sha256 = figures[profile.precision]["sha256"]
    out.with_suffix(".json").write_text(json.dumps(card.to_dict(), indent=2, default=float))
    return card


def portable_profile(profile: HardwareProfile) -> dict[str, Any]:
    """The profile as the card keeps it: file names, not the paths of the building machine."""
    d = profile.to_dict()
    if d.get("source"):
        d["source"] = Path(d["source"]).name
    cal = d.get("calibration")
    if isinstance(cal, dict) and cal.get("table"):
        cal["table"] = Path(cal["table"]).name
    return d


CARD_HASH_KEY = "odnas.card_sha256"


def describe(arch_id: str, space: str, data, profile: HardwareProfile, precision: str) -> dict[str, str]:
    """``metadata_props`` of an artifact: enough to feed it, and (``odnas.card_sha256``,
    a placeholder until the card exists) to find its card."""
    from odnas import __version__

    return {
        "odnas.arch_id": arch_id, "odnas.space": space, "odnas.precision": precision,
        "odnas.labels": json.dumps(list(data.labels)),
        "odnas.input": json.dumps({"name": INPUT_NAME, "shape": ["batch", *data.input_shape], "dtype": "float32",
                                   "layout": "NCHW"}),
        "odnas.normalize": json.dumps({**data.normalize, "formula": NORMALIZE_FORMULA}),
        "odnas.profile": profile.name, "odnas.version": __version__,
        CARD_HASH_KEY: "0" * 64,
    }


def set_metadata(path: Path, props: Mapping[str, str]) -> None:
    """Write ``props`` into an ONNX file's ``metadata_props`` (replacing same keys)."""
    import onnx

    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in props.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=str(v)))
    onnx.save(model, str(path))


def export_trial(run_dir: str | Path, out: str | Path, trial: int | None = None, *,
                 also_profiles: Sequence[str | HardwareProfile] = (), bounds: Sequence[str] = (),
                 calib_samples: int | None = None, progress: Step | None = None) -> ModelCard:
    """Export a trained trial of a run (the pick by default) as an artifact.

    The run's own (effective) profile decides the deployed precision and budgets;
    ``bounds`` (``odnas.select.select_bounds``: "the most accurate under 2 ms") narrow
    the default pick, on the search's figures, and are kept on the card (``run.bounds``)
    beside ``trial`` too, the model picked under them (``odnas export --max-latency-ms``
    picks on the front timed again, ``odnas.rescore.confirm_front``, as ``odnas select``
    does); ``also_profiles`` and ``calib_samples`` are passed to ``export_artifact``.
    """
    run = load_run(run_dir)
    settings, profile = run.settings, run.profile
    if trial is None:
        row = pick(run.rows, profile, bounds)
        trained = [r for r in run.rows if r.trained and "val_acc" in r.metrics]
        if not trained:
            raise RunDirError(f"{run_dir} has no trained model yet; nothing to export")
        if row is None and not any(r.state == "completed" for r in trained):
            raise SearchFailed(f"every trained model of {run_dir} was stopped early, and odnas exports only models "
                               "trained to the end; nothing to export")
        if row is None:  # the search ran, and found nothing feasible: as select says, exit 3
            raise SearchFailed(f"none of the {len(trained)} trained model{'s' if len(trained) != 1 else ''} of "
                               f"{run_dir} meets every budget and threshold{' and bound' if bounds else ''} "
                               f"({', '.join(profile.bounds() + list(bounds)) or 'none'}); nothing to export "
                               f"(odnas status {run_dir} says which each misses)")
    else:
        match = [r for r in run.rows if r.trial == trial]
        if not match:
            have = sorted(r.trial for r in run.rows)
            raise RunDirError(f"{run_dir} has no trial {trial}" + (f" (its trials are {have[0]} to {have[-1]})"
                                                                    if have else " (it has no trials yet)"))
        row = match[0]
        if row.state == "over_budget":
            raise RunDirError(f"trial {trial} is over budget ({', '.join(row.over_budget)}); it was never trained"
                              " and cannot be exported")
        if row.state == "early_stopped":
            raise RunDirError(f"trial {trial} was stopped early: it has no final weights, and odnas exports only "
                              "models trained to the end")
        if not feasible(row, profile):
            missed = [b for b in profile.bounds() if not meets(row.metrics, [b])]
            why = f"misses {', '.join(missed)}" if missed and row.trained else f"is {row.state}"
            raise RunDirError(f"trial {trial} {why}; odnas exports only models within every budget and threshold")
    space = get_space(settings.space)
    try:  # the trained weights are for the space as it was: its parameters must still fit the code
        space.check_fixed(row.params)
    except SpaceError as e:
        raise SpaceError(f"trial {row.trial}'s parameters no longer fit space {settings.space!r} ({e}); "
                         "has its code changed since the run?") from None
    ckpt_path = Path(row.trial_dir or "") / CHECKPOINT_NAME
    if not ckpt_path.is_file():
        raise RunDirError(f"trial {row.trial} has no checkpoint at {ckpt_path}")
    import torch  # after the checks: a trial that cannot be exported is told in a fraction of a second

    (progress or silent)(f"loading trial {row.trial}'s weights and its data")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if profile.calibration is not None and profile.device is None:
        (progress or silent)("reading the run's host-to-device latency mapping")
    calibration = run_calibration(run_dir, profile, keep=False)  # refitted here if made on another host
    data = load_data(settings.data, settings.data_dir, seed=settings.data_seed)
    try:
        model = space.build(row.params, data.input_shape, data.num_classes)
        model.load_state_dict(ckpt["state_dict"])
    except Exception as e:  # noqa: BLE001 -- the space's code, or weights that no longer fit it
        why = (str(e).strip().splitlines() or [""])[0][:300]
        raise SpaceError(f"space {space.name!r} cannot rebuild trial {row.trial}'s model with its weights "
                         f"({type(e).__name__}: {why}); has its code changed since the run?") from None
    # Weights that load may still sit in another model (a changed activation): the cost
    # lane kept what it built for this arch id (odnas.cost.lane.structure_digest).
    record = read_json(Path(run_dir) / COSTS_DIR / f"{row.arch_id}.json") if row.arch_id else None
    built = (record or {}).get("structure")
    if built and run_digest(model, data.input_shape, data.num_classes) != built:
        raise space_changed(space.name, row.arch_id, "another model than the one trained")
    return export_artifact(
        model, out, space=space.name, params=row.params, arch_id=row.arch_id or space.arch_id(row.params),
        data=data, profile=profile, metrics=row.metrics, also_profiles=also_profiles,
        calib_samples=calib_samples, run={"run_dir": Path(run_dir).resolve().name, "trial": row.trial,
             **({"bounds": list(bounds)} if bounds else {})},
        calibration=calibration, progress=progress,
    )
