"""Issue 12, item 5: a timed-out wait says what is missing. ``EventTimeout`` (a
``TimeoutError``) names the events the awaited one still waits on: for a merge, its pending
inputs down to the events that hold it up, with labels, owners and the owners' liveness."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import FAKE_FAST, wait_until

from velo_am import HandlerNotFound, RemoteError, SyncWorker, Worker
from velo_am._waiting import Asker, ask_from_thread, ask_owners, encode_answer
from velo_am.transport import FakeNetwork
from velo_event import (
    DistributedEventFactory,
    EventAwaiter,
    EventError,
    EventHandle,
    EventPoison,
    EventStatus,
    EventTimeout,
    LocalEventSystem,
    PendingEvent,
)
from velo_event.lowlevel import (
    MAX_PENDING_SHOWN,
    PENDING,
    THIS_WORKER,
    UNKNOWN,
    WaitingOn,
    blocking_events,
    merge_of,
)

# -- velo_event: the local core -----------------------------------------------------------------


def test_wait_timeout_names_a_merges_pending_leaves_in_input_order() -> None:
    events = DistributedEventFactory(0xA).event_manager()
    done, failed, first, second, third = (events.new_event() for _ in range(5))
    inner = events.merge_events([second.handle, first.handle])
    merged = events.merge_events(
        [done.handle, first.handle, failed.handle, inner, third.handle, second.handle]
    )
    done.trigger()
    failed.poison("disk full")  # complete (poisoned): the merge waits on it no more

    started = time.monotonic()
    with pytest.raises(EventTimeout) as caught:
        events.wait(merged, timeout=0.05)
    assert time.monotonic() - started < 2, "the timeout path is prompt"
    error = caught.value
    assert isinstance(error, TimeoutError) and not isinstance(error, EventError)
    assert (error.handle, error.timeout, error.more) == (merged, 0.05, 0)
    # Depth first through the inner merge, each event once, in input order.
    assert [event.handle for event in error.pending] == [first.handle, second.handle, third.handle]
    assert error.pending[0] == PendingEvent(first.handle, 0xA, None, THIS_WORKER)
    assert str(error).splitlines() == [
        f"event {merged} still pending after 0.05 s, waiting on:",
        f"  {first.handle}, owner 0xa: this worker",
        f"  {second.handle}, owner 0xa: this worker",
        f"  {third.handle}, owner 0xa: this worker",
    ]
    assert events.poll(merged) is EventStatus.PENDING, "a timeout leaves the event untouched"


def test_a_timeout_names_at_most_ten_and_counts_the_rest() -> None:
    events = LocalEventSystem()
    inputs = [events.new_event() for _ in range(25)]
    merged = events.merge_events(event.handle for event in inputs)
    with pytest.raises(EventTimeout) as caught:
        events.wait(merged, timeout=0)
    assert len(caught.value.pending) == MAX_PENDING_SHOWN == 10
    assert caught.value.more == 15
    lines = str(caught.value).splitlines()
    assert lines[1] == f"  {inputs[0].handle}", "a LocalEventSystem's events have no other owner"
    assert lines[-1] == "  … and 15 more"
    assert len(lines) == 12


def test_a_plain_event_names_itself_and_its_owner() -> None:
    events = DistributedEventFactory(0xB).event_manager()
    event = events.new_event()
    with pytest.raises(EventTimeout) as caught:
        events.wait(event.handle, timeout=0.01)
    assert caught.value.pending == (PendingEvent(event.handle, 0xB, None, THIS_WORKER),)
    assert str(caught.value) == (
        f"event {event.handle} still pending after 0.01 s; owner 0xb: this worker"
    )


async def test_await_with_a_timeout_raises_event_timeout_and_unregisters() -> None:
    events = LocalEventSystem()
    first, second = events.new_event(), events.new_event()
    merged = events.merge_events([first.handle, second.handle])
    first.trigger()
    awaiter = events.awaiter(merged, timeout=0.05)
    with pytest.raises(EventTimeout) as caught:
        await awaiter
    assert [event.handle for event in caught.value.pending] == [second.handle]
    assert dict(events.core.pending_waiters())[merged] == [], "the timed-out waiter is gone"
    with pytest.raises(EventTimeout):  # each await has its own timeout
        await awaiter
    second.trigger()
    await asyncio.wait_for(events.awaiter(merged, timeout=5), 5)
    await awaiter  # complete now: no timeout, no wait


async def test_an_await_timeout_is_checked_at_once() -> None:
    events = LocalEventSystem()
    handle = events.new_event().handle
    with pytest.raises(TypeError, match="seconds"):
        events.awaiter(handle, timeout="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        events.awaiter(handle, timeout=float("nan"))
    with pytest.raises(EventTimeout, match="after 0 s"):
        await events.awaiter(handle, timeout=-1)  # already run out
    with pytest.raises(ValueError, match="expired"):
        EventAwaiter(handle, PENDING, events.core.add_waiter, events.core.remove_waiter, 1.0)


async def test_an_await_that_completes_as_it_expires_returns_its_outcome() -> None:
    """The waiter is removed when the timeout runs out; ``expired`` then says whether the
    generation completed meanwhile, and its outcome stands."""
    handle = EventHandle.from_parts(0xC, 0, 1)

    def never_woken(handle: EventHandle, key: object, callback: object) -> object:
        return PENDING

    def removed(handle: EventHandle, key: object) -> None:
        pass

    async def completed(handle: EventHandle, timeout: float) -> str | None:
        return None

    async def poisoned(handle: EventHandle, timeout: float) -> str | None:
        return "poisoned meanwhile"

    await EventAwaiter(handle, PENDING, never_woken, removed, 0, completed)  # type: ignore[arg-type]
    with pytest.raises(EventPoison, match="poisoned meanwhile"):
        await EventAwaiter(handle, PENDING, never_woken, removed, 0, poisoned)  # type: ignore[arg-type]


def test_event_timeout_pickles_with_its_records() -> None:
    handle = EventHandle.from_parts(0xA, 1, 5)
    pending = (PendingEvent(EventHandle.from_parts(0xB, 0, 3), 0xB, "weights", "lost", 0xA),)
    error = EventTimeout(handle, 1.5, pending, 3)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.handle, copy.timeout, copy.pending, copy.more) == (handle, 1.5, pending, 3)
    assert str(copy) == str(error)
    assert "weights (ev:b:0:3), owner 0xb: lost (as seen by worker 0xa)" in str(error)
    assert str(error).endswith("… and 3 more")


def test_blocking_events_walks_each_event_once() -> None:
    a, b, c, m, n = (EventHandle.from_parts(1, index, 1) for index in range(5))
    graph = {m: [a, n, b], n: [b, c, m]}  # a cycle cannot happen, and would not hang the walk
    assert blocking_events(m, graph.get) == [a, b, c]
    assert blocking_events(a, graph.get) == [a]
    assert blocking_events(m, {m: []}.get) == []


def test_a_merge_is_found_by_its_handle_while_pending_only() -> None:
    events = LocalEventSystem()
    first, second = events.new_event(), events.new_event()
    merged = events.merge_events([first.handle, second.handle, first.handle])
    first.trigger()
    view = merge_of(events.core, merged)
    assert view is not None and view.pending == frozenset({1})
    assert merge_of(events.core, first.handle) is None, "not a merge"
    second.trigger()
    assert merge_of(events.core, merged) is None, "completed"
    reused = events.new_event()  # may reuse the merge's slot: it is a plain event now
    assert events.waiting_on(reused.handle) == (
        (PendingEvent(reused.handle, reused.handle.worker_id, None, THIS_WORKER),),
        0,
    )
    assert events.waiting_on(merged) == ((), 0)


# -- velo_am: asking the owners (pure, with a scripted mesh) ----------------------------------


def _asker(
    answers: dict[tuple[int, EventHandle], Any], *, me: int = 0xC, known: dict[int, str]
) -> tuple[Asker, list[tuple[int, EventHandle]]]:
    """An asker for worker ``me`` that knows the liveness of ``known``, whose calls answer
    from ``answers`` (an exception is raised, ``...`` never answers)."""
    asked: list[tuple[int, EventHandle]] = []

    async def call(owner: int, name: str, payload: Any, timeout: float | None) -> Any:
        assert name == "_ev.pending"
        handle = EventHandle.from_bytes(payload[0])
        asked.append((owner, handle))
        answer = answers[owner, handle]
        if answer is ...:
            await asyncio.Event().wait()  # a busy owner: never answers
        if isinstance(answer, Exception):
            raise answer
        return answer

    def local(handle: EventHandle, limit: int) -> WaitingOn:
        return (PendingEvent(handle, me, None, THIS_WORKER),), 0

    asker = Asker(
        me,
        local,
        lambda worker: THIS_WORKER if worker == me else known.get(worker, UNKNOWN),
        lambda handle: "mine" if handle.worker_id == me else None,
        lambda worker: known.get(worker) == "alive",
        call,
    )
    return asker, asked


def _event(handle: EventHandle, liveness: str, label: str | None = None) -> PendingEvent:
    return PendingEvent(handle, handle.worker_id, label, liveness)


async def test_owners_are_asked_what_their_events_wait_on_across_hops() -> None:
    merge_a = EventHandle.from_parts(0xA, 9, 1)
    weights = EventHandle.from_parts(0xA, 1, 1)
    merge_b = EventHandle.from_parts(0xB, 9, 1)
    tokenizer = EventHandle.from_parts(0xB, 2, 1)
    far = EventHandle.from_parts(0xD, 3, 1)  # owned by a worker only 0xb knows
    mine = EventHandle.from_parts(0xC, 4, 1)
    answers = {
        (0xA, merge_a): encode_answer(
            (
                _event(weights, THIS_WORKER, "weights"),
                _event(merge_b, "alive"),
                _event(mine, "alive"),
            ),
            2,
        ),
        (0xB, merge_b): encode_answer(
            (_event(tokenizer, THIS_WORKER, "tokenizer"), _event(far, "lost")), 0
        ),
    }
    asker, asked = _asker(answers, known={0xA: "alive", 0xB: "alive"})
    shown, more = await ask_owners(asker, (_event(merge_a, "alive"),), 0, 10, 1.0)
    assert shown == (
        _event(weights, "alive", "weights"),  # this worker's view of 0xa: alive
        _event(tokenizer, "alive", "tokenizer"),
        PendingEvent(far, 0xD, None, "lost", seen_by=0xB),  # 0xd unknown here: 0xb's view
        _event(mine, THIS_WORKER, "mine"),  # this worker's own: its label, "this worker"
    )
    assert more == 2
    assert asked == [(0xA, merge_a), (0xB, merge_b)], "one call per event, nobody asked twice"


async def test_asking_is_bounded_and_never_fails_the_timeout() -> None:
    slow, broken, malformed, lost = (EventHandle.from_parts(w, 0, 1) for w in (0xA, 0xB, 0xE, 0xF))
    answers: dict[tuple[int, EventHandle], Any] = {
        (0xA, slow): ...,
        (0xB, broken): HandlerNotFound("an older worker: no _ev.pending"),
        (0xE, malformed): ["not", "an answer", "at all"],
    }
    asker, asked = _asker(answers, known={0xA: "alive", 0xB: "alive", 0xE: "alive", 0xF: "lost"})
    shown = tuple(
        _event(handle, liveness)
        for handle, liveness in (
            (slow, "alive"),
            (broken, "alive"),
            (malformed, "alive"),
            (lost, "lost"),
        )
    )
    started = time.monotonic()
    assert await ask_owners(asker, shown, 1, 10, 0.2) == (shown, 1), "what this worker sees"
    assert time.monotonic() - started < 1.5
    assert {owner for owner, _ in asked} == {0xA, 0xB, 0xE}, "a lost owner is not asked"


async def test_a_limit_bounds_what_answers_add() -> None:
    merge = EventHandle.from_parts(0xA, 9, 1)
    inputs = [EventHandle.from_parts(0xA, index, 1) for index in range(8)]
    answers = {(0xA, merge): encode_answer(tuple(_event(h, THIS_WORKER) for h in inputs), 4)}
    asker, _ = _asker(answers, known={0xA: "alive"})
    shown, more = await ask_owners(asker, (_event(merge, "alive"),), 0, 5, 1.0)
    assert [event.handle for event in shown] == inputs[:5]
    assert more == 4 + 3


# -- velo_am: workers on the fake network --------------------------------------------------------


@pytest.fixture
async def trio(network: FakeNetwork) -> Any:
    workers = []
    for worker_id in (1, 2, 3):
        worker = Worker(worker_id, transport=network.transport(), **FAKE_FAST)  # type: ignore[arg-type]
        await worker.start()
        for other in workers:
            await worker.connect(other.address)
        workers.append(worker)
    yield workers
    for worker in workers:
        await worker.close(grace=0)


async def test_a_merge_with_another_workers_input_names_its_label_and_liveness(trio: Any) -> None:
    one, two, three = trio
    done = one.events.new_event(label="config loaded")
    weights = one.events.new_event(label="weights")
    tokenizer = two.events.new_event(label="tokenizer")
    merged = one.events.merge_events(
        [done.handle, weights.handle, tokenizer.handle], label="serve ready"
    )
    done.trigger()
    await wait_until(lambda: two.events.stats()["served"] == 1)

    with pytest.raises(EventTimeout) as caught:
        await one.events.awaiter(merged, timeout=0.1)
    assert caught.value.pending == (
        PendingEvent(weights.handle, 1, "weights", THIS_WORKER),
        PendingEvent(tokenizer.handle, 2, "tokenizer", "alive"),  # asked of worker 2
    )

    # Worker 3 awaits worker 1's merge: worker 1 is asked what it waits on, then worker 2.
    with pytest.raises(EventTimeout) as caught:
        await three.events.awaiter(merged, timeout=0.1)
    assert caught.value.pending == (
        PendingEvent(weights.handle, 1, "weights", "alive"),
        PendingEvent(tokenizer.handle, 2, "tokenizer", "alive"),
    )
    assert str(caught.value).splitlines()[1:] == [
        f"  weights ({weights.handle}), owner 0x1: alive",
        f"  tokenizer ({tokenizer.handle}), owner 0x2: alive",
    ]
    assert three.events.waiting_on(merged) == ((PendingEvent(merged, 1, None, "alive"),), 0)

    weights.trigger()
    tokenizer.trigger()
    await asyncio.wait_for(three.events.awaiter(merged, timeout=5), 5)


async def test_a_merge_of_this_worker_named_by_an_owner_is_opened_here(trio: Any) -> None:
    one, _, three = trio
    local = three.events.new_event(label="local input")
    local_merge = three.events.merge_events([local.handle], label="local merge")
    merged = one.events.merge_events([local_merge])
    await wait_until(lambda: three.events.stats()["served"] == 1)
    with pytest.raises(EventTimeout) as caught:
        await three.events.awaiter(merged, timeout=0.05)
    assert caught.value.pending == (PendingEvent(local.handle, 3, "local input", THIS_WORKER),)


async def test_the_owners_answer_refuses_foreign_and_stale_handles(trio: Any) -> None:
    one, two, _ = trio
    with pytest.raises(RemoteError, match="ForeignHandleError"):
        await two.call(1, "_ev.pending", [two.events.new_event().handle.to_bytes(), 5])
    stale = EventHandle.from_parts(1, 0x7FFFFF, 3)  # a slot this incarnation never had
    assert await two.call(1, "_ev.pending", [stale.to_bytes(), 5]) == [[], 0]
    complete = one.events.new_event()
    complete.trigger()
    assert await two.call(1, "_ev.pending", [complete.handle.to_bytes(), 5]) == [[], 0]


async def test_an_unreachable_owner_leaves_the_handle_as_this_worker_sees_it(
    network: FakeNetwork,
) -> None:
    lonely = Worker(5, transport=network.transport(), **FAKE_FAST)  # type: ignore[arg-type]
    await lonely.start()
    try:
        remote = EventHandle.from_parts(0x77, 1, 1)
        assert await lonely.events.waiting_on_remote(remote) == (
            (PendingEvent(remote, 0x77, None, UNKNOWN),),
            0,
        )
    finally:
        await lonely.close(grace=0)


# -- velo_am: SyncWorker, plain threads ------------------------------------------------------


@pytest.fixture
def sync_pair() -> Iterator[tuple[SyncWorker, SyncWorker]]:
    a = SyncWorker(heartbeat_interval=0.2, heartbeat_timeout=2.0)
    b = SyncWorker(heartbeat_interval=0.2, heartbeat_timeout=2.0)
    try:
        b.connect(a.address)
        yield a, b
    finally:
        b.close(grace=0)
        a.close(grace=0)


def test_sync_wait_timeout_names_labels_owners_and_liveness(
    sync_pair: tuple[SyncWorker, SyncWorker],
) -> None:
    a, b = sync_pair
    weights = a.events.new_event(label="weights")
    tokenizer = b.events.new_event(label="tokenizer")
    merged = a.events.merge_events([weights.handle, tokenizer.handle], label="serve ready")
    expected_by_a = (
        PendingEvent(weights.handle, a.worker_id, "weights", THIS_WORKER),
        PendingEvent(tokenizer.handle, b.worker_id, "tokenizer", "alive"),
    )
    with pytest.raises(EventTimeout) as caught:
        a.events.wait(merged, timeout=0.1)
    assert caught.value.pending == expected_by_a
    with pytest.raises(EventTimeout) as caught:
        b.events.wait(merged, timeout=0.1)  # another worker's merge: its owner is asked
    assert caught.value.pending == (
        PendingEvent(weights.handle, a.worker_id, "weights", "alive"),
        PendingEvent(tokenizer.handle, b.worker_id, "tokenizer", THIS_WORKER),
    )
    assert b.events.waiting_on_remote(merged) == (caught.value.pending, 0)
    # asyncio code on a loop of its own: the owners are asked on the worker's loop.
    with pytest.raises(EventTimeout) as caught_async:
        asyncio.run(asyncio.wait_for(b.events.awaiter(merged, timeout=0.1), 10))
    assert caught_async.value.pending == caught.value.pending
    assert a.events.waiting_on(merged) == (
        (expected_by_a[0], PendingEvent(tokenizer.handle, b.worker_id, None, "alive")),
        0,
    ), "without asking, worker b's label is not known to worker a"


def test_a_question_cancelled_with_the_workers_loop_falls_back_to_what_is_known() -> None:
    # A thread's wait timed out and asks the owners on the worker's loop, which then shuts
    # down (cancelling its tasks): the wait still ends with what this worker knows.
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    asked = threading.Event()

    async def question() -> WaitingOn:
        asked.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    answers: list[WaitingOn] = []
    waiter = threading.Thread(
        target=lambda: answers.append(ask_from_thread(loop, question, lambda: ((), 0), 30.0))
    )
    waiter.start()
    try:
        assert asked.wait(5)
        loop.call_soon_threadsafe(lambda: [task.cancel() for task in asyncio.all_tasks(loop)])
        waiter.join(5)
        assert answers == [((), 0)]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()
