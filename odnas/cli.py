"""The ``odnas`` command: one subcommand per verb, each a thin call into the library.

Heavy imports happen inside the subcommands so ``odnas --help`` answers at once.
Errors a user can cause (``odnas.errors.OdnasError`` and its children) print one line
and exit with their code; our own bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from odnas.steps import fmt_value


def _finite(obj: Any) -> Any:
    """JSON has no NaN: a missing standard error and the like become null."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _print_json(obj: Any) -> None:
    print(json.dumps(_finite(json.loads(json.dumps(obj, default=float))), indent=2, allow_nan=False))


def table(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    cells = [[fmt_value(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


# ------------------------------------------------------------------ verbs


def cmd_profiles(a: argparse.Namespace) -> int:
    from odnas.profiles import ProfileError, list_profiles, load_profile

    if a.action == "list":
        profs = [load_profile(n) for n in list_profiles()]
        if a.json:
            _print_json([p.to_dict() for p in profs])
        else:
            print(table([{"name": p.name, "objective": p.objective,
                          "budgets": ", ".join(p.budget_constraints()), "description": p.description}
                         for p in profs], ["name", "objective", "budgets", "description"]))
        return 0
    if not a.name:
        raise ProfileError("`odnas profiles show` needs a profile name or path (odnas profiles lists them)")
    p = load_profile(a.name)
    if a.json:
        _print_json(p.to_dict())
    else:
        import yaml

        print(yaml.safe_dump(p.to_dict(), sort_keys=False).rstrip())
    return 0


def cmd_spaces(a: argparse.Namespace) -> int:
    from odnas.spaces import get_space, list_spaces

    from odnas.errors import SpaceError

    rows = []
    for n in list_spaces():
        try:  # one broken plugin does not hide the others
            space = get_space(n)
            rows.append({"name": n, "parameters": len(space.specs), "description": space.description})
        except SpaceError as e:
            rows.append({"name": n, "parameters": "", "description": f"does not load: {e}"})
    _print_json(rows) if a.json else print(table(rows, ["name", "parameters", "description"]))
    return 0


def cmd_measure(a: argparse.Namespace) -> int:
    import random

    from odnas.cost.lane import measure_candidate
    from odnas.data import check_data_dir, load_data
    from odnas.profiles import load_profile, with_device
    from odnas.spaces import get_space

    profile = with_device(load_profile(a.profile), a.device)
    space = get_space(a.space)
    check_data_dir(a.data, a.data_dir)
    data = load_data(a.data, a.data_dir)
    from odnas.cost.calibrate import apply_to_record, profile_calibration
    from odnas.errors import OdnasError, SearchFailed

    # a calibrated profile: device estimates, as search, rescore and export give (host figures in host_metrics)
    cal = profile_calibration(profile) if profile.device is None else None
    rng = random.Random(a.seed)
    records, failed = [], 0
    with _Steps(a.quiet) as steps:
        for i in range(a.random):
            params = space.sample(rng)
            steps(f"measuring candidate {i + 1}/{a.random} ({space.arch_id(params)})")
            try:
                rec = measure_candidate(space, params, data.input_shape, data.num_classes, profile)
            except OdnasError:
                raise  # the profile's or the device's: every candidate would meet it
            except Exception as e:  # noqa: BLE001 -- this candidate could not be built, counted or exported
                failed += 1
                why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
                print(f"odnas: candidate {i + 1} ({space.arch_id(params)}) could not be measured: {why}",
                      file=sys.stderr, flush=True)
                if a.json:
                    print(json.dumps({"arch_id": space.arch_id(params), "params": params, "error": why},
                                     default=str), flush=True)
                continue
            if cal is not None:
                rec = apply_to_record(rec, cal)
            records.append(rec)
            if a.json:
                print(json.dumps(_finite({**rec.to_dict(), "params": params}), default=float), flush=True)
    if not records:
        raise SearchFailed(f"none of the {a.random} candidates could be measured (reasons above)")
    if not a.json:
        print(table([{"arch_id": r.arch_id, **r.metrics, "latency_ms_sem": r.sem["latency_ms"]}
                     for r in records],
                    ["arch_id", "num_params", "flops", "model_bytes", "latency_ms", "latency_ms_p90",
                     "latency_ms_sem"]))
        from odnas.records import TrialRow
        from odnas.select import proxy_correlations

        rho = proxy_correlations([TrialRow(trial=i, state="measured", arch_id=r.arch_id, params={},
                                           metrics=r.metrics) for i, r in enumerate(records)])
        for proxy in ("flops", "num_params"):
            if rho[proxy] is not None:
                print(f"Spearman({proxy}, latency_ms) = {rho[proxy]:.3f} over {rho['n']} candidates")
    return 0


def cmd_doctor(a: argparse.Namespace) -> int:
    from odnas.cost.doctor import check_host, format_report
    from odnas.errors import SearchError
    from odnas.profiles import load_profile

    try:
        shape = tuple(int(d) for d in a.input_shape.lower().split("x"))
    except ValueError:
        raise SearchError(f"--input-shape {a.input_shape!r}: expected C x H x W, e.g. 1x28x28") from None
    if len(shape) != 3 or min(shape) < 1 or a.models < 2:
        raise SearchError("--input-shape takes three positive sizes (1x28x28) and --models at least 2")
    profile = load_profile(a.profile)
    if a.device:
        from odnas.cost.doctor import check_device, format_device_report
        from odnas.profiles import with_device

        on = with_device(profile, a.device)  # a malformed address: one line, before anything is said
        if not a.json:
            print(f"Timing on the device at {on.device.url} under {profile.name}...", file=sys.stderr, flush=True)
        report = check_device(on, shape, a.models)
        _print_json(report) if a.json else print(format_device_report(report))
        return 0
    if not a.json:
        print(f"Timing on this host under {profile.name} (about a minute; the first run on a host also "
              f"calibrates the reference model for {profile.protocol.calibration_s:g} s)...", file=sys.stderr,
              flush=True)
    report = check_host(profile, shape, a.models)
    _print_json(report) if a.json else print(format_report(report))
    return 0


class _Steps:
    """What a long command is doing, on stderr: a spinner and the current step on a
    terminal (rich), a line per step otherwise (a log, CI), nothing with ``--quiet``.
    Called with the step's text (``odnas.steps.Step``). It writes to its own copy of
    stderr, taken on entry: Ax's chatter is later sent to the run's log by pointing
    stderr there, and the steps still reach the person."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet, self.t0, self.status, self.out, self.own = quiet, time.monotonic(), None, None, False

    def __enter__(self) -> "_Steps":
        if self.quiet:
            return self
        import os

        sys.stderr.flush()
        try:
            self.out, self.own = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1), True
        except (OSError, ValueError):  # a stderr with no file behind it (captured): write to it as is
            self.out, self.own = sys.stderr, False
        if self.out.isatty():
            from rich.console import Console

            self.status = Console(file=self.out).status("starting")
            self.status.start()
        return self

    def __call__(self, text: str) -> None:
        if self.out is None:
            return
        if self.status is not None:
            self.status.update(f"{text} [{time.monotonic() - self.t0:.0f} s]")
        else:
            print(f"odnas: {text}", file=self.out, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
        if self.out is not None and self.own:
            self.out.close()
        self.out = None


class _Progress:
    """The live progress line: redrawn in place on a terminal (rich, one line cut to the
    terminal's width), a new line on change otherwise (a log, CI)."""

    def __init__(self, out=None) -> None:
        self.out = out or sys.stdout
        self._own = None
        if self.out is sys.stderr:
            # The loop points fd 2 at the run's log while it runs (Ax's own handlers write
            # there); progress goes to the stderr the command was given: a copy of it.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
                self.out = self._own = os.fdopen(os.dup(sys.stderr.fileno()), "w")
        self.last = ""
        self.live = None
        if self.out.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(file=self.out), auto_refresh=False, transient=False)
            self.live.start()

    def __call__(self, state) -> None:
        line = state.line()
        if self.live is not None:
            from rich.text import Text

            self.live.update(Text(line, no_wrap=True, overflow="ellipsis"), refresh=True)
            if state.final:
                self.close()
        elif line.partition("]")[2] != self.last.partition("]")[2]:  # a log: a new line when more than the clock moved
            print(line, flush=True, file=self.out)
            self.last = line

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self._own is not None:
            self._own.close()
            self._own = None


def _progress_printer(quiet: bool, out=None) -> _Progress | None:
    """Progress on ``out`` (stdout; stderr when stdout carries JSON); None with --quiet."""
    return None if quiet else _Progress(out)


def _run_with_progress(progress: _Progress | None, fn, *args, **kwargs):
    try:
        return fn(*args, progress=progress, **kwargs)
    finally:
        if progress is not None:
            progress.close()


def _outcome_json(run_dir) -> dict[str, Any]:
    from odnas.loop.store import load_run
    from odnas.select import front

    run = load_run(run_dir)
    counts: dict[str, int] = {}
    for r in run.rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    fr = front(run.rows, run.profile)
    trained = sum(r.trained for r in run.rows)
    # "complete": every planned training done; false after `odnas stop` (exit 0 too) or an error
    return {"run_dir": str(run_dir), "trials_planned": run.settings.trials, "trained": trained,
            "complete": trained >= run.settings.trials, "counts": counts, "front": [r.to_dict() for r in fr],
            "pick": fr[0].to_dict() if fr else None}


def _print_outcome(run_dir, quiet: bool) -> None:
    from odnas.rundir import LOG_NAME

    from odnas.loop.store import load_run
    from odnas.select import front

    run = load_run(run_dir)
    rc_rows = front(run.rows, run.profile)
    if not quiet:
        print()
    print(f"Feasible Pareto front ({len(rc_rows)} model{'s' if len(rc_rows) != 1 else ''}):")
    left = run.settings.trials - sum(r.trained for r in run.rows)
    print(_front_table(rc_rows) if rc_rows else
          f"  (none{' yet' if left > 0 else ''}: no trained model meets every budget and threshold)")
    print(f"\nRun dir: {run_dir}  (experiment.sqlite, trials/, costs/, {LOG_NAME})")
    if rc_rows:
        print(f"Next: odnas select {run_dir}   |   odnas export {run_dir} -o model.onnx")
    else:  # select and export would only say there is nothing to pick
        planned = run.settings.trials
        go_on = (f"odnas resume {run_dir} (the {left} training{'s' if left != 1 else ''} still to do)" if left > 0
                 else f"odnas resume {run_dir} --trials {2 * planned} (more trainings)")
        print(f"Next: odnas status {run_dir} (each trial against the bounds)   |   {go_on}")


def _front_rows(run_dir, extra):
    from odnas.loop.store import load_run
    from odnas.select import front

    run = load_run(run_dir)
    return front(run.rows, run.profile, extra)


def _nearest(run_dir) -> str:
    """When nothing meets every bound: the most accurate and the fastest trained model
    that were within the search's budgets, so a user sees how far each bound is."""
    from odnas.loop.store import load_run

    run = load_run(run_dir)
    ok = [r for r in run.rows if r.state == "completed" and "val_acc" in r.metrics and not r.over_budget]
    if not ok:
        return ""

    def say(r):
        ms = r.metrics.get("latency_ms")
        return f"trial {r.trial} (val_acc {r.metrics['val_acc']:.4f}" + (f", {ms:.4g} ms)" if ms is not None else ")")

    best = max(ok, key=lambda r: (r.metrics["val_acc"], -r.trial))
    out = f"Of the trained models within the budgets, the most accurate is {say(best)}"
    timed = [r for r in ok if r.metrics.get("latency_ms") is not None]
    if timed and (fast := min(timed, key=lambda r: (r.metrics["latency_ms"], r.trial))) is not best:
        out += f"; the fastest is {say(fast)}"
    return out + "."


def _front_table(rows) -> str:
    return table([{"trial": r.trial, **{k: r.metrics.get(k) for k in
                   ("val_acc", "latency_ms", "num_params", "flops", "model_bytes")}, "arch_id": r.arch_id}
                  for r in rows], ["trial", "val_acc", "latency_ms", "num_params", "flops", "model_bytes", "arch_id"])


def _hidden_alias(p: argparse.ArgumentParser, flag: str, dest: str, **kw: Any) -> None:
    """An old spelling of a flag, still accepted, not shown in ``--help``."""
    p.add_argument(flag, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw)


def _parse_fixed(items: Sequence[str] | None) -> dict[str, Any]:
    from odnas.errors import SearchError

    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise SearchError(f"--fixed {item!r}: expected NAME=VALUE, e.g. --fixed epochs=1")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v.strip()
    return out


def _parse_env(items: Sequence[str] | None) -> dict[str, str]:
    from odnas.errors import SearchError

    env = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SearchError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def cmd_search(a: argparse.Namespace) -> int:
    from odnas.errors import SearchError
    from odnas.jobs.component import parse_kv
    from odnas.loop.config import SearchConfig, make_settings

    try:
        scfg = parse_kv(a.scheduler_cfg)
    except ValueError as e:
        raise SearchError(f"--scheduler-cfg: {e}") from None
    cfg = SearchConfig(
        profile=a.profile, space=a.space, data=a.data, data_dir=a.data_dir, trials=a.trials,
        parallel=a.parallel, max_candidates=a.max_candidates, objective=a.objective,
        constraints=tuple(a.constraint or ()),
        run_dir=a.run_dir, seed=a.seed, method=a.method, init_trials=a.init_trials,
        scheduler=a.scheduler, scheduler_cfg=scfg, resources=a.resources, image=a.image,
        tolerated_failure_rate=a.tolerated_failure_rate, fixed=_parse_fixed(a.fixed),
        early_stopping=a.early_stopping or a.early_stopping_from is not None or a.early_stopping_against is not None,
        early_stopping_from=1 if a.early_stopping_from is None else a.early_stopping_from,
        early_stopping_against=a.early_stopping_against or "cheaper",
        retries=a.retries, trial_timeout_s=a.trial_timeout_s, isolation=a.isolation, env=_parse_env(a.env),
        mounts=tuple(a.mount or ()), workers=a.workers, lookahead=a.lookahead, data_seed=a.data_seed,
        threads=a.threads, poll_s=a.poll_s, device=a.device,
    )
    settings = make_settings(cfg)  # every check on the input first, before the driver's imports (Ax: seconds)
    from odnas.cost.lane import check_budgets

    log = sys.stderr if a.json else sys.stdout
    if not a.quiet:  # before the budget check, which times a model (and the host's reference, once: ~30 s)
        name = settings.profile.get("name") or cfg.profile
        shown = name if name == cfg.profile else f"{name} ({cfg.profile})"  # a file: its profile's name, and where
        print(f"odnas search: space {cfg.space}, profile {shown}, data {cfg.data}, "
              f"{cfg.trials} trial{'s' if cfg.trials != 1 else ''}, {cfg.parallel} in parallel, "
              f"method {cfg.method}, scheduler {cfg.scheduler}",
              flush=True, file=log)
    with _Steps(a.quiet) as steps:  # budgets even the smallest candidate breaks: seconds, not the candidate cap
        check_budgets(settings, progress=steps)
    from odnas.loop.driver import create_run, run_loop

    run_dir = create_run(cfg, settings=settings)  # a bad input left (a calibration table that does not fit): one line
    if not a.quiet:
        print(f"Run dir: {run_dir}  (odnas resume {run_dir} continues it if stopped)", flush=True, file=log)
    with _outcome_on_failure(a, run_dir, "interrupted; the run dir is made"):
        _run_with_progress(_progress_printer(a.quiet, log), run_loop, run_dir)
    _finish(a, run_dir)
    return 0


@contextlib.contextmanager
def _outcome_on_failure(a: argparse.Namespace, run_dir, interrupted: str = "interrupted") -> Iterator[None]:
    """A search or resume that ran but could not succeed (exit 3) or was interrupted (130).
    A Ctrl-C before the driver's own handling began (which says what it left) becomes
    ``interrupted`` and the resume command. With --json the outcome is still printed on
    stdout, with the one-line reason as ``error``: a script learns where the run dir is
    and what it holds. The error then ends the command as always (its line on stderr,
    its exit code)."""
    from odnas.errors import SearchFailed, SearchInterrupted

    try:
        try:
            yield
        except KeyboardInterrupt:
            raise SearchInterrupted(f"{interrupted}. Go on with: odnas resume {run_dir}") from None
    except (SearchFailed, SearchInterrupted) as e:
        if a.json:
            try:
                _print_json({**_outcome_json(run_dir), "error": str(e), "exit_code": e.exit_code})
            except (Exception, KeyboardInterrupt):  # the outcome is a courtesy: the error itself must be told
                pass
        raise


def _finish(a: argparse.Namespace, run_dir) -> None:
    if a.json:
        out = _outcome_json(run_dir)
        if a.report:
            from odnas.report import write_report

            out["report"] = str(write_report(run_dir))
        _print_json(out)
        return
    _print_outcome(run_dir, a.quiet)
    _maybe_report(a, run_dir)


def _maybe_report(a: argparse.Namespace, run_dir) -> None:
    if a.report:
        from odnas.report import write_report

        print(f"Report: {write_report(run_dir)}")


def cmd_report(a: argparse.Namespace) -> int:
    from odnas.rundir import read_settings

    read_settings(a.run_dir)  # a run dir, or one line saying it is not, before Ax's import (seconds)
    from odnas.report import write_report

    with _Steps(a.quiet) as steps:
        out = write_report(a.run_dir, a.output, progress=steps)
    if a.json:
        _print_json({"report": str(Path(out).resolve()),
                     "png": sorted(str(p.resolve()) for p in Path(out).parent.glob("*.png"))})
        return 0
    print(f"Wrote {out} (offline HTML) and a PNG per figure in {out.parent}")
    return 0


def cmd_resume(a: argparse.Namespace) -> int:
    from odnas.rundir import read_settings

    st = read_settings(a.run_dir)  # a run dir, or one line saying it is not, before the driver's imports
    if not a.quiet:  # loading the run and checking its space take seconds: say what is going on
        print(f"odnas resume: {a.run_dir} (space {st.space}, profile {st.profile.get('name', '?')}, "
              f"{st.trials} trials); loading the run", flush=True, file=sys.stderr if a.json else sys.stdout)
    from odnas.loop.driver import resume

    with _outcome_on_failure(a, Path(a.run_dir).resolve()):
        run_dir = _run_with_progress(_progress_printer(a.quiet, sys.stderr if a.json else None), resume, a.run_dir,
                                     trials=a.trials, device=a.device, max_candidates=a.max_candidates,
                                     faults={"retries": a.retries, "trial_timeout_s": a.trial_timeout_s,
                                             "tolerated_failure_rate": a.tolerated_failure_rate})
    _finish(a, run_dir)
    return 0


def cmd_stop(a: argparse.Namespace) -> int:
    from odnas.errors import RunDirError
    from odnas.rundir import STOP_REQUEST_NAME, driver_running, read_settings

    read_settings(a.run_dir)  # a run dir, or one line saying it is not
    if not driver_running(a.run_dir):
        raise RunDirError(f"no driver is running on {a.run_dir}; nothing to stop")
    (Path(a.run_dir) / STOP_REQUEST_NAME).write_text("stop\n")
    print(f"Asked the driver of {a.run_dir} to stop at its next poll (about a second); running training "
          f"jobs are left to finish, and `odnas resume {a.run_dir}` goes on.")
    return 0


def _queued(rows, driver: bool) -> set[int]:
    """Trials in a warm worker's inbox when the driver stopped: Ax's "running", but not
    begun (resume starts them). With a driver running, none is told apart."""
    from odnas.rundir import trial_begun

    return set() if driver else {r.trial for r in rows if r.state == "running" and r.arch_id and r.trial_dir
                                 and not trial_begun(r.trial_dir)}


def _short(text: str, most: int = 100) -> str:
    """A reason cut to a table cell: at a word, marked as cut (the whole is in --json)."""
    return text if len(text) <= most else text[:most].rsplit(" ", 1)[0].rstrip(",;:") + " …"


def _note(row, profile, driver: bool = True, queued: bool = False) -> str:
    from odnas.rundir import RESULT_NAME, read_curve
    from odnas.select import meets

    if row.state == "running" and not row.arch_id:  # made, but its cost lane never finished (a device away)
        return "not costed or launched yet" + ("" if driver else "; resume does it")
    if queued:
        return "queued, not started; resume starts it"  # in a warm worker's inbox when the driver stopped
    if row.state == "running" and not driver and row.trial_dir and (Path(row.trial_dir) / RESULT_NAME).exists():
        return "trained after the driver stopped; resume records it"  # the stop summary counted it as kept

    if row.over_budget:
        return "over " + ", ".join(row.over_budget)
    if row.state == "completed" and "val_acc" in row.metrics:  # trained: which bounds it misses, if any
        missed = [b for b in profile.bounds() if not meets(row.metrics, [b])]
        if missed:
            return "misses " + ", ".join(missed)
    # Where a running or early-stopped trial's curve stands (Ax's own reason for a stop is
    # a paragraph on percentiles).
    curve = read_curve(row.trial_dir) if row.state in ("running", "early_stopped") and row.trial_dir else []
    if curve:
        at = "" if row.state == "running" else "early-stopped at "
        return f"{at}epoch {curve[-1]['epoch']}, val_acc {float(curve[-1]['val_acc']):.3f}"
    note = _short((row.reason or "").strip().splitlines()[0] if (row.reason or "").strip() else "")
    if row.retry_of is not None:
        note = f"retry of trial {row.retry_of}" + (f"; {note}" if note else "")
    return note


#: Candidates status needs before it shows how FLOPs and parameters rank against latency.
PROXY_MIN_N = 8


def cmd_status(a: argparse.Namespace) -> int:
    from odnas.loop.store import load_run
    from odnas.records import trials_frame
    from odnas.rundir import driver_running
    from odnas.select import front, proxy_correlations

    running = driver_running(a.run_dir)
    run = load_run(a.run_dir, running)  # the driver's trials.json when as new as the experiment: no Ax
    settings, profile, rows = run.settings, run.profile, run.rows
    if a.format in ("csv", "json"):  # the trials as a table: odnas.api.load_run(RUN).table()
        df = trials_frame(rows)
        print(df.to_csv(index=False) if a.format == "csv"
              else df.to_json(orient="records", indent=1, double_precision=15), end="")
        return 0
    queued = _queued(rows, running)
    counts: dict[str, int] = {}
    for r in rows:
        state = "queued" if r.trial in queued else r.state
        counts[state] = counts.get(state, 0) + 1
    fr = front(rows, profile)
    proxies = proxy_correlations(rows)
    if a.json:
        _print_json({"run_dir": str(Path(a.run_dir).resolve()), "trials_planned": settings.trials, "counts": counts,
                     "trials": [{**r.to_dict(), **({"queued": True} if r.trial in queued else {}),
                                 "note": _note(r, profile, running, r.trial in queued)} for r in rows],
                     "front": [r.trial for r in fr], "profile": profile.name,
                     "space": settings.space, "proxy_spearman_vs_latency_ms": proxies,
                     # whether a driver holds the run now, and the time of its last poll (the rows' age)
                     "driver_running": bool(running), "as_of": run.as_of if running else None})
        return 0
    trained = counts.get("completed", 0) + counts.get("early_stopped", 0)
    print(" · ".join([f"{a.run_dir}: {trained}/{settings.trials} trained, {len(rows)} candidates",
                      *(f"{k.replace('_', ' ')} {v}" for k, v in sorted(counts.items()))]))
    print(f"space {settings.space} · profile {profile.name} · objective {profile.objective} · "
          f"budgets {', '.join(profile.budget_constraints()) or 'none'}")
    print(table([{"trial": r.trial, "state": "queued" if r.trial in queued else r.state,
                  "val_acc": r.metrics.get("val_acc", ""),
                  "latency_ms": r.metrics.get("latency_ms", ""), "num_params": r.metrics.get("num_params", ""),
                  "arch_id": r.arch_id or "",
                  "note": _note(r, profile, running, r.trial in queued)}
                 for r in rows], ["trial", "state", "val_acc", "latency_ms", "num_params", "arch_id", "note"]))
    going = running or counts.get("running") or counts.get("queued")
    print("\nFeasible Pareto front: " + (f"trial{'s' if len(fr) != 1 else ''} {', '.join(str(r.trial) for r in fr)}"
                                        if fr else "none yet" if going else "none"))
    if (counts.get("running") or counts.get("queued")) and not running:
        print(f"No driver is running: `odnas resume {a.run_dir}` polls the running trials, starts the queued ones "
              "and goes on.")
    elif not running and trained < settings.trials:
        made = sum(r.state != "failed" for r in rows)  # as the candidate cap counts them
        cap = settings.max_candidates
        how = (f"`odnas resume {a.run_dir} --max-candidates {max(2 * cap, made + 1)}` goes on (the run reached its "
               f"cap of {cap} candidates)" if cap and made >= cap else f"`odnas resume {a.run_dir}` goes on")
        print(f"No driver is running, and {settings.trials - trained} of the {settings.trials} trainings asked for "
              f"are not done: {how}.")
    if running and run.as_of is not None:
        print(f"A driver is running; trials as of its poll at {time.strftime('%H:%M:%S', time.localtime(run.as_of))}.")
    if proxies["flops"] is not None and proxies["n"] >= PROXY_MIN_N:  # a rank over a few says nothing
        print(f"Proxies against measured latency_ms under {profile.name} ({proxies['n']} candidates): "
              f"Spearman flops {proxies['flops']:.2f}, num_params {proxies['num_params']:.2f}")
    return 0


def cmd_select(a: argparse.Namespace) -> int:
    from odnas.errors import SearchFailed
    from odnas.select import select_bounds

    extra = select_bounds(a.max_latency_ms, a.min_acc)
    if a.no_confirm:
        fr, confirmed = _front_rows(a.run_dir, extra), None
    else:
        from odnas.rescore import confirm_front

        with _Steps(a.quiet) as steps:
            res = confirm_front(a.run_dir, extra, progress=steps)
        fr, confirmed = res["front"], res["confirmed"]
    pick = fr[0] if fr else None
    if a.json:  # on exit 3 with the error and code, as search and resume give them
        _print_json({"front": [r.to_dict() for r in fr], "pick": pick.to_dict() if pick else None,
                     "confirmed": confirmed,
                     **({} if pick else {"error": "no trained model meets every budget and bound",
                                         "exit_code": SearchFailed.exit_code})})
        return 0 if pick else SearchFailed.exit_code
    if confirmed:  # none when nothing within the bounds was left to confirm
        pr = res["protocol"]
        how = (f"{pr['sessions']} sessions x {pr['rounds']} rounds against the reference model"
               if pr["method"] == "reference" else f"a {pr['min_runs']}-run, {pr['min_time_s']:g} s protocol")
        print(f"Confirmed the front's latencies with {how} per model, in a quiet window"
              + (" (the running search's jobs paused meanwhile)" if res["driver_running"] else "") + ":")
        for c in confirmed:
            change = f"{c['change'] * 100:+.1f}%" if c["change"] is not None else "n/a"
            flag = (f"  MOVED ACROSS {', '.join(c['crossed'])}: no longer feasible" if c["crossed"] else
                    f"  moved under {', '.join(c['entered'])}: feasible now" if c.get("entered") else "")
            print(f"  trial {c['trial']}: latency_ms {c['search']['latency_ms']:.4g} in the search, "
                  f"{c['confirmed']['latency_ms']:.4g} confirmed ({change}){flag}")
        print()
    if not fr:
        print("No trained model meets every budget and bound.")
        if near := _nearest(a.run_dir):
            print(near)
        return SearchFailed.exit_code
    print(_front_table(fr))
    print(f"\nPick: trial {pick.trial} ({pick.arch_id}), val_acc {pick.metrics['val_acc']:.4f}"
          + (f", {pick.metrics['latency_ms']:.4f} ms" if "latency_ms" in pick.metrics else ""))
    print(f"Export it: odnas export {a.run_dir} --trial {pick.trial} -o {pick.arch_id}.onnx")
    return 0


def cmd_rescore(a: argparse.Namespace) -> int:
    from odnas.errors import SearchFailed
    from odnas.rescore import rescore

    with _Steps(a.quiet) as steps:
        res = rescore(a.run_dir, a.profile, progress=steps)
    none = SearchFailed.exit_code if not res["front_rows"] else 0  # as select and export: nothing meets the bounds
    if a.json:
        _print_json({**{k: v for k, v in res.items() if k != "front_rows"},
                     **({"error": f"no trained model meets every budget and threshold of {res['profile']['name']}",
                         "exit_code": none} if none else {})})
        return none
    prof = res["profile"]
    budgets = ", ".join(f"{m} <= {v:g}" for m, v in prof["budgets"].items()) or "none"
    print(f"{len(res['rows'])} trained candidates of {a.run_dir} measured under {prof['name']} on "
          f"{res['timed_on']} ({res['measured']} new measurements, no retraining); budgets {budgets}")
    print(table([{"trial": r["trial"], "val_acc": r["metrics"]["val_acc"],
                  "latency_ms": r["metrics"].get("latency_ms"),
                  "latency_ms_before": r["search_metrics"].get("latency_ms"),
                  "num_params": r["metrics"].get("num_params"),
                  "note": "; ".join([*(["over " + ", ".join(r["over_budget"])] if r["over_budget"] else []),
                                     *(["misses " + ", ".join(r["misses"])] if r["misses"] else [])])
                  or ("front" if r["trial"] in res["front"] else "")} for r in res["rows"]],
                ["trial", "val_acc", "latency_ms", "latency_ms_before", "num_params", "note"]))
    fr = res["front_rows"]
    print(f"\nFeasible Pareto front under {prof['name']} ({len(fr)} model{'s' if len(fr) != 1 else ''}):")
    if fr:
        print(_front_table(fr))
        print(f"Export with both profiles on the card: odnas export {a.run_dir} --trial {fr[0].trial} "
              f"--also-profile {shlex.quote(a.profile)} -o {fr[0].arch_id}.onnx")  # as given: a name or a file
    else:
        print("none: no trained model meets this profile's budgets and thresholds")
    return none


def _int8_note(card: Mapping[str, Any]) -> str | None:
    """A deployed int8 file that is both slower (beyond 2 SE) and larger than the fp32
    one it came from: worth saying, since the user chose int8 for speed or size."""
    prec = card.get("precisions") or {}
    if not ("int8" in prec and "fp32" in prec):
        return None
    f, q = prec["fp32"], prec["int8"]
    noise = 2 * math.hypot(q.get("latency_ms_sem") or 0.0, f.get("latency_ms_sem") or 0.0)
    if q["latency_ms"] - f["latency_ms"] > noise and q["model_bytes"] > f["model_bytes"]:
        where = (card.get("latency") or {}).get("timed_on", "this host")
        if q.get("deployed"):
            return (f"the deployed int8 file is slower and larger than {f['file']}, timed on {where}: this model "
                    "gains nothing from int8 there; an fp32 profile would ship the fp32 file")
        return (f"the int8 file {q['file']} is slower and larger than the deployed fp32 one, timed on {where}: this "
                "model gains nothing from int8 there")
    return None


def _confirmed_pick(run_dir, bounds, steps) -> int | None:
    """"The most accurate under 2 ms", picked as ``odnas select`` picks it: on the front
    timed again with a longer protocol, so a model near the bound goes the same way. None
    when nothing was within the bounds before that either: ``export_trial`` says why."""
    from odnas.errors import SearchFailed
    from odnas.rescore import confirm_front

    res = confirm_front(run_dir, bounds, progress=steps)
    crossed = [c["trial"] for c in res["confirmed"] if c["crossed"]]
    if res["pick"] is None and crossed:
        raise SearchFailed(f"no trained model of {run_dir} meets every budget, threshold and bound once the front "
                           f"is timed again: trial{'s' if len(crossed) != 1 else ''} {', '.join(map(str, crossed))} "
                           "moved across a bound (odnas select shows the figures); nothing to export")
    return res["pick"].trial if res["pick"] is not None else None


def cmd_export(a: argparse.Namespace) -> int:
    from odnas.errors import SearchFailed, SelectError
    from odnas.export import artifact_path, export_trial
    from odnas.select import meets, select_bounds

    bounds = select_bounds(a.max_latency_ms, a.min_acc)
    if a.trial is not None and bounds:
        raise SelectError(f"--trial names the model; {', '.join(bounds)} would pick one: give one or the other")
    try:
        with _Steps(a.quiet) as steps:
            trial = a.trial if not bounds else _confirmed_pick(a.run_dir, bounds, steps)
            card = export_trial(a.run_dir, a.output, trial=trial, also_profiles=a.also_profile or (),
                                bounds=bounds, calib_samples=a.calib_samples, progress=steps).to_dict()
    except SearchFailed as e:  # nothing to export: under --json a document says so, as select's does
        if a.json:
            _print_json({"error": str(e), "exit_code": e.exit_code, "written": None})
        raise
    path = artifact_path(a.output, card["arch_id"])
    out = str(path)
    others = [str(path.parent / f["file"]) for f in (card.get("precisions") or {}).values()
              if f.get("file") and f["file"] != path.name]  # the other precision's file, kept beside it
    if a.json:  # the card, and where its files are (the card names them only)
        written = {"artifact": str(path.resolve()), "card": str(path.with_suffix(".json").resolve()),
                   "others": [str(Path(o).resolve()) for o in others]}
        _print_json({**card, "written": written})
        return 0
    print(f"Wrote {out}{''.join(f', {o}' for o in others)} and {path.with_suffix('.json')} "
          f"(trial {card['run']['trial']}, {card['arch_id']}, {card.get('precision', 'fp32')})")
    p = card["parity"]
    print(f"Parity with PyTorch on {p['n']} validation inputs ({p.get('file', out)}): max abs diff "
          f"{p['max_abs_diff']:.2e}, top-1 agreement {p['top1_agreement']:.4f}; "
          f"deployed file's val_acc {card['metrics']['val_acc_onnx']:.4f}")
    prec = card.get("precisions") or {}
    if "int8" in prec and "fp32" in prec:
        f, q = prec["fp32"], prec["int8"]
        print(f"  int8 against fp32: val_acc {q['val_acc_onnx']:.4f} vs {f['val_acc_onnx']:.4f}, latency_ms "
              f"{q['latency_ms']:.4g} vs {f['latency_ms']:.4g}, model_bytes {q['model_bytes']} vs {f['model_bytes']}, "
              f"top-1 agreement {q.get('top1_agreement_vs_fp32', float('nan')):.4f}")
        if note := _int8_note(card):
            print(f"  note: {note}")
    lat, m = card["latency"], card["metrics"]
    est = lat.get("device_estimate")
    how = (f"estimated for the device from {est['host_latency_ms']:.4g} ms timed on {lat.get('timed_on')} "
           f"(calibration {est['calibration_id']}{', extrapolated' if est.get('extrapolated') else ''})"
           if est else f"timed on {lat.get('timed_on')}")
    print(f"  latency_ms {m['latency_ms']:.4g} (+- {m['latency_ms_sem']:.2g}), {how}")
    for name, b in card["budgets"].items():
        print(f"  budget {name} <= {b['limit']:g}: {b['value']:.6g} ({'met' if b['met'] else 'NOT met'})")
    for b in bounds:  # picked on the front timed again, as select does; judged again on the artifact's own
        name = b.split()[0]
        print(f"  bound {b}: {m[name]:.6g} ({'met' if meets(m, [b]) else 'NOT met by the artifact as timed now'})")
    for name, pr in (card.get("profiles") or {}).items():
        if name == card["profile"]["name"]:
            continue
        verdict = "all budgets met" if all(b["met"] for b in pr.get("budgets", {}).values()) else "budget NOT met"
        print(f"  under {name} ({pr.get('precision', 'fp32')}, batch {pr.get('batch_size', '?')}): latency_ms "
              f"{pr['latency_ms']:.4g} (p90 {pr.get('latency_ms_p90', float('nan')):.4g}), {verdict}")
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from pathlib import Path

    from odnas.cost import calibrate as C
    from odnas.profiles import load_profile

    if a.action == "export":
        man = C.export_references(a.output, load_profile(a.profile), a.input_shape, a.num_classes)
        if a.json:
            _print_json(man)
            return 0
        print(f"Wrote {len(man['models'])} reference models ({man['reference_set']}, input "
              f"{'x'.join(map(str, man['input_shape']))}) and {C.TEMPLATE_CSV}, {C.BENCH_SCRIPT}, "
              f"{C.PERF_SCRIPT} to {man['dir']}")
        if man["csv"].get("kept"):
            print(man["csv"]["kept"])
        print(f"Time them on the device (docs/calibration.md), then: odnas calibrate fit --profile {a.profile} "
              f"--table {Path(man['dir']) / C.TEMPLATE_CSV}")
    elif a.action == "fit":
        profile = load_profile(a.profile)
        out = a.output or C.default_record_path(profile, a.table)
        cal = C.fit_calibration(profile, a.table, model=a.model, input_shape=a.input_shape,
                                device=a.device, refresh=a.remeasure, out=out)
        if a.json:
            _print_json(cal.to_dict())
        else:
            print(C.format_calibration(cal) + f"\nWrote {out}")
    elif a.action == "run":
        import dataclasses

        from odnas.profiles import with_device

        profile = with_device(load_profile(a.profile), a.device)
        with _Steps(a.quiet) as steps:
            table, device = C.time_on_device(a.output, profile, a.input_shape, a.num_classes, progress=steps)
            steps("timing the same references on this host, and fitting")
            out = Path(a.output) / "calibration.json"
            cal = C.fit_calibration(dataclasses.replace(profile, device=None, calibration=None), table,
                                    model=a.model, device=device, out=out)
        if a.json:
            _print_json({**cal.to_dict(), "table": str(table)})
            return 0
        print(C.format_calibration(cal) + f"\nWrote {table} and {out}")
        print(f"To search without the device, add to the profile:\n  calibration:\n    table: {Path(table).resolve()}"
              f"\n    model: {cal.model}\n    device: {device!r}")
    else:  # perf-logs
        out = C.perf_logs_to_csv(a.log_dir, a.output, a.statistic)
        _print_json({"csv": str(out)}) if a.json else print(f"Wrote {out}")
    return 0


# ------------------------------------------------------------------ parser


SEARCH_EXAMPLES = """examples:
  odnas search --profile cpu-mobile
      the default: mobile-cnn on the bundled digits, 16 trainings, 2 at a time
  odnas search --space mlp --data mnist --data-dir DIR --objective "val_acc, -num_params" \\
      --constraint "val_acc >= 0.94" --constraint "num_params <= 80000" --trials 48
      the Ax tutorial's problem (a <= bound on a cost metric is a hard budget)
  odnas search --space my_pkg.spaces:KwsSpace --data npz:kws.npz --constraint "latency_ms <= 0.05" --json
      your own space and data (docs/plugins.md); one JSON document on stdout at the end

methods: bo (default: Sobol, then BoTorch's qLogNEHVI on a GP per metric), sobol
(quasi-random), random (uniform), saasbo (sparse-axis-aligned GP for 15+ parameters,
minutes per candidate; pip install 'odnas[saasbo]').
exit codes: 0 done; 2 the input is wrong; 3 the search ran but could not succeed
(too many failed trials, no candidate fits the budgets); 130 interrupted.
"""


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's default shown (but for switches and options with none), and
    epilogs kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "%(default)" not in text and "(default" not in text
                and action.default not in (None, False, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """A bad flag is one line, as every other input error is, with where to read more."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_device(a: argparse.Namespace) -> int:
    from odnas_device.agent import run_serve

    return run_serve(a)


def _device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", metavar="URL",
                   help="time latency on the device agent at URL (odnas-device serve prints it; the token is "
                        "read from $ODNAS_DEVICE_TOKEN) instead of on this host")


def build_parser() -> argparse.ArgumentParser:
    from odnas_device.options import add_serve_arguments

    from odnas import __version__

    ap = _Parser(prog="odnas", description="On-device, deployment-aware neural architecture search",
                                 formatter_class=_Help)
    ap.add_argument("--version", action="version", version=f"odnas {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser = functools.partial(sub.add_parser, formatter_class=_Help)  # type: ignore[method-assign]

    p = sub.add_parser("profiles", help="list or show hardware profiles")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list",
                   help="list the profiles, or show one (with its name)")
    p.add_argument("name", nargs="?", help="profile name or YAML path (with show)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(fn=cmd_profiles)

    p = sub.add_parser("spaces", help="list search spaces (shipped and installed)")
    p.add_argument("action", nargs="?", choices=["list"], default="list", help="list the spaces")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(fn=cmd_spaces)

    p = sub.add_parser("measure", help="measure the costs of random candidates of a space")
    p.add_argument("--space", default="mobile-cnn",
                   help="a space name (odnas spaces), package.module:Class or path/to/file.py:Class")
    p.add_argument("--profile", default="cpu-mobile", help="profile name or YAML path")
    p.add_argument("--data", default="digits", help="fixes the input shape and class count (see search --help)")
    p.add_argument("--data-dir", help="folder of an mnist data set")
    p.add_argument("--random", type=int, default=10, help="how many random candidates")
    p.add_argument("--seed", type=int, default=0, help="seed of the random candidates")
    p.add_argument("--json", action="store_true", help="one JSON record per line")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _device_flag(p)
    p.set_defaults(fn=cmd_measure)

    p = sub.add_parser("doctor", help="check whether this host times latency reproducibly, and what to do if not")
    p.add_argument("--profile", default="cpu-mobile", help="profile name or YAML path")
    p.add_argument("--input-shape", default="1x8x8", help="C x H x W of the models timed (default 1x8x8, digits)")
    p.add_argument("--models", type=int, default=3, help="candidates timed twice in fresh processes (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--device", metavar="URL", help="check a device agent instead: the link, its onnxruntime and "
                   "its retest spread (the token is read from $ODNAS_DEVICE_TOKEN)")
    p.set_defaults(fn=cmd_doctor)

    p = sub.add_parser("search", help="run a multi-objective architecture search", epilog=SEARCH_EXAMPLES)
    p.add_argument("--profile", default="cpu-mobile", help="profile name or YAML path")
    p.add_argument("--space", default="mobile-cnn",
                   help="a space name (odnas spaces), package.module:Class or path/to/file.py:Class")
    p.add_argument("--data", default="digits",
                   help="digits (bundled), mnist (IDX folder), mnist-tv, fashion-mnist, npz:PATH, "
                        "folder:PATH[@HxW], or a LightningDataModule as package.module:make")
    p.add_argument("--data-dir", help="folder of an mnist data set (or set ODNAS_MNIST_DIR)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/validation split")
    p.add_argument("--trials", type=int, default=16, help="models to train (candidates over a budget are not counted)")
    p.add_argument("--max-candidates", type=int,
                   help="cap on all candidates, over-budget ones included (default 4 x trials)")
    p.add_argument("--parallel", type=int, default=2, help="trainings at a time")
    p.add_argument("--objective", help="Ax objective string, e.g. 'val_acc, -latency_ms'")
    p.add_argument("--constraint", action="append", help="Ax bound, e.g. 'latency_ms <= 2' (repeatable)")
    p.add_argument("--run-dir", help="where the search writes (default runs/PROFILE-SPACE-TIME)")
    p.add_argument("--seed", type=int, default=0, help="seed of the candidates and the trainings")
    p.add_argument("--method", default="bo", choices=["bo", "sobol", "random", "saasbo"],
                   help="how candidates are proposed (see below)")
    p.add_argument("--init-trials", type=int, help="quasi-random trials before Bayesian optimisation")
    p.add_argument("--fixed", action="append", metavar="NAME=VALUE",
                   help="hold a parameter constant, e.g. --fixed epochs=1 (repeatable)")
    _hidden_alias(p, "--fix", "fixed", action="append")
    p.add_argument("--scheduler", default="local_cwd", help="TorchX scheduler (local_cwd, kubernetes, slurm, ray)")
    p.add_argument("--scheduler-cfg", help="TorchX scheduler config, key=value[,key=value]")
    p.add_argument("--resources", help="TorchX named resource or cpu=N,memMB=M,gpu=G per trial")
    p.add_argument("--image", help="container image (kubernetes, docker); for ray a local directory "
                                    "uploaded as the job's working dir")
    p.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help="environment variable in every training job (repeatable)")
    p.add_argument("--mount", action="append", metavar="type=volume,src=CLAIM,dst=/path",
                   help="TorchX mount in every training job, Kubernetes/Docker (repeatable)")
    p.add_argument("--tolerated-failure-rate", type=float, default=0.5, metavar="F",
                   help="share of failed trials tolerated before the search stops")
    _hidden_alias(p, "--max-failure-rate", "tolerated_failure_rate", type=float)
    p.add_argument("--isolation", default="pause", choices=["pause", "lock", "none"],
                   help="while a latency is timed: pause this run's local training jobs (default), "
                        "only keep measurements from overlapping (lock), or nothing (none)")
    p.add_argument("--workers", default="warm", choices=["warm", "fresh"],
                   help="warm: a long-lived TorchX worker per slot forks a child per trial (no start-up per "
                        "trial); fresh: one TorchX job per trial, full isolation")
    p.add_argument("--lookahead", type=int, default=0,
                   help="warm workers: candidates queued per slot beyond the one training, so the next is "
                        "generated and measured while the slots train")
    p.add_argument("--retries", type=int, default=0, help="try a failed training again up to N times")
    p.add_argument("--threads", type=int, help="torch threads per training job (default: cores // parallel)")
    p.add_argument("--poll-s", type=float, default=1.0, metavar="SECONDS", help="how often the driver polls its jobs")
    p.add_argument("--trial-timeout-s", type=float, metavar="SECONDS",
                   help="stop and fail a training job with no result after this long")
    _hidden_alias(p, "--trial-timeout", "trial_timeout_s", type=float)
    p.add_argument("--early-stopping", action="store_true",
                   help="stop trials whose val_acc curve falls below the median of the others (Ax)")
    p.add_argument("--early-stopping-from", type=int, metavar="EPOCH",
                   help="early stopping that decides from this epoch on (default 1; implies --early-stopping)")
    p.add_argument("--early-stopping-against", choices=("cheaper", "all"),
                   help="early stopping compares a trial's val_acc with the trials that cost no more in every "
                        "cost objective (cheaper, the default) or with all trials (all: Ax's rule as it is); "
                        "implies --early-stopping")
    _device_flag(p)
    p.add_argument("--quiet", action="store_true", help="no live progress")
    p.add_argument("--report", action="store_true", help="write RUN_DIR/report/report.html at the end")
    p.add_argument("--json", action="store_true",
                   help="the outcome as one JSON document on stdout (progress on stderr)")
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("resume", help="continue a stopped or killed search")
    p.add_argument("run_dir", help="the run dir of a search (printed when it started)")
    p.add_argument("--trials", type=int, help="new total number of trials")
    p.add_argument("--max-candidates", type=int, help="new total of candidates, over-budget ones included (a run "
                   "that reached its cap goes on; default: 4 x --trials when --trials is given)")
    p.add_argument("--device", metavar="URL", help="the device agent's new address, for a search timed on a device "
                   "whose agent has moved")
    p.add_argument("--trial-timeout-s", type=float, metavar="SECONDS",
                   help="a new time limit per training job (default: the run's)")
    p.add_argument("--retries", type=int, help="a new number of retries of a failed training (default: the run's)")
    p.add_argument("--tolerated-failure-rate", type=float, metavar="F",
                   help="a new share of failed trials tolerated (default: the run's)")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    p.add_argument("--report", action="store_true", help="write RUN_DIR/report/report.html at the end")
    p.add_argument("--json", action="store_true",
                   help="the outcome as one JSON document on stdout (progress on stderr)")
    p.set_defaults(fn=cmd_resume)

    p = sub.add_parser("stop", help="ask a running search to stop cleanly (from another shell)",
                       description="Ask the driver of RUN_DIR to stop at its next poll (about a second). Running "
                       "training jobs finish; `odnas resume RUN_DIR` goes on. Exits 2 when no driver is running.")
    p.add_argument("run_dir", help="the run dir of a search (printed when it started)")
    p.set_defaults(fn=cmd_stop)

    p = sub.add_parser("report", help="HTML report of a run: trade-offs, model fit, parameter effects")
    p.add_argument("run_dir", help="the run dir of a search (printed when it started)")
    p.add_argument("-o", "--output", help="HTML file or folder (default RUN_DIR/report/report.html)")
    p.add_argument("--json", action="store_true", help="the files written, as one JSON document")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("status", help="progress, trial states and the current front of a run")
    p.add_argument("run_dir", help="the run dir of a search (printed when it started)")
    p.add_argument("--json", action="store_true", help="one JSON document: counts, trials, front, proxies")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table",
                   help="table (default: for people), or the trials alone as flat JSON records or CSV, "
                        "the same as odnas.api.load_run(RUN).table()")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("select", help="the feasible Pareto front and the pick")
    p.add_argument("run_dir", help="the run dir of a search (printed when it started)")
    p.add_argument("--max-latency-ms", type=float, help="only models whose latency_ms is at most this, e.g. 2")
    p.add_argument("--min-acc", type=float, help="only models at least this accurate (val_acc), e.g. 0.95")
    p.add_argument("--no-confirm", action="store_true",
                   help="skip re-timing the front with a longer protocol before the pick")
    p.add_argument("--json", action="store_true", help="one JSON document: front, pick, confirmed latencies")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(fn=cmd_select)

    p = sub.add_parser("rescore", help="measure a run's trained candidates under another profile (no retraining)")
    p.add_argument("run_dir", help="the run dir of a search (printed when it started)")
    p.add_argument("--profile", required=True, help="profile name or YAML path")
    p.add_argument("--json", action="store_true", help="one JSON document: every trained model, front, pick")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(fn=cmd_rescore)

    p = sub.add_parser("export", help="export a trained model as ONNX with a model card")
    p.add_argument("run_dir", help="the run dir of a search (printed when it started)")
    p.add_argument("--trial", type=int, help="trial index (default: the pick, the most accurate model within the "
                   "run's budgets and thresholds and the bounds below; odnas select shows it)")
    p.add_argument("--max-latency-ms", type=float, help="pick only among models whose latency_ms is at most this, "
                   "as odnas select does, e.g. 2")
    p.add_argument("--min-acc", type=float, help="pick only among models at least this accurate (val_acc)")
    p.add_argument("-o", "--output", required=True,
                   help="output .onnx path, or a folder (the file is then ARCH_ID.onnx); the card goes beside it")
    p.add_argument("--also-profile", action="append", metavar="PROFILE",
                   help="also measure the artifact under this profile and record it on the card (repeatable)")
    p.add_argument("--calib-samples", type=int, help="training-split samples for INT8 calibration (default 256); "
                   "with an int8 profile or --also-profile only")
    p.add_argument("--json", action="store_true", help="the model card as one JSON document on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("device", help="the device agent: serve latency timings from the phone or board itself")
    dsub = p.add_subparsers(dest="action", required=True)
    d = dsub.add_parser("serve", formatter_class=_Help,
                        help="time ONNX models here for searches elsewhere (prints the address and a "
                                      "token; on a device without odnas: pip install ./device from an "
                                      "odnas checkout, then odnas-device serve)")
    add_serve_arguments(d)
    d.set_defaults(fn=cmd_device)

    p = sub.add_parser("calibrate", help="fit host latency to a real device: export reference models, "
                                         "read their device timings, fit")
    csub = p.add_subparsers(dest="action", required=True)
    c = csub.add_parser("export", help="export the reference models, a CSV template and device-side scripts")
    c.add_argument("-o", "--output", required=True, help="folder to write")
    c.add_argument("--profile", default="cpu-mobile", help="profile whose session settings the scripts use")
    c.add_argument("--input-shape", help="e.g. 1x28x28 (default 1x8x8, the digits shape)")
    c.add_argument("--num-classes", type=int, default=10, help="output classes of the reference models")
    c.add_argument("--json", action="store_true", help="the manifest as one JSON document")
    c = csub.add_parser("fit", help="time the references here, fit host->device latency, report held-out error")
    c.add_argument("--profile", required=True, help="profile name or YAML path to calibrate")
    c.add_argument("--table", help="device CSV (default: the profile's calibration section)")
    c.add_argument("--model", choices=["loglinear", "ratio"],
                   help="host -> device mapping (default: the profile's, else loglinear)")
    c.add_argument("--input-shape", help="C x H x W of the reference models (default: as exported beside the table, "
                        "else the profile's calibration section)")
    c.add_argument("--device", help="free text naming the device")
    c.add_argument("-o", "--output", help="JSON record to write (default beside the table)")
    c.add_argument("--remeasure", action="store_true", help="time the references on this host again")
    c.add_argument("--json", action="store_true", help="the fit as one JSON document")
    c = csub.add_parser("run", help="time the references on a device agent and fit, with no hand-timing")
    c.add_argument("--profile", required=True, help="profile name or YAML path to calibrate")
    c.add_argument("--device", metavar="URL", help="the device agent (default: the profile's device section); "
                   "the token is read from $ODNAS_DEVICE_TOKEN")
    c.add_argument("-o", "--output", required=True, help="folder for the references, the device table and the fit")
    c.add_argument("--input-shape", help="e.g. 1x28x28 (default 1x8x8, the digits shape)")
    c.add_argument("--num-classes", type=int, default=10, help="output classes of the reference models")
    c.add_argument("--model", choices=["loglinear", "ratio"], help="host -> device mapping (default loglinear)")
    c.add_argument("--quiet", action="store_true", help="no progress on stderr")
    c.add_argument("--json", action="store_true", help="the fit as one JSON document")
    c = csub.add_parser("perf-logs", help="turn onnxruntime_perf_test logs (one NAME.txt per reference) "
                                          "into the device CSV")
    c.add_argument("log_dir",
                   help="folder of onnxruntime_perf_test outputs from the device, one NAME.txt per reference")
    c.add_argument("-o", "--output", help="CSV to write (default LOG_DIR/../device_latency.csv)")
    c.add_argument("--statistic", choices=["median", "mean"],
                   help="how a model's runs are summarised (default: the profile's, from the export's "
                        "manifest.json, else median)")
    c.add_argument("--json", action="store_true", help="the file written, as one JSON document")
    p.set_defaults(fn=cmd_calibrate)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from odnas.errors import OdnasError

    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except KeyboardInterrupt:  # before a driver ran (during set-up): nothing was started
        print("odnas: interrupted", file=sys.stderr)
        return 130
    except OdnasError as e:
        print(f"odnas: {'' if e.exit_code == 130 else 'error: '}{e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `odnas ... | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
