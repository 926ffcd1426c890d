"""EventGuard: poison on leaving a block or on garbage collection while armed, and the
finalizer's deferred poison when the system lock is busy."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable

import pytest

from velo_event import (
    DROPPED_REASON,
    MAX_REASON_LENGTH,
    EventError,
    EventGuard,
    EventHandle,
    EventManager,
    EventPoison,
    EventStatus,
    InvalidGenerationError,
    LocalEventSystem,
)
from velo_event import _manager as pure_manager
from velo_event._mutex import Mutex

PENDING, READY, POISONED = EventStatus.PENDING, EventStatus.READY, EventStatus.POISONED


# -- leaving a block -------------------------------------------------------------------------


def test_leaving_the_block_armed_poisons_with_the_drop_reason() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    with e.into_guard() as guard:
        assert isinstance(guard, EventGuard)
        assert guard.armed
        assert guard.handle == e.handle
        assert repr(guard) == f"<EventGuard {e.handle} armed>"
    assert not guard.armed
    assert repr(guard) == f"<EventGuard {e.handle} disarmed>"
    assert mgr.poison_reason(e.handle) == DROPPED_REASON == "event dropped without being triggered"
    with pytest.raises(EventPoison, match=DROPPED_REASON):
        mgr.wait(e.handle, timeout=0)


def test_custom_reason() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    with e.into_guard("custom drop reason"):
        pass
    assert mgr.poison_reason(e.handle) == "custom drop reason"


@pytest.mark.parametrize("custom", [None, "worker crashed"])
def test_leaving_by_an_exception_names_it_and_lets_it_through(custom: str | None) -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    with pytest.raises(ValueError, match="bad input"), e.into_guard(custom):
        raise ValueError("bad input")
    base = custom or DROPPED_REASON
    assert mgr.poison_reason(e.handle) == f"{base}: ValueError: bad input"


def test_trigger_inside_the_block() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    with e.into_guard() as guard:
        guard.trigger()
        assert not guard.armed
    assert mgr.poll(e.handle) is READY


def test_trigger_then_exception_keeps_the_trigger() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    with pytest.raises(RuntimeError), e.into_guard() as guard:
        guard.trigger()
        raise RuntimeError("after the trigger")
    assert mgr.poll(e.handle) is READY


def test_poison_inside_the_block_keeps_its_reason() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    with e.into_guard() as guard:
        guard.poison("chosen reason")
        assert not guard.armed
    assert mgr.poison_reason(e.handle) == "chosen reason"


def test_disarm_leaves_the_event_alone() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    with e.into_guard() as guard:
        assert guard.disarm() == e.handle
    assert mgr.poll(e.handle) is PENDING
    del guard
    gc.collect()
    assert mgr.poll(e.handle) is PENDING
    e.trigger()
    assert mgr.poll(e.handle) is READY


def test_completion_through_the_manager_first_wins_quietly() -> None:
    mgr = LocalEventSystem()
    triggered, poisoned = mgr.new_event(), mgr.new_event()
    with triggered.into_guard():
        mgr.trigger(triggered.handle)
    with poisoned.into_guard():
        mgr.poison(poisoned.handle, "r")
    assert mgr.poll(triggered.handle) is READY
    assert mgr.poison_reason(poisoned.handle) == "r"


def test_guard_never_touches_a_reused_slot() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    guard = e.into_guard()
    e.trigger()
    reuse = mgr.new_event()
    assert reuse.handle.index == e.handle.index
    with guard:
        pass
    del guard
    gc.collect()
    assert mgr.poll(reuse.handle) is PENDING
    assert mgr.poll(e.handle) is READY


def test_guard_trigger_after_completion_raises_and_disarms() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    guard = e.into_guard()
    e.poison("first")
    with pytest.raises(InvalidGenerationError):
        guard.trigger()
    assert not guard.armed
    assert mgr.poison_reason(e.handle) == "first"


def test_guard_reason_must_be_a_string() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    with pytest.raises(TypeError, match="str"):
        e.into_guard(42)  # type: ignore[arg-type]
    gc.collect()  # the half-built guard's finalizer must do nothing
    assert mgr.poll(e.handle) is PENDING


# -- garbage collection ----------------------------------------------------------------------


def test_collected_armed_guard_poisons() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    guard = e.into_guard()
    del guard
    gc.collect()
    assert mgr.poison_reason(e.handle) == DROPPED_REASON


def test_collected_guard_uses_its_custom_reason() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    e.into_guard("custom drop reason")  # dropped at once
    gc.collect()
    assert mgr.poison_reason(e.handle) == "custom drop reason"


def test_guard_in_a_reference_cycle_poisons_when_collected() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    cycle: list[object] = [e.into_guard()]
    cycle.append(cycle)
    del cycle
    assert mgr.poll(e.handle) is PENDING
    gc.collect()
    assert mgr.poison_reason(e.handle) == DROPPED_REASON


def test_collected_guard_reason_is_capped() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    e.into_guard("g" * (MAX_REASON_LENGTH + 7))
    gc.collect()
    assert mgr.poison_reason(e.handle) == "g" * MAX_REASON_LENGTH + "… [7 more characters cut]"


def test_collected_guards_of_completed_events_do_nothing() -> None:
    mgr = LocalEventSystem()
    a, b, c = mgr.new_event(), mgr.new_event(), mgr.new_event()
    guards = [a.into_guard(), b.into_guard(), c.into_guard()]
    guards[0].trigger()
    guards[1].poison("b")
    c.trigger()  # behind the guard's back: its finalizer's poison is refused quietly
    guards.clear()
    gc.collect()
    assert [mgr.poll(x.handle) for x in (a, b, c)] == [READY, POISONED, READY]
    assert mgr.poison_reason(b.handle) == "b"
    assert not mgr._core._deferred


def test_guards_across_a_shutdown() -> None:
    mgr = LocalEventSystem()
    a, b, c = mgr.new_event(), mgr.new_event(), mgr.new_event()
    ga, gb = a.into_guard(), b.into_guard()
    with c.into_guard():
        mgr.force_shutdown("shutdown")
    with pytest.raises(InvalidGenerationError, match="no active generation"):
        ga.trigger()
    del gb
    gc.collect()
    assert [mgr.poison_reason(x.handle) for x in (a, b, c)] == ["shutdown"] * 3


def test_default_finalizer_poison_never_raises() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    foreign = LocalEventSystem().new_event().handle
    EventManager.poison_from_finalizer(mgr, foreign, "ignored")  # the error is swallowed
    EventManager.poison_from_finalizer(mgr, e.handle, "through poison()")
    assert mgr.poison_reason(e.handle) == "through poison()"


def test_guard_collected_while_this_thread_holds_the_lock() -> None:
    """The collector can run a finalizer in the middle of an operation, lock held: the poison
    is deferred, never blocks, and lands once the lock is free."""
    mgr = LocalEventSystem()
    core = mgr._core
    e = mgr.new_event()
    guards = [e.into_guard()]
    core._lock.acquire()
    try:
        guards.clear()  # finalizer runs right here; a blocking acquire would deadlock
        assert list(core._deferred) == [(e.handle, DROPPED_REASON)]
    finally:
        core._lock.release()
    with pytest.raises(EventPoison, match=DROPPED_REASON):
        mgr.wait(e.handle, timeout=5)
    assert not core._deferred


# -- a finalizer's poison arriving while another operation holds the lock --------------------


class HookLock:
    """Wraps the system lock; runs ``hook`` once, just after an acquire, with the lock held:
    what a guard collected on another thread during that operation looks like."""

    def __init__(self, inner: Mutex) -> None:
        self.inner = inner
        self.hook: Callable[[], None] | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        acquired = self.inner.acquire(blocking, timeout)
        if acquired and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return acquired

    def release(self) -> None:
        self.inner.release()

    def give(self, token: object) -> None:
        """The hot operations' release (they put the lock's token back)."""
        self.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


# Every operation that takes the system lock. (poll, poison_reason and awaiter of a known
# handle read without it, so a finalizer never finds the lock busy during them.)
OPERATIONS: dict[str, Callable[[LocalEventSystem, EventHandle], object]] = {
    "trigger of a wrong generation": lambda mgr, h: mgr.trigger(h.with_generation(9)),
    "poison of a wrong generation": lambda mgr, h: mgr.poison(h.with_generation(9), "x"),
    "awaiter of a wrong generation": lambda mgr, h: mgr.awaiter(h.with_generation(9)),
    "poll of an unknown index": lambda mgr, h: mgr.poll(
        EventHandle.from_parts(h.worker_id, 99, 1, local=True)
    ),
    "merge with a foreign input": lambda mgr, h: mgr.merge_events(
        [h, LocalEventSystem().new_event().handle]
    ),
    "wait timing out": lambda mgr, h: mgr.wait(h, timeout=0),
    "trigger": lambda mgr, h: mgr.trigger(h),
    "new_event": lambda mgr, h: mgr.new_event(),
    "remove_waiter": lambda mgr, h: mgr._core.remove_waiter(h, "nobody"),
    "force_shutdown": lambda mgr, h: mgr.force_shutdown("shutdown"),
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_poison_deferred_during_any_operation_is_never_stranded(operation: str) -> None:
    """Whatever the operation that held the lock, and however it ended (result or error), the
    finalizer's poison must have landed when it returns: a poll-only observer would otherwise
    wait forever. The pure build's core only: the compiled core's lock is a native attribute
    typed ``Mutex``, which takes no stand-in (an interpreted subclass of the compiled
    ``Mutex`` cannot be instantiated); the next test is both builds' variant."""
    mgr = pure_manager.LocalEventSystem()
    guarded, other = mgr.new_event(), mgr.new_event()
    guards = [guarded.into_guard()]
    lock = HookLock(mgr._core._lock)
    lock.hook = guards.clear  # drops the last reference: the finalizer runs, lock busy
    mgr._core._lock = lock  # type: ignore[assignment]
    # The hot operations call the lock's methods bound once at creation: rebind them too.
    mgr._core._acquire, mgr._core._release = lock.acquire, lock.give
    with contextlib.suppress(EventError, TimeoutError):
        OPERATIONS[operation](mgr, other.handle)
    assert lock.hook is None, "the operation never took the lock"
    assert not mgr._core._deferred
    assert mgr.poll(guarded.handle) is POISONED
    expected = "shutdown" if operation == "force_shutdown" else DROPPED_REASON
    assert mgr.poison_reason(guarded.handle) == expected


@pytest.mark.parametrize("operation", OPERATIONS)
def test_poison_deferred_before_any_operation_lands_when_it_returns(operation: str) -> None:
    """Both builds (the one in use; CI runs both): a finalizer's poison deferred while the lock
    was held and left there by a bare release is drained by whichever operation takes the
    lock next, before it returns (by result or error). The compiled core's variant of the
    test above, with its own lock."""
    mgr = LocalEventSystem()
    core = mgr._core
    guarded, other = mgr.new_event(), mgr.new_event()
    guards = [guarded.into_guard()]
    with core._lock:  # a bare hold: its release drains nothing
        guards.clear()
    assert list(core._deferred) == [(guarded.handle, DROPPED_REASON)]
    with contextlib.suppress(EventError, TimeoutError):
        OPERATIONS[operation](mgr, other.handle)
    assert not core._deferred, "the operation returned with the poison still deferred"
    assert mgr.poll(guarded.handle) is POISONED
    expected = "shutdown" if operation == "force_shutdown" else DROPPED_REASON
    assert mgr.poison_reason(guarded.handle) == expected
