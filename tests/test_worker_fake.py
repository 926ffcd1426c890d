"""Runtime behaviour over the in-process fake transport: no sockets, fast and deterministic."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from support import FAKE_FAST, wait_until

from velo_am import (
    CallContext,
    CallTimeout,
    HandlerNotFound,
    PeerDraining,
    PeerLost,
    PeerUnreachable,
    RemoteError,
    Worker,
    WorkerClosed,
)
from velo_am import _protocol as p
from velo_am.transport import FakeNetwork


async def test_connect_makes_both_sides_know_each_other(make_worker: Any) -> None:
    a, b = await make_worker(1), await make_worker(2)
    assert await a.connect(b.address) == 2
    assert a.peers[2].state == "alive"
    assert b.peers[1].address == a.address


async def test_call_sync_and_async_handlers(make_worker: Any) -> None:
    a, b = await make_worker(1), await make_worker(2)
    seen: list[CallContext] = []

    @b.handler("add")
    def add(payload: Any, ctx: CallContext) -> int:
        seen.append(ctx)
        return int(payload[0] + payload[1])

    @b.handler("echo")
    async def echo(payload: Any, ctx: CallContext) -> Any:
        await asyncio.sleep(0)
        return payload

    await a.connect(b.address)
    assert await a.call(2, "add", [2, 3]) == 5
    assert await a.call(2, "echo", {"x": b"\x00", "y": [1, "z"]}) == {"x": b"\x00", "y": [1, "z"]}
    assert seen[0].sender == 1 and seen[0].expects_reply


async def test_remote_error_carries_type_message_and_traceback(make_worker: Any) -> None:
    a, b = await make_worker(1), await make_worker(2)

    @b.handler("boom")
    def boom(payload: Any, ctx: CallContext) -> None:
        raise KeyError("missing shard")

    b.register_handler("ok", lambda payload, ctx: "still serving")
    await a.connect(b.address)
    with pytest.raises(RemoteError) as caught:
        await a.call(2, "boom")
    assert caught.value.error_type == "KeyError"
    assert "missing shard" in caught.value.message
    assert "Traceback" in caught.value.remote_traceback
    assert await a.call(2, "ok") == "still serving"


async def test_handler_not_found_and_unknown_peer(make_worker: Any) -> None:
    a, b = await make_worker(1), await make_worker(2)
    await a.connect(b.address)
    with pytest.raises(HandlerNotFound, match="nope"):
        await a.call(2, "nope")
    with pytest.raises(PeerUnreachable, match="unknown worker"):
        await a.call(0x999, "x")


async def test_call_timeout_only_fails_that_caller(make_worker: Any) -> None:
    a, b = await make_worker(1), await make_worker(2)
    never = asyncio.Event()

    @b.handler("hang")
    async def hang(payload: Any, ctx: CallContext) -> None:
        await never.wait()

    @b.handler("ok")
    def ok(payload: Any, ctx: CallContext) -> str:
        return "ok"

    await a.connect(b.address)
    with pytest.raises(CallTimeout) as caught:
        await a.call(2, "hang", timeout=0.05)
    assert isinstance(caught.value, TimeoutError)
    assert await a.call(2, "ok") == "ok"


async def test_reserved_and_duplicate_handler_names(make_worker: Any) -> None:
    a = await make_worker(1)
    with pytest.raises(ValueError, match="reserved"):
        a.register_handler("_private", lambda payload, ctx: None)
    a.register_handler("h", lambda payload, ctx: 1)
    with pytest.raises(ValueError, match="already registered"):
        a.register_handler("h", lambda payload, ctx: 2)
    a.register_handler("h", lambda payload, ctx: 2, replace=True)


async def test_ordered_handler_runs_each_senders_messages_in_order(make_worker: Any) -> None:
    a, b = await make_worker(1), await make_worker(2)
    received: list[int] = []
    running = 0
    overlap = False

    @b.handler("seq", ordered=True)
    async def seq(payload: int, ctx: CallContext) -> None:
        nonlocal running, overlap
        running += 1
        overlap = overlap or running > 1
        await asyncio.sleep(0)
        received.append(payload)
        running -= 1

    await a.connect(b.address)
    for i in range(50):
        await a.send(2, "seq", i)
    await wait_until(lambda: len(received) == 50)
    assert received == list(range(50))
    assert not overlap


async def test_mesh_join_through_one_seed(make_worker: Any) -> None:
    seed = await make_worker(1)
    members = [await make_worker(10 + i, peers=[seed.address]) for i in range(4)]
    everyone = [seed, *members]
    for worker in everyone:
        worker.register_handler("whoami", lambda payload, ctx, w=worker: w.worker_id)
    await wait_until(lambda: all(len(w.peers) == len(everyone) - 1 for w in everyone))
    for caller in members:
        for target in everyone:
            if target is not caller:
                assert await caller.call(target.worker_id, "whoami") == target.worker_id


async def test_silent_peer_is_lost_and_calls_fail_with_peer_lost(
    make_worker: Any, network: FakeNetwork
) -> None:
    a, b = await make_worker(1), await make_worker(2)
    never = asyncio.Event()

    @b.handler("hang")
    async def hang(payload: Any, ctx: CallContext) -> None:
        await never.wait()

    lost: list[tuple[int, str]] = []
    a.on_peer_lost(lambda worker_id, reason: lost.append((worker_id, reason)))
    await a.connect(b.address)
    call = asyncio.ensure_future(a.call(2, "hang"))
    await wait_until(lambda: b.stats()["handlers_running"] == 1)
    network.filter = lambda address, frames: address != a.address  # b goes silent
    with pytest.raises(PeerLost, match="silent"):
        await asyncio.wait_for(call, 2.0)
    assert lost and lost[0][0] == 2
    assert a.peers[2].state == "lost"


async def test_close_refuses_new_work_and_says_goodbye(make_worker: Any) -> None:
    a, b = await make_worker(1), await make_worker(2)
    release = asyncio.Event()

    @b.handler("slow")
    async def slow(payload: Any, ctx: CallContext) -> str:
        await release.wait()
        return "done"

    await a.connect(b.address)
    in_flight = asyncio.ensure_future(a.call(2, "slow"))
    await wait_until(lambda: b.stats()["handlers_running"] == 1)
    closing = asyncio.ensure_future(b.close(grace=2.0))
    await wait_until(lambda: a.peers[2].state == "draining")
    with pytest.raises(PeerDraining):
        await a.call(2, "slow")
    release.set()
    assert await in_flight == "done"  # in-flight work finishes within the grace period
    await closing
    await wait_until(lambda: a.peers[2].state == "closed")
    await b.close()  # twice is harmless


async def test_send_and_call_refused_off_the_fast_path(make_worker: Any) -> None:
    """A send or call to a peer that is not simply alive leaves the inline fast path for
    ``Routes.live``: each refusal keeps its error, and nothing is sent."""
    a, b, c = await make_worker(1), await make_worker(2), await make_worker(3)
    release = asyncio.Event()
    ran: list[Any] = []

    @b.handler("slow")
    async def slow(payload: Any, ctx: CallContext) -> None:
        ran.append(payload)
        await release.wait()

    await a.connect(b.address)
    await a.connect(c.address)
    await a.send(2, "slow", "first")  # the fast path
    await wait_until(lambda: b.stats()["handlers_running"] == 1)
    with pytest.raises(PeerUnreachable, match="unknown worker 0x63"):
        await a.send(99, "slow", "nobody")
    closing = asyncio.ensure_future(b.close(grace=2.0))
    await wait_until(lambda: a.peers[2].state == "draining")
    sent_before = a.stats()["messages_out"]
    with pytest.raises(PeerDraining, match="shutting down"):
        await a.send(2, "slow", "late")
    with pytest.raises(PeerDraining, match="shutting down"):
        await a.call(2, "slow", "late")
    assert a.stats()["messages_out"] == sent_before, "a refused send or call sends nothing"
    release.set()
    await closing
    assert ran == ["first"]
    await a.close()
    assert c.peers[1].state == "closed" and a.peers[3].state == "alive"  # c itself lives on
    with pytest.raises(WorkerClosed):
        await a.send(3, "slow", "closed")
    with pytest.raises(WorkerClosed):
        await a.call(3, "slow", "closed")


async def test_message_for_earlier_incarnation_is_not_delivered(
    make_worker: Any, network: FakeNetwork
) -> None:
    b = await make_worker(2)
    transport = network.transport()
    async with Worker(1, transport=transport, **FAKE_FAST) as a:
        calls: list[Any] = []
        b.register_handler("note", lambda payload, ctx: calls.append(payload))
        await a.connect(b.address)
        stale = p.Request(1, a.incarnation, b.incarnation ^ 1, 99, "note", False, b"\xc0")
        # On a's own link to b (a forged one would not be believed at all).
        transport.send(transport.connect(b.address), p.encode(stale))
        await a.send(2, "note", "fresh")
        await wait_until(lambda: calls == ["fresh"])
        assert b.stats()["dropped_wrong_incarnation"] == 1


async def test_malformed_input_is_dropped_and_counted(
    make_worker: Any, network: FakeNetwork
) -> None:
    a, b = await make_worker(1), await make_worker(2)
    b.register_handler("ok", lambda payload, ctx: "ok")
    await a.connect(b.address)
    for junk in ([b"garbage"], [b""], [b"\x95\x01\x63\x01\x01\x00"], []):
        network.deliver(b.address, junk)
    assert await a.call(2, "ok") == "ok"
    assert b.stats()["dropped_malformed"] == 4


async def test_unsendable_error_text_still_reaches_the_caller(make_worker: Any) -> None:
    a, b = await make_worker(1), await make_worker(2)

    @b.handler("parse")
    def parse(payload: Any, ctx: CallContext) -> None:
        raise ValueError("cannot parse /data/\udcff.bin")  # a lone surrogate: not UTF-8

    b.register_handler("ok", lambda payload, ctx: "ok")

    @b.handler("lane", ordered=True)
    def lane(payload: int, ctx: CallContext) -> int:
        if payload == 0:
            raise ValueError("\udcff")
        return payload

    await a.connect(b.address)
    with pytest.raises(RemoteError, match=r"cannot parse /data/\\udcff.bin"):
        await a.call(2, "parse")
    assert await a.call(2, "ok") == "ok"  # sync handlers keep running
    results = await asyncio.gather(
        *(a.call(2, "lane", i) for i in range(3)), return_exceptions=True
    )
    assert isinstance(results[0], RemoteError) and results[1:] == [1, 2]


async def test_oversized_payload_fails_at_once_and_oversized_result_fails_the_call(
    make_worker: Any,
) -> None:
    a, b = await make_worker(1, max_message_size=4096), await make_worker(2)
    b.register_handler("big", lambda payload, ctx: b"x" * 10_000)
    a.register_handler("big", lambda payload, ctx: b"x" * 10_000)
    await a.connect(b.address)
    with pytest.raises(ValueError, match="exceeds max_message_size"):
        await a.call(2, "big", b"y" * 10_000)
    b.max_message_size = 4096
    with pytest.raises(RemoteError, match="exceeds max_message_size"):
        await a.call(2, "big")


async def test_a_peer_back_from_silence_is_reconnected(
    make_worker: Any, network: FakeNetwork
) -> None:
    a, b = await make_worker(1), await make_worker(2)
    b.register_handler("ok", lambda payload, ctx: "ok")
    await a.connect(b.address)
    network.filter = lambda address, frames: address != a.address  # b silent for a while
    await wait_until(lambda: a.peers[2].state == "lost")
    network.filter = None
    assert await a.call(2, "ok") == "ok"
    assert a.peers[2].state == "alive"


async def test_draining_handler_can_still_call_out(make_worker: Any) -> None:
    a, b, c = await make_worker(1), await make_worker(2), await make_worker(3)
    release = asyncio.Event()
    c.register_handler("leaf", lambda payload, ctx: "leaf")

    @b.handler("relay")
    async def relay(payload: Any, ctx: CallContext) -> Any:
        await release.wait()
        return await b.call(3, "leaf")

    await a.connect(b.address)
    await b.connect(c.address)
    call = asyncio.ensure_future(a.call(2, "relay"))
    await wait_until(lambda: b.stats()["handlers_running"] == 1)
    closing = asyncio.ensure_future(b.close(grace=5))
    await wait_until(lambda: a.peers[2].state == "draining")
    release.set()
    assert await call == "leaf"
    await closing


async def test_connecting_to_itself_is_refused(make_worker: Any) -> None:
    a = await make_worker(1)
    with pytest.raises(PeerUnreachable, match="itself"):
        await a.connect(a.address)
    assert a.peers == {}


async def test_close_lifecycle_edges(make_worker: Any) -> None:
    idle = Worker(9, transport=FakeNetwork().transport())
    await idle.close()  # never started
    await asyncio.wait_for(idle.wait_closed(), 1)

    a = await make_worker(1)
    waiting = asyncio.ensure_future(a.wait_for_peers(5))
    await asyncio.sleep(0)
    await a.close()
    with pytest.raises(WorkerClosed):
        await asyncio.wait_for(waiting, 1)

    b, c = await make_worker(2), await make_worker(3)

    @c.handler("shutdown")
    async def shutdown(payload: Any, ctx: CallContext) -> str:
        await c.close(grace=5)  # from inside a handler: must not wait for itself
        return "bye"

    await b.connect(c.address)
    async with asyncio.timeout(3):
        with contextlib.suppress(PeerLost, PeerDraining):
            await b.call(3, "shutdown")
        await c.wait_closed()
