"""velo_event.lowlevel, used the way a runtime on top of the core uses it: a manager whose
own events live in one core, and whose source answers for other systems' handles too."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable

import pytest

from velo_event import EventHandle, EventPoison, EventStatus, ForeignHandleError
from velo_event.lowlevel import (
    PENDING,
    CoreEventManager,
    EventCore,
    EventSource,
    Outcome,
    WakeCallback,
    merge_view,
    wake_waiters,
)


class TwoCores:
    """An EventSource that routes each handle to the core of its system id."""

    def __init__(self, *cores: EventCore) -> None:
        self.cores = {core.system_id: core for core in cores}

    def _core(self, handle: EventHandle) -> EventCore:
        core = self.cores.get(handle.worker_id)
        if core is None:
            raise ForeignHandleError(f"no core for {handle}")
        return core

    def awaitable(self, handle: EventHandle) -> Outcome:
        return self._core(handle).awaitable(handle)

    def status(self, handle: EventHandle) -> Outcome:
        return self._core(handle).status(handle)

    def add_waiter(self, handle: EventHandle, key: Hashable, callback: WakeCallback) -> Outcome:
        return self._core(handle).add_waiter(handle, key, callback)

    def remove_waiter(self, handle: EventHandle, key: Hashable) -> None:
        self._core(handle).remove_waiter(handle, key)

    def check_inputs(self, handles: Iterable[EventHandle]) -> None:
        for handle in handles:
            self._core(handle)


async def test_a_manager_with_a_source_of_its_own_awaits_and_merges_across_systems() -> None:
    mine, theirs = EventCore(0xA, local=False), EventCore(0xB, local=False)
    source: EventSource = TwoCores(mine, theirs)
    manager = CoreEventManager(mine, source)
    other = CoreEventManager(theirs)
    local, remote = manager.new_event(), other.new_event()
    merged = manager.merge_events([local.handle, remote.handle])
    assert merged.worker_id == 0xA, "new events live in the manager's own core"
    waiting = asyncio.ensure_future(manager.awaiter(remote.handle))
    await asyncio.sleep(0)
    (_, keys), *_ = [item for item in theirs.pending_waiters() if item[0] == remote.handle]
    views = [view for view in map(merge_view, keys) if view is not None]
    assert [view.handle for view, _ in views] == [merged], "inspection sees the merge"
    local.trigger()
    remote.poison("disk full")
    with pytest.raises(EventPoison, match="disk full"):
        await waiting
    assert manager.poll(merged) is EventStatus.POISONED
    assert "disk full" in (manager.poison_reason(merged) or "")
    with pytest.raises(ForeignHandleError):
        manager.merge_events([EventHandle.from_parts(0xC, 0, 1)])


def test_wake_waiters_runs_every_callback_even_after_one_fails() -> None:
    woken: list[tuple[Hashable, str | None]] = []

    def broken(key: Hashable, reason: str | None) -> None:
        raise RuntimeError("callback bug")

    wake_waiters({"a": broken, "b": lambda key, reason: woken.append((key, reason))}, "r")
    assert woken == [("b", "r")]
    assert PENDING is not None and repr(PENDING) == "PENDING"


def test_a_manager_completes_its_own_handles_in_its_core_and_hands_others_on() -> None:
    """The core's handles are completed in the core (in the compiled build, with no call
    through Python); any other goes to ``_trigger_elsewhere`` / ``_poison_elsewhere``, which
    refuse it unless a subclass that completes other systems' handles overrides them."""

    class Forwarding(CoreEventManager):
        def __init__(self, core: EventCore) -> None:
            super().__init__(core)
            self.forwarded: list[tuple[object, ...]] = []

        def _trigger_elsewhere(self, handle: EventHandle) -> None:
            self.forwarded.append(("trigger", handle))

        def _poison_elsewhere(self, handle: EventHandle, reason: str) -> None:
            self.forwarded.append(("poison", handle, reason))

    manager = Forwarding(EventCore(0xA, local=False))
    ready, failed = manager.new_event(), manager.new_event()
    theirs = EventHandle.from_parts(0xB, 0, 1)
    ready.trigger()
    failed.poison("disk full")
    manager.trigger(theirs)
    manager.poison(theirs, "why")
    assert manager.poll(ready.handle) is EventStatus.READY
    assert manager.poison_reason(failed.handle) == "disk full"
    assert manager.forwarded == [("trigger", theirs), ("poison", theirs, "why")]
    plain = CoreEventManager(EventCore(0xC, local=False))
    with pytest.raises(ForeignHandleError):
        plain.trigger(theirs)
    with pytest.raises(ForeignHandleError):
        plain.poison(theirs, "why")
