"""The next candidate, made while trials train; the driver polling all the while.

Ax's Orchestrator asks its generation strategy for a candidate when a slot has room, in
the driver's one thread. A BoTorch candidate takes seconds (model fits and acquisition
optimisation), and while it is made the driver notices no finished trial and the free
slot waits. Here the candidate is made on a background thread instead:

- ``Ahead`` owns that thread (one for the run). It has it make the next candidate as
  soon as the last one is deployed, so the experiment then holds every trial made so
  far and the running ones are its pending points (Ax's own
  ``extract_pending_observations``, as for any candidate).
  Asked for a candidate, it hands over the one made ahead; while one is being made it
  answers "not yet" (Ax's ``DataRequiredError``, which the Orchestrator takes as
  "nothing to deploy now, wait"), unless nothing is running: then it waits for it.
- ``AheadOrchestrator`` is Ax's Orchestrator with its documented waiting hook
  (``wait_for_completed_trials_and_report_results``) overridden: it polls every
  ``poll_s`` as before, starts the next candidate when one is wanted, and returns to
  deploy as soon as a candidate is ready and there is room for it.

A candidate made ahead is deployed (not thrown away, so the generation strategy's
record of what it made stays true) unless the driver stops without waiting for it (an
interrupt); at worst it was made without the result of a trial that finished while it
was made, which is what asynchronous Bayesian optimisation does anyway. A wait ends
for a candidate made ahead only where the Orchestrator will deploy it (not while it
only waits for its last running trials: the driver then starts a new round as soon as
a failed trial leaves room), and once for each. A candidate that fails to be made
ahead (an error in the thread) is made again at once in the driver's thread, where Ax
handles the error as it always does; one that failed for want of data
(``DataRequiredError``) waits for the next finished trial instead.

Each candidate is made in a child process forked for it (on Linux; elsewhere in the
driver's process), which sends back its generator runs, or its exception, pickled
through a pipe, and the strategy's changed state (its node, and the generator runs it
recorded: Ax reads the quasi-random sequence's position from the last one). The
model, its tensors, MKL's work buffers and the malloc arenas they fragmented die with
the child, so the driver keeps only the experiment. In the 200-trial load benchmark
the driver grew +3.9 to +7.6 MB per 100 trials after warm-up, against +10.4 with
candidates made in-process beside it (docs/benchmarks.md, "Candidates made in a child
process"); a fork of the ~520 MB driver costs about 0.01 s, against 1-10 s for a
BoTorch candidate. The child starts from the driver's random state (torch's, numpy's
and Python's, inherited by the fork) and the driver takes the child's back after it,
so the random streams run on as they would in-process and each candidate is the one
the driver would have made. The child runs one torch thread, writes through file
objects of its own, and is killed with the thread that forked it, by
``close(wait=False)``, or when it has not answered within ``CHILD_TIMEOUT_S`` (or 10
times the longest candidate so far).

Where candidates are made in the driver's process, a model's candidate (one that took
at least ``COLLECT_AFTER_S``) is followed by a full garbage collection
(``gc.collect``), MKL's ``mkl_free_buffers`` and, on glibc, ``malloc_trim(0)``; after a
child's, that release frees what the driver's own polling left in cycles meanwhile. A
BoTorch candidate leaves its model, acquisition function and their tensors in
reference cycles, which only Python's oldest-generation collection frees; that
collection runs when the number of long-lived objects has grown by a quarter, so ever
more rarely as a run's experiment grows, and the tensors' native memory piled up in
between. MKL, which torch's matrix products run on, keeps work buffers sized by the
largest product so far, and a GP's products grow with the trials. Once freed, glibc
keeps the pages in its arenas unless asked to hand them back. Without the collection
and the trim, the driver grew 95-133 MB per 100 trials (docs/benchmarks.md, "Driver
memory"); with them, +10.4 to +14.7.

That collection is cheaper because the driver runs inside ``frozen_heap``: the objects
alive when it starts (about 400,000, nearly all of them torch, Ax, BoTorch and the rest
of the imported libraries) are moved out of the collector's sight with ``gc.freeze``, so
a full collection walks only what the driver has made since: the client and experiment
it loads, and about 160 objects for each trial it makes. In the
tutorial example's 48-candidate searches the release took about 0.02 s a candidate,
against 0.25 s before (docs/benchmarks.md, "Driver memory").
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import hashlib
import os
import pickle
import random
import select
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from odnas.loop.adapter import (
    complete_stopped,
    generation_count,
    import_ax,
    restore_strategy_state,
    strategy_state,
    unwrap_generation,
    wrap_generation,
)

import_ax()

from ax.exceptions.core import DataRequiredError  # noqa: E402
from ax.orchestration.orchestrator import MAX_SECONDS_BETWEEN_REPORTS, Orchestrator  # noqa: E402


def _malloc_trim() -> Callable[[], Any] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def _mkl_free_buffers() -> Callable[[], Any] | None:
    """Intel MKL's ``mkl_free_buffers``, from the MKL torch links statically (PyTorch's
    x86 wheels, as ``mkl_serv_free_buffers`` in ``libtorch_cpu``) or from a shared MKL
    already loaded; None where torch runs without MKL (OpenBLAS, Accelerate)."""
    import torch

    candidates = [Path(torch.__file__).parent / "lib" / "libtorch_cpu.so", None]
    for lib in candidates:
        try:
            dll = ctypes.CDLL(str(lib) if lib is not None else None)
        except OSError:
            continue
        for name in ("mkl_serv_free_buffers", "mkl_free_buffers"):
            fn = getattr(dll, name, None)
            if fn is not None:
                fn.argtypes, fn.restype = [], None
                return fn
    return None


MALLOC_TRIM = _malloc_trim()
MKL_FREE_BUFFERS = _mkl_free_buffers()
COLLECT_AFTER_S = 0.5  # release memory after a candidate that took this long or longer
# A child that has not answered in this long, or 10 times the longest candidate so far
# if that is longer, is taken for hung, killed, and its candidate made again.
CHILD_TIMEOUT_S = 600.0
# Where candidates are made in a forked child (Linux: glibc's malloc and CPython's own
# locks are made usable in a child, and torch's thread pool is handled in the child);
# elsewhere in the driver's process (macOS forbids forking once system frameworks run
# threads; Windows has no fork).
IN_CHILD = sys.platform.startswith("linux")


class CandidateProcessDied(RuntimeError):
    """The forked process making a candidate ended, or stopped answering, without
    handing one back."""


class ForkFailed(OSError):
    """No process could be forked to make a candidate (ENOMEM, EAGAIN): it is made in
    the driver's process instead."""


def _prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child loads nothing
    except (OSError, AttributeError):
        return None


PRCTL = _prctl()
PR_SET_PDEATHSIG = 1


def _fresh_streams(keep: set[int]) -> None:
    """In a forked child: give ``sys.stdout``/``sys.stderr`` and every logging
    handler's stream a new file object on a duplicate of its descriptor, then close
    every other inherited descriptor but ``keep``. A thread of the parent may have been
    inside a write at the fork, holding the old object's lock, which nothing resets in
    the child; and a pipe end another thread was about to close (a ``Popen`` on the
    driver's thread) would otherwise stay open until the child exits, so that reader
    would wait for it."""
    import logging

    def fresh(stream):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            return stream, None
        new = os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                        errors="backslashreplace")
        return new, new.fileno()

    kept = set(keep) | {0, 1, 2}
    sys.stdout, fd = fresh(sys.stdout)
    kept.add(fd)
    sys.stderr, fd = fresh(sys.stderr)
    kept.add(fd)
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.stream, fd = fresh(handler.stream)
                kept.add(fd)
    kept.discard(None)
    last = 2
    for fd in sorted(kept) + [os.sysconf("SC_OPEN_MAX")]:
        if fd > last + 1:
            os.closerange(last + 1, fd)
        last = max(last, fd)


class _CachedPropertyLocks:
    """Python 3.11's ``functools.cached_property`` guards the first computation on every
    instance with one RLock per descriptor, shared by all instances (3.12 dropped it).
    A fork while another thread holds one, the driver's thread computing Ax's
    ``Data.df`` for early stopping say, leaves it held in the child by a thread that
    does not exist there: the child's first ``Data.df`` waits forever. The child gives
    every such descriptor a new lock. The descriptors are found once, in the parent,
    on the classes of the loaded modules, and again when more modules are loaded."""

    def __init__(self) -> None:
        self.seen_modules = 0
        self.found: list[Any] = []

    def find(self) -> None:
        if sys.version_info >= (3, 12) or len(sys.modules) == self.seen_modules:
            return
        found, seen = [], set()
        with warnings.catch_warnings():  # some modules' deprecated names warn when looked at
            warnings.simplefilter("ignore")
            self._scan(found, seen)
        self.found, self.seen_modules = found, len(sys.modules)

    @staticmethod
    def _scan(found: list[Any], seen: set[int]) -> None:
        for mod in list(sys.modules.values()):
            for obj in list(getattr(mod, "__dict__", {}).values()):
                if isinstance(obj, type) and id(obj) not in seen:
                    seen.add(id(obj))
                    found += [v for v in list(vars(obj).values())
                              if isinstance(v, functools.cached_property) and hasattr(v, "lock")]

    def renew_in_child(self) -> None:
        for prop in self.found:
            prop.lock = threading.RLock()


CACHED_PROPERTY_LOCKS = _CachedPropertyLocks()


def call_in_child(fn: Callable[[], Any], started: Callable[[int | None], None] | None = None,
                  timeout_s: float | None = None) -> tuple[Any, Any]:
    """``fn()`` in a forked child process; returns what it returned (pickled back
    through a pipe; ``fn`` catches its own exceptions and returns them) and the child's
    resource usage (``os.wait4``'s: CPU seconds, peak RSS in KiB). Whatever ``fn``
    allocates dies with the child. ``started`` is told the child's pid, then None once
    it has ended and before it is reaped (so a kill by that pid never reaches another
    process). Raises ``CandidateProcessDied`` if the child ends without an answer
    (killed, or ``fn``'s value would not pickle: the child prints why on stderr) or
    has not answered within ``timeout_s`` (it is killed)."""
    parent = os.getpid()
    CACHED_PROPERTY_LOCKS.find()
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(r)
        os.close(w)
        raise ForkFailed(e.errno, f"could not fork a process to make the candidate: {e.strerror}") from None
    if pid == 0:  # the child: never returns
        code = 70
        try:
            CACHED_PROPERTY_LOCKS.renew_in_child()  # another thread of the parent may have held one
            gc.freeze()  # inherited garbage is never finalised here (a connection's rollback, say)
            os.close(r)
            if PRCTL is not None:
                PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the forking thread ended before prctl took
                os._exit(code)
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # the driver's handlers are not the child's
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _fresh_streams(keep={w})
            data = pickle.dumps(fn(), protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(w, "wb") as out:
                out.write(data)
            code = 0
        except BaseException:  # noqa: BLE001 — reported by the parent as a death
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    if started is not None:
        started(pid)
    chunks: list[bytes] = []
    late = False
    try:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([r], [], [], wait)[0]:
                late = True
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except BaseException:  # interrupted: the candidate is not wanted any more
        os.kill(pid, signal.SIGKILL)  # still ours: not reaped yet
        raise
    finally:
        os.close(r)
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped: the pid stays ours
        if started is not None:
            started(None)
        _, status, usage = os.wait4(pid, 0)
    data = b"".join(chunks)
    if late:
        raise CandidateProcessDied(f"the process making the candidate did not answer within {timeout_s:.0f} s "
                                   "and was killed")
    if not data or not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        how = (f"was killed by signal {os.WTERMSIG(status)}"
               + (" (SIGKILL: out of memory?)" if os.WTERMSIG(status) == signal.SIGKILL else "")
               if os.WIFSIGNALED(status)
               else f"exited with status {os.waitstatus_to_exitcode(status)}")
        raise CandidateProcessDied(f"the process making the candidate {how} before it handed one back")
    return pickle.loads(data), usage


def load_lazy_kernels() -> None:
    """Load, in the driver, what BoTorch otherwise loads on first use: its fused qLogNEHVI
    C++ kernel, built or loaded with ``torch.utils.cpp_extension`` (ninja, a compiler on
    a cache miss). Loaded in a child, it would be loaded again by every child, the
    driver never keeping it: 1-3 s a candidate, up to ~45 s and a 1.5 GB compiler
    when the cache is rebuilt. Loaded here once, every child inherits it.

    It is built with this interpreter's own ninja, in a folder of its own
    (``kernel_build_env``), so it is not rebuilt each time a run is started with a
    different ``PATH`` or from another virtualenv."""
    try:
        from botorch.acquisition.multi_objective import logei
    except ImportError:
        return
    load = getattr(logei, "_try_load_fused_kernel", None)  # BoTorch's own, private; absent in other versions
    if load is not None:
        with kernel_build_env():
            load()


def kernel_folder() -> str:
    """Where BoTorch's kernel is built and kept: the user's ``TORCH_EXTENSIONS_DIR``, else
    a folder of this interpreter's and this CPU's own under torch's build root.

    The CPU (its signature and instruction-set flags) is in it because BoTorch compiles
    with ``-march=native``: a kernel built on one CPU may use instructions another lacks
    (AVX-512 on an Intel Xeon, not on many AMD EPYCs), and a home folder outlives a
    host, or is shared by a cluster's nodes, while torch rebuilds only when the sources
    or compiler flags change, not the CPU."""
    mine = os.environ.get("TORCH_EXTENSIONS_DIR")
    if mine is not None:
        return mine
    from odnas_device.timing import cpu_flags, cpu_signature
    from torch.utils.cpp_extension import get_default_build_root

    tag = hashlib.sha1(f"{sys.prefix}\n{cpu_signature()}\n{cpu_flags()}".encode()).hexdigest()[:12]
    return os.path.join(get_default_build_root(), "odnas", tag)


def kernel_build_due() -> bool:
    """Whether loading BoTorch's kernel (``load_lazy_kernels``) will compile it first:
    not yet tried in this process, no pre-built module, and nothing built in
    ``kernel_folder()``, and what a compile needs is there: ``ninja`` (this interpreter's
    or on ``PATH``) and the C++ compiler torch calls (``$CXX``'s first word, else ``c++``). Without
    them the build fails at once and BoTorch falls back to its Python path. A compile
    takes half a minute and more, once per environment and CPU, with nothing else to
    show for it."""
    import importlib.util
    import shutil

    try:
        from botorch.acquisition.multi_objective import logei
    except ImportError:
        return False
    if getattr(logei, "_try_load_fused_kernel", None) is None or getattr(logei, "_load_attempted", True):
        return False
    if importlib.util.find_spec("logei_fused_ext") is not None:
        return False
    if any(Path(kernel_folder(), "logei_fused_ext").glob("logei_fused_ext*.so")):
        return False
    from torch.utils.cpp_extension import get_cxx_compiler

    import shlex

    ninja = (Path(sys.executable).parent / "ninja").is_file() or shutil.which("ninja") is not None
    # $CXX may carry a launcher or flags ("ccache g++"); ninja runs it as a command line
    words = shlex.split(get_cxx_compiler())
    return ninja and bool(words) and shutil.which(words[0]) is not None


@contextlib.contextmanager
def kernel_build_env() -> Iterator[None]:
    """For the block, what BoTorch's kernel is built or loaded with: ``PATH`` with this
    interpreter's ``ninja`` first, and (unless the user set ``TORCH_EXTENSIONS_DIR``) a
    build folder of this interpreter's own.

    ``torch.utils.cpp_extension`` runs whichever ``ninja`` is first on ``PATH``; BoTorch
    installs one beside the interpreter (the ``ninja`` wheel), and many systems have
    another. Two ninja versions each take the other's build log as a changed build, and
    so do two virtualenvs sharing torch's one folder under ``~/.cache`` (their include
    paths differ): a search started from an activated virtualenv and then one started as
    ``.venv/bin/odnas``, or one from each of two clones, rebuilt the kernel each time:
    30-43 s against 5-6 s to load it (AMD EPYC, ninja 1.13.2 beside the interpreter,
    1.11.1 in ``/usr/bin``). Where the interpreter has no ``ninja`` beside it, ``PATH``
    is left alone. The folder is ``kernel_folder()``."""
    saved = {k: os.environ.get(k) for k in ("PATH", "TORCH_EXTENSIONS_DIR")}
    own = Path(sys.executable).parent
    path = saved["PATH"] or ""
    if (own / "ninja").is_file() and path.split(os.pathsep)[:1] != [str(own)]:
        os.environ["PATH"] = os.pathsep.join([str(own), path]) if path else str(own)
    os.environ["TORCH_EXTENSIONS_DIR"] = kernel_folder()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _portable(e: Exception) -> Exception | _ExceptionParts:
    """``e`` if it survives pickling (so the parent raises the same type, which Ax's
    Orchestrator may handle: ``DataRequiredError``, ``OptimizationComplete``), else its
    parts, from which the parent rebuilds it (``MaxParallelismReachedException`` takes
    arguments its ``args`` do not hold, so pickle cannot call it again); a RuntimeError
    that names it if even that cannot cross (a class defined inside a function)."""
    if _round_trips(e):
        return e
    parts = _ExceptionParts.of(e)
    return parts if _round_trips(parts) else RuntimeError(parts.text)


def _round_trips(obj: Any) -> bool:
    try:
        pickle.loads(pickle.dumps(obj))
    except Exception:  # noqa: BLE001 — any failure to round-trip
        return False
    return True


class _ExceptionParts:
    """An exception's class, ``args`` and attributes (those that round-trip through
    pickle), to be raised again in another process without calling its ``__init__``."""

    def __init__(self, cls: type, args: tuple, state: dict[str, Any], text: str) -> None:
        self.cls, self.args, self.state, self.text = cls, args, state, text

    @classmethod
    def of(cls, e: Exception) -> _ExceptionParts:
        attrs = dict(vars(e))
        for klass in type(e).__mro__:  # attributes kept in __slots__ are not in vars()
            for name in getattr(klass, "__slots__", ()):
                if name not in ("__dict__", "__weakref__") and hasattr(e, name):
                    attrs.setdefault(name, getattr(e, name))
        state = {k: v for k, v in attrs.items() if _round_trips(v)}
        args = e.args if _round_trips(e.args) else (str(e),)
        return cls(type(e), args, state, f"{type(e).__name__}: {e}")

    def rebuild(self) -> Exception:
        """The exception, or a RuntimeError naming it if it cannot be made whole again
        (its message needs what did not cross)."""
        try:
            e = self.cls.__new__(self.cls, *self.args)
            if isinstance(e, OSError):  # errno, strerror and filename come from the args
                OSError.__init__(e, *self.args)
            e.args = self.args
            for k, v in self.state.items():
                setattr(e, k, v)
            str(e)  # Ax's handlers format it
            return e
        except Exception:  # noqa: BLE001 — not an exception that can be made this way
            return RuntimeError(self.text)


def release_memory() -> None:
    """Free what reference cycles hold and the work buffers MKL keeps for its matrix
    products, then hand the freed pages back to the system."""
    gc.collect()
    if MKL_FREE_BUFFERS is not None:
        MKL_FREE_BUFFERS()
    if MALLOC_TRIM is not None:
        MALLOC_TRIM()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Within: every object alive at entry is exempt from cyclic garbage collection
    (``gc.freeze``), so full collections walk only what was made since. Garbage left at
    entry is collected first. An object alive at entry that becomes cyclic garbage
    within is freed only after exit, when ``gc.unfreeze`` hands everything back (the
    driver enters it with the libraries imported and nothing else loaded yet).
    If anything is frozen already (a caller's own ``gc.freeze``, or an enclosing
    ``frozen_heap``), this does nothing, so it never unfreezes what it did not freeze."""
    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class NotYet(DataRequiredError):
    """The next candidate is still being made (the Orchestrator waits and asks again)."""


class Ahead:
    """Makes one candidate at a time on a background thread (see the module doc).

    ``wanted()`` says whether another new candidate will be needed (the driver's
    trial budget); ``running()`` whether any trial is pending, so that "not yet" is
    never the answer when nothing else could happen. ``blocked_s`` is the time the
    driver's thread spent in generation calls; ``background_s`` the thread's time;
    ``collect_s`` the part of both spent releasing memory after candidates.
    """

    def __init__(self, generation_strategy, experiment, wanted: Callable[[], bool],
                 running: Callable[[], bool], fixed_features: Callable[[Any], Any] | None = None,
                 in_child: bool | None = None) -> None:
        from ax.orchestration.orchestrator import get_fixed_features_from_experiment

        self.gs, self.exp = generation_strategy, experiment
        self.wanted, self.running = wanted, running
        # What the Orchestrator passes for a trial (Ax's own function), for candidates made ahead.
        self._fixed = fixed_features or get_fixed_features_from_experiment
        self._real_gen = wrap_generation(generation_strategy, self.gen)
        self._lock = threading.Lock()  # held while a candidate is being made
        self.done = threading.Event()  # clear while a candidate is being made on the thread
        self.done.set()
        self._thread: threading.Thread | None = None  # one for the whole run, made at first use
        self._go = threading.Event()  # set to have the thread make a candidate (or stop)
        self._closing = False
        self._dropped = False  # closed without waiting: a candidate being made ahead is not wanted
        self._ready: list[list[Any]] | None = None
        self._error: BaseException | None = None
        self.made = self.used = self.failed = self.not_yet = 0
        self.blocked_s = self.background_s = self.collect_s = 0.0
        self.collect_after_s = COLLECT_AFTER_S
        self.in_child = IN_CHILD if in_child is None else in_child  # make each candidate in a forked child
        self.child: int | None = None  # that child's pid while it runs
        self._child_lock = threading.Lock()  # a kill by pid happens only before the child is reaped
        self.child_timeout_s = CHILD_TIMEOUT_S
        self.longest_s = 0.0  # the longest candidate made in a child so far
        self.child_peak_mb = 0.0  # the largest peak RSS of a child so far
        self.child_cpu_s = 0.0  # the CPU time the children took, all told
        self.children = 0  # the children that answered

    @property
    def busy(self) -> bool:
        return not self.done.is_set()

    @property
    def ready(self) -> bool:
        return self._ready is not None

    def news(self) -> object | None:
        """What the Orchestrator should act on now: the candidate made ahead, or the
        error of one that failed other than for want of data (which only a finished
        trial changes), to be made again in the driver's thread; else None."""
        if self._ready is not None:
            return self._ready
        if self._error is not None and not isinstance(self._error, DataRequiredError):
            return self._error
        return None

    def start(self) -> bool:
        """Start making the next candidate, if one is wanted and none is made or being made."""
        if self._closing or self.busy or self._ready is not None or self._error is not None or not self.wanted():
            return False
        self._begin()
        return True

    def _begin(self) -> None:
        self.done.clear()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="odnas-ahead", daemon=True)
            self._thread.start()
        self._go.set()

    def _serve(self) -> None:
        """The thread: make a candidate each time one is asked for, until closed. One
        thread for the run, not one per candidate (a new thread may be handed another
        glibc arena; in the load benchmark the two kept the same memory within noise)."""
        while True:
            self._go.wait()
            self._go.clear()
            if self._closing:
                self.done.set()  # nothing will be made: no one waits for it
                return
            self._make()

    def _gen(self, **kwargs: Any) -> Any:
        """The strategy's own ``gen`` (in a child process, or here), then the memory a
        model's candidate left behind released."""
        t0 = time.perf_counter()
        try:
            if self.in_child:
                try:
                    return self._gen_in_child(**kwargs)
                except ForkFailed as e:  # no memory for a fork, say: made here, as on other systems
                    print(f"odnas: {e}; making it in the driver's process", file=sys.stderr, flush=True)
            with kernel_build_env():  # where BoTorch loads its kernel itself, on first use
                return self._real_gen(**kwargs)
        finally:
            t1 = time.perf_counter()
            if t1 - t0 >= self.collect_after_s:
                release_memory()
                self.collect_s += time.perf_counter() - t1

    def _gen_in_child(self, **kwargs: Any) -> Any:
        """The strategy's ``gen`` in a forked child; this process's strategy is then left
        as the child's was (``restore_strategy_state``) and gets the same generator runs
        or the same exception. The child's random state is this process's (the fork's
        copy), and this process takes the child's back, as if the candidate had been
        made here. (Seeding each child from a draw instead gave a worse search: on
        DTLZ2 with odnas's ``bo`` strategy, a lower hypervolume after 24 trials than
        candidates made in the driver in 14 of 15 seeds, median 0.93x;
        ``benchmarks/candidates.py``.)"""
        import numpy as np
        import torch

        load_lazy_kernels()  # the driver loaded it before its loop; BoTorch's loader returns at once
        since = generation_count(self.gs)

        def make() -> tuple[tuple[str, Any], dict[str, Any], tuple[Any, ...]]:
            # One thread, as the driver fits (loop.driver). It must be set here too: a
            # child of a process whose OpenMP pool has run hangs in its first parallel
            # region (the pool's threads were not forked) unless it asks for one thread.
            torch.set_num_threads(1)
            try:
                outcome: tuple[str, Any] = ("made", self._real_gen(**kwargs))
            except Exception as e:  # noqa: BLE001 — raised again in the parent
                e.add_note("".join(traceback.format_exception(e)).rstrip())  # where, in the child
                outcome = ("raised", _portable(e))
            # One pickle: the runs stay the same objects.
            return outcome, strategy_state(self.gs, since), (torch.get_rng_state(), np.random.get_state(),
                                                               random.getstate())

        t0 = time.perf_counter()
        (outcome, state, rng), usage = call_in_child(make, started=self._child_started,
                                                timeout_s=max(self.child_timeout_s, 10 * self.longest_s))
        self.longest_s = max(self.longest_s, time.perf_counter() - t0)
        self.child_peak_mb = max(self.child_peak_mb, usage.ru_maxrss / 1024)
        self.child_cpu_s += usage.ru_utime + usage.ru_stime
        self.children += 1
        restore_strategy_state(self.gs, kwargs["experiment"], state)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        kind, value = outcome
        if kind == "raised":
            raise value.rebuild() if isinstance(value, _ExceptionParts) else value
        return value

    def _child_started(self, pid: int | None) -> None:
        with self._child_lock:
            if pid is not None and self._dropped and threading.current_thread() is self._thread:
                os.kill(pid, signal.SIGKILL)  # made ahead, and closed without waiting just before the fork
            self.child = pid

    def _make(self) -> None:
        t0 = time.perf_counter()
        with self._lock:
            try:
                grs = self._gen(experiment=self.exp, n=1, num_trials=1, fixed_features=self._fixed(self.exp))
            except BaseException as e:  # made again in the driver's thread, where Ax handles it
                self._error = e
                self.failed += 1
            else:
                self._ready = grs
                self.made += 1
            self.background_s += time.perf_counter() - t0
            self.done.set()  # last: until now the candidate is not there to take

    def gen(self, experiment, data=None, n=None, fixed_features=None, num_trials: int = 1):
        """What the Orchestrator calls for new candidates (in place of the strategy's ``gen``)."""
        t0 = time.perf_counter()
        try:
            if self.busy:
                if self.running():
                    self.not_yet += 1
                    raise NotYet("the next candidate is being made")
                self.done.wait()  # nothing else can happen meanwhile
            if self._ready is not None:
                grs, self._ready = self._ready, None
                self.used += 1
                return grs
            if self._error is None and self.running():
                self._begin()
                self.not_yet += 1
                raise NotYet("the next candidate is being made")
            self._error = None
            return self._gen(experiment=experiment, data=data, n=n, fixed_features=fixed_features,
                             num_trials=num_trials)
        finally:
            self.blocked_s += time.perf_counter() - t0

    @contextlib.contextmanager
    def still(self) -> Iterator[None]:
        """Hold candidate generation still (wait for one being made; start none) while a
        latency is timed: the thread would compete with the measurement for the CPU."""
        with self._lock:
            yield

    def close(self, wait: bool = True) -> None:
        """Stop routing the strategy's calls here; ``wait`` for a candidate being made."""
        if wait:
            self.done.wait()
        else:
            with self._child_lock:
                self._dropped = True  # a child the thread forks from now on is killed as it starts
                if self.child is not None:  # a candidate nobody will take: end its process
                    os.kill(self.child, signal.SIGKILL)  # not yet reaped, so still the child
        self._closing = True
        self._go.set()
        unwrap_generation(self.gs)

    def stats(self) -> dict[str, float]:
        return {"made_ahead": self.made, "used": self.used, "failed": self.failed, "not_yet": self.not_yet,
                "blocked_s": round(self.blocked_s, 3), "background_s": round(self.background_s, 3),
                "collect_s": round(self.collect_s, 3), "in_child": self.in_child,
                "child_peak_mb": round(self.child_peak_mb, 1), "child_cpu_s": round(self.child_cpu_s, 3),
                "children": self.children}


def pace_note(stats: dict[str, Any], wall_s: float, share: float = 0.25, least_s: float = 10.0) -> str | None:
    """A note for the end of a search whose driver waited, with no trial running, for a
    candidate for ``share`` of the wall or more (and ``least_s`` at least), else None.

    ``Ahead`` blocks the driver only when nothing is pending, so that time is time no
    slot trained: candidates took longer to make than trainings took to run. More slots
    do not help then; a larger data set (longer trainings), fewer objectives to model, or
    a cheaper generator does. (The driver loads BoTorch's kernel before its loop, so a
    compile on a cache miss is not counted here.)"""
    blocked = float(stats.get("blocked_s") or 0.0)
    if blocked < least_s or wall_s <= 0 or blocked < share * wall_s:
        return None
    if stats.get("in_child") and stats.get("children"):  # the children's own CPU time
        each = f" (about {float(stats['child_cpu_s']) / int(stats['children']):.1f} CPU-seconds each)"
    elif stats.get("made_ahead") and stats.get("background_s"):  # made on the thread: wall time
        each = f" (about {float(stats['background_s']) / int(stats['made_ahead']):.1f} s each)"
    else:
        each = ""
    return (f"no trial was training for {blocked:.0f} s of this {wall_s:.0f} s search while the next candidate "
            f"was made{each}: candidates take longer to make than trainings take to run, so they set the "
            "pace, and more slots (--parallel) will not make it faster")


class AheadOrchestrator(Orchestrator):
    """Ax's Orchestrator whose waits keep polling while ``ahead`` makes the next
    candidate, and end as soon as that candidate can be deployed."""

    ahead: Ahead | None = None
    storage: Any = None  # the run's Ax storage config (``odnas.loop.store.init_storage``)
    #: Whether trials are wanted beyond those deployed (a failed trial, or one over a budget,
    #: left room): once all asked for are deployed, a wait ends for it, where Ax would wait
    #: for every running trial.
    refill: Callable[[], bool] | None = None
    _offered: object = None  # the last news of ``ahead`` a wait ended for

    @property
    def deploying(self) -> bool:
        """Whether this Orchestrator deploys new trials after the wait: within
        ``run_trials_and_yield_results`` until it has deployed ``max_trials``, not in the
        waits for the last running trials after that (nor in a wait called by itself).
        Ending a wait for a candidate it will not deploy would only poll again at once."""
        return getattr(self, "_num_remaining_requested_trials", 0) > 0

    def poll_and_process_results(self, poll_all_trial_statuses: bool = False) -> bool:
        changed = super().poll_and_process_results(poll_all_trial_statuses)
        self.complete_finished_stopped()
        return changed

    def complete_finished_stopped(self) -> list[int]:
        """Ax marks every trial it stops early-stopped; one whose job wrote its result
        anyway (before the stop reached it, or after: a late cancel, a driver killed in
        between) trained to the end. It is completed, with its final figures: its curve
        stopped at the epoch the rule saw, and the front and the model leave early-stopped
        trials out. Returns those trials."""
        stopped = [t for t in self.experiment.trials.values() if t.status.is_early_stopped]
        finished = self.runner.finished_while_stopped(stopped) if stopped and hasattr(
            self.runner, "finished_while_stopped") else []
        if finished:
            complete_stopped(self.experiment, finished, self.storage)
            self.logger.info(f"Trials {finished} had finished training after their early stop: completed.")
        return finished

    def wait_for_completed_trials_and_report_results(self, idle_callback=None, force_refit: bool = False):
        poll_s = float(self.options.init_seconds_between_polls or 1)
        waited = 0.0
        ahead = self.ahead
        while self.pending_trials:
            if self.poll_and_process_results():
                break
            if not self.deploying and self.refill is not None and self.refill():
                break  # a slot a trial left before this wait (noticed while deploying) is filled now
            if ahead is not None:
                ahead.start()
                news = ahead.news()
                room = len(self.pending_trials) < (self.options.max_pending_trials or 1)
                if news is not None and news is not self._offered and room and self.deploying:
                    self._offered = news  # once: if not taken after all, wait for a trial as before
                    break  # deploy it, or make it again in this thread
            if idle_callback is not None:
                idle_callback(self)  # odnas's callback raises to stop; Ax's own loop would swallow it
            if waited > MAX_SECONDS_BETWEEN_REPORTS:
                break
            t0 = time.monotonic()
            if ahead is not None and ahead.busy:
                ahead.done.wait(poll_s)  # wake when the candidate is ready, else poll again
            else:
                time.sleep(poll_s)
            waited += time.monotonic() - t0
        else:
            if ahead is not None and ahead.busy:
                ahead.done.wait()  # nothing runs: the candidate is all there is to wait for
        if idle_callback is not None:
            idle_callback(self)
        return self.report_results(force_refit=force_refit)
