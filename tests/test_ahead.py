"""The next candidate made on a background thread (``odnas.loop.ahead``).

Unit tests drive ``Ahead`` with a stand-in generation strategy whose ``gen`` blocks
until the test lets it go, so every interleaving is forced, not timed. The loop's own
use of it (a real Ax Orchestrator and generation strategy) is checked in
``tests/test_load.py`` and the end-to-end searches.
"""

import threading

import pytest

from odnas.loop.ahead import Ahead, NotYet


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
    ahead = Ahead(strategy, experiment=object(), wanted=lambda: state["wanted"],
                  running=lambda: state["running"], fixed_features=lambda exp: None)
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
