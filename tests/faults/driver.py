"""``odnas`` CLI that SIGKILLs itself at a chosen moment; used only by tests/test_faults.py.

    python tests/faults/driver.py MOMENT N odnas-args...

MOMENT is where the N-th event kills the driver:
- ``generation``: a candidate was generated (model fitted, acquisition optimised)
  but not yet returned to the Orchestrator, so no trial exists for it;
- ``deploy``: a training job was launched, but Ax has not saved that it ran;
- ``storage``: SQL was flushed into an open SQLite transaction, not yet committed;
- ``running``: a poll found a trial training (its job.json written, no result yet).

``ODNAS_TEST_WORKERS=fresh|warm`` overrides the search's ``workers`` setting;
``ODNAS_TEST_KILL_SIGNAL=INT`` (or another signal's name) sends that signal instead of
SIGKILL, so the driver stops as after a Ctrl-C.
"""

import os
import signal
import sys

moment, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
count = 0


def maybe_die() -> None:
    global count
    count += 1
    if os.environ.get("ODNAS_TEST_COUNT_EVENTS"):
        print(f"event {moment} #{count}", file=sys.__stderr__, flush=True)
    if count == n:
        sys.stdout.flush()
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("ODNAS_TEST_KILL_SIGNAL", "KILL")))


def install() -> None:
    if moment == "generation":
        # The driver makes each candidate in a forked child (odnas.loop.ahead), so a hook on
        # Ax's GenerationStrategy.gen would count, and die, in that child: the driver's side
        # of it is Ahead._gen, which returns the child's candidate (or makes it here).
        from odnas.loop.ahead import Ahead

        real = Ahead._gen

        def gen(self, **k):
            out = real(self, **k)
            maybe_die()
            return out

        Ahead._gen = gen
    elif moment == "deploy":
        from odnas.loop.runner import TrialRunner

        real = TrialRunner.run_trial

        def run_trial(self, *a, **k):
            out = real(self, *a, **k)
            if "app_handle" in out or "worker" in out:  # a job launched, or a request handed to a warm worker
                maybe_die()
            return out

        TrialRunner.run_trial = run_trial
    elif moment == "running":
        from odnas.loop.runner import TrialRunner

        real_poll = TrialRunner.poll_trial

        def poll_trial(self, trial_index, trial_metadata):
            out = real_poll(self, trial_index, trial_metadata)
            tdir = self.tdir(trial_metadata)
            if out.name == "RUNNING" and (tdir / "job.json").exists() and not (tdir / "result.json").exists():
                maybe_die()
            return out

        TrialRunner.poll_trial = poll_trial
    elif moment == "storage":
        from sqlalchemy import event
        from sqlalchemy.orm import Session

        @event.listens_for(Session, "after_flush")
        def after_flush(session, ctx):
            maybe_die()
    elif moment != "none":  # "none": a plain `odnas` (with ODNAS_TEST_WORKERS applied)
        raise SystemExit(f"unknown moment {moment!r}")


if __name__ == "__main__":
    from odnas.loop.adapter import import_ax

    import_ax()
    install()
    if os.environ.get("ODNAS_TEST_WORKERS"):
        import dataclasses

        import odnas.loop.driver as _driver

        _make = _driver.make_settings
        _driver.make_settings = lambda cfg, *a, **k: _make(
            dataclasses.replace(cfg, workers=os.environ["ODNAS_TEST_WORKERS"]), *a, **k)
    from odnas.cli import main

    sys.exit(main(args))
