"""merge_events: the AND-gate, its reasons, fail_fast, DAGs, and its no-event-loop wiring
(docs/local-events.md §4 and §11.7). Most tests are plain synchronous code on purpose."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from typing import SupportsIndex

import pytest

from velo_event import (
    MAX_REASON_LENGTH,
    DistributedEventFactory,
    EventError,
    EventHandle,
    EventPoison,
    EventStatus,
    ForeignHandleError,
    LocalEventSystem,
    SystemShutdownError,
)
from velo_event._select import merge as merge_module  # white-box: the build in use
from velo_event._wake import waiter_keys  # white-box: a slot holds one waiter or a dict
from velo_event.lowlevel import merge_reason

PENDING, READY, POISONED = EventStatus.PENDING, EventStatus.READY, EventStatus.POISONED
CUT = "more characters cut]"
_Merge = merge_module._Merge  # a merge's bookkeeping


def waiter_count(mgr: LocalEventSystem, h: EventHandle) -> int:
    return len(waiter_keys(mgr._core._slots[h.index].waiters))


# -- the AND-gate ----------------------------------------------------------------------------


def test_merge_triggers_after_every_dependency() -> None:
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    m = mgr.merge_events([a.handle, b.handle])
    assert type(m) is EventHandle
    assert m.worker_id == mgr.system_id and m.is_local
    assert mgr.poll(m) is PENDING
    a.trigger()
    assert mgr.poll(m) is PENDING
    b.trigger()
    assert mgr.poll(m) is READY


async def test_merge_can_be_awaited() -> None:
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    m = mgr.merge_events(iter([a.handle, b.handle]))
    task = asyncio.ensure_future(mgr.awaiter(m))
    a.trigger()
    b.trigger()
    await asyncio.wait_for(task, 5)
    assert mgr.poll(m) is READY


async def test_poisoned_merge_raises_with_the_merged_handle() -> None:
    mgr = LocalEventSystem()
    a = mgr.new_event()
    m = mgr.merge_events([a.handle])
    a.poison("boom")
    with pytest.raises(EventPoison) as caught:
        await mgr.awaiter(m)
    assert caught.value.handle == m
    assert caught.value.reason == f"Merge dependency {a.handle} poisoned: boom"


def test_every_failure_is_collected_in_input_order() -> None:
    mgr = LocalEventSystem()
    a, b, c = mgr.new_event(), mgr.new_event(), mgr.new_event()
    m = mgr.merge_events([a.handle, b.handle, c.handle])
    b.poison("second failed")  # completes first, listed second
    c.trigger()
    a.poison("first failed")
    assert mgr.poison_reason(m) == (
        "Multiple merge dependencies failed:\n"
        f"Merge dependency {a.handle} poisoned: first failed\n"
        f"Merge dependency {b.handle} poisoned: second failed"
    )


def test_single_failure_is_wrapped_without_a_header() -> None:
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    m = mgr.merge_events([a.handle, b.handle])
    b.poison("x")
    a.trigger()
    assert mgr.poison_reason(m) == f"Merge dependency {b.handle} poisoned: x"


def test_empty_merge_is_refused() -> None:
    mgr = LocalEventSystem()
    with pytest.raises(EventError) as caught:
        mgr.merge_events([])
    assert type(caught.value) is EventError
    assert str(caught.value) == "Cannot merge empty event list"
    assert mgr._core.slot_count() == 0


def test_without_fail_fast_a_poison_waits_for_the_other_inputs() -> None:
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    m = mgr.merge_events([a.handle, b.handle])
    b.poison("b failed")
    assert mgr.poll(m) is PENDING
    a.trigger()
    assert mgr.poll(m) is POISONED


def test_already_triggered_inputs_make_a_ready_merge() -> None:
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    a.trigger()
    b.trigger()
    m = mgr.merge_events([a.handle, b.handle, a.handle.with_generation(0)])
    assert mgr.poll(m) is READY
    assert waiter_count(mgr, a.handle) == 0


def test_already_poisoned_input_poisons_the_merge_at_once_when_it_is_the_last() -> None:
    mgr = LocalEventSystem()
    a = mgr.new_event()
    a.poison("p")
    m = mgr.merge_events([a.handle])
    assert mgr.poison_reason(m) == f"Merge dependency {a.handle} poisoned: p"


def test_duplicates_count_once_per_occurrence() -> None:
    mgr = LocalEventSystem()
    a = mgr.new_event()
    m = mgr.merge_events([a.handle, a.handle])
    assert waiter_count(mgr, a.handle) == 2
    a.poison("p")
    line = f"Merge dependency {a.handle} poisoned: p"
    assert mgr.poison_reason(m) == f"Multiple merge dependencies failed:\n{line}\n{line}"
    ok = mgr.new_event()
    m2 = mgr.merge_events([ok.handle] * 3)
    ok.trigger()
    assert mgr.poll(m2) is READY


def test_merges_of_merges_nest_their_reasons() -> None:
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    m1 = mgr.merge_events([a.handle])
    m2 = mgr.merge_events([m1, b.handle])
    a.poison("boom")
    assert mgr.poll(m2) is PENDING
    b.trigger()
    assert mgr.poison_reason(m2) == (
        f"Merge dependency {m1} poisoned: Merge dependency {a.handle} poisoned: boom"
    )


def test_future_generation_input_fails_the_merge() -> None:
    mgr = LocalEventSystem()
    a = mgr.new_event()
    future = a.handle.with_generation(5)
    m = mgr.merge_events([future])
    assert mgr.poison_reason(m) == (
        f"Merge dependency {future} failed: "
        f"Invalid generation 5 for event {future}; active generation 1"
    )
    assert mgr.poll(a.handle) is PENDING
    assert waiter_count(mgr, a.handle) == 0


def test_unknown_input_of_this_system_fails_the_merge() -> None:
    mgr = LocalEventSystem()
    a = mgr.new_event()
    unknown = EventHandle.from_parts(mgr.system_id, 40, 1, local=True)
    m = mgr.merge_events([a.handle, unknown])
    assert mgr.poll(m) is PENDING  # still waits for a
    a.trigger()
    assert mgr.poison_reason(m) == (f"Merge dependency {unknown} failed: Unknown event {unknown}")


def test_stale_input_uses_its_own_generation_outcome() -> None:
    mgr = LocalEventSystem()
    a = mgr.new_event()
    a.poison("old")
    a2 = mgr.new_event()  # same slot, generation 2, pending
    assert a2.handle.index == a.handle.index
    m = mgr.merge_events([a.handle, a2.handle])
    a2.trigger()
    assert mgr.poison_reason(m) == f"Merge dependency {a.handle} poisoned: old"
    b = mgr.new_event()
    b.trigger()
    b2 = mgr.new_event()
    assert mgr.poll(mgr.merge_events([b.handle])) is READY
    assert mgr.poll(b2.handle) is PENDING


@pytest.mark.parametrize("completion", ["trigger", "poison"])
def test_merge_completed_by_hand_first_keeps_its_outcome(
    completion: str, caplog: pytest.LogCaptureFixture
) -> None:
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    m = mgr.merge_events([a.handle, b.handle])
    mgr.trigger(m)
    assert mgr.poll(m) is READY
    with caplog.at_level(logging.DEBUG, logger="velo_event"):
        if completion == "trigger":
            a.trigger()
            b.trigger()
        else:
            a.poison("too late")
            b.poison("too late")
    assert mgr.poll(m) is READY
    assert mgr.poison_reason(m) is None
    assert any("Failed to complete merged event" in r.getMessage() for r in caplog.records)
    assert all(r.levelno < logging.WARNING for r in caplog.records)


def test_merge_poisoned_by_hand_first_keeps_its_reason() -> None:
    mgr = LocalEventSystem()
    a = mgr.new_event()
    m = mgr.merge_events([a.handle])
    mgr.poison(m, "by hand")
    a.poison("later")
    assert mgr.poison_reason(m) == "by hand"


def test_merge_slot_reused_after_a_manual_trigger_is_not_touched() -> None:
    mgr = LocalEventSystem()
    a = mgr.new_event()
    m = mgr.merge_events([a.handle])
    mgr.trigger(m)
    reuse = mgr.new_event()
    assert reuse.handle == m.with_generation(2)
    a.poison("late")  # the merge tries to complete generation 1 only
    assert mgr.poll(reuse.handle) is PENDING


# -- cross-system and shutdown ---------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 1, 2])
def test_foreign_input_is_rejected_before_anything_is_created(position: int) -> None:
    mgr = LocalEventSystem()
    own = [mgr.new_event().handle, mgr.new_event().handle]
    foreign = DistributedEventFactory(0x30).event_manager().new_event().handle
    inputs = [*own[:position], foreign, *own[position:]]
    with pytest.raises(ForeignHandleError, match="belongs to system 0x30, not this system"):
        mgr.merge_events(inputs)
    assert mgr._core.slot_count() == 2
    assert all(waiter_count(mgr, h) == 0 for h in own)


def test_shutdown_poisons_pending_merges_and_refuses_new_ones() -> None:
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    b.trigger()
    m = mgr.merge_events([a.handle, b.handle])
    mgr.force_shutdown("shutting down")
    assert mgr.poison_reason(m) == "shutting down"
    assert mgr.poison_reason(a.handle) == "shutting down"
    with pytest.raises(SystemShutdownError, match="Event system shutdown in progress"):
        mgr.merge_events([b.handle])


# -- fail_fast -------------------------------------------------------------------------------


def test_fail_fast_poisons_at_the_first_poisoned_input() -> None:
    mgr = LocalEventSystem()
    a, b, c = mgr.new_event(), mgr.new_event(), mgr.new_event()
    m = mgr.merge_events([a.handle, b.handle, c.handle], fail_fast=True)
    a.trigger()
    assert mgr.poll(m) is PENDING
    c.poison("c broke")
    assert mgr.poison_reason(m) == f"Merge dependency {c.handle} poisoned: c broke"
    assert waiter_count(mgr, b.handle) == 0  # its waiter was dropped
    b.poison("b broke")
    assert mgr.poison_reason(m) == f"Merge dependency {c.handle} poisoned: c broke"


def test_fail_fast_with_an_already_poisoned_input_stops_wiring() -> None:
    mgr = LocalEventSystem()
    a, b, c = mgr.new_event(), mgr.new_event(), mgr.new_event()
    b.poison("early")
    m = mgr.merge_events([a.handle, b.handle, c.handle], fail_fast=True)
    assert mgr.poison_reason(m) == f"Merge dependency {b.handle} poisoned: early"
    assert waiter_count(mgr, a.handle) == 0
    assert waiter_count(mgr, c.handle) == 0


def test_fail_fast_with_an_invalid_input() -> None:
    mgr = LocalEventSystem()
    a = mgr.new_event()
    bad = a.handle.with_generation(3)
    m = mgr.merge_events([a.handle, bad], fail_fast=True)
    assert mgr.poison_reason(m) == (
        f"Merge dependency {bad} failed: Invalid generation 3 for event {bad}; active generation 1"
    )
    assert waiter_count(mgr, a.handle) == 0


def test_fail_fast_merge_triggers_when_everything_succeeds() -> None:
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    m = mgr.merge_events([a.handle, b.handle, a.handle], fail_fast=True)
    a.trigger()
    assert mgr.poll(m) is PENDING
    b.trigger()
    assert mgr.poll(m) is READY


# -- graphs, depth and size bounds -----------------------------------------------------------


def test_diamond_dag_thirty_levels_deep_has_a_bounded_reason() -> None:
    mgr = LocalEventSystem()
    bottom = mgr.new_event()
    level = bottom.handle
    for _ in range(30):
        level = mgr.merge_events([level, level])
    bottom.poison("boom")
    reason = mgr.poison_reason(level)
    assert reason is not None
    assert len(reason) <= MAX_REASON_LENGTH + 100
    assert reason.startswith("Multiple merge dependencies failed:\nMerge dependency ")
    assert "boom" in reason  # the root cause survives at the head


def test_wide_diamond_stays_bounded() -> None:
    mgr = LocalEventSystem()
    bottom = mgr.new_event()
    level = bottom.handle
    for _ in range(6):
        level = mgr.merge_events([level] * 8)
    bottom.poison("r" * 1000)
    reason = mgr.poison_reason(level)
    assert reason is not None
    assert len(reason) <= MAX_REASON_LENGTH + 100
    assert "r" * 1000 in reason


def test_deep_chain_completes_without_recursion() -> None:
    mgr = LocalEventSystem()
    bottom = mgr.new_event()
    chain = [bottom.handle]
    for _ in range(3000):
        chain.append(mgr.merge_events([chain[-1]]))
    bottom.trigger()
    assert mgr.poll(chain[-1]) is READY
    assert all(mgr.poll(h) is READY for h in chain)


def test_deep_poisoned_chain_has_a_bounded_reason_keeping_the_head() -> None:
    mgr = LocalEventSystem()
    bottom = mgr.new_event()
    chain = [bottom.handle]
    for _ in range(1000):
        chain.append(mgr.merge_events([chain[-1]]))
    bottom.poison("deep")
    reason = mgr.poison_reason(chain[-1])
    assert reason is not None
    assert len(reason) <= MAX_REASON_LENGTH + 100
    assert reason.startswith(f"Merge dependency {chain[-2]} poisoned: Merge dependency")
    assert reason.endswith(CUT)


def test_huge_first_failure_still_heads_a_multiple_reason() -> None:
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    m = mgr.merge_events([a.handle, b.handle])
    a.poison("A" * (MAX_REASON_LENGTH + 500))
    b.poison("small")
    reason = mgr.poison_reason(m)
    assert reason is not None
    head = f"Multiple merge dependencies failed:\nMerge dependency {a.handle} poisoned: AAAA"
    assert reason.startswith(head)
    assert len(reason) <= MAX_REASON_LENGTH + 100
    assert reason.endswith(CUT)


def test_many_failures_are_listed_up_to_the_cap() -> None:
    failures = [f"Merge dependency ev:1:{i}:1 poisoned: {'x' * 100}" for i in range(1000)]
    reason = merge_reason(failures)
    assert len(reason) <= MAX_REASON_LENGTH + 100
    lines = reason.split("\n")
    assert lines[0] == "Multiple merge dependencies failed:"
    shown = lines[1:-1]
    assert shown == failures[: len(shown)]
    assert lines[-1] == f"… and {1000 - len(shown)} more failed dependencies"
    assert merge_reason(["only"]) == "only"
    assert merge_reason(["a", "b"]) == "Multiple merge dependencies failed:\na\nb"


def test_large_merge() -> None:
    mgr = LocalEventSystem()
    events = [mgr.new_event() for _ in range(2000)]
    m = mgr.merge_events(e.handle for e in events)
    for e in events[:-1]:
        e.trigger()
    assert mgr.poll(m) is PENDING
    events[-1].trigger()
    assert mgr.poll(m) is READY


# -- concurrency of the wiring itself --------------------------------------------------------


def test_release_racing_another_release_still_completes_the_merge() -> None:
    """Fail-fast's release can run on two threads at once (the wiring loop and the input that
    decided). Simulate the other thread emptying the list between the check and the pop."""
    mgr = LocalEventSystem()
    a, b = mgr.new_event(), mgr.new_event()
    core = mgr._core

    class RacedList(list[tuple[EventHandle, Hashable]]):
        raced = False

        def pop(self, index: SupportsIndex = -1) -> tuple[EventHandle, Hashable]:
            if not self.raced:
                self.raced = True
                handle, key = super().pop()  # the other thread's pop
                core.remove_waiter(handle, key)
            return super().pop(index)

    merge = _Merge(core, [a.handle, b.handle], True, core.remove_waiter)
    assert core.add_waiter(a.handle, (merge, 0), merge.input_done) is not None
    merge.registered = RacedList([(a.handle, (merge, 0))])
    b.poison("b failed")
    merge.record(1, f"Merge dependency {b.handle} poisoned: b failed")
    assert mgr.poison_reason(merge.handle) == f"Merge dependency {b.handle} poisoned: b failed"
    assert waiter_count(mgr, a.handle) == 0
    assert not merge.registered
