"""Issue 13, the pending wake-up: an await's waiter is its thread's one waker, kept while the
loop it was made for runs on that thread (no ``asyncio.get_running_loop()``, hence no
``getpid()``, per wait). Kept correct when the loop changes under it: ``asyncio.run`` twice on
one thread, a loop that moved to another thread while this one runs another, a forked child;
a loop class's own ``create_future`` makes every wait's future. A generation's one waiter is
held without a dict, with a dict's semantics. They run against whichever build is in use (CI
runs both)."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import warnings
import weakref
from collections.abc import Hashable

import pytest
from support import wait_until

from velo_event import EventAwaiter, EventHandle, LocalEventSystem
from velo_event.lowlevel import PENDING, Answer, EventCore, WakeCallback

DEADLINE = 10.0


class Spy:
    """An event source's add/remove_waiter that records each wait's callback; the test wakes
    the waiters itself."""

    def __init__(self) -> None:
        self.waiters: list[tuple[Hashable, WakeCallback]] = []
        self.removed: list[Hashable] = []

    def add_waiter(self, handle: EventHandle, key: Hashable, callback: WakeCallback) -> Answer:
        self.waiters.append((key, callback))
        return PENDING

    def remove_waiter(self, handle: EventHandle, key: Hashable) -> None:
        self.removed.append(key)

    def awaiter(self) -> EventAwaiter:
        return EventAwaiter(EventHandle.from_int(1), PENDING, self.add_waiter, self.remove_waiter)

    async def wait_and_wake(self) -> None:
        """One await, woken (triggered) from this loop once its waiter is registered."""
        count = len(self.waiters)
        task = asyncio.ensure_future(self.awaiter())
        await wait_until(lambda: len(self.waiters) > count, DEADLINE)
        key, callback = self.waiters[-1]
        callback(key, None)
        await asyncio.wait_for(task, DEADLINE)


def test_the_waits_of_one_thread_and_loop_share_one_waker() -> None:
    """Fails before: each wait made a waker of its own."""
    spy = Spy()

    async def three_waits() -> None:
        for _ in range(3):
            await spy.wait_and_wake()

    asyncio.run(three_waits())
    callbacks = {id(callback) for _, callback in spy.waiters}
    assert len(spy.waiters) == 3 and len(callbacks) == 1, spy.waiters
    assert len({id(key) for key, _ in spy.waiters}) == 3, "each wait has a future of its own"


def test_a_second_asyncio_run_on_the_thread_waits_on_its_own_loop() -> None:
    spy = Spy()
    loops: list[asyncio.AbstractEventLoop] = []

    async def one_wait() -> None:
        loops.append(asyncio.get_running_loop())
        await spy.wait_and_wake()

    asyncio.run(one_wait())
    asyncio.run(one_wait())
    first, second = (key for key, _ in spy.waiters)
    assert isinstance(first, asyncio.Future) and isinstance(second, asyncio.Future)
    assert first.get_loop() is loops[0] and second.get_loop() is loops[1]
    assert spy.waiters[0][1] is not spy.waiters[1][1], "a new loop gets a new waker"


def test_a_wait_after_this_threads_loop_moved_to_another_thread_waits_on_the_running_loop() -> None:
    """This thread ran loop A (its waker kept A), then A went on running on another thread
    while this one runs loop B: the kept waker sees A running, the task refuses A's future,
    and the wait starts again on B. Its waiter on A is removed; the event's trigger wakes it."""
    mgr = LocalEventSystem()
    loop_a = asyncio.new_event_loop()
    moved = threading.Event()
    try:
        loop_a.run_until_complete(_ready(mgr))

        def run_a_elsewhere() -> None:
            asyncio.set_event_loop(loop_a)
            loop_a.call_soon(moved.set)
            loop_a.run_forever()

        other = threading.Thread(target=run_a_elsewhere)
        other.start()
        try:
            assert moved.wait(DEADLINE)

            async def wait_on_b() -> asyncio.AbstractEventLoop:
                loop_b = asyncio.get_running_loop()
                pending = mgr.new_event()
                task = asyncio.ensure_future(mgr.awaiter(pending.handle))

                def waits_on_b_alone() -> bool:
                    keys = dict(mgr.core.pending_waiters())[pending.handle]
                    return len(keys) == 1 and keys[0].get_loop() is loop_b  # type: ignore[attr-defined]

                # The refused future of A is gone, B's is the one left: before any trigger.
                await wait_until(waits_on_b_alone, DEADLINE)
                loop_b.call_soon(pending.trigger)
                await asyncio.wait_for(task, DEADLINE)
                return loop_b

            assert asyncio.run(wait_on_b()) is not loop_a
        finally:
            loop_a.call_soon_threadsafe(loop_a.stop)
            other.join(DEADLINE)
    finally:
        loop_a.close()


async def _ready(mgr: LocalEventSystem) -> None:
    """A pending wait on the running loop, so this thread keeps that loop's waker."""
    pending = mgr.new_event()
    asyncio.get_running_loop().call_soon(pending.trigger)
    await mgr.awaiter(pending.handle)


def test_a_loop_moved_to_another_thread_still_hands_out_the_spys_futures_of_the_running_loop() -> (
    None
):
    """As above through a source that records the futures: the refused one was A's, removed;
    the one woken is B's."""
    spy = Spy()
    loop_a = asyncio.new_event_loop()
    moved = threading.Event()
    try:
        loop_a.run_until_complete(spy.wait_and_wake())
        other = threading.Thread(target=lambda: (loop_a.call_soon(moved.set), loop_a.run_forever()))
        other.start()
        try:
            assert moved.wait(DEADLINE)

            async def on_b() -> asyncio.AbstractEventLoop:
                await spy.wait_and_wake()
                return asyncio.get_running_loop()

            loop_b = asyncio.run(on_b())
        finally:
            loop_a.call_soon_threadsafe(loop_a.stop)
            other.join(DEADLINE)
    finally:
        loop_a.close()
    futures = [key for key, _ in spy.waiters]
    assert all(isinstance(f, asyncio.Future) for f in futures)
    assert [f.get_loop() for f in futures[1:]] == [loop_a, loop_b]  # type: ignore[attr-defined]
    assert spy.removed == [futures[1]], "the refused future's waiter is removed"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_child_forked_while_a_loop_runs_waits_on_its_own_loop() -> None:
    mgr = LocalEventSystem()

    async def parent() -> int:
        await _ready(mgr)  # the kept waker is this loop's, which the child's copy says runs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
            pid = os.fork()
        if pid == 0:  # the child, on the forking thread: a loop of its own
            code = 1
            try:
                code = 0 if _child_waits(mgr) else 2
            finally:
                os._exit(code)
        return pid

    pid = asyncio.run(parent())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _child_waits(mgr: LocalEventSystem) -> bool:
    """The child's first wait is on its own loop's future at once: none refused (without the
    fork hook the kept waker, whose loop's copy claims to run, made a future the task refused,
    and the retry recovered)."""
    spy = Spy()

    async def wait() -> bool:
        await asyncio.wait_for(spy.wait_and_wake(), DEADLINE)
        await asyncio.wait_for(_ready(mgr), DEADLINE)
        first = spy.waiters[0][0]
        return spy.removed == [] and first.get_loop() is asyncio.get_running_loop()  # type: ignore[attr-defined]

    return asyncio.run(wait())


def test_a_wait_driven_by_hand_off_any_loop_raises_its_own_error_and_leaves_no_waiter() -> None:
    """Fails before: the wait took the error for a moved loop's refusal and retried, which
    raised "no running event loop" instead."""
    mgr = LocalEventSystem()
    event = mgr.new_event()
    wait = mgr.awaiter(event.handle).__await__()

    async def start() -> None:
        wait.send(None)  # registered, on this loop's future

    asyncio.run(start())
    with pytest.raises(RuntimeError, match="await wasn't used with future"):
        wait.send(None)  # resumed by hand, on a thread running no loop, its future not done
    assert mgr.core.pending_waiters() == [(event.handle, [])]


def test_a_finished_loop_is_released_at_the_threads_next_wait_on_another_loop() -> None:
    """The documented bound of the kept waker's hold on its loop: until this thread's next
    wait on a pending event under another loop (or the thread's exit)."""
    mgr = LocalEventSystem()
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def one_wait() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await _ready(mgr)

    asyncio.run(one_wait())
    asyncio.run(one_wait())
    gc.collect()
    assert loops[0]() is None, "the first loop outlived the next wait on another"


def test_a_loop_class_with_its_own_create_future_makes_every_waits_future() -> None:
    made: list[asyncio.Future[object]] = []

    class CountingLoop(asyncio.SelectorEventLoop):
        def create_future(self) -> asyncio.Future[object]:
            future = super().create_future()
            made.append(future)
            return future

    spy = Spy()
    loop = CountingLoop()
    try:
        loop.run_until_complete(spy.wait_and_wake())
        loop.run_until_complete(spy.wait_and_wake())
    finally:
        loop.close()
    made_ids = {id(future) for future in made}  # the loop makes others too (wait_for's)
    assert len(spy.waiters) == 2
    assert all(id(key) in made_ids for key, _ in spy.waiters)


def test_a_slots_one_waiter_or_many_each_woken_once_and_removed_by_an_equal_key() -> None:
    """The core keeps a generation's one waiter as a pair and more in a dict: the same
    semantics either way (an equal key replaces, removal by an equal key, one wake-up each)."""
    core = EventCore(7, local=True)
    woken: list[tuple[Hashable, object]] = []

    def wake(key: Hashable, reason: object) -> None:
        woken.append((key, reason))

    handle = core.new_event()
    assert core.add_waiter(handle, Key("a"), wake) is PENDING
    core.remove_waiter(handle, Key("a"))  # equal, not the same object
    assert core.pending_waiters() == [(handle, [])]
    for key in ("a", "b", "a"):
        assert core.add_waiter(handle, Key(key), wake) is PENDING
    assert core.pending_waiters() == [(handle, [Key("a"), Key("b")])]
    core.remove_waiter(handle, Key("b"))
    core.remove_waiter(handle, Key("c"))  # none: harmless
    core.trigger(handle)
    assert woken == [(Key("a"), None)]
    single = core.new_event()
    assert core.add_waiter(single, "only", wake) is PENDING
    core.poison(single, "why")
    assert woken == [(Key("a"), None), ("only", "why")]


def test_two_equal_keys_on_a_one_waiter_slot_keep_one_waiter_the_later_callback() -> None:
    """The pair is replaced as a dict would: the later callback of an equal key stays."""
    core = EventCore(7, local=True)
    woken: list[str] = []
    handle = core.new_event()
    assert core.add_waiter(handle, Key("a"), lambda key, reason: woken.append("first")) is PENDING
    assert core.add_waiter(handle, Key("a"), lambda key, reason: woken.append("later")) is PENDING
    assert core.pending_waiters() == [(handle, [Key("a")])]
    core.trigger(handle)
    assert woken == ["later"]


class Key:
    """A key equal by value, not identity (an interned string would be the same object)."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"Key({self.value!r})"


class Touchy:
    """A key whose equality refuses foreign keys: a dict never asks it about one of
    another hash."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Touchy):
            raise TypeError("compared with a foreign key")
        return other is self

    def __hash__(self) -> int:
        return 1


class SameToAll:
    """Equal to everything, hashed by identity: a dict keeps it for a key of another hash."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return id(self)


def test_removing_a_foreign_key_from_a_one_waiter_slot_compares_as_a_dict_does() -> None:
    """Fails before: the pair compared keys by ``==`` alone, so a key raising on a foreign
    key made remove_waiter raise, and an equal key of another hash removed the waiter."""
    core = EventCore(7, local=True)
    handle = core.new_event()
    assert core.add_waiter(handle, Touchy(), lambda key, reason: None) is PENDING
    core.remove_waiter(handle, "foreign")  # hash differs: never compared
    assert len(core.pending_waiters()[0][1]) == 1
    other = core.new_event()
    kept = SameToAll()
    assert core.add_waiter(other, kept, lambda key, reason: None) is PENDING
    core.remove_waiter(other, SameToAll())  # equal, but of another hash: a dict keeps it
    assert [keys for h, keys in core.pending_waiters() if h == other] == [[kept]]


def test_a_generations_one_waiter_is_held_without_a_dict() -> None:
    """Fails before: every waited generation's slot held a dict (white-box: the slot)."""
    mgr = LocalEventSystem()
    event = mgr.new_event()
    assert mgr.core.add_waiter(event.handle, "only", lambda key, reason: None) is PENDING
    held = mgr.core._slots[event.handle.index].waiters  # white-box: what the slot keeps
    assert not isinstance(held, dict), held
    assert mgr.core.pending_waiters() == [(event.handle, ["only"])]
    event.trigger()
