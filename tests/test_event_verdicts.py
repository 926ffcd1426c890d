"""One handle, one outcome: what a subscriber may conclude when its owner is lost, and how an
owner reads handles it has not issued (issue 11, items 4 and 5)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable
from typing import Any

import pytest
from support import FAKE_FAST, wait_until

from velo_am import ProtocolError, Worker
from velo_am.transport import FakeNetwork
from velo_event import (
    EventHandle,
    EventPoison,
    EventStatus,
    InvalidGenerationError,
    OutcomeUnknown,
    UnknownEventError,
)
from velo_event import _core as pure_core
from velo_event.lowlevel import LOOKAHEAD, PENDING, CoreEventManager, EventCore, Unanswered, Wake

STALE = "handle minted by an earlier incarnation of worker 0x2"


@pytest.fixture
async def pair(make_worker: Callable[..., Any]) -> tuple[Worker, Worker]:
    """Worker 1 (the subscriber) and worker 2 (the owner), connected."""
    a = await make_worker(1, forget_after=30.0)
    b = await make_worker(2, forget_after=30.0)
    await a.connect(b.address)
    return a, b


# -- item 4: a subscriber never invents an outcome --------------------------------------------


async def test_a_frozen_owner_leaves_one_outcome_for_every_observer(
    pair: tuple[Worker, Worker], network: FakeNetwork
) -> None:
    """Measured: a subscriber whose owner froze past the liveness window poisoned its waiters
    with "owner lost"; thawed, the owner triggered the same handle, and a new await returned
    READY: one handle, two answers. Now the waiters get ``OutcomeUnknown`` (no outcome), and
    every later question, on either side, gets the owner's one verdict."""
    a, b = pair
    event = b.events.new_event()
    handle = event.handle
    awaiter = a.events.awaiter(handle)
    waiter = asyncio.ensure_future(awaiter)
    merged = a.events.merge_events([handle])  # a's own event, over b's
    blocked: list[BaseException | None] = []

    def wait_in_thread() -> None:
        try:
            a.events.wait(handle, timeout=10)
            blocked.append(None)
        except Exception as error:
            blocked.append(error)

    thread = threading.Thread(target=wait_in_thread)
    thread.start()
    await wait_until(
        lambda: b.events.stats()["served"] == 1 and len(a.events.remote_waiters()[0][1]) == 3
    )

    network.filter = lambda address, frames: False  # b freezes: nothing in, nothing out
    with pytest.raises(OutcomeUnknown) as caught:
        await asyncio.wait_for(waiter, 5)
    assert caught.value.handle == handle
    assert caught.value.reason.startswith("owner lost: worker 0x2 at fake://")
    await asyncio.to_thread(thread.join, 5)
    assert len(blocked) == 1 and isinstance(blocked[0], OutcomeUnknown), blocked
    assert a.events.poll(handle) is EventStatus.PENDING  # nothing was recorded for b's handle
    # The merge is a's own event: it must complete, and it names the lost owner.
    merge_reason = a.events.poison_reason(merged)
    assert merge_reason is not None
    assert merge_reason.startswith(f"Merge dependency {handle} failed: owner lost: worker 0x2")

    network.filter = None  # thawed
    event.trigger()  # the owner's verdict, the only one
    await wait_until(lambda: a.peers[2].state == "alive", 10)
    assert await asyncio.wait_for(a.events.awaiter(handle), 5) is None
    assert await asyncio.wait_for(awaiter, 5) is None  # the same awaiter, asked again
    assert a.events.poll(handle) is EventStatus.READY
    assert await a.events.poll_remote(handle, timeout=5) is EventStatus.READY
    assert b.events.poll(handle) is EventStatus.READY
    assert a.events.poll(merged) is EventStatus.POISONED  # its verdict stands too


async def test_an_unreachable_owner_records_nothing_either(make_worker: Any) -> None:
    a = await make_worker(1)
    ghost = EventHandle.from_parts(0x77, 0, 5)
    with pytest.raises(OutcomeUnknown, match="owner unreachable: unknown worker 0x77"):
        await asyncio.wait_for(a.events.awaiter(ghost), 5)
    assert a.events.poll(ghost) is EventStatus.PENDING
    assert a.events.stats()["cached"] == 0


# -- item 5: generations an owner has not issued ------------------------------------------------


async def test_a_generation_not_issued_yet_is_pending_until_issued(
    pair: tuple[Worker, Worker],
) -> None:
    """Measured: awaiting the next generation of a slot (or a slot not allocated yet) was
    answered "minted by an earlier incarnation" and cached as POISONED, so once the owner
    issued and triggered it the subscriber still said POISONED. The owner now holds such a
    subscription until it issues and completes that generation."""
    a, b = pair
    first = b.events.new_event()
    first.trigger()
    next_generation = first.handle.with_generation(first.handle.generation + 1)
    next_slot = EventHandle.from_parts(2, first.handle.index + 1, first.handle.generation)
    waiters = [asyncio.ensure_future(a.events.awaiter(h)) for h in (next_generation, next_slot)]
    await wait_until(
        lambda: b.events.stats()["served"] == 2 or any(waiter.done() for waiter in waiters)
    )
    assert not any(waiter.done() for waiter in waiters), [w.exception() for w in waiters]
    assert a.events.poll(next_generation) is a.events.poll(next_slot) is EventStatus.PENDING
    assert await a.events.poll_remote(next_slot, timeout=5) is EventStatus.PENDING
    assert not any(waiter.done() for waiter in waiters)

    issued = b.events.new_event()  # the freed slot's next generation
    also = b.events.new_event()  # the next slot, at the first generation
    assert (issued.handle, also.handle) == (next_generation, next_slot)
    issued.trigger()
    also.poison("disk full")
    assert await asyncio.wait_for(waiters[0], 5) is None
    with pytest.raises(EventPoison, match="disk full"):
        await asyncio.wait_for(waiters[1], 5)
    assert a.events.poll(next_generation) is EventStatus.READY
    assert a.events.poll(next_slot) is EventStatus.POISONED


async def test_a_subscription_to_a_generation_never_issued_is_answered_when_the_owner_closes(
    pair: tuple[Worker, Worker],
) -> None:
    a, b = pair
    first = b.events.new_event()
    ahead = first.handle.with_generation(first.handle.generation + 2)
    waiter = asyncio.ensure_future(a.events.awaiter(ahead))
    await wait_until(lambda: b.events.stats()["served"] == 1)
    await b.close()
    with pytest.raises(EventPoison, match="worker 0x2 shutting down"):
        await asyncio.wait_for(waiter, 5)


async def test_status_of_a_colliding_predecessors_handle_is_stale_not_pending(
    pair: tuple[Worker, Worker],
) -> None:
    """Measured: with the 8-bit slot tags of two incarnations colliding (1 restart in 255),
    ``_ev.status`` answered PENDING for a predecessor's handle whose generation was ahead of
    the slot's. A generation this incarnation never issued, nor will soon, is stale: its
    outcome, if it had one, died with the predecessor, so it reads as unknown."""
    a, b = pair
    event = b.events.new_event()
    far = LOOKAHEAD + 1_000
    # What a predecessor with the same tag and a higher first generation minted:
    crafted = [
        event.handle.with_generation(event.handle.generation + far),  # an allocated slot
        EventHandle.from_parts(2, event.handle.index + 3, event.handle.generation + far),
    ]
    for handle in crafted:
        assert await a.events.poll_remote(handle, timeout=5) is EventStatus.UNKNOWN
        assert await a.events.status_remote(handle, timeout=5) == (EventStatus.UNKNOWN, STALE)
        assert a.events.poll(handle) is EventStatus.PENDING  # nothing recorded
        assert b.events.poll(handle) is EventStatus.UNKNOWN
        assert await a.call(2, "_ev.pending", [handle.to_bytes(), 10]) == [[], 0]
        with pytest.raises(OutcomeUnknown, match="earlier incarnation"):
            await asyncio.wait_for(a.events.awaiter(handle), 5)
        assert a.events.stats()["cached"] == 0
    assert await a.events.poll_remote(event.handle, timeout=5) is EventStatus.PENDING


# -- the core's rule, alone ---------------------------------------------------------------------


def tagged_core(first_generation: int = 1_000) -> EventCore:
    return EventCore(2, local=False, first_generation=first_generation, index_tag=7)


def test_a_tagged_core_reads_generations_within_the_lookahead_as_not_issued_yet() -> None:
    core = tagged_core()
    handle = core.new_event()
    core.trigger(handle)  # the slot's last generation: 1000
    assert core.status(handle.with_generation(1_000 + LOOKAHEAD)) is PENDING
    assert core.status(handle.with_generation(1_001 + LOOKAHEAD)) == core.stale
    unallocated = EventHandle.from_parts(2, handle.index + 1, 1_000)
    assert core.status(unallocated) is PENDING
    assert core.status(unallocated.with_generation(999 + LOOKAHEAD)) is PENDING
    assert core.status(unallocated.with_generation(1_000 + LOOKAHEAD)) == core.stale
    other_tag = EventHandle.from_parts(2, 0, 1_000)  # tag 0: another incarnation's
    assert core.status(other_tag) == core.stale
    predecessor = tagged_core(first_generation=1_000 + 10 * LOOKAHEAD)
    assert core.status(predecessor.new_event()) == core.stale


class _TriggeredBetweenReads(pure_core._Slot):
    """A slot whose pending generation is triggered (by another thread, as it were) right when
    ``status`` reads ``active``: after it read ``last``, before it reads anything else."""

    __slots__ = ("_active", "armed")

    def __init__(self, slot: pure_core._Slot, trigger: Callable[[], None]) -> None:
        super().__init__(slot.last + 1)
        self._active = slot.active
        self.armed: Callable[[], None] | None = trigger

    @property
    def active(self) -> int:
        if self.armed is not None:
            trigger, self.armed = self.armed, None
            trigger()
        return self._active

    @active.setter
    def active(self, generation: int) -> None:
        self._active = generation


def test_a_generation_triggered_while_status_reads_it_is_ready_not_stale() -> None:
    # The pure core: a compiled one's slots are final classes (the compiled build is this same
    # source).
    core = pure_core.EventCore(2, local=False, first_generation=1_000, index_tag=7)
    handle = core.new_event()
    index = (handle - core._prefix) >> 32  # the slot's position, the tag aside
    core._slots[index] = _TriggeredBetweenReads(core._slots[index], lambda: core.trigger(handle))
    assert core.status(handle) is None  # ready; it read as another incarnation's before


def test_generation_zero_is_complete_for_the_owner_as_for_everyone() -> None:
    core = tagged_core()
    unallocated = EventHandle.from_parts(2, core.new_event().index + 1, 0)
    assert core.status(unallocated) is None
    assert core.add_early_waiter(unallocated, "early", lambda key, wake: None) is None


def test_an_untagged_core_keeps_every_future_generation_pending() -> None:
    core = EventCore(2, local=False)
    handle = core.new_event()
    assert core.status(handle.with_generation(handle.generation + 10 * LOOKAHEAD)) is PENDING


def test_early_waiters_move_to_their_generation_when_it_is_issued() -> None:
    core = tagged_core()
    woken: list[tuple[Hashable, Wake]] = []

    def wake(key: Hashable, reason: Wake) -> None:
        woken.append((key, reason))

    first = core.new_event()
    second = first.with_generation(first.generation + 1)
    with pytest.raises(InvalidGenerationError):  # a local await is refused at once
        core.add_waiter(second, "local", wake)
    assert core.add_early_waiter(second, "early", wake) is PENDING
    assert core.add_early_waiter(second, "dropped", wake) is PENDING
    core.remove_waiter(second, "dropped")
    far = first.with_generation(first.generation + LOOKAHEAD + 1)
    with pytest.raises(InvalidGenerationError):
        core.add_early_waiter(far, "stale", wake)
    core.trigger(first)
    assert woken == []
    assert core.new_event() == second
    core.poison(second, "bad input")
    assert woken == [("early", "bad input")]
    next_slot = EventHandle.from_parts(2, first.index + 1, first.generation)
    assert core.add_early_waiter(next_slot, "new slot", wake) is PENDING
    busy = core.new_event()  # the freed slot, reused
    assert core.new_event() == next_slot  # a slot allocated at the first generation
    core.trigger(next_slot)
    assert woken[-1] == ("new slot", None)
    core.trigger(busy)
    third = second.with_generation(second.generation + 3)
    unallocated = EventHandle.from_parts(2, first.index + 2, first.generation)
    assert core.add_early_waiter(third, "closing", wake) is PENDING
    assert core.add_early_waiter(unallocated, "closing too", wake) is PENDING
    core.force_shutdown("closing")
    assert woken[-2:] == [("closing", "closing"), ("closing too", "closing")]
    core.remove_waiter(unallocated, "closing too")  # woken already: harmless
    late = third.with_generation(third.generation + 1)
    assert core.add_early_waiter(late, "late", wake) == "closing"


def test_a_local_await_or_merge_of_an_earlier_incarnations_handle_reads_as_stale() -> None:
    # The soak (benchmarks/soak.py) found it: a merge made on a restarted worker over a
    # handle of its predecessor failed with "Unknown event …", naming no restart.
    earlier = EventCore(2, local=False, first_generation=1_000, index_tag=7)
    core = EventCore(2, local=False, first_generation=1_000 + 10 * LOOKAHEAD, index_tag=9)
    core.new_event()
    for handle in (earlier.new_event(), EventHandle.from_parts(2, 5, 1_000)):
        assert core.awaitable(handle) == core.stale
        assert core.add_waiter(handle, "merge", lambda key, wake: None) == core.stale
    # This incarnation's own tag, a slot not allocated yet: not issued, still refused.
    not_issued = EventHandle.from_parts(2, 9 << 23 | 5, 1_000 + 10 * LOOKAHEAD)
    with pytest.raises(UnknownEventError):
        core.awaitable(not_issued)
    with pytest.raises(UnknownEventError):
        core.add_waiter(not_issued, "merge", lambda key, wake: None)


# -- soak finding 4: a handle of an owner's earlier incarnation reads as unknown -----------------


def test_the_core_reads_an_earlier_incarnations_handle_as_unknown_not_poisoned() -> None:
    """Measured (soak): a restarted owner's core read its predecessor's handles as poisoned
    ("handle minted by an earlier incarnation"), a verdict, while a worker that learned one
    READY before the restart still said READY: two answers for one handle. The core now reads
    them as no outcome (``Unanswered``): awaits and waits raise ``OutcomeUnknown`` each time,
    ``poll`` says UNKNOWN, and a merge counts such an input as failed, naming why."""
    earlier = EventCore(2, local=False, first_generation=1_000, index_tag=7)
    ready = earlier.new_event()
    earlier.trigger(ready)  # READY for whoever learned it from the earlier incarnation
    core = EventCore(2, local=False, first_generation=1_000 + 10 * LOOKAHEAD, index_tag=9)
    manager = CoreEventManager(core)
    own = manager.new_event()
    own.trigger()
    handles = (ready, EventHandle.from_parts(2, 9 << 23, 1_000))  # another tag; a low generation
    for handle in handles:
        assert core.status(handle) == Unanswered(STALE)  # no outcome, not a poison
        assert core.status(handle) == core.stale
        assert core.awaitable(handle) == core.stale
        assert core.add_waiter(handle, "merge", lambda key, wake: None) == core.stale
        assert manager.poll(handle) is EventStatus.UNKNOWN
        assert manager.poison_reason(handle) is None
        with pytest.raises(OutcomeUnknown, match=STALE) as caught:
            manager.wait(handle, timeout=1)
        assert caught.value.handle == handle

        async def await_twice(handle: EventHandle = handle) -> None:
            awaiter = manager.awaiter(handle)
            for _ in range(2):  # no verdict is kept: each await asks again
                with pytest.raises(OutcomeUnknown, match=STALE):
                    await awaiter

        asyncio.run(await_twice())
        merged = manager.merge_events([own.handle, handle])
        assert manager.poll(merged) is EventStatus.POISONED  # the merge's own verdict
        assert manager.poison_reason(merged) == f"Merge dependency {handle} failed: {STALE}"


async def test_an_observer_and_a_first_asker_after_the_owners_restart_never_disagree(
    make_worker: Callable[..., Any], network: FakeNetwork
) -> None:
    """Measured (soak): worker 1 learned READY for worker 2's handle; worker 2 restarted; then
    worker 3, asking first, was told POISONED ("minted by an earlier incarnation") by the new
    incarnation, and cached it; ``poll_remote`` on worker 1 even overwrote its READY with it.
    The new incarnation now answers "unknown": worker 3 gets ``OutcomeUnknown`` and records
    nothing, worker 1 keeps READY, and nobody ever reads POISONED."""
    a = await make_worker(1, forget_after=30.0)
    c = await make_worker(3, forget_after=30.0)
    old = Worker(2, transport=network.transport("fake://owner"), **FAKE_FAST)
    await old.start()
    await a.connect(old.address)
    event = old.events.new_event()
    handle = event.handle
    waiter = asyncio.ensure_future(a.events.awaiter(handle))
    await wait_until(lambda: old.events.stats()["served"] == 1)
    event.trigger()
    assert await asyncio.wait_for(waiter, 5) is None  # worker 1 heard READY
    await old.close(grace=0)
    new = Worker(2, transport=network.transport("fake://owner"), **FAKE_FAST)
    await new.start()
    try:
        await c.connect(new.address)
        await a.connect(new.address)
        # The first asker, every way it may ask: no outcome, nothing recorded.
        with pytest.raises(OutcomeUnknown, match=STALE):
            await asyncio.wait_for(c.events.awaiter(handle), 5)
        with pytest.raises(OutcomeUnknown, match=STALE):
            await asyncio.to_thread(c.events.wait, handle, 5)
        assert await c.events.status_remote(handle, timeout=5) == (EventStatus.UNKNOWN, STALE)
        assert c.events.poll(handle) is EventStatus.PENDING
        assert c.events.stats()["cached"] == 0
        merged = c.events.merge_events([handle])  # worker 3's own event: a verdict of its own
        await wait_until(lambda: c.events.poll(merged) is not EventStatus.PENDING)
        assert c.events.poison_reason(merged) == f"Merge dependency {handle} failed: {STALE}"
        # The owner itself says the same.
        assert new.events.poll(handle) is EventStatus.UNKNOWN
        with pytest.raises(OutcomeUnknown, match=STALE):
            await new.events.awaiter(handle)
        # The observer that heard before keeps its answer, whatever it asks.
        assert await a.events.poll_remote(handle, timeout=5) is EventStatus.UNKNOWN
        assert a.events.poll(handle) is EventStatus.READY
        assert await asyncio.wait_for(a.events.awaiter(handle), 5) is None
    finally:
        await new.close(grace=0)


# -- review: a status answer is checked before it is remembered --------------------------------


@pytest.mark.parametrize(
    "reply",
    [[2, None], [1, "a reason"], [1, 7], [3, None], [9, None], ["READY"], [0, "pending?"]],
)
async def test_a_malformed_status_answer_is_refused_and_not_remembered(
    pair: tuple[Worker, Worker], reply: list[Any]
) -> None:
    """Measured: ``[POISONED, None]`` was remembered as READY, ``[READY, "a reason"]`` as a
    poison, an unknown code raised a bare ValueError. Now each is a ProtocolError and nothing
    is cached: the handle still reads as pending here."""
    a, b = pair
    handle = b.events.new_event().handle
    b._handlers.register("_ev.status", lambda *_: reply, ordered=False, replace=True, internal=True)
    with pytest.raises(ProtocolError, match=r"answered _ev\.status"):
        await a.events.status_remote(handle, timeout=5)
    assert a.events.poll(handle) is EventStatus.PENDING


async def test_a_remembered_verdict_is_kept_when_a_colliding_successor_answers(
    pair: tuple[Worker, Worker],
) -> None:
    """Measured: with the 8-bit tags of two incarnations colliding, the successor's verdict on
    the same handle replaced the one this worker held: its awaits returned READY after
    raising the poison. The first verdict stays."""
    a, b = pair
    event = b.events.new_event()
    event.poison("the predecessor's verdict")
    with pytest.raises(EventPoison, match="predecessor's"):
        await asyncio.wait_for(a.events.awaiter(event.handle), 5)
    successor = [1, None]  # READY, for a slot and generation its own event reused
    b._handlers.register(
        "_ev.status", lambda *_: successor, ordered=False, replace=True, internal=True
    )
    assert await a.events.status_remote(event.handle, timeout=5) == (EventStatus.READY, None)
    assert a.events.poll(event.handle) is EventStatus.POISONED
    with pytest.raises(EventPoison, match="predecessor's"):
        await asyncio.wait_for(a.events.awaiter(event.handle), 5)
