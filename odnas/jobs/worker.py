"""A warm worker: ``python -m odnas.jobs.worker --run-dir R --slot K --token T --space S --data D ...``.

TorchX launches it like a trial job, on any scheduler. It pays once for what a fresh
trial job pays every time (the Python process, torch and Lightning imports, the space
registry, the data set, Lightning's first-use set-up: ``train.warm_up``), then serves
trials from its inbox in the run dir::

    R/workers/K/worker.json      pid, host, proc_start, token, heartbeat, the trial it serves
    R/workers/K/inbox/NNNN.json  a request: the arguments of ``python -m odnas.jobs.trial``
    R/workers/K/cancel/NNNN      the driver's "kill trial NNNN" (works across nodes)
    R/workers/K/stop.json        {"token": T}: the worker with that token exits once idle

For each request it forks one child, which runs ``odnas.jobs.trial.main`` on the
request's arguments: the child writes ``job.json`` (with its own pid), the curve,
``model.pt`` and ``result.json`` or ``error.json`` into the trial dir exactly as a
fresh job does. The child is its own process group, dies with the worker
(``PR_SET_PDEATHSIG``) and logs to ``TRIAL_DIR/torchx/``. A child that raises, runs
out of memory or is SIGKILLed does not take the worker down: the worker writes the
reason a child could not write (an exit without a result, a death by signal) and
takes the next request. The request is removed only once the trial has ended, so a
worker that dies before it starts a request leaves it for the next worker of the slot.

An idle worker exits on ``stop.json``, when another worker took its slot (a newer
token in ``worker.json``), or when no driver has used the run for ``--idle-exit`` s.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from odnas.rundir import (
    CANCEL_DIR, DRIVER_NAME, ERROR_NAME, INBOX_DIR, RESULT_NAME, STOP_NAME, TRIALS_DIR, WORKER_NAME, WORKERS_DIR,
    proc_start, read_json, worker_dir, write_json_atomic,
)

POLL_S = 0.05  # how often an idle worker looks at its inbox (a listdir), or a busy one at its child
CHECK_S = 1.0  # how often an idle worker checks whether it should exit
BEAT_S = 1.0  # how often it refreshes worker.json


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m odnas.jobs.worker")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--slot", type=int, required=True)
    ap.add_argument("--token", required=True, help="names this worker; a newer one in worker.json replaces it")
    ap.add_argument("--space", required=True)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--idle-exit", type=float, default=120.0,
                    help="exit when idle and no driver has used the run for this long (s)")
    return ap


def exit_reason(status: int) -> str:
    """Why a child that wrote neither result nor error ended, in the driver's words."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"job killed by {name} without writing its result (killed by a signal, or out of memory)"
    code = os.WEXITSTATUS(status)
    if code == 0:
        return "job exited without error but wrote no result"
    return f"job failed with exit code {code} without writing its result"


def driver_alive(run_dir: Path, grace_s: float) -> bool:
    """Whether a driver uses the run: a live process on this host, else a recent heartbeat."""
    d = read_json(run_dir / WORKERS_DIR / DRIVER_NAME)
    if not d:
        return False
    if d.get("host") == socket.gethostname():
        try:
            return proc_start(int(d["pid"])) == d.get("proc_start")
        except (KeyError, TypeError, ValueError):
            return False
    return time.time() - float(d.get("beat", 0)) < grace_s


def _die_with_parent() -> None:
    """Linux: the kernel SIGKILLs this child when the worker dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def request_here(run_dir: Path, request: dict) -> tuple[Path, list[str]]:
    """A request's trial dir and trial arguments, in this worker's run dir. A request
    names its trial dir by absolute path; one left in an inbox of a run dir since copied
    or moved names the old place, where this worker must not write."""
    tdir = Path(run_dir) / TRIALS_DIR / Path(str(request["trial_dir"])).name
    argv = [str(a) for a in request["argv"]]
    if "--out" in argv[:-1]:
        argv[argv.index("--out") + 1] = str(tdir)
    return tdir, argv


class Worker:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.run_dir = Path(a.run_dir)
        self.dir = worker_dir(self.run_dir, a.slot)
        self.inbox = self.dir / INBOX_DIR
        self.cancel = self.dir / CANCEL_DIR
        for d in (self.inbox, self.cancel):
            d.mkdir(parents=True, exist_ok=True)
        self.state = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": proc_start(os.getpid()),
                      "token": a.token, "slot": a.slot, "start": time.time(), "ready": None, "trial": None,
                      "child": None, "served": 0, "exiting": False}
        self.last_beat = 0.0
        self.terminating = False
        self.replaced = False

    # ------------------------------------------------------------ state

    def beat(self, force: bool = False) -> None:
        if self.replaced:
            return
        now = time.time()
        if not force and now - self.last_beat < BEAT_S:
            return
        current = read_json(self.dir / WORKER_NAME)
        if current and current.get("token") != self.a.token and float(current.get("start", 0)) > self.state["start"]:
            self.replaced = True  # a newer worker holds the slot: never overwrite its record
            return
        self.state["beat"] = self.last_beat = now
        try:
            write_json_atomic(self.dir / WORKER_NAME, self.state)
        except OSError:
            if not self.dir.is_dir():  # the run dir is gone (deleted): nobody can use this worker any more
                self.replaced = True
            # else a passing error (a full disk, a stale NFS handle): the next beat tries again

    def _beat_until(self, done: threading.Event) -> None:
        while not done.wait(BEAT_S):
            self.beat(force=True)

    def stopped(self) -> bool:
        stop = read_json(self.dir / STOP_NAME)
        return bool(stop) and stop.get("token") in (self.a.token, "*")

    def should_exit(self, idle_since: float) -> bool:
        if self.terminating or self.replaced:
            return True
        if self.stopped():
            return True
        if time.time() - idle_since > self.a.idle_exit and not driver_alive(self.run_dir, self.a.idle_exit):
            return True
        return False

    # ------------------------------------------------------------ start-up

    def preload(self) -> None:
        """Everything a trial would import or load, done once before any fork."""
        import logging
        import warnings

        import torch

        # One thread while preloading: no OpenMP thread team exists when the worker forks
        # (a forked child cannot use its parent's team); each child sets its own threads.
        torch.set_num_threads(1)
        warnings.filterwarnings("ignore")
        logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        from odnas.jobs import trial
        from odnas.jobs.train import warm_up
        from odnas.spaces import get_space

        get_space(self.a.space)
        data_dir = self.a.data_dir
        key = (self.a.data, data_dir, self.a.data_seed)
        if key not in trial._DATA:
            from odnas.data import load_data

            trial._DATA[key] = load_data(self.a.data, data_dir, seed=self.a.data_seed)
        with tempfile.TemporaryDirectory(prefix="odnas-warm-") as scratch:
            warm_up(trial._DATA[key], scratch)

    # ------------------------------------------------------------ serving

    def next_request(self) -> Path | None:
        try:
            names = sorted(n for n in os.listdir(self.inbox) if n.endswith(".json") and not n.startswith("."))
        except OSError:
            return None
        return self.inbox / names[0] if names else None

    def _done(self, req: Path) -> None:
        for p in (req, self.cancel / req.stem):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def serve(self, req: Path) -> None:
        r = read_json(req)
        if not isinstance(r, dict) or "argv" not in r or "trial_dir" not in r:
            self._done(req)  # not a request
            return
        tdir, argv = request_here(self.run_dir, r)
        if (tdir / RESULT_NAME).exists() or (tdir / ERROR_NAME).exists() or (self.cancel / req.stem).exists():
            self._done(req)  # ended or cancelled before it started
            return
        tdir.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._child(argv, tdir)  # never returns
        try:
            os.setpgid(pid, pid)  # as the child does: the group exists before either goes on
        except OSError:
            pass
        self.state.update(trial=str(tdir), child=pid)
        self.beat(force=True)
        killed = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if not killed and (self.terminating or (self.cancel / req.stem).exists()):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                killed = True
            self.beat()
            time.sleep(POLL_S)
        cancelled = (self.cancel / req.stem).exists()  # the driver may have killed it itself
        if not (tdir / RESULT_NAME).exists() and not (tdir / ERROR_NAME).exists():
            reason = ("job stopped by the driver" if cancelled
                      else "the warm worker was sent SIGTERM (by its scheduler) while training"
                      if killed else exit_reason(status))
            write_json_atomic(tdir / ERROR_NAME, {"reason": reason, "time": time.time(), "by": "worker"})
        self._done(req)
        self.state.update(trial=None, child=None, served=self.state["served"] + 1)
        self.beat(force=True)

    def _child(self, argv: list[str], tdir: Path) -> None:
        code = 1
        try:
            os.setpgid(0, 0)  # its own group: the driver pauses (quiet windows) or kills the trial alone
            _die_with_parent()
            if os.getppid() != self.state["pid"]:
                os._exit(1)  # the worker died before the line above took effect
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                signal.signal(sig, signal.SIG_DFL)
            logs = tdir / "torchx"
            logs.mkdir(parents=True, exist_ok=True)
            for fd, name in ((1, "stdout.log"), (2, "stderr.log")):
                f = os.open(logs / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(f, fd)
                os.close(f)
            from odnas.jobs.trial import main

            code = main(argv, worker={"slot": self.a.slot, "pid": self.state["pid"], "token": self.a.token}) or 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def run(self) -> int:
        def on_term(signum, frame):
            self.terminating = True

        signal.signal(signal.SIGTERM, on_term)
        self.beat(force=True)
        # Beat while preloading too (imports, data, a warm-up fit: seconds, or minutes on a
        # slow file system), so a worker that dies in it (out of memory, a pod evicted) is
        # seen as dead; one that is stuck in it is stopped by the driver's deadline.
        loaded = threading.Event()
        beating = threading.Thread(target=self._beat_until, args=(loaded,), name="odnas-preload-beat", daemon=True)
        beating.start()
        try:
            self.preload()
        finally:
            loaded.set()
            beating.join()
        self.state["ready"] = time.time()
        self.beat(force=True)
        idle_since = checked = time.time()
        while not self.terminating:
            req = self.next_request()
            if req is not None:
                self.beat(force=True)  # notices a newer worker in the slot: then never serve
                if self.replaced or self.stopped():
                    break
                self.serve(req)
                idle_since = time.time()
                continue
            if time.time() - checked > CHECK_S:
                if self.should_exit(idle_since):
                    break
                checked = time.time()
            self.beat()
            time.sleep(POLL_S)
        self.state["exiting"] = True
        self.beat(force=True)
        return 0


def main(argv: list[str] | None = None) -> int:
    return Worker(parser().parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
