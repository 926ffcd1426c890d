"""The core's identity shortcuts: ``trigger`` and ``add_waiter`` of the very handle object
``new_event`` just returned, and ``awaitable`` of the very object just triggered, skip the
128-bit arithmetic that finds a handle's slot; every other handle takes the full path, with
the same answers."""

from __future__ import annotations

import pytest

from velo_event import (
    AlreadyTriggeredError,
    EventHandle,
    ForeignHandleError,
    InvalidGenerationError,
)
from velo_event import _core as pure_core
from velo_event.lowlevel import PENDING, EventCore


def copy_of(handle: EventHandle) -> EventHandle:
    """An equal handle that is another object (as one read back from the wire would be)."""
    copy = EventHandle.from_bytes(handle.to_bytes())
    assert copy == handle and copy is not handle
    return copy


@pytest.mark.parametrize("local", [True, False])
def test_trigger_of_the_handle_just_issued_still_checks_its_generation(local: bool) -> None:
    core = EventCore(0x51, local=local)
    handle = core.new_event()
    core.trigger(handle)
    with pytest.raises(InvalidGenerationError):
        core.trigger(handle)  # the same object again: a double trigger
    with pytest.raises(InvalidGenerationError):
        core.trigger(copy_of(handle))
    with pytest.raises(AlreadyTriggeredError):
        core.poison(handle, "late")
    assert core.awaitable(handle) is None
    assert core.pending_count() == 0


def test_a_copy_and_an_older_handle_take_the_full_path_with_the_same_answers() -> None:
    core = EventCore(0x52, local=True)
    older, last = core.new_event(), core.new_event()
    core.trigger(copy_of(last))  # equal, not identical: the subtraction path
    assert core.awaitable(last) is None
    assert core.awaitable(older) is PENDING
    core.trigger(older)  # not the one last issued
    core.poison(core.new_event(), "boom")
    assert core.awaitable(older) is None  # the last triggered object
    assert core.awaitable(copy_of(older)) is None
    assert core.awaitable(last) is None  # triggered before the last one
    reused = core.new_event()  # a freed slot at its next generation
    assert core.awaitable(reused) is PENDING
    assert core.awaitable(reused.with_generation(reused.generation - 1)) is None


def test_the_last_triggered_handle_answers_ready_while_its_slot_moves_on() -> None:
    core = EventCore(0x53, local=False)
    handle = core.new_event()
    core.trigger(handle)
    for _ in range(3):  # the same slot, later generations: pending, then poisoned
        again = core.new_event()
        assert again.index == handle.index
        assert core.awaitable(again) is PENDING
        core.poison(again, "later")
        assert core.awaitable(again) == "later"
        assert core.awaitable(handle) is None


def test_another_cores_last_handle_is_still_refused() -> None:
    mine, theirs = EventCore(0x54, local=True), EventCore(0x55, local=True)
    handle = theirs.new_event()
    theirs.trigger(handle)  # their last issued and last triggered: known to them by identity
    mine.trigger(mine.new_event())  # mine know objects of their own
    with pytest.raises(ForeignHandleError):
        mine.trigger(handle)
    with pytest.raises(ForeignHandleError):
        mine.awaitable(handle)


def test_shutdown_poisons_the_handle_just_issued_and_its_trigger_is_refused() -> None:
    core = EventCore(0x56, local=True)
    handle = core.new_event()
    core.force_shutdown("closing")
    assert core.awaitable(handle) == "closing"
    with pytest.raises(InvalidGenerationError):
        core.trigger(handle)


class CountingHandle(EventHandle):
    """A handle that counts the arithmetic done on it."""

    __slots__ = ()
    subtractions = 0

    def __sub__(self, other: int) -> int:
        CountingHandle.subtractions += 1
        return int(self) - other


def test_trigger_and_await_of_the_handles_just_made_do_no_128_bit_subtraction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pure core (the compiled one keeps its handle class in a static): the ready-await
    path of ``new_event``, ``trigger``, ``awaitable`` finds the slot without arithmetic on
    the handle, which allocates a 128-bit int each time."""
    monkeypatch.setattr(pure_core, "_HANDLE", CountingHandle)
    monkeypatch.setattr(CountingHandle, "subtractions", 0)
    core = pure_core.EventCore(0x57, local=True)
    for _ in range(3):
        handle = core.new_event()
        assert type(handle) is CountingHandle
        core.trigger(handle)
        assert core.awaitable(handle) is None
    assert CountingHandle.subtractions == 0
    core.awaitable(CountingHandle(int(handle)))  # an equal copy: the full path, as before
    assert CountingHandle.subtractions == 1
    older = core.new_event()
    core.new_event()
    core.trigger(older)  # not the last issued: the full path
    assert CountingHandle.subtractions == 2


def test_a_waiter_on_the_handle_just_made_is_added_without_128_bit_subtraction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pending wake-up's path (create, then wait): ``add_waiter`` of the handle just
    issued finds its slot by identity. Fails before: one subtraction per wait."""
    monkeypatch.setattr(pure_core, "_HANDLE", CountingHandle)
    monkeypatch.setattr(CountingHandle, "subtractions", 0)
    core = pure_core.EventCore(0x58, local=True)
    woken: list[object] = []

    def wake(key: object, reason: object) -> None:
        woken.append(key)

    handle = core.new_event()
    assert core.add_waiter(handle, "first", wake) is pure_core.PENDING
    assert CountingHandle.subtractions == 0
    newest = core.new_event()
    # No longer the one just issued: the full path, to the same generation's waiters.
    assert core.add_waiter(handle, "second", wake) is pure_core.PENDING
    assert CountingHandle.subtractions == 1
    core.trigger(handle)  # not the one just issued either
    assert woken == ["first", "second"]
    assert CountingHandle.subtractions == 2
    core.trigger(newest)
    assert core.add_waiter(newest, "late", wake) is None  # complete: registered nowhere
    assert CountingHandle.subtractions == 2
    assert woken == ["first", "second"]


class Marker:
    """Records that it was freed."""

    freed = False

    def __del__(self) -> None:
        Marker.freed = True


class HandleWithState(EventHandle):
    """A caller's handle subclass with a ``__dict__``: freeing it runs code (its attributes'
    finalizers)."""


def test_the_core_keeps_no_handle_object_of_the_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    """``awaitable`` reads the kept triggered handle without the lock: were it a caller's
    object, replacing it could run the caller's code (here a finalizer) while a compiled reader
    holds the old pointer. Only the core's own objects are kept, so the caller's is freed at
    once."""
    monkeypatch.setattr(Marker, "freed", False)
    core = EventCore(0x58, local=True)
    handle = HandleWithState(int(core.new_event()))
    handle.marker = Marker()  # type: ignore[attr-defined]
    core.trigger(handle)
    assert core.awaitable(handle) is None
    del handle
    assert Marker.freed
