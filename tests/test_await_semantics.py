"""Issue 13, the core's hot path: the core's lock is a `Mutex` (a SimpleQueue's one token) held
to a lock's contract (interface, mutual exclusion, no update lost under threads); and an await
of a pending event (its waiter is a future of the running loop; the free-listed objects of the
compiled build) under every way asyncio ends a wait: cancel with a message, timeouts, gather,
shield, close, a resume by no task, a wake-up from another thread. They run against whichever
build is in use (CI runs both)."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Callable, Hashable, Iterable

import pytest
from support import wait_until

from velo_event import EventHandle, EventPoison, EventStatus, LocalEventSystem, OutcomeUnknown
from velo_event._mutex import Mutex
from velo_event.lowlevel import PENDING, CoreEventManager, Outcome, Unanswered, WakeCallback

DEADLINE = 10.0


def keys_waiting(mgr: LocalEventSystem, handle: EventHandle) -> list[Hashable]:
    return dict(mgr.core.pending_waiters()).get(handle, [])


async def until_waiting(mgr: LocalEventSystem, handle: EventHandle, count: int = 1) -> None:
    await wait_until(lambda: len(keys_waiting(mgr, handle)) >= count, DEADLINE)


# -- Mutex ---------------------------------------------------------------------------------------


def test_mutex_has_a_locks_interface_and_refuses_a_second_holder() -> None:
    mutex = Mutex()
    assert not mutex.locked()
    assert mutex.acquire()
    assert mutex.locked()
    assert not mutex.acquire(blocking=False), "held: a second acquire must fail"
    assert not mutex.acquire(timeout=0.01)
    mutex.release()
    assert not mutex.locked()
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        mutex.release()  # a second token would let two holders in
    with mutex:
        assert mutex.locked()
    assert not mutex.locked()
    assert mutex.take() is True
    mutex.give(True)
    assert mutex.acquire(blocking=False)
    mutex.release()


def test_mutex_excludes_other_threads_until_released() -> None:
    """No timed look: what the contender may do while this thread holds the mutex is checked
    at points both threads reached (a barrier), so a failure is a real breach."""
    mutex = Mutex()
    met = threading.Barrier(2, timeout=DEADLINE)
    tried: list[bool] = []
    entered = threading.Event()

    def contender() -> None:
        met.wait()
        tried.append(mutex.acquire(blocking=False))
        met.wait()
        with mutex:  # blocks until the holder releases
            entered.set()

    thread = threading.Thread(target=contender)
    with mutex:
        thread.start()
        met.wait()
        met.wait()
        assert tried == [False], "a second holder got in"
        assert not entered.is_set()
    assert entered.wait(DEADLINE), "released: the blocked contender gets in"
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert not mutex.locked()


def test_many_threads_are_never_two_inside_the_mutex() -> None:
    mutex = Mutex()
    rounds, workers = 2000, 4
    inside, most, entries = [0], [0], [0]

    def enter() -> None:
        for _ in range(rounds):
            with mutex:
                inside[0] += 1
                os.sched_yield()  # invites another thread in: only the mutex keeps it out
                most[0] = max(most[0], inside[0])
                entries[0] += 1
                inside[0] -= 1

    run_in_threads(enter, workers)
    assert most[0] == 1, f"{most[0]} threads inside at once"
    assert entries[0] == rounds * workers
    assert not mutex.locked()


def run_in_threads(target: Callable[[], None], count: int) -> None:
    """Run ``target`` on ``count`` threads at once; all of them end within the deadline."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE * 3)
    assert not any(thread.is_alive() for thread in threads)


def test_many_threads_counting_under_the_core_lose_no_update() -> None:
    mgr = LocalEventSystem()
    rounds, workers = 2000, 4

    def churn() -> None:
        for _ in range(rounds):
            mgr.new_event().trigger()

    run_in_threads(churn, workers)
    assert mgr.core.pending_count() == 0
    assert mgr.core.slot_count() <= workers  # every slot went back to the free list once


# -- an await under cancel, timeout, gather, shield, close --------------------------------------


async def test_a_pending_awaits_waiter_is_a_future_of_the_running_loop() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    task = asyncio.create_task(_await(mgr, e))
    await until_waiting(mgr, e.handle)
    (key,) = keys_waiting(mgr, e.handle)
    assert asyncio.isfuture(key)
    assert key.get_loop() is asyncio.get_running_loop()
    assert not key.done() and not key.cancelled()
    e.trigger()
    await asyncio.wait_for(task, DEADLINE)
    assert task.result() is None
    assert key.done() and not key.cancelled()
    assert keys_waiting(mgr, e.handle) == []


async def _await(mgr: LocalEventSystem, e: object) -> None:
    await mgr.awaiter(e.handle)  # type: ignore[attr-defined]


async def test_cancel_with_a_message_unregisters_and_a_later_trigger_is_ignored() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    task = asyncio.create_task(_await(mgr, e))
    await until_waiting(mgr, e.handle)
    assert task.cancel("stop it")
    with pytest.raises(asyncio.CancelledError, match="stop it"):
        await task
    assert task.cancelled()
    assert keys_waiting(mgr, e.handle) == []
    assert mgr.poll(e.handle) is EventStatus.PENDING, "a cancelled wait leaves the event alone"
    e.trigger()
    assert mgr.poll(e.handle) is EventStatus.READY


async def test_asyncio_timeout_and_wait_for_end_the_wait_and_the_next_await_succeeds() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    awaiter = mgr.awaiter(e.handle)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await awaiter
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_await(mgr, e), 0.01)
    assert keys_waiting(mgr, e.handle) == []
    again = asyncio.create_task(asyncio.wait_for(_await_awaiter(awaiter), DEADLINE))
    await until_waiting(mgr, e.handle)
    e.trigger()
    await again
    assert again.result() is None
    assert "complete" in repr(awaiter)


async def _await_awaiter(awaiter: object) -> None:
    await awaiter  # type: ignore[misc]


async def test_gather_and_shield_see_the_outcome() -> None:
    mgr = LocalEventSystem()
    e, f = mgr.new_event(), mgr.new_event()
    gathered = asyncio.gather(_await(mgr, e), _await(mgr, e), _await(mgr, f))
    shielded = asyncio.create_task(_await(mgr, f))
    outer = asyncio.ensure_future(asyncio.shield(shielded))
    await until_waiting(mgr, e.handle, 2)
    await until_waiting(mgr, f.handle, 2)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert not shielded.done(), "shield keeps the inner wait"
    e.trigger()
    f.poison("broken")
    with pytest.raises(EventPoison, match="broken"):
        await asyncio.wait_for(gathered, DEADLINE)
    with pytest.raises(EventPoison, match="broken"):
        await asyncio.wait_for(shielded, DEADLINE)


async def test_a_wake_up_from_another_thread_resumes_the_task() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")

    async def wait_in_context() -> str:
        marker.set("mine")
        await mgr.awaiter(e.handle)
        return marker.get()

    task = asyncio.create_task(wait_in_context())
    await until_waiting(mgr, e.handle)
    thread = threading.Thread(target=e.trigger)
    thread.start()
    thread.join(DEADLINE)
    assert await asyncio.wait_for(task, DEADLINE) == "mine", "resumed in its own context"


async def test_a_closed_coroutine_unregisters_its_waiter() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    coroutine = _await(mgr, e)
    yielded = coroutine.send(None)  # what a task would get: the future it waits on
    assert asyncio.isfuture(yielded)
    assert len(keys_waiting(mgr, e.handle)) == 1
    coroutine.close()
    assert keys_waiting(mgr, e.handle) == []
    e.trigger()  # nobody is woken: the waiter is gone
    assert not yielded.done()


async def test_a_coroutine_resumed_by_no_task_is_told_so() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    coroutine = _await(mgr, e)
    coroutine.send(None)
    with pytest.raises(RuntimeError, match="await wasn't used with future"):
        coroutine.send(None)
    e.trigger()


class _Answerless:
    """An EventSource that can only say it could not learn the outcome (a lost owner)."""

    def __init__(self, core: object) -> None:
        self.core = core
        self.waiters: dict[Hashable, WakeCallback] = {}

    def awaitable(self, handle: EventHandle) -> Outcome:
        return PENDING

    def status(self, handle: EventHandle) -> Outcome:
        return PENDING

    def add_waiter(self, handle: EventHandle, key: Hashable, callback: WakeCallback) -> Outcome:
        self.waiters[key] = callback
        return PENDING

    def remove_waiter(self, handle: EventHandle, key: Hashable) -> None:
        self.waiters.pop(key, None)

    def check_inputs(self, handles: Iterable[EventHandle]) -> None:
        pass

    def lose_owner(self) -> None:
        waiters, self.waiters = self.waiters, {}
        for key, callback in waiters.items():
            callback(key, Unanswered("owner lost"))


async def test_an_unanswered_wait_is_not_remembered_and_a_poison_is() -> None:
    plain = LocalEventSystem()
    source = _Answerless(plain.core)
    mgr = CoreEventManager(plain.core, source)
    handle = plain.new_event().handle
    awaiter = mgr.awaiter(handle)
    task = asyncio.create_task(_await_awaiter(awaiter))
    await wait_until(lambda: bool(source.waiters), DEADLINE)
    source.lose_owner()
    with pytest.raises(OutcomeUnknown, match="owner lost"):
        await asyncio.wait_for(task, DEADLINE)
    task = asyncio.create_task(_await_awaiter(awaiter))  # asks again: a new waiter
    await wait_until(lambda: bool(source.waiters), DEADLINE)
    ((key, callback),) = source.waiters.items()
    callback(key, "disk full")
    with pytest.raises(EventPoison, match="disk full"):
        await asyncio.wait_for(task, DEADLINE)
    source.waiters.clear()
    with pytest.raises(EventPoison, match="disk full"):  # remembered: no waiter registered
        await asyncio.wait_for(_await_awaiter(awaiter), DEADLINE)
    assert not source.waiters
