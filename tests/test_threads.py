"""Thread safety: cross-thread wake-ups, completion races, blocking waits, guards collected on
other threads, and a mixed stress run. Every wait has a deadline; nothing sleeps to sync."""

from __future__ import annotations

import asyncio
import gc
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

import pytest

from velo_event import (
    DROPPED_REASON,
    AlreadyTriggeredError,
    EventError,
    EventHandle,
    EventPoison,
    EventStatus,
    InvalidGenerationError,
    LocalEventSystem,
)
from velo_event.lowlevel import PENDING

DEADLINE = 10.0
PENDING_STATUS, READY, POISONED = EventStatus.PENDING, EventStatus.READY, EventStatus.POISONED


class Threads:
    """Start threads that record their exceptions; join them with a deadline."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, target: Callable[[], object]) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as error:
                self.errors.append(error)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        deadline = time.monotonic() + DEADLINE
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not [t for t in self.threads if t.is_alive()], "threads still running"
        assert not self.errors, self.errors


def outcome_of_wait(mgr: LocalEventSystem, h: EventHandle, timeout: float = DEADLINE) -> str | None:
    try:
        mgr.wait(h, timeout)
    except EventPoison as poison:
        return poison.reason
    return None


async def outcome_of_await(awaitable: object) -> str | None:
    try:
        await awaitable  # type: ignore[misc]
    except EventPoison as poison:
        return poison.reason
    return None


class CountingWaiter:
    """A raw core waiter that counts its wake-ups."""

    def __init__(self) -> None:
        self.calls: list[str | None] = []

    def __call__(self, key: Hashable, reason: str | None) -> None:
        self.calls.append(reason)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads far more often than the default 5 ms, so that races actually race."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


# -- cross-thread wake-ups -------------------------------------------------------------------


@pytest.mark.parametrize("poison", [False, True])
async def test_completion_from_another_thread_wakes_an_asyncio_awaiter(poison: bool) -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    go = threading.Event()
    threads = Threads()

    def complete() -> None:
        assert go.wait(DEADLINE)
        if poison:
            e.poison("from a thread")
        else:
            e.trigger()

    threads.start(complete)
    task = asyncio.ensure_future(outcome_of_await(e.awaiter()))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()
    started = time.monotonic()
    go.set()
    result = await asyncio.wait_for(task, DEADLINE)
    assert time.monotonic() - started < 2.0
    assert result == ("from a thread" if poison else None)
    threads.join()


async def _until_waited_on(mgr: LocalEventSystem, h: EventHandle) -> None:
    """Return once ``h`` has a waiter (the awaiting task got to its wait)."""
    deadline = time.monotonic() + DEADLINE
    while not dict(mgr.core.pending_waiters()).get(h):
        assert time.monotonic() < deadline, "the wait never began"
        await asyncio.sleep(0)


@pytest.mark.parametrize("poison", [False, True])
def test_completion_on_the_loops_thread_while_it_is_stopped_wakes_the_await_when_it_runs(
    poison: bool,
) -> None:
    """A wake-up on the waiting loop's own thread, but outside that loop (stopped between two
    run_until_complete calls), is delivered once the loop runs again."""
    mgr = LocalEventSystem()
    e = mgr.new_event()
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(outcome_of_await(e.awaiter()))
        loop.run_until_complete(_until_waited_on(mgr, e.handle))
        if poison:
            e.poison("while stopped")
        else:
            e.trigger()
        result = loop.run_until_complete(asyncio.wait_for(task, DEADLINE))
        assert result == ("while stopped" if poison else None)
    finally:
        loop.close()


def test_completion_on_the_thread_of_a_closed_loop_is_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wait left behind by a loop closed with the task still waiting: completing its event
    on that thread raises nothing and logs no failed wake-up (nobody is left to wake)."""
    mgr = LocalEventSystem()
    e = mgr.new_event()
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)  # "Task was destroyed but pending"
    task = loop.create_task(outcome_of_await(e.awaiter()))
    loop.run_until_complete(_until_waited_on(mgr, e.handle))
    loop.close()
    with caplog.at_level("DEBUG", logger="velo_event"):
        e.trigger()
    assert mgr.poll(e.handle) is READY
    assert not [r for r in caplog.records if r.name.startswith("velo_event")], caplog.text
    assert not task.done()  # never woken: its loop is gone
    del task


def test_one_trigger_wakes_awaiters_on_several_loops() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    loops = 4
    registered = threading.Barrier(loops + 1, timeout=DEADLINE)
    results: list[str | None] = []
    threads = Threads()

    async def waiter() -> None:
        awaiter = e.awaiter()
        task = asyncio.ensure_future(outcome_of_await(awaiter))
        await asyncio.sleep(0)
        await asyncio.to_thread(registered.wait)
        results.append(await asyncio.wait_for(task, DEADLINE))

    for _ in range(loops):
        threads.start(lambda: asyncio.run(waiter()))
    registered.wait()
    assert waiting(mgr) == loops
    e.trigger()
    threads.join()
    assert results == [None] * loops


# -- completion races ------------------------------------------------------------------------


def test_racing_triggers_exactly_one_wins(fast_switching: None) -> None:
    mgr = LocalEventSystem()
    racers, rounds = 8, 40
    handles = [mgr.new_event().handle for _ in range(rounds)]
    counters = [CountingWaiter() for _ in range(rounds)]
    for h, counter in zip(handles, counters, strict=True):
        assert mgr._core.add_waiter(h, counter, counter) is PENDING
    barrier = threading.Barrier(racers, timeout=DEADLINE)
    results: list[list[str]] = [[] for _ in range(rounds)]
    threads = Threads()

    def racer() -> None:
        for i, h in enumerate(handles):
            barrier.wait()
            try:
                mgr.trigger(h)
                results[i].append("ok")
            except InvalidGenerationError:
                results[i].append("invalid")

    for _ in range(racers):
        threads.start(racer)
    threads.join()
    for h, result, counter in zip(handles, results, counters, strict=True):
        assert sorted(result) == ["invalid"] * (racers - 1) + ["ok"]
        assert counter.calls == [None]
        assert mgr.poll(h) is READY


def test_trigger_racing_poison_has_one_outcome_and_the_loser_gets_the_right_error(
    fast_switching: None,
) -> None:
    mgr = LocalEventSystem()
    racers, rounds = 6, 60
    handles = [mgr.new_event().handle for _ in range(rounds)]
    counters = [CountingWaiter() for _ in range(rounds)]
    for h, counter in zip(handles, counters, strict=True):
        assert mgr._core.add_waiter(h, counter, counter) is PENDING
    barrier = threading.Barrier(racers, timeout=DEADLINE)
    results: list[list[tuple[str, str, str]]] = [[] for _ in range(rounds)]
    threads = Threads()

    def racer(number: int) -> None:
        for i, h in enumerate(handles):
            barrier.wait()
            op = "trigger" if (number + i) % 2 else "poison"
            reason = f"racer {number}"
            try:
                if op == "trigger":
                    mgr.trigger(h)
                else:
                    mgr.poison(h, reason)
                results[i].append((op, reason, "ok"))
            except EventError as error:
                results[i].append((op, reason, type(error).__name__))

    for number in range(racers):
        threads.start(lambda n=number: racer(n))  # type: ignore[misc]
    threads.join()
    outcomes: Counter[str] = Counter()
    for h, result, counter in zip(handles, results, counters, strict=True):
        triggers_ok = [r for r in result if r[0] == "trigger" and r[2] == "ok"]
        poisons_ok = [r for r in result if r[0] == "poison" and r[2] == "ok"]
        errors = {(op, err) for op, _, err in result if err != "ok"}
        reason = mgr.poison_reason(h)
        if reason is None:
            outcomes["trigger"] += 1
            assert mgr.poll(h) is READY
            assert len(triggers_ok) == 1 and not poisons_ok
            assert errors <= {
                ("trigger", InvalidGenerationError.__name__),
                ("poison", AlreadyTriggeredError.__name__),
            }
        else:
            outcomes["poison"] += 1
            assert mgr.poll(h) is POISONED
            assert not triggers_ok and poisons_ok  # every poison "succeeds"; the first stands
            assert reason in {r[1] for r in poisons_ok}
            assert errors <= {("trigger", InvalidGenerationError.__name__)}
        assert counter.calls == [reason]
    assert sum(outcomes.values()) == rounds


def test_handles_are_never_issued_twice_across_threads(fast_switching: None) -> None:
    mgr = LocalEventSystem()
    workers, per_worker = 4, 400
    issued: list[list[EventHandle]] = [[] for _ in range(workers)]
    barrier = threading.Barrier(workers, timeout=DEADLINE)
    threads = Threads()

    def worker(mine: list[EventHandle]) -> None:
        barrier.wait()
        rng = random.Random(len(mine))
        pending: list[EventHandle] = []
        for _ in range(per_worker):
            pending.append(mgr.new_event().handle)
            mine.append(pending[-1])
            if len(pending) > 3 or rng.random() < 0.5:
                mgr.trigger(pending.pop(rng.randrange(len(pending))))
        for h in pending:
            mgr.poison(h, "end")

    for mine in issued:
        threads.start(lambda m=mine: worker(m))  # type: ignore[misc]
    threads.join()
    everything = [h for mine in issued for h in mine]
    assert len(set(everything)) == len(everything) == workers * per_worker
    assert mgr._core.slot_count() <= workers * 5
    assert all(mgr.poll(h) is not PENDING_STATUS for h in everything)


# -- blocking waits from threads -------------------------------------------------------------


@pytest.mark.parametrize("poison", [False, True])
def test_many_threads_wait_for_one_event(poison: bool) -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    waiters = 8
    results: list[str | None] = []
    threads = Threads()
    for _ in range(waiters):
        threads.start(lambda: results.append(outcome_of_wait(mgr, e.handle)))
    deadline = time.monotonic() + DEADLINE
    while waiting(mgr) < waiters:  # wait (with a deadline) until all are blocked
        assert time.monotonic() < deadline
        time.sleep(0)
    if poison:
        e.poison("for all threads")
    else:
        e.trigger()
    threads.join()
    assert results == [("for all threads" if poison else None)] * waiters


def test_wait_timeout_in_a_thread_leaves_the_event_untouched() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    caught: list[BaseException] = []
    threads = Threads()

    def waiter() -> None:
        try:
            mgr.wait(e.handle, timeout=0.05)
        except TimeoutError as error:
            caught.append(error)

    threads.start(waiter)
    threads.join()
    assert len(caught) == 1
    assert f"event {e.handle} still pending" in str(caught[0])
    assert mgr.poll(e.handle) is PENDING_STATUS
    assert waiting(mgr) == 0
    e.trigger()
    mgr.wait(e.handle, timeout=0)


def test_shutdown_wakes_blocked_threads() -> None:
    mgr = LocalEventSystem()
    events = [mgr.new_event() for _ in range(3)]
    results: list[str | None] = []
    threads = Threads()
    for e in events:
        threads.start(lambda h=e.handle: results.append(outcome_of_wait(mgr, h)))  # type: ignore[misc]
    deadline = time.monotonic() + DEADLINE
    while waiting(mgr) < 3:
        assert time.monotonic() < deadline
        time.sleep(0)
    mgr.force_shutdown("stop now")
    threads.join()
    assert results == ["stop now"] * 3


# -- guards and other threads ----------------------------------------------------------------


def test_guard_collected_on_another_thread_poisons_its_event() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    box = [e.into_guard()]
    threads = Threads()

    def drop() -> None:
        guard = box.pop()
        del guard
        gc.collect()

    threads.start(drop)
    threads.join()
    assert mgr.poll(e.handle) is POISONED
    assert mgr.poison_reason(e.handle) == DROPPED_REASON


def test_guard_collected_on_another_thread_while_the_lock_is_held_never_blocks() -> None:
    mgr = LocalEventSystem()
    core = mgr._core
    e = mgr.new_event()
    cycle: list[object] = [e.into_guard()]
    cycle.append(cycle)
    handed_over = [cycle]
    del cycle
    threads = Threads()

    def collect() -> None:
        handed_over.clear()
        gc.collect()

    assert core._lock.acquire(timeout=DEADLINE)
    try:
        threads.start(collect)
        threads.join()  # finishes although the lock stays held here
        assert mgr._core._deferred
    finally:
        core._lock.release()
    with pytest.raises(EventPoison, match=DROPPED_REASON):
        mgr.wait(e.handle, timeout=DEADLINE)


async def test_guard_collected_on_another_thread_wakes_an_awaiter() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    box = [e.into_guard("thread dropped it")]
    task = asyncio.ensure_future(outcome_of_await(e.awaiter()))
    await asyncio.sleep(0)

    def drop() -> None:
        box.clear()
        gc.collect()

    await asyncio.wait_for(asyncio.to_thread(drop), DEADLINE)
    assert await asyncio.wait_for(task, DEADLINE) == "thread dropped it"


# -- stress ----------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Everything the stress run did, checked once the threads are done."""

    handles: list[EventHandle] = field(default_factory=list)
    churn: list[tuple[EventHandle, str | None]] = field(default_factory=list)
    merges: list[tuple[EventHandle, list[EventHandle], bool]] = field(default_factory=list)
    counters: dict[EventHandle, CountingWaiter] = field(default_factory=dict)
    # Each handle's list is made by its creator, before the completers start: a defaultdict
    # would make it in the first completer's lookup, where a collection running a finalizer
    # can switch threads, and a second completer's lookup then replace the first list.
    attempts: dict[EventHandle, list[tuple[str, str, str]]] = field(default_factory=dict)
    waits: list[tuple[EventHandle, str | None]] = field(default_factory=list)


def test_stress_creators_completers_and_waiters(fast_switching: None) -> None:
    """Rounds of: creators mint a small batch (plus merges over recent events), then, all at
    once, completers race trigger/poison on every event of the batch while waiter threads
    block on them, asyncio tasks await them, and creators churn through recycled slots."""
    mgr = LocalEventSystem()
    core = mgr._core
    rounds, creators, per_round, completers, waiters = 120, 3, 1, 3, 3
    parties = creators + completers + waiters + 1  # + the asyncio thread
    created = threading.Barrier(parties, timeout=DEADLINE)
    armed = threading.Barrier(parties, timeout=DEADLINE)  # asyncio waiters registered
    finished = threading.Barrier(parties, timeout=DEADLINE)
    batches: list[list[EventHandle]] = [[] for _ in range(rounds)]
    merges: list[list[EventHandle]] = [[] for _ in range(rounds)]
    ledger = Ledger()
    threads = Threads()

    def creator(number: int) -> None:
        rng = random.Random(number)
        for r in range(rounds):
            for _ in range(per_round):
                h = mgr.new_event().handle
                counter = CountingWaiter()
                ledger.counters[h] = counter
                ledger.attempts[h] = []
                assert core.add_waiter(h, counter, counter) is PENDING
                batches[r].append(h)
                ledger.handles.append(h)
            inputs = rng.choices(ledger.handles[-30:], k=rng.randint(1, 4))
            fail_fast = rng.random() < 0.5
            merged = mgr.merge_events(inputs, fail_fast=fail_fast)
            ledger.merges.append((merged, inputs, fail_fast))
            merges[r].append(merged)
            created.wait()
            armed.wait()
            for _ in range(per_round):  # recycle slots while the batch is raced
                e = mgr.new_event()
                if rng.random() < 0.5:
                    e.trigger()
                    ledger.churn.append((e.handle, None))
                else:
                    e.poison(f"churn {number}")
                    ledger.churn.append((e.handle, f"churn {number}"))
            finished.wait()

    def completer(number: int) -> None:
        rng = random.Random(100 + number)
        for r in range(rounds):
            created.wait()
            armed.wait()
            batch = list(batches[r])
            rng.shuffle(batch)
            for h in batch:
                op = rng.choice(("trigger", "poison"))
                reason = f"completer {number} round {r}"
                try:
                    if op == "trigger":
                        mgr.trigger(h)
                    else:
                        mgr.poison(h, reason)
                    result = "ok"
                except EventError as error:
                    result = type(error).__name__
                ledger.attempts[h].append((op, reason, result))
            finished.wait()

    def waiter(number: int) -> None:
        rng = random.Random(200 + number)
        for r in range(rounds):
            created.wait()
            armed.wait()
            for h in (rng.choice(batches[r]), rng.choice(merges[r])):
                ledger.waits.append((h, outcome_of_wait(mgr, h)))
            finished.wait()

    async def async_rounds() -> None:
        for r in range(rounds):
            await asyncio.to_thread(created.wait)
            targets = [*batches[r], *merges[r]]
            half = len(targets) // 2
            tasks = [
                asyncio.ensure_future(outcome_of_await(mgr.awaiter(h))) for h in targets[:half]
            ]
            await asyncio.sleep(0)  # these register now, and are woken from other threads
            await asyncio.to_thread(armed.wait)
            tasks += [  # these race the completers
                asyncio.ensure_future(outcome_of_await(mgr.awaiter(h))) for h in targets[half:]
            ]
            results = await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
            ledger.waits.extend(zip(targets, results, strict=True))
            await asyncio.to_thread(finished.wait)

    for number in range(creators):
        threads.start(lambda n=number: creator(n))  # type: ignore[misc]
    for number in range(completers):
        threads.start(lambda n=number: completer(n))  # type: ignore[misc]
    for number in range(waiters):
        threads.start(lambda n=number: waiter(n))  # type: ignore[misc]
    threads.start(lambda: asyncio.run(async_rounds()))
    threads.join()

    # Every raced event has one outcome, consistent with what every racer was told.
    outcome: dict[EventHandle, str | None] = {}
    assert len(ledger.handles) == rounds * creators * per_round
    for h in ledger.handles:
        status = core.status(h)
        assert status is not PENDING
        reason = status if isinstance(status, str) else None
        outcome[h] = reason
        attempts = ledger.attempts[h]
        assert len(attempts) == completers
        triggers_ok = [a for a in attempts if a[0] == "trigger" and a[2] == "ok"]
        poisons_ok = [a for a in attempts if a[0] == "poison" and a[2] == "ok"]
        if reason is None:
            assert len(triggers_ok) == 1 and not poisons_ok
            assert all(
                a[2] == ("InvalidGenerationError" if a[0] == "trigger" else "AlreadyTriggeredError")
                for a in attempts
                if a[2] != "ok"
            )
        else:
            assert not triggers_ok and reason in {a[1] for a in poisons_ok}
            assert all(a[2] == "InvalidGenerationError" for a in attempts if a[2] != "ok")
        assert ledger.counters[h].calls == [reason], "woken exactly once, with the outcome"

    for h, reason in ledger.churn:
        assert mgr.poison_reason(h) == reason
        assert mgr.poll(h) is (POISONED if reason else READY)

    # Every merge agrees with its inputs' outcomes.
    for m, inputs, fail_fast in ledger.merges:
        lines = [f"Merge dependency {h} poisoned: {outcome[h]}" for h in inputs if outcome[h]]
        got = mgr.poison_reason(m)
        if not lines:
            assert mgr.poll(m) is READY
        elif fail_fast:
            assert got in lines
        elif len(lines) == 1:
            assert got == lines[0]
        else:
            assert got == "\n".join(["Multiple merge dependencies failed:", *lines])
        outcome[m] = got

    # Every blocking wait and every await saw exactly that outcome.
    expected_waits = rounds * (waiters * 2 + creators * per_round + creators)
    assert len(ledger.waits) == expected_waits
    for h, seen in ledger.waits:
        assert seen == outcome[h]
    # Slots: at most the events alive at once in a round (batch, merges, churn) plus history.
    assert core.slot_count() <= 4 * creators * (per_round + 1) * 2


def waiting(mgr: LocalEventSystem) -> int:
    """How many waiters the core holds, read under its lock (others may be adding theirs)."""
    return sum(len(keys) for _, keys in mgr.core.pending_waiters())
