"""The remote event ping-pong's hop (issue 13): each hop's work on the loop asks
``asyncio.get_running_loop()`` (a ``getpid()`` system call on CPython 3.11) only once per
worker, not twice per hop. (Waiters added from other threads, which still go through the loop, are
``tests/test_sync_worker.py``'s.)"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import pytest
from support import wait_until

import velo_am
from velo_am import Worker
from velo_am._stats import new_counters
from velo_event import Event, EventHandle, ForeignHandleError
from velo_event.lowlevel import PENDING, Unanswered

ROUNDS = 50


async def pair(make_worker: Callable[..., Any]) -> tuple[Worker, Worker]:
    a = await make_worker(1)
    b = await make_worker(2)
    await b.connect(a.address)
    return a, b


async def ping_pong(a: Worker, b: Worker, rounds: int) -> None:
    """``rounds`` hops each way: each side triggers its event, then awaits the other's."""
    pings = [a.events.new_event() for _ in range(rounds)]
    pongs = [b.events.new_event() for _ in range(rounds)]

    async def respond() -> None:
        for ping, pong in zip(pings, pongs, strict=True):
            await b.events.awaiter(ping.handle)
            pong.trigger()

    responder = asyncio.ensure_future(respond())
    for ping, pong in zip(pings, pongs, strict=True):
        ping.trigger()
        await a.events.awaiter(pong.handle)
    await responder


async def test_a_hop_asks_for_the_running_loop_once_per_worker_not_per_hop(
    make_worker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await pair(make_worker)
    await asyncio.wait_for(ping_pong(a, b, 2), 10)  # connected both ways, loops seen
    asked = 0
    remote = sys.modules[type(a._remote_events).__module__]  # the build in use
    running_loop = remote.running_loop

    def counted() -> asyncio.AbstractEventLoop | None:
        nonlocal asked
        asked += 1
        return running_loop()

    monkeypatch.setattr(remote, "running_loop", counted)
    await asyncio.wait_for(ping_pong(a, b, ROUNDS), 20)
    # Two per hop before (the trigger's done item, the await's subscription): 4 * ROUNDS.
    assert asked == 0, f"asked {asked} times in {ROUNDS} round trips"
    assert a.events.stats()["updates_received"] >= ROUNDS + 2


async def test_a_hop_asks_the_worker_for_its_loop_only_until_it_has_seen_it(
    make_worker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's loop is its loop for life: once the events layer has seen it running on
    its thread, a hop does not ask the worker for it again (an interpreted call, twice a hop
    before)."""
    a, b = await pair(make_worker)
    await asyncio.wait_for(ping_pong(a, b, 2), 10)  # connected both ways, loops seen
    asked = 0
    for worker in (a, b):
        messenger = worker._remote_events._messenger
        ask = messenger.loop

        def counted(ask: Callable[[], Any] = ask) -> Any:
            nonlocal asked
            asked += 1
            return ask()

        replaced = dataclasses.replace(messenger, loop=counted)
        monkeypatch.setattr(worker._remote_events, "_messenger", replaced)
    await asyncio.wait_for(ping_pong(a, b, ROUNDS), 20)
    assert asked == 0, f"asked {asked} times in {ROUNDS} round trips"


async def test_the_compiled_build_covers_the_subscriptions_layer(
    make_worker: Callable[..., Any],
) -> None:
    """Both ends of a remote event's hop (subscribe, done item, wake) run in the build in use:
    compiled where velo_am's compiled build is, interpreted only in the pure one."""
    worker = await make_worker(1)
    module = type(worker._remote_events).__module__
    assert module == ("velo_am._compiled._remote" if velo_am.COMPILED else "velo_am._remote")


class CountedProperty:
    """A property of ``EventHandle`` that counts its reads (and reads as the original)."""

    def __init__(self, original: property) -> None:
        self.original = original
        self.reads = 0

    def __get__(self, handle: EventHandle, owner: type | None = None) -> Any:
        self.reads += 1
        return self.original.__get__(handle, owner)


async def test_a_hop_reads_no_handle_property(
    make_worker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subscriptions layer reads a handle's local flag and generation as bits: each
    ``EventHandle`` property is an interpreted call, and a hop made four of them."""
    a, b = await pair(make_worker)
    await asyncio.wait_for(ping_pong(a, b, 2), 10)
    counted = {
        name: CountedProperty(vars(EventHandle)[name]) for name in ("is_local", "generation")
    }
    for name, prop in counted.items():
        monkeypatch.setattr(EventHandle, name, prop)
    await asyncio.wait_for(ping_pong(a, b, ROUNDS), 20)
    assert {name: prop.reads for name, prop in counted.items()} == {"is_local": 0, "generation": 0}
    # A remote handle of another process's local system is still refused.
    foreign = EventHandle.from_parts(7, 1, 1, local=True)
    with pytest.raises(ForeignHandleError):
        a.events.awaiter(foreign)
    # And a plain int is no handle: refused at once, not sent to the owner.
    with pytest.raises(TypeError, match=r"got int .*use EventHandle\.from_int\(value\)"):
        a.events.awaiter(int(EventHandle.from_parts(b.worker_id, 1, 1)))
    with pytest.raises(TypeError, match=r"got int .*use EventHandle\.from_int\(value\)"):
        a.events.owner_of(int(EventHandle.from_parts(b.worker_id, 1, 1)))  # type: ignore[arg-type]
    assert a.events.stats()["updates_received"] >= ROUNDS + 2


async def served_ping(a: Worker, b: Worker) -> tuple[Event, Event, asyncio.Future[None]]:
    """A's ``ping`` and B's ``pong``, with B awaiting the ping (subscribed at A) and
    triggering the pong when it completes."""
    await asyncio.wait_for(ping_pong(a, b, 2), 10)  # connected both ways
    ping, pong = a.events.new_event(), b.events.new_event()

    async def respond() -> None:
        await b.events.awaiter(ping.handle)
        pong.trigger()

    responder = asyncio.ensure_future(respond())
    await wait_until(lambda: a.events.stats()["served"] == 1)
    return ping, pong, responder


def scheduled_flush(worker: Worker) -> asyncio.Handle | None:
    """The flush the worker's subscriptions layer has scheduled on its loop. Read from the
    layer itself (the one private read here): the loop's queue is asyncio's own internals,
    absent under other loops; what is checked of the handle is public (``cancelled()``)."""
    handle: asyncio.Handle | None = worker._remote_events._scheduled_flush
    return handle


async def test_an_early_send_leaves_no_flush_to_run(make_worker: Callable[..., Any]) -> None:
    """A trigger then an await of the peer's event (the ping-pong a user writes) sends the done
    item and the subscription at once, together: the flush the done item scheduled has
    nothing left to send, and is cancelled rather than run by the loop's next iteration."""
    a, b = await pair(make_worker)
    ping, pong, responder = await served_ping(a, b)
    ping.trigger()  # a done item for B: a flush is scheduled
    flush = scheduled_flush(a)
    assert flush is not None, "the done item scheduled no flush"
    assert not flush.cancelled()
    waiting = a.events.awaiter(pong.handle).__await__()
    future = next(waiting)  # the await subscribes: done item and subscription leave now
    assert flush.cancelled(), "a flush is still scheduled with nothing to send"
    assert scheduled_flush(a) is None
    await asyncio.wait_for(future, 10)  # B's pong
    with pytest.raises(StopIteration):
        waiting.send(None)  # the await returns: triggered
    await asyncio.wait_for(responder, 10)
    assert a.events.stats()["updates_received"] >= 3


async def test_a_direct_flush_cancels_the_scheduled_one(make_worker: Callable[..., Any]) -> None:
    """``flush()`` called outside the loop's callback (as ``close`` does, to send the poisons
    before the goodbye) sends everything: the flush still scheduled is cancelled, not left
    for the loop to run with nothing to send."""
    a, b = await pair(make_worker)
    ping, _pong, responder = await served_ping(a, b)
    ping.trigger()
    flush = scheduled_flush(a)
    assert flush is not None, "the done item scheduled no flush"
    a._remote_events.flush()  # the done item leaves now
    assert flush.cancelled(), "the scheduled flush is left to run with nothing to send"
    assert scheduled_flush(a) is None
    await asyncio.wait_for(responder, 10)  # B got the done item: its await returned


@pytest.mark.parametrize("call", ["status", "add_waiter", "resolve"])
def test_an_interrupt_as_the_lock_is_taken_leaves_it_free(call: str) -> None:
    """A KeyboardInterrupt at the first bytecode run with the subscriptions lock held (where
    the interpreted build checks for signals after ``acquire()`` returns) releases the lock:
    held, every later waiter, verdict and ``close`` would deadlock. The pure module is traced
    opcode by opcode (compiled code is not traced); both builds share its source."""
    from velo_am._events import event_core
    from velo_am._remote import RemoteEvents

    remote = RemoteEvents(event_core(0x1234, 1), None, {}, 1.0)  # type: ignore[arg-type]
    lock = remote._lock  # (the lock itself: what a leak would leave held)
    handle = EventHandle.from_parts(0x99, 1, 5)  # another worker's, pending
    interrupted = False

    def opcodes(frame: Any, event: str, arg: Any) -> Any:
        nonlocal interrupted
        if event == "opcode" and not interrupted and lock.locked():
            interrupted = True
            raise KeyboardInterrupt
        return opcodes

    def calls(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_name in ("_known", "add_waiter", "resolve"):
            frame.f_trace_opcodes = True
            return opcodes
        return None

    run = {
        "status": lambda: remote.status(handle),
        "add_waiter": lambda: remote.add_waiter(handle, "key", lambda key, reason: None),
        "resolve": lambda: remote.resolve(handle, None),
    }[call]
    sys.settrace(calls)
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        sys.settrace(None)
    assert interrupted
    assert not lock.locked(), f"{call}: the lock stays held after the interrupt"


def test_the_handle_bits_read_by_hand_match_event_handle() -> None:
    """The subscriptions layer (and the protocol's fast decoder) read a handle's local flag
    and generation as bits of ``EventHandle``'s layout, copied by hand (velo_event does not
    export its layout): they must name the same bits ``EventHandle`` writes."""
    from velo_am import _protocol, _remote
    from velo_event._handle import MAX_GENERATION, MAX_INDEX

    local_bit = int(EventHandle.from_parts(0, 0, 0, local=True))
    assert _remote._LOCAL_BIT == local_bit == _protocol._LOCAL
    assert _remote._GENERATION_BITS == MAX_GENERATION
    for local in (False, True):
        for index, generation in ((0, 0), (1, 1), (MAX_INDEX, MAX_GENERATION), (5, 1 << 31)):
            handle = EventHandle.from_parts(2**64 - 1, index, generation, local=local)
            assert bool(handle & _remote._LOCAL_BIT) is handle.is_local is local
            assert handle & _remote._GENERATION_BITS == handle.generation == generation


def test_the_compiled_build_loads_no_pure_subscriptions_layer() -> None:
    """Modules that name ``RemoteEvents`` only in annotations do not import the pure
    ``_remote``: the compiled build loads the compiled one alone (checked in a fresh
    interpreter, as a user's process starts)."""
    import subprocess

    probe = "import sys, velo_am; print(velo_am.COMPILED, 'velo_am._remote' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    compiled, loaded = result.stdout.split()
    assert loaded == str(compiled == "False"), f"compiled build {compiled}, pure _remote {loaded}"


def test_the_verdict_cache_keeps_the_latest_and_a_verdict_once_cached_stays() -> None:
    """Every remote completion enters a bounded cache (the build in use's): one in, the
    oldest out; a second verdict for a cached handle (a successor's, say) changes nothing."""
    from velo_am._events import event_core
    from velo_am._layers import RemoteEvents

    counters = new_counters()
    remote = RemoteEvents(event_core(0x1234, 1), None, counters, 1.0, cache_size=3)  # type: ignore[arg-type]
    handles = [EventHandle.from_parts(0x99, index, 5) for index in range(5)]
    for index, handle in enumerate(handles):
        remote.resolve(handle, None if index % 2 else f"failed {index}")
        remote.resolve(handle, "a second verdict")
    assert [remote.status(handle) for handle in handles] == [
        PENDING,  # evicted: asked of its owner again
        PENDING,
        "failed 2",
        None,
        "failed 4",
    ]
    assert remote.counts()["cached"] == 3
    remote.resolve(handles[0], Unanswered("owner lost"))  # no verdict: never cached
    assert remote.status(handles[0]) is PENDING
    assert [remote.status(handle) for handle in handles[2:]] == ["failed 2", None, "failed 4"]
