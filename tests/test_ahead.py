"""The next candidate made on a background thread (``odnas.loop.ahead``).

Unit tests drive ``Ahead`` with a stand-in generation strategy whose ``gen`` blocks
until the test lets it go, so every interleaving is forced, not timed. Candidates made
in a forked child are checked with Ax's own generation strategy (the ``*_child*``
tests). The loop's own use of it (a real Ax Orchestrator) is checked in
``tests/test_load.py`` and the end-to-end searches.
"""

import functools
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from odnas.loop.ahead import Ahead, NotYet, pace_note


class Strategy:
    """Stands in for Ax's GenerationStrategy: ``gen`` returns [[n]] for its n-th call,
    each call waiting for ``go`` (set it to let calls through) and recording its thread."""

    def __init__(self, fail_first: bool = False) -> None:
        self.calls = 0
        self.go = threading.Event()
        self.entered = threading.Event()
        self.threads: list[str] = []
        self.thread_objects: list[threading.Thread] = []
        self.fail_first = fail_first

    def gen(self, experiment=None, data=None, n=None, fixed_features=None, num_trials=1):
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        self.thread_objects.append(threading.current_thread())
        self.entered.set()
        assert self.go.wait(10)
        if self.fail_first and self.calls == 1:
            raise RuntimeError("dictionary changed size during iteration")
        return [[f"gr{self.calls}"]]


def make(strategy, running=True, wanted=True):
    state = {"running": running, "wanted": wanted}
    # In this process: the stand-in's events cannot reach a forked child.
    ahead = Ahead(strategy, experiment=object(), wanted=lambda: state["wanted"],
                  running=lambda: state["running"], fixed_features=lambda exp: None, in_child=False)
    return ahead, state


def test_a_candidate_made_ahead_is_handed_over_made_on_another_thread():
    gs = Strategy()
    ahead, _ = make(gs)
    assert gs.gen == ahead.gen  # the Orchestrator's calls now come here
    assert ahead.start() and not ahead.start()  # one at a time
    gs.go.set()
    assert ahead.done.wait(10)
    assert ahead.ready
    assert gs.gen(experiment=None, num_trials=1) == [["gr1"]]
    assert gs.threads == ["odnas-ahead"] and gs.calls == 1
    ahead.close()
    assert "gen" not in vars(gs)  # the strategy's own method again


def test_every_candidate_of_a_run_is_made_on_one_thread_which_ends_when_closed():
    gs = Strategy()
    gs.go.set()
    ahead, _ = make(gs)
    for i in range(1, 4):
        assert ahead.start()
        assert ahead.done.wait(10) and not ahead.busy
        assert gs.gen(experiment=None) == [[f"gr{i}"]]
    thread = ahead._thread
    assert len(gs.thread_objects) == 3 and all(t is thread for t in gs.thread_objects)
    ahead.close()
    thread.join(10)
    assert not thread.is_alive() and not ahead.busy
    assert not ahead.start()  # nothing is made once closed


def test_not_yet_while_a_candidate_is_made_and_trials_run():
    gs = Strategy()
    ahead, state = make(gs)
    with pytest.raises(NotYet):  # nothing made: it starts one and says so
        gs.gen(experiment=None)
    assert gs.entered.wait(10) and ahead.busy
    with pytest.raises(NotYet):  # still being made
        gs.gen(experiment=None)
    gs.go.set()
    ahead.done.wait(10)
    assert gs.gen(experiment=None) == [["gr1"]] and gs.calls == 1
    assert ahead.stats()["not_yet"] == 2 and ahead.stats()["used"] == 1
    ahead.close()


def test_with_nothing_running_the_driver_waits_for_the_candidate_instead():
    gs = Strategy()
    ahead, state = make(gs)
    ahead.start()
    assert gs.entered.wait(10)
    state["running"] = False  # "not yet" now would leave the Orchestrator nothing to wait for
    threading.Timer(0.2, gs.go.set).start()
    assert gs.gen(experiment=None) == [["gr1"]]
    assert ahead.stats()["blocked_s"] > 0
    ahead.close()


def test_a_search_whose_slots_mostly_waited_for_candidates_ends_with_a_note_saying_so():
    gs = Strategy()
    ahead, state = make(gs)
    ahead.start()
    assert gs.entered.wait(10)
    state["running"] = False  # every slot free: the driver waits for the candidate
    threading.Timer(0.3, gs.go.set).start()
    t0 = time.perf_counter()
    gs.gen(experiment=None)
    waited = time.perf_counter() - t0
    ahead.close()
    stats = ahead.stats()
    assert stats["blocked_s"] >= 0.25 and stats["made_ahead"] == 1
    note = pace_note(stats, wall_s=waited * 2, least_s=0.1)  # half the search spent waiting
    assert note is not None and f"{stats['blocked_s']:.0f} s of this {waited * 2:.0f} s search" in note
    assert "more slots (--parallel) will not make it faster" in note
    assert pace_note(stats, wall_s=waited * 10, least_s=0.1) is None  # a tenth: candidates kept up
    assert pace_note(stats, wall_s=waited * 2) is None  # a wait of under 10 s is not worth a note
    assert pace_note({}, wall_s=100.0) is None  # a run without candidates made ahead


def test_with_nothing_running_and_nothing_made_it_generates_in_the_driver_thread():
    gs = Strategy()
    gs.go.set()
    ahead, _ = make(gs, running=False)
    assert gs.gen(experiment=None) == [["gr1"]]
    assert gs.threads == [threading.current_thread().name]
    ahead.close()


def test_a_candidate_that_fails_ahead_is_made_again_in_the_driver_thread():
    gs = Strategy(fail_first=True)
    gs.go.set()
    ahead, _ = make(gs)
    ahead.start()
    ahead.done.wait(10)
    assert not ahead.ready and ahead.stats()["failed"] == 1
    assert not ahead.start()  # the error is dealt with first, where Ax can handle it
    assert gs.gen(experiment=None) == [["gr2"]]
    assert gs.threads == ["odnas-ahead", threading.current_thread().name]
    ahead.close()


def test_nothing_is_made_ahead_when_no_more_candidates_are_wanted():
    gs = Strategy()
    ahead, _ = make(gs, wanted=False)
    assert not ahead.start() and gs.calls == 0
    ahead.close()


def test_a_latency_is_timed_only_while_no_candidate_is_being_made():
    gs = Strategy()
    ahead, _ = make(gs)
    ahead.start()
    assert gs.entered.wait(10)
    entered = threading.Event()

    def time_a_latency():
        with ahead.still():
            entered.set()

    t = threading.Thread(target=time_a_latency)
    t.start()
    assert not entered.wait(0.3)  # held back while the candidate is made
    gs.go.set()
    assert entered.wait(10)
    t.join()
    ahead.close()


def test_what_a_candidate_leaves_in_reference_cycles_is_freed_when_it_is_made():
    """A model left in a reference cycle is freed right after its candidate, not at
    Python's next oldest-generation collection (automatic collection is off here, so
    only Ahead's own collection can free it)."""
    import gc
    import weakref

    class Model:  # stands in for a fitted model whose tensors sit in a cycle
        pass

    left: list = []

    class Cyclic(Strategy):
        def gen(self, **kwargs):
            m = Model()
            m.me = m
            left.append(weakref.ref(m))
            return super().gen(**kwargs)

    gs = Cyclic()
    gs.go.set()
    ahead, state = make(gs)
    ahead.collect_after_s = 0.0  # the stand-in's candidates take no time
    was = gc.isenabled()
    gc.disable()
    try:
        ahead.start()
        assert ahead.done.wait(10) and ahead.ready
        assert len(left) == 1 and left[0]() is None  # freed on the thread that made it
        state["running"] = False
        assert gs.gen(experiment=None) == [["gr1"]]  # handed over
        assert gs.gen(experiment=None) == [["gr2"]]  # made in the driver's thread
        assert len(left) == 2 and left[1]() is None
        assert ahead.collect_s > 0
        ahead.collect_after_s = 60.0  # a quick (quasi-random) candidate: no collection
        assert gs.gen(experiment=None) == [["gr3"]]
        assert len(left) == 3 and left[2]() is not None
    finally:
        if was:
            gc.enable()
        ahead.close()


def test_within_a_frozen_heap_a_collection_walks_only_what_was_made_since_and_still_frees_it():
    """The driver's loop runs in ``frozen_heap``: what was alive at entry is out of the
    collector's sight (so a collection after each candidate is cheap), a cycle made
    within is still freed by ``release_memory``, and everything is handed back on exit,
    even when the loop raises."""
    import gc
    import weakref

    from odnas.loop.ahead import frozen_heap, release_memory

    class Node:
        pass

    before = Node()
    before.me = before  # alive at entry: frozen
    was = gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(RuntimeError):
            with frozen_heap():
                assert gc.get_freeze_count() > 0
                assert all(o is not before for o in gc.get_objects())  # not walked
                made = Node()
                made.me = made
                ref = weakref.ref(made)
                del made
                release_memory()
                assert ref() is None  # made within, freed within
                raise RuntimeError("the loop fails")
        assert gc.get_freeze_count() == 0
        assert any(o is before for o in gc.get_objects())
    finally:
        if was:
            gc.enable()


def test_a_frozen_heap_leaves_a_callers_own_freeze_alone():
    import gc

    from odnas.loop.ahead import frozen_heap

    gc.freeze()  # the caller's
    try:
        # Frozen objects can still be freed by reference counting (another test's
        # leftovers, here), so the count may fall a little; it must not jump either way.
        count = gc.get_freeze_count()
        made_since = [[] for _ in range(20_000)]  # what a freeze at entry would take in
        with frozen_heap():
            assert count - 1000 < gc.get_freeze_count() < count + 1000
        assert count - 1000 < gc.get_freeze_count()  # not unfrozen by frozen_heap
        del made_since
    finally:
        gc.unfreeze()


def test_the_release_after_a_candidate_hands_back_mkls_matrix_product_buffers():
    """MKL keeps work buffers for its matrix products, sized by the largest product so
    far; a GP's grow with the trials, so the driver's in-use memory grew with them.
    ``release_memory`` frees them (malloc's in-use bytes fall, read through glibc)."""
    import ctypes
    import gc

    import torch

    from odnas.loop import ahead

    if ahead.MKL_FREE_BUFFERS is None:
        pytest.skip("this torch runs without MKL")
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        pytest.skip("no glibc mallinfo2 to read malloc's in-use bytes")

    class Info(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                  "fsmblks", "uordblks", "fordblks", "keepcost")]

    mallinfo2.argtypes, mallinfo2.restype = [], Info

    def in_use() -> int:
        m = mallinfo2()
        return m.uordblks + m.hblkhd

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(64, 400, 400, dtype=torch.float64)
        (a @ a.transpose(-1, -2)).sum()
        del a
        gc.collect()
        before = in_use()
        ahead.release_memory()
        assert before - in_use() > 1 << 20  # MKL held over 1 MiB for the product (2.3 MiB here)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------ candidates made in a child process

needs_fork = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="candidates are made in a child on Linux")


def ax_problem(seed: int = 0):
    """A two-parameter Ax problem with odnas's own "bo" strategy (3 quasi-random
    candidates, then BoTorch once one of them has a result)."""
    from ax.api.client import Client
    from ax.api.configs import RangeParameterConfig

    from odnas.loop.adapter import experiment_of, generation_strategy_of
    from odnas.loop.config import generation_strategy

    client = Client(random_seed=seed)
    client.configure_experiment(parameters=[RangeParameterConfig(name=x, bounds=(0.0, 1.0), parameter_type="float")
                                            for x in ("a", "b")])
    client.configure_optimization("f")
    client.set_generation_strategy(generation_strategy("bo", seed=seed, init_trials=3, trials=10))
    return client, experiment_of(client), generation_strategy_of(client)


def deploy(exp, grs):
    trial = exp.new_trial(generator_run=grs[0][0])
    trial.mark_running(no_runner_required=True)
    return trial


def in_child(gs, exp) -> Ahead:
    return Ahead(gs, exp, wanted=lambda: True, running=lambda: True, fixed_features=lambda e: None, in_child=True)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@needs_fork
def test_candidates_made_in_a_child_are_the_ones_made_here_and_leave_the_strategy_as_here():
    """The parent's strategy is left as ``gen`` left the child's: the quasi-random
    sequence continues exactly as in-process, the strategy moves to its BoTorch node,
    and it records every generator run (what storage saves), while the model lives
    and dies in the child (none is fitted in the parent)."""
    _, exp_here, gs_here = ax_problem()
    _, exp, gs = ax_problem()
    ahead = in_child(gs, exp)
    for _ in range(3):
        here = deploy(exp_here, gs_here.gen(experiment=exp_here, n=1, num_trials=1, fixed_features=None))
        there = deploy(exp, ahead._gen(experiment=exp, n=1, num_trials=1, fixed_features=None))
        assert there.arm.parameters == here.arm.parameters
    assert gs.current_node_name == gs_here.current_node_name
    nodes = [gr._generation_node_name for gr in gs._generator_runs]
    assert nodes == [gr._generation_node_name for gr in gs_here._generator_runs] and "Sobol" in nodes
    assert all(a is b for a, b in zip(gs._generator_runs, (t.generator_runs[0] for t in exp.trials.values())))
    for e in (exp, exp_here):
        for t in list(e.trials.values())[:2]:
            t.mark_completed()
            e.attach_data(_data(e, t.index, t.arm.parameters["a"] + t.arm.parameters["b"]))
    import torch

    # The BoTorch candidate too, from one random state: the child starts from this
    # process's and hands its own back, so the stream runs on as if made here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the child (and the driver) fit
    try:
        torch.manual_seed(7)
        trial = deploy(exp, ahead._gen(experiment=exp, n=1, num_trials=1, fixed_features=None))
        after_child = torch.rand(3)
        torch.manual_seed(7)
        trial_here = deploy(exp_here, gs_here.gen(experiment=exp_here, n=1, num_trials=1, fixed_features=None))
        after_here = torch.rand(3)
    finally:
        torch.set_num_threads(threads)
    assert trial.arm.parameters == trial_here.arm.parameters
    assert torch.equal(after_child, after_here)  # the random state moved on as here
    marks = {name: (node._previous_node_name, node._should_skip) for name, node in gs.nodes_by_name.items()}
    assert marks == {name: (node._previous_node_name, node._should_skip)
                     for name, node in gs_here.nodes_by_name.items()}
    assert marks["MBM"][0] is not None  # the transition was recorded
    assert gs.current_node_name == "MBM" and trial.generator_runs[0]._generation_node_name == "MBM"
    assert gs._generator_runs[-1] is trial.generator_runs[0] and len(gs._generator_runs) == 4
    assert gs.adapter is None  # fitted in the child only
    assert ahead.child is None and ahead.child_peak_mb > 0


def _data(exp, index, value):
    from ax.core.data import Data
    import pandas as pd

    return Data(df=pd.DataFrame([{"trial_index": index, "arm_name": exp.trials[index].arm.name,
                                  "metric_name": "f", "metric_signature": "f", "mean": value, "sem": 0.0}]))


@needs_fork
def test_what_a_candidate_allocates_in_the_child_is_not_kept_by_the_driver():
    """300 MB held on to by the call that makes the candidate: the child peaks above
    that, the driver's RSS does not grow by it."""
    _, exp, gs = ax_problem()
    ahead = in_child(gs, exp)
    real, kept = ahead._real_gen, []

    def fat(**kwargs):
        kept.append(bytearray(300 << 20))
        kept[-1][:: 4096] = b"x" * len(kept[-1][:: 4096])  # touched, so resident
        return real(**kwargs)

    ahead._real_gen = fat
    before = rss_mb()
    deploy(exp, ahead._gen(experiment=exp, n=1, num_trials=1, fixed_features=None))
    assert ahead.child_peak_mb > 300 + 0.5 * before
    assert rss_mb() - before < 50 and kept == []


class Odd(Exception):
    def __init__(self, a, b):  # does not survive pickling (pickle calls it with one arg)
        super().__init__(f"{a} {b}")


class HoldsALock(Odd):
    def __init__(self, a, b):
        super().__init__(a, b)
        self.lock = threading.Lock()  # cannot cross; its message needs it

    def __str__(self):
        return f"{self.args[0]} {self.lock}"


@needs_fork
def test_an_error_in_the_child_is_raised_here_with_its_type_and_message():
    from ax.exceptions.core import DataRequiredError
    from ax.exceptions.generation_strategy import MaxParallelismReachedException

    from odnas.loop.ahead import CandidateProcessDied

    _, exp, gs = ax_problem()
    ahead = in_child(gs, exp)

    def needs_data(**kwargs):
        raise DataRequiredError("need 2 completed trials")

    class Local(Exception):  # its class cannot be named from another process
        pass

    def odd(**kwargs):
        raise Odd(1, 2)

    def local(**kwargs):
        raise Local("here")

    ahead._real_gen = needs_data
    with pytest.raises(DataRequiredError, match="need 2 completed trials"):
        ahead._gen(experiment=exp, n=1, num_trials=1, fixed_features=None)
    ahead._real_gen = odd
    with pytest.raises(Odd, match="1 2"):  # its own type, rebuilt without calling __init__
        ahead._gen(experiment=exp, n=1, num_trials=1, fixed_features=None)

    def full(**kwargs):  # Ax's Orchestrator handles this one by its type: it must not become a RuntimeError
        raise MaxParallelismReachedException(num_running=2, node_name="BoTorch")

    ahead._real_gen = full
    with pytest.raises(MaxParallelismReachedException, match="2"):
        ahead._gen(experiment=exp, n=1, num_trials=1, fixed_features=None)
    ahead._real_gen = lambda **kwargs: (_ for _ in ()).throw(HoldsALock(3, 4))
    with pytest.raises(RuntimeError, match="HoldsALock: 3 4"):
        ahead._gen(experiment=exp, n=1, num_trials=1, fixed_features=None)
    ahead._real_gen = local
    with pytest.raises(RuntimeError, match="Local: here"):
        ahead._gen(experiment=exp, n=1, num_trials=1, fixed_features=None)
    ahead._real_gen = lambda **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    with pytest.raises(CandidateProcessDied, match="killed by signal 9"):
        ahead._gen(experiment=exp, n=1, num_trials=1, fixed_features=None)
    assert len(gs._generator_runs) == 0 and not exp.trials


@needs_fork
def test_closing_without_waiting_kills_a_child_that_hangs_and_a_later_call_makes_the_candidate_again():
    """A candidate nobody will take (the driver is interrupted) does not keep its
    process; a candidate that failed ahead is made again (in a new child) by the
    driver's own call."""
    _, exp, gs = ax_problem()
    ahead = in_child(gs, exp)
    real = ahead._real_gen
    ahead._real_gen = lambda **kwargs: time.sleep(120)
    assert ahead.start()
    deadline = time.monotonic() + 10
    while ahead.child is None and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = ahead.child
    assert pid is not None
    ahead._real_gen = real
    ahead.close(wait=False)
    assert ahead.done.wait(10) and ahead.failed == 1 and ahead.child is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # ended and reaped
    grs = ahead.gen(experiment=exp, n=1, num_trials=1, fixed_features=None)  # made in the driver's call
    assert deploy(exp, grs).generator_runs[0] is gs._generator_runs[-1] and len(gs._generator_runs) == 1


@needs_fork
def test_a_child_that_does_not_answer_in_time_is_killed_and_reported():
    from odnas.loop.ahead import CandidateProcessDied

    _, exp, gs = ax_problem()
    ahead = in_child(gs, exp)
    ahead.child_timeout_s = 1.0
    ahead._real_gen = lambda **kwargs: time.sleep(60)
    t0 = time.monotonic()
    with pytest.raises(CandidateProcessDied, match="did not answer within 1 s"):
        ahead._gen(experiment=exp, n=1, num_trials=1, fixed_features=None)
    assert time.monotonic() - t0 < 10 and ahead.child is None


@needs_fork
def test_a_child_forked_while_another_thread_is_inside_a_write_to_stderr_can_still_write(monkeypatch):
    """A thread of the driver blocked in a write to stderr holds that file object's
    lock, and the fork copies it held; the child writes through a file object of its
    own, so it does not wait for a lock nobody in it will release."""
    _, exp, gs = ax_problem()
    ahead = in_child(gs, exp)
    ahead.child_timeout_s = 20.0
    r, w = os.pipe()
    stderr = os.fdopen(w, "w", buffering=1)
    monkeypatch.setattr(sys, "stderr", stderr)
    blocked = threading.Thread(target=lambda: (stderr.write("x" * (1 << 20)), stderr.flush()), daemon=True)
    blocked.start()  # fills the pipe, then blocks inside the write, holding the lock
    time.sleep(0.3)
    real = ahead._real_gen

    def chatty(**kwargs):
        print("made in the child", file=sys.stderr, flush=True)
        return real(**kwargs)

    ahead._real_gen = chatty
    drained: list[bytes] = []
    drain = threading.Timer(1.0, lambda: drained.extend(iter(lambda: os.read(r, 1 << 16), b"")))
    drain.daemon = True
    drain.start()  # after the fork: the pipe empties, the blocked write ends
    grs = ahead._gen(experiment=exp, n=1, num_trials=1, fixed_features=None)
    assert deploy(exp, grs).generator_runs[0] is gs._generator_runs[-1]
    blocked.join(10)
    assert not blocked.is_alive()
    monkeypatch.undo()
    stderr.close()
    drain.join(10)
    assert b"made in the child" in b"".join(drained)


def test_the_kernel_is_built_with_the_interpreters_own_ninja_in_its_own_folder_and_the_env_is_restored(
        tmp_path, monkeypatch):
    import shutil

    from odnas.loop.ahead import kernel_build_env

    own = tmp_path / "venv" / "bin"
    own.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(own / "python"))
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/local/bin", "/usr/bin"]))
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    with kernel_build_env():  # no ninja beside the interpreter: PATH untouched
        assert os.environ["PATH"] == os.pathsep.join(["/usr/local/bin", "/usr/bin"])
        here = os.environ["TORCH_EXTENSIONS_DIR"]
    ninja = own / "ninja"
    ninja.write_text("#!/bin/sh\necho 1.13\n")
    ninja.chmod(0o755)
    with kernel_build_env():
        assert os.environ["PATH"].split(os.pathsep) == [str(own), "/usr/local/bin", "/usr/bin"]
        assert shutil.which("ninja") == str(ninja)
        assert os.environ["TORCH_EXTENSIONS_DIR"] == here  # the same interpreter, the same folder
    assert os.environ["PATH"] == os.pathsep.join(["/usr/local/bin", "/usr/bin"])
    assert "TORCH_EXTENSIONS_DIR" not in os.environ
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "another-venv"))
    with kernel_build_env():
        assert os.environ["TORCH_EXTENSIONS_DIR"] != here  # another virtualenv builds in a folder of its own
    with kernel_build_env():
        other_venv = os.environ["TORCH_EXTENSIONS_DIR"]
    monkeypatch.setattr("odnas_device.timing.cpu_signature", lambda: "another-cpu")
    with kernel_build_env():  # built with -march=native: another CPU builds its own
        another_cpu = os.environ["TORCH_EXTENSIONS_DIR"]
        assert another_cpu not in (here, other_venv)
    monkeypatch.setattr("odnas_device.timing.cpu_flags", lambda: "fpu sse2 avx2")  # AVX-512 hidden
    with kernel_build_env():
        assert os.environ["TORCH_EXTENSIONS_DIR"] not in (here, other_venv, another_cpu)
    monkeypatch.setenv("PATH", os.pathsep.join([str(own), "/usr/bin"]))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    with kernel_build_env():  # already first: not added twice; the user's folder is kept
        assert os.environ["PATH"] == os.pathsep.join([str(own), "/usr/bin"])
        assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "mine")


def test_a_kernel_build_is_foreseen_where_nothing_is_built_yet(tmp_path, monkeypatch):
    from botorch.acquisition.multi_objective import logei

    from odnas.loop.ahead import kernel_build_due

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(logei, "_load_attempted", False)
    monkeypatch.setenv("CXX", sys.executable)  # a program that exists, as a compiler would
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ninja").symlink_to(sys.executable)
    assert kernel_build_due()
    (tmp_path / "logei_fused_ext").mkdir()
    (tmp_path / "logei_fused_ext" / "logei_fused_ext.so").write_bytes(b"")
    assert not kernel_build_due()  # built before: loaded in seconds
    (tmp_path / "logei_fused_ext" / "logei_fused_ext.so").unlink()
    monkeypatch.setattr(logei, "_load_attempted", True)
    assert not kernel_build_due()  # tried already in this process: nothing more will happen
    monkeypatch.setattr(logei, "_load_attempted", False)
    monkeypatch.setenv("CXX", f"{sys.executable} -O")  # a compiler with its flags, as ninja runs it
    assert kernel_build_due()
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert not kernel_build_due()  # no compiler: the build fails at once, nothing to wait for


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@needs_fork
def test_when_no_process_can_be_forked_the_candidate_is_made_here_and_no_pipe_is_left_open(monkeypatch):
    import errno

    from odnas.loop import ahead as ahead_module

    _, exp, gs = ax_problem()
    ahead = in_child(gs, exp)

    def no_fork():
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(ahead_module.os, "fork", no_fork)
    before = open_fds()
    grs = ahead._gen(experiment=exp, n=1, num_trials=1, fixed_features=None)
    assert grs[0][0] is gs._generator_runs[-1]  # made, in this process
    assert open_fds() == before


@needs_fork
def test_closing_without_waiting_just_before_the_fork_kills_that_child_as_it_starts():
    """close(wait=False) while the thread is still on its way to the fork: the child it
    forks afterwards is killed at once, and nothing made ahead is handed back."""
    _, exp, gs = ax_problem()
    ahead = in_child(gs, exp)
    at_fork, go = threading.Event(), threading.Event()

    def fixed(e):  # the thread's last step before it forks
        at_fork.set()
        assert go.wait(10)
        return None

    ahead._fixed = fixed
    ahead._real_gen = lambda **kwargs: time.sleep(60)  # would hold a child for a minute
    assert ahead.start()
    assert at_fork.wait(10)
    ahead.close(wait=False)
    t0 = time.monotonic()
    go.set()
    assert ahead.done.wait(10) and time.monotonic() - t0 < 10
    assert ahead.failed == 1 and ahead.made == 0 and not ahead.ready and ahead.child is None


_PARENT = os.getpid()


class _SlowFirstTime:
    gate = threading.Event()

    @functools.cached_property
    def value(self):
        if os.getpid() == _PARENT:
            _SlowFirstTime.gate.wait(30)  # in the parent: holds the descriptor's lock (Python 3.11) meanwhile
        return os.getpid()


@needs_fork
@pytest.mark.skipif(sys.version_info >= (3, 12), reason="cached_property has no lock since Python 3.12")
def test_a_fork_while_another_thread_computes_a_cached_property_does_not_hang_the_child():
    """As when the driver's thread computes Ax's Data.full_df for early stopping while
    the candidate's child is forked: the child computes its own instance's value."""
    from odnas.loop.ahead import call_in_child

    holder = threading.Thread(target=lambda: _SlowFirstTime().value)
    holder.start()
    try:
        time.sleep(0.3)  # the other thread is inside, holding the lock
        pid, _ = call_in_child(lambda: _SlowFirstTime().value, timeout_s=15)
        assert pid != _PARENT
    finally:
        _SlowFirstTime.gate.set()
        holder.join()
