"""Single events: lifecycle, generations and recycling, errors, shutdown, asyncio awaiting and
blocking waits (docs/local-events.md §11.1-11.6 and §11.8)."""

from __future__ import annotations

import asyncio
import gc
import logging
import pickle
from collections.abc import Callable, Hashable

import pytest

from velo_event import (
    MAX_REASON_LENGTH,
    AlreadyTriggeredError,
    DistributedEventFactory,
    Event,
    EventAwaiter,
    EventError,
    EventHandle,
    EventPoison,
    EventStatus,
    ForeignHandleError,
    InvalidGenerationError,
    LocalEventSystem,
    SystemShutdownError,
    UnknownEventError,
)
from velo_event import _core as pure_core  # white-box: the pure core, for what only it allows
from velo_event._select import awaiter as awaiter_module  # white-box: the build in use
from velo_event._select import core as core_module
from velo_event._wake import waiter_keys  # white-box: a slot holds one waiter or a dict
from velo_event.lowlevel import PENDING as CORE_PENDING
from velo_event.lowlevel import (
    CoreEventManager,
    EventCore,
    Unanswered,
    Wake,
    WakeCallback,
    wake_future,
)

PENDING, READY, POISONED = EventStatus.PENDING, EventStatus.READY, EventStatus.POISONED
MAX_GEN = 2**32 - 1
READY_AWAITER = awaiter_module.READY_AWAITER  # the shared ready awaiter
_Slot = core_module._Slot  # a slot's fields


def slot_of(mgr: CoreEventManager, h: EventHandle) -> _Slot:
    return mgr._core._slots[h.index]


async def settle() -> None:
    """Let every ready task run until it blocks (no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def outcome_of(awaitable: EventAwaiter) -> str | None:
    """None when the awaiter resolves, the poison reason when it raises EventPoison."""
    try:
        await awaitable
    except EventPoison as poison:
        return poison.reason
    return None


# -- basic lifecycle (§11.1) -----------------------------------------------------------------


async def test_awaiter_resolves_after_trigger() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    task = asyncio.create_task(outcome_of(mgr.awaiter(e.handle)))
    await settle()
    assert not task.done()
    assert len(waiter_keys(slot_of(mgr, e.handle).waiters)) == 1
    e.trigger()
    assert await asyncio.wait_for(task, 5) is None
    assert mgr.poll(e.handle) is READY
    assert slot_of(mgr, e.handle).waiters is None


async def test_awaiter_of_triggered_event_is_ready_at_once() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    e.trigger()
    awaiter = mgr.awaiter(e.handle)
    assert awaiter is READY_AWAITER
    assert await awaiter is None  # type: ignore[func-returns-value]
    assert await awaiter is None  # type: ignore[func-returns-value]


async def test_poison_is_visible_to_awaiters() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    mgr.poison(e.handle, "boom")
    with pytest.raises(EventPoison) as caught:
        await mgr.awaiter(e.handle)
    assert caught.value.reason == "boom"
    assert caught.value.handle == e.handle
    assert str(caught.value) == f"Event {e.handle} poisoned: boom"
    assert caught.value.__cause__ is None


async def test_many_waiters_all_wake_once() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    tasks = [asyncio.create_task(outcome_of(e.awaiter())) for _ in range(8)]
    await settle()
    assert len(waiter_keys(slot_of(mgr, e.handle).waiters)) == 8
    e.trigger()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [None] * 8


async def test_many_waiters_all_see_the_poison() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    tasks = [asyncio.create_task(outcome_of(e.awaiter())) for _ in range(8)]
    await settle()
    e.poison("all of you")
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == ["all of you"] * 8


def test_poll_follows_the_manager_trigger() -> None:
    mgr = LocalEventSystem()
    h = mgr.new_event().handle  # the Event object is dropped at once
    assert mgr.poll(h) is PENDING
    mgr.trigger(h)
    assert mgr.poll(h) is READY


async def test_event_methods_route_to_the_manager() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    assert isinstance(e, Event)
    assert e.manager is mgr
    assert repr(e) == f"<Event {e.handle}>"
    awaiter = e.awaiter()
    assert awaiter.handle == e.handle
    assert repr(awaiter) == f"<EventAwaiter {e.handle} pending>"
    e.trigger()
    assert await outcome_of(awaiter) is None
    assert repr(awaiter) == f"<EventAwaiter {e.handle} complete>"
    assert await outcome_of(mgr.awaiter(e.handle)) is None


def test_an_awaiter_holding_no_outcome_reads_unknown() -> None:
    """Measured: its repr said "complete" for an awaiter that holds an ``Unanswered``."""
    handle = LocalEventSystem().new_event().handle
    awaiter = awaiter_module.EventAwaiter(
        handle, Unanswered("owner lost"), lambda *_: CORE_PENDING, lambda *_: None
    )
    assert repr(awaiter) == f"<EventAwaiter {handle} unknown>"


async def test_event_poison_directly() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    e.poison("explicit")
    assert await outcome_of(mgr.awaiter(e.handle)) == "explicit"
    assert mgr.poll(e.handle) is POISONED


def test_discarded_event_never_poisons_itself() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    h = e.handle
    del e
    gc.collect()
    assert mgr.poll(h) is PENDING
    assert mgr.poison_reason(h) is None
    mgr.trigger(h)
    assert mgr.poll(h) is READY


async def test_pending_awaiter_can_be_awaited_again() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    awaiter = e.awaiter()
    task = asyncio.create_task(outcome_of(awaiter))
    await settle()
    e.trigger()
    assert await asyncio.wait_for(task, 5) is None
    assert await outcome_of(awaiter) is None
    assert await outcome_of(awaiter) is None


async def test_poisoned_awaiter_raises_every_time() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    awaiter = e.awaiter()
    e.poison("again and again")
    for _ in range(3):
        assert await outcome_of(awaiter) == "again and again"


async def test_awaiter_created_pending_sees_a_trigger_before_its_await() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    awaiter = e.awaiter()
    e.trigger()
    assert await asyncio.wait_for(outcome_of(awaiter), 5) is None
    assert slot_of(mgr, e.handle).waiters is None


async def test_same_awaiter_shared_by_several_tasks() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    awaiter = e.awaiter()
    tasks = [asyncio.create_task(outcome_of(awaiter)) for _ in range(3)]
    await settle()
    assert len(waiter_keys(slot_of(mgr, e.handle).waiters)) == 3  # one registration per wait
    e.poison("shared")
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == ["shared"] * 3


# -- asyncio integration ---------------------------------------------------------------------


async def test_gather() -> None:
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    gathered = asyncio.ensure_future(asyncio.gather(a.awaiter(), b.awaiter()))
    await settle()
    assert not gathered.done()
    a.trigger()
    await settle()
    assert not gathered.done()
    b.trigger()
    assert list(await asyncio.wait_for(gathered, 5)) == [None, None]


async def test_gather_return_exceptions() -> None:
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    a.trigger()
    b.poison("b failed")
    results = await asyncio.gather(a.awaiter(), b.awaiter(), return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], EventPoison)
    assert results[1].reason == "b failed"


async def test_asyncio_wait_first_completed() -> None:
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    fa = asyncio.ensure_future(a.awaiter())
    fb = asyncio.ensure_future(b.awaiter())
    await settle()
    b.trigger()
    done, pending = await asyncio.wait({fa, fb}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert done == {fb} and pending == {fa}
    a.poison("late")
    done, pending = await asyncio.wait({fa}, timeout=5)
    assert done == {fa} and not pending
    assert isinstance(fa.exception(), EventPoison)


async def test_asyncio_timeout_leaves_the_event_pending_and_unregisters() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await e.awaiter()
    assert mgr.poll(e.handle) is PENDING
    assert not slot_of(mgr, e.handle).waiters
    e.trigger()
    assert await outcome_of(e.awaiter()) is None


async def test_wait_for_timeout_leaves_the_event_pending_and_unregisters() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    awaiter = e.awaiter()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(awaiter, 0.01)
    assert mgr.poll(e.handle) is PENDING
    assert not slot_of(mgr, e.handle).waiters
    e.poison("after the timeout")
    assert await asyncio.wait_for(outcome_of(awaiter), 5) == "after the timeout"


async def test_cancelled_task_unregisters_and_a_later_trigger_is_harmless(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    task = asyncio.create_task(outcome_of(e.awaiter()))
    await settle()
    assert len(waiter_keys(slot_of(mgr, e.handle).waiters)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert mgr.poll(e.handle) is PENDING
    assert not slot_of(mgr, e.handle).waiters
    with caplog.at_level(logging.DEBUG, logger="velo_event"):
        e.trigger()
        await settle()
    assert not caplog.records
    assert mgr.poll(e.handle) is READY


async def test_task_group() -> None:
    mgr = LocalEventSystem()
    events = [mgr.new_event() for _ in range(4)]
    results: list[str | None] = []

    async def waiter(e: Event) -> None:
        results.append(await outcome_of(e.awaiter()))

    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        for e in events:
            group.create_task(waiter(e))
        await settle()
        for e in events:
            e.trigger()
    assert results == [None] * 4


async def test_task_group_propagates_poison() -> None:
    mgr = LocalEventSystem()
    good, bad = mgr.new_event(), mgr.new_event()
    with pytest.raises(ExceptionGroup) as caught:
        async with asyncio.timeout(5), asyncio.TaskGroup() as group:
            group.create_task(asyncio.wait_for(good.awaiter(), 5))
            group.create_task(asyncio.wait_for(bad.awaiter(), 5))
            await settle()
            bad.poison("in a group")
    poisons = caught.value.exceptions
    assert len(poisons) == 1 and isinstance(poisons[0], EventPoison)
    assert poisons[0].reason == "in a group"
    assert mgr.poll(good.handle) is PENDING  # the sibling was cancelled, the event untouched
    assert not slot_of(mgr, good.handle).waiters


async def test_complete_event_is_awaited_without_a_future(monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = LocalEventSystem()
    ready, poisoned, pending = mgr.new_event(), mgr.new_event(), mgr.new_event()
    early = pending.awaiter()
    ready.trigger()
    poisoned.poison("p")
    pending.trigger()
    await early  # resolved through one future; later awaits must use the cached outcome

    def no_future() -> asyncio.Future[None]:
        raise AssertionError("a Future was created for a complete event")

    monkeypatch.setattr(asyncio.get_running_loop(), "create_future", no_future)
    await mgr.awaiter(ready.handle)
    await mgr.awaiter(ready.handle.with_generation(0))
    await early
    with pytest.raises(EventPoison):
        await mgr.awaiter(poisoned.handle)


async def test_trigger_from_a_loop_callback_resolves_the_waiter() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    task = asyncio.create_task(outcome_of(e.awaiter()))
    await settle()
    asyncio.get_running_loop().call_soon(e.trigger)
    assert await asyncio.wait_for(task, 5) is None


def test_wake_for_a_closed_loop_is_dropped_quietly(caplog: pytest.LogCaptureFixture) -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    loop = asyncio.new_event_loop()
    future: asyncio.Future[str | None] = loop.create_future()
    assert mgr._core.add_waiter(e.handle, future, wake_future) is not None
    loop.close()
    with caplog.at_level(logging.DEBUG, logger="velo_event"):
        e.trigger()
    assert not caplog.records
    assert not future.done()
    assert mgr.poll(e.handle) is READY


# -- blocking wait() from synchronous code ---------------------------------------------------


def test_wait_returns_or_raises_the_outcome() -> None:
    mgr = LocalEventSystem()
    ready, poisoned = mgr.new_event(), mgr.new_event()
    ready.trigger()
    poisoned.poison("no good")
    mgr.wait(ready.handle)
    mgr.wait(ready.handle, timeout=0)
    mgr.wait(ready.handle.with_generation(0), timeout=0)
    with pytest.raises(EventPoison) as caught:
        mgr.wait(poisoned.handle, timeout=1)
    assert (caught.value.handle, caught.value.reason) == (poisoned.handle, "no good")


@pytest.mark.parametrize("timeout", [0, -5, 0.001])
def test_wait_timeout_leaves_the_event_untouched(timeout: float) -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    with pytest.raises(TimeoutError, match="still pending"):
        mgr.wait(e.handle, timeout=timeout)
    assert mgr.poll(e.handle) is PENDING
    assert not slot_of(mgr, e.handle).waiters
    e.trigger()
    mgr.wait(e.handle, timeout=0)


def test_wait_rejects_bad_handles() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    with pytest.raises(InvalidGenerationError):
        mgr.wait(e.handle.with_generation(2), timeout=0)
    with pytest.raises(ForeignHandleError):
        mgr.wait(LocalEventSystem().new_event().handle, timeout=0)


async def test_wait_refuses_to_block_a_running_loop() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    with pytest.raises(EventError, match="running event loop"):
        mgr.wait(e.handle, timeout=0)
    assert slot_of(mgr, e.handle).waiters is None
    e.trigger()
    with pytest.raises(EventError, match="running event loop"):
        mgr.wait(e.handle)


@pytest.mark.parametrize("poisoned", [False, True])
def test_wait_timeout_racing_a_completion_reports_the_outcome(poisoned: bool) -> None:
    """The event completes after wait() timed out but before it unregistered, and the
    wake-up is still on its way (a waking thread busy with other waiters): wait() must report
    the recorded outcome, not "still pending"."""
    core = LocalEventSystem().core
    late_wakes: list[Callable[[], None]] = []

    class Racing:
        """The core as a source, whose wake-ups are held back and which completes the event
        right before the timed-out wait unregisters."""

        awaitable, status, check_inputs = core.awaitable, core.status, core.check_inputs

        def add_waiter(self, handle: EventHandle, key: Hashable, callback: WakeCallback) -> object:
            def delayed(k: Hashable, reason: Wake) -> None:
                late_wakes.append(lambda: callback(k, reason))

            return core.add_waiter(handle, key, delayed)

        def remove_waiter(self, handle: EventHandle, key: Hashable) -> None:
            if poisoned:
                e.poison("just in time")
            else:
                e.trigger()
            core.remove_waiter(handle, key)

    mgr = CoreEventManager(core, Racing())  # type: ignore[arg-type]
    e = mgr.new_event()
    if poisoned:
        with pytest.raises(EventPoison, match="just in time"):
            mgr.wait(e.handle, timeout=0)
    else:
        mgr.wait(e.handle, timeout=0)
    assert len(late_wakes) == 1
    late_wakes[0]()  # the late wake-up finds nobody waiting: harmless


# -- generations and recycling (§11.2) -------------------------------------------------------


async def test_slot_is_reused_with_the_next_generation() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    e.trigger()
    await e.awaiter()
    f = mgr.new_event()
    assert (f.handle.index, f.handle.generation) == (e.handle.index, e.handle.generation + 1)
    assert f.handle == e.handle.with_generation(2)


async def test_no_stale_completion_leaks_into_the_next_generation() -> None:
    mgr = LocalEventSystem()
    e1 = mgr.new_event()
    stale = e1.awaiter()  # kept alive, never awaited before the slot is reused
    e1.trigger()
    e2 = mgr.new_event()
    assert e2.handle.index == e1.handle.index
    task = asyncio.create_task(outcome_of(e2.awaiter()))
    await settle()
    assert not task.done()
    assert mgr.poll(e2.handle) is PENDING
    assert await outcome_of(stale) is None
    e2.trigger()
    assert await asyncio.wait_for(task, 5) is None


async def test_stale_waiter_resolves_after_generation_transition() -> None:
    mgr = LocalEventSystem()
    e1 = mgr.new_event()
    stale = e1.awaiter()
    e1.trigger()
    e2 = mgr.new_event()
    assert e2.handle.index == e1.handle.index
    assert await outcome_of(stale) is None
    assert mgr.poll(e2.handle) is PENDING


async def test_stale_poisoned_waiter_resolves_after_generation_transition() -> None:
    mgr = LocalEventSystem()
    e1 = mgr.new_event()
    stale = e1.awaiter()
    e1.poison("gen1 failed")
    e2 = mgr.new_event()
    e2.trigger()
    mgr.new_event()
    assert await outcome_of(stale) == "gen1 failed"
    assert await outcome_of(mgr.awaiter(e1.handle)) == "gen1 failed"


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_free_list_is_fifo(order: str) -> None:
    mgr = LocalEventSystem()
    events = {"a": mgr.new_event(), "b": mgr.new_event()}
    for name in order:
        events[name].trigger()
    first, second = mgr.new_event(), mgr.new_event()
    assert first.handle == events[order[0]].handle.with_generation(2)
    assert second.handle == events[order[1]].handle.with_generation(2)
    third = mgr.new_event()
    assert (third.handle.index, third.handle.generation) == (2, 1)
    assert mgr._core.slot_count() == 3


async def test_every_past_generation_keeps_its_own_outcome() -> None:
    mgr = LocalEventSystem()
    g1 = mgr.new_event()
    g1.poison("x")
    g2 = mgr.new_event()
    g2.trigger()
    g3 = mgr.new_event()
    assert g1.handle.index == g2.handle.index == g3.handle.index
    assert [g.handle.generation for g in (g1, g2, g3)] == [1, 2, 3]
    assert [mgr.poll(g.handle) for g in (g1, g2, g3)] == [POISONED, READY, PENDING]
    assert mgr.poison_reason(g1.handle) == "x"
    assert mgr.poison_reason(g2.handle) is None
    assert await outcome_of(mgr.awaiter(g1.handle)) == "x"
    assert await outcome_of(mgr.awaiter(g2.handle)) is None
    g3.trigger()
    assert await outcome_of(mgr.awaiter(g1.handle)) == "x"  # history is never pruned


def test_future_generation_polls_pending_but_cannot_be_awaited() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    h99 = e.handle.with_generation(99)
    assert mgr.poll(h99) is PENDING
    message = f"Invalid generation 99 for event {h99}; active generation 1"
    with pytest.raises(InvalidGenerationError) as caught:
        mgr.awaiter(h99)
    assert str(caught.value) == message
    with pytest.raises(InvalidGenerationError, match="active generation 1"):
        mgr.trigger(h99)
    with pytest.raises(InvalidGenerationError, match="active generation 1"):
        mgr.poison(h99, "no")
    assert mgr.poll(e.handle) is PENDING
    e.trigger()
    with pytest.raises(InvalidGenerationError, match="no active generation"):
        mgr.awaiter(h99)
    assert mgr.poll(h99) is PENDING


async def test_generation_zero_is_always_ready() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    h0 = e.handle.with_generation(0)
    assert mgr.poll(h0) is READY
    assert mgr.awaiter(h0) is READY_AWAITER
    assert await outcome_of(mgr.awaiter(h0)) is None
    with pytest.raises(AlreadyTriggeredError, match="generation 0 already completed successfully"):
        mgr.poison(h0, "too late")
    with pytest.raises(InvalidGenerationError, match="Invalid generation 0"):
        mgr.trigger(h0)
    assert mgr.poll(e.handle) is PENDING


@pytest.mark.parametrize("complete", ["trigger", "poison"])
def test_a_slot_retired_by_its_last_generation_is_not_counted_pending(complete: str) -> None:
    mgr = LocalEventSystem()
    first = mgr.new_event()
    first.trigger()
    slot_of(mgr, first.handle).last = MAX_GEN - 1
    top = mgr.new_event()
    assert mgr.core.pending_count() == 1
    if complete == "trigger":
        top.trigger()
    else:
        top.poison("last words")
    assert mgr.core.pending_count() == 0


def test_highest_generation_is_issued_and_then_the_slot_retires() -> None:
    mgr = LocalEventSystem()
    core = mgr._core
    first = mgr.new_event()
    first.trigger()
    slot_of(mgr, first.handle).last = MAX_GEN - 1
    top = mgr.new_event()
    assert top.handle.index == first.handle.index
    assert top.handle.generation == MAX_GEN
    top.trigger()
    assert first.handle.index not in core._free
    fresh = mgr.new_event()
    assert fresh.handle.index != first.handle.index
    assert fresh.handle.generation == 1
    assert core.slot_count() == 2
    # The retired slot keeps answering for its old handles.
    assert mgr.poll(first.handle) is READY
    assert mgr.poll(top.handle) is READY
    assert mgr.awaiter(top.handle) is READY_AWAITER
    with pytest.raises(InvalidGenerationError, match="no active generation"):
        mgr.trigger(top.handle)
    fresh.trigger()
    assert mgr.new_event().handle == fresh.handle.with_generation(2)  # retired one never again


async def test_retiring_poison_wakes_waiters_and_keeps_the_reason() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    e.trigger()
    slot_of(mgr, e.handle).last = MAX_GEN - 1
    top = mgr.new_event()
    task = asyncio.create_task(outcome_of(top.awaiter()))
    await settle()
    top.poison("last words")
    assert await asyncio.wait_for(task, 5) == "last words"
    assert mgr.poison_reason(top.handle) == "last words"
    assert mgr.new_event().handle.index != e.handle.index


def test_index_space_exhaustion() -> None:
    mgr = LocalEventSystem()
    mgr._core._max_index = 1
    a, _b = mgr.new_event(), mgr.new_event()
    with pytest.raises(EventError, match=r"^Local event index space exhausted \(2 entries\)$"):
        mgr.new_event()
    a.trigger()
    assert mgr.new_event().handle == a.handle.with_generation(2)  # recycling still works
    with pytest.raises(EventError, match="exhausted"):
        mgr.new_event()


def test_default_index_space_matches_upstream() -> None:
    # A slot list that claims to be full: the pure core's, as a compiled core reads a list's
    # length natively (the compiled build is this same source).
    class Full(list[pure_core._Slot]):
        def __len__(self) -> int:
            return 2**31 - 1

    core = pure_core.EventCore(1, local=True)
    core._slots = Full()
    with pytest.raises(EventError, match=r"exhausted \(2147483647 entries\)"):
        core.new_event()


# -- double completion and the error asymmetry (§11.3) ---------------------------------------


def test_double_trigger() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    e.trigger()
    with pytest.raises(InvalidGenerationError) as caught:
        mgr.trigger(e.handle)
    assert str(caught.value) == f"Invalid generation 1 for event {e.handle}; no active generation"
    with pytest.raises(InvalidGenerationError):
        e.trigger()  # an Event is not consumed: the system answers
    assert mgr.poll(e.handle) is READY


def test_trigger_after_poison_is_an_invalid_generation() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    e.poison("first")
    with pytest.raises(InvalidGenerationError, match="no active generation"):
        mgr.trigger(e.handle)
    assert mgr.poll(e.handle) is POISONED
    assert mgr.poison_reason(e.handle) == "first"


def test_poison_after_trigger_is_refused() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    e.trigger()
    with pytest.raises(AlreadyTriggeredError) as caught:
        mgr.poison(e.handle, "late")
    assert str(caught.value) == f"Event {e.handle} generation 1 already completed successfully"
    assert mgr.poll(e.handle) is READY
    assert mgr.poison_reason(e.handle) is None


async def test_second_poison_is_a_no_op_and_the_first_reason_stands() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    e.poison("first")
    mgr.poison(e.handle, "second")
    e.poison("third")
    assert mgr.poison_reason(e.handle) == "first"
    assert await outcome_of(e.awaiter()) == "first"
    f = mgr.new_event()
    assert f.handle == e.handle.with_generation(2)  # the slot was freed once, not twice
    assert mgr.new_event().handle.index != f.handle.index


def test_old_generation_cannot_complete_the_reused_slot() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    e.trigger()
    f = mgr.new_event()
    with pytest.raises(InvalidGenerationError) as caught:
        mgr.trigger(e.handle)
    assert str(caught.value) == f"Invalid generation 1 for event {e.handle}; active generation 2"
    with pytest.raises(AlreadyTriggeredError):
        mgr.poison(e.handle, "old")
    assert mgr.poll(f.handle) is PENDING
    f.poison("f")
    g = mgr.new_event()
    mgr.poison(f.handle, "again")  # poisoned generation: no-op, never touches g
    assert mgr.poll(g.handle) is PENDING
    assert mgr.poison_reason(f.handle) == "f"


def test_poison_reason_must_be_a_string() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    with pytest.raises(TypeError, match="str"):
        mgr.poison(e.handle, 42)  # type: ignore[arg-type]
    assert mgr.poll(e.handle) is PENDING


# -- unknown handles and cross-system validation (§11.4, §11.5) ------------------------------


def _unknown_handles(mgr: LocalEventSystem) -> list[EventHandle]:
    h = mgr.new_event().handle
    return [
        EventHandle.from_parts(h.worker_id, 5, 1, local=True),  # index never allocated
        EventHandle.from_parts(h.worker_id, 0, 1, local=False),  # local flag missing
    ]


def test_unknown_index_of_this_system() -> None:
    mgr = LocalEventSystem()
    for h in _unknown_handles(mgr):
        message = f"^Unknown event {h}$"
        with pytest.raises(UnknownEventError, match=message):
            mgr.trigger(h)
        with pytest.raises(UnknownEventError, match=message):
            mgr.poison(h, "x")
        with pytest.raises(UnknownEventError, match=message):
            mgr.awaiter(h)
        with pytest.raises(UnknownEventError, match=message):
            mgr.poll(h)
        with pytest.raises(UnknownEventError, match=message):
            mgr.wait(h, timeout=0)
    assert mgr._core.slot_count() == 1


def _systems() -> dict[str, CoreEventManager]:
    return {
        "local": LocalEventSystem(),
        "local2": LocalEventSystem(),
        "dist10": DistributedEventFactory(0x10).event_manager(),
        "dist20": DistributedEventFactory(0x20).event_manager(),
    }


@pytest.mark.parametrize(
    ("owner", "other"),
    [("local", "local2"), ("local", "dist10"), ("dist20", "local"), ("dist10", "dist20")],
)
@pytest.mark.parametrize("operation", ["awaiter", "trigger", "poison", "poll", "wait", "reason"])
def test_cross_system_handles_are_rejected(owner: str, other: str, operation: str) -> None:
    systems = _systems()
    h = systems[owner].new_event().handle
    mgr = systems[other]
    calls: dict[str, Callable[[], object]] = {
        "awaiter": lambda: mgr.awaiter(h),
        "trigger": lambda: mgr.trigger(h),
        "poison": lambda: mgr.poison(h, "bad"),
        "poll": lambda: mgr.poll(h),
        "wait": lambda: mgr.wait(h, timeout=0),
        "reason": lambda: mgr.poison_reason(h),
    }
    with pytest.raises(ForeignHandleError) as caught:
        calls[operation]()
    assert str(caught.value) == (
        f"Handle {h} belongs to system {hex(h.worker_id)}, not this system {hex(mgr.system_id)}"
    )
    assert systems[owner].poll(h) is PENDING


def test_manager_handle_of_same_id_but_other_kind_is_unknown() -> None:
    # A distributed manager with the id of a local system: same worker id, other flag.
    local = LocalEventSystem()
    h = local.new_event().handle
    twin = DistributedEventFactory(local.system_id).event_manager()
    twin.new_event()
    with pytest.raises(UnknownEventError):
        twin.trigger(h)
    assert local.poll(h) is PENDING


# -- poison details (§11.6) ------------------------------------------------------------------


def test_event_poison_exception() -> None:
    h = EventHandle.from_parts(0x42, 0, 1)
    poison = EventPoison(h, "test reason")
    assert isinstance(poison, EventError)
    assert (poison.handle, poison.reason) == (h, "test reason")
    assert str(poison) == "Event ev:42:0:1 poisoned: test reason"
    assert poison.__cause__ is None and poison.__context__ is None
    back = pickle.loads(pickle.dumps(poison))
    assert type(back) is EventPoison
    assert (back.handle, back.reason, str(back)) == (h, "test reason", str(poison))


def test_error_hierarchy() -> None:
    for error in (
        ForeignHandleError,
        UnknownEventError,
        InvalidGenerationError,
        AlreadyTriggeredError,
        SystemShutdownError,
        EventPoison,
    ):
        assert issubclass(error, EventError)
    assert issubclass(EventError, Exception)


def test_poison_reason_accessor() -> None:
    mgr = LocalEventSystem()
    pending, ready, poisoned = mgr.new_event(), mgr.new_event(), mgr.new_event()
    ready.trigger()
    poisoned.poison("oops")
    assert mgr.poison_reason(pending.handle) is None
    assert mgr.poison_reason(ready.handle) is None
    assert mgr.poison_reason(poisoned.handle) == "oops"
    assert mgr.poison_reason(poisoned.handle.with_generation(7)) is None


async def test_long_reasons_are_capped_keeping_the_head() -> None:
    mgr = LocalEventSystem()
    exact, long = mgr.new_event(), mgr.new_event()
    exact.poison("e" * MAX_REASON_LENGTH)
    assert mgr.poison_reason(exact.handle) == "e" * MAX_REASON_LENGTH
    text = "".join(chr(ord("a") + i % 26) for i in range(MAX_REASON_LENGTH + 1234))
    long.poison(text)
    expected = text[:MAX_REASON_LENGTH] + "… [1234 more characters cut]"
    assert mgr.poison_reason(long.handle) == expected
    assert await outcome_of(long.awaiter()) == expected


def test_poison_reason_may_be_empty() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    e.poison("")
    assert mgr.poll(e.handle) is POISONED
    assert mgr.poison_reason(e.handle) == ""
    with pytest.raises(EventPoison) as caught:
        mgr.wait(e.handle)
    assert caught.value.reason == ""


# -- force_shutdown (§11.8) ------------------------------------------------------------------


async def test_shutdown_poisons_pending_waiters_with_exactly_the_reason() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    task = asyncio.create_task(outcome_of(e.awaiter()))
    await settle()
    mgr.force_shutdown("shutdown")
    assert await asyncio.wait_for(task, 5) == "shutdown"
    assert mgr.poison_reason(e.handle) == "shutdown"


async def test_shutdown_refuses_new_events() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    mgr.force_shutdown("going away")
    with pytest.raises(SystemShutdownError) as caught:
        mgr.new_event()
    assert str(caught.value) == "Event system shutdown in progress"
    assert await outcome_of(e.awaiter()) == "going away"


def test_shutdown_is_idempotent_and_the_first_reason_stands() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    mgr.force_shutdown("first")
    mgr.force_shutdown("second")
    assert mgr.poison_reason(e.handle) == "first"
    assert mgr._core.shutdown_reason == "first"
    with pytest.raises(SystemShutdownError):
        mgr.new_event()


async def test_shutdown_leaves_completed_generations_alone() -> None:
    mgr = LocalEventSystem()
    ready, poisoned, pending = mgr.new_event(), mgr.new_event(), mgr.new_event()
    ready.trigger()
    poisoned.poison("earlier")
    mgr.force_shutdown("shutdown")
    assert mgr.poll(ready.handle) is READY
    assert await outcome_of(mgr.awaiter(ready.handle)) is None
    assert mgr.poison_reason(poisoned.handle) == "earlier"
    assert mgr.poison_reason(pending.handle) == "shutdown"
    assert await outcome_of(mgr.awaiter(pending.handle)) == "shutdown"


def test_existing_handles_keep_working_after_shutdown() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    mgr.force_shutdown("bye")
    with pytest.raises(InvalidGenerationError, match="no active generation"):
        e.trigger()
    e.poison("ignored")  # already poisoned: no-op
    assert mgr.poison_reason(e.handle) == "bye"
    assert mgr.poll(e.handle) is POISONED
    assert not mgr._core._free
    with pytest.raises(EventPoison, match="bye"):
        mgr.wait(e.handle, timeout=0)


def test_shutdown_reason_is_capped() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    mgr.force_shutdown("s" * (MAX_REASON_LENGTH + 10))
    reason = mgr.poison_reason(e.handle)
    assert reason == "s" * MAX_REASON_LENGTH + "… [10 more characters cut]"


# -- internals worth pinning -----------------------------------------------------------------


def test_failing_wake_callback_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    woken: list[tuple[Hashable, str | None]] = []

    def broken(key: Hashable, reason: str | None) -> None:
        raise RuntimeError("callback broke")

    assert mgr._core.add_waiter(e.handle, "first", broken) is CORE_PENDING
    assert mgr._core.add_waiter(e.handle, "second", lambda k, r: woken.append((k, r))) is (
        CORE_PENDING
    )
    with caplog.at_level(logging.ERROR, logger="velo_event"):
        e.poison("r")
    assert woken == [("second", "r")]
    assert [r.getMessage() for r in caplog.records] == [f"event wake-up callback {broken!r} failed"]
    assert mgr.poison_reason(e.handle) == "r"


@pytest.mark.parametrize("system_id", [0, -1, 1 << 64])
def test_core_rejects_bad_system_ids(system_id: int) -> None:
    with pytest.raises(ValueError, match="non-zero 64-bit"):
        EventCore(system_id, local=True)


def test_reprs() -> None:
    mgr = LocalEventSystem()
    assert repr(mgr) == f"<LocalEventSystem system={mgr.system_id:#x}>"
    dist = DistributedEventFactory(0x42).event_manager()
    assert repr(dist) == "<CoreEventManager system=0x42>"
    assert repr(CORE_PENDING) == "PENDING"
