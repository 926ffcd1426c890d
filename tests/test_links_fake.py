"""Links on the in-process fake network, at the moments that once lost a binding: a link
bound by a handshake that comes before membership knows its sender keeps speaking for it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import pytest
from support import wait_until

from velo_am import _protocol as p
from velo_am._links import MAX_BOUND_PER_WORKER, Speaker
from velo_am.transport import FakeNetwork

pytestmark = pytest.mark.timeout(30)


async def test_a_verification_link_bound_before_its_sender_is_known_survives_a_tick(
    network: FakeNetwork, make_worker: Any
) -> None:
    """B joins through A. A verifies B's address on a link of its own, which B binds to A
    while B does not know A yet (its own handshake's answer is still on its way), and which
    A keeps as its link to B (B is its neighbor). B's clock ticked in between, and forgot
    that binding as a link of a worker it did not know: every later message of A's on that
    link (gossip, event updates) was dropped as "no handshake on its link"."""
    a = await make_worker(0xA)
    b = await make_worker(0xB)
    loop = asyncio.get_running_loop()
    ticked = []

    def tick_before_the_answer(address: str, frames: list[bytes]) -> bool:
        heartbeat = frames[0].startswith(b"\x00")  # the fake's; a header is a msgpack array
        if address == b.address and not heartbeat and not ticked:
            msg = p.decode(frames, max_size=1 << 20)
            if isinstance(msg, p.HelloAck) and msg.src == a.worker_id:  # the join's answer
                ticked.append(msg)
                loop.call_soon(lambda: b._shell.tick(time.monotonic()))  # before it lands
        return True

    network.filter = tick_before_the_answer
    assert await b.connect(a.address) == a.worker_id
    assert ticked
    # A's link to B is the one it verified B's address on (B is its gossip neighbor).
    assert a._outbound.own_link(b.worker_id) is not None and a.stats()["links_open"] == 1
    handle = a.events.new_event().handle
    waiting = asyncio.ensure_future(b.events.awaiter(handle))
    a.events.trigger(handle)
    assert await asyncio.wait_for(waiting, 5) is None
    assert b.stats()["messages_spoofed"] == 0  # nothing of A's was dropped on the way


async def test_a_members_link_unbound_by_hellos_in_its_name_is_proven_again(
    network: FakeNetwork, make_worker: Any
) -> None:
    """B joined through A, which goes on using the link it verified B's address on. Hellos
    naming A as another incarnation, each on a link of its own, bind at once (a newcomer's
    do), and B keeps the newest ``MAX_BOUND_PER_WORKER`` links bound in A's name: A's link no
    longer speaks for A at B. A's calls on it were dropped as "no handshake on its link" (and
    timed out); now the first makes a claim of the link, which A proves, and none is lost."""
    a = await make_worker(0xA, call_timeout=5.0)
    b = await make_worker(0xB, peers=[a.address])
    await wait_until(lambda: b.worker_id in a.peers and a.worker_id in b.peers)
    assert a._outbound.own_link(b.worker_id) is not None  # A's link to B: the verification's
    b.register_handler("echo", lambda payload, ctx: payload)
    assert await a.call(b.worker_id, "echo", 1) == 1
    real = Speaker(a.worker_id, a.incarnation)
    forged = p.Hello(a.worker_id, a.incarnation + 1, b.incarnation, 0, "fake://0", 0, 0, ())
    for _ in range(MAX_BOUND_PER_WORKER):
        network.deliver(b.address, p.encode(forged))
    await wait_until(lambda: real not in b._shell.trust.bound.values())
    assert await a.call(b.worker_id, "echo", 2) == 2
    assert real in b._shell.trust.bound.values()  # proven again
    assert b.stats()["messages_spoofed"] == 0


async def test_a_strangers_message_in_a_members_name_is_refuted_by_the_member(
    network: FakeNetwork, make_worker: Any
) -> None:
    """A message naming member A on a stranger's link that speaks for nobody makes a claim,
    which A refutes (it proves its own link only): the message is dropped, never run."""
    a = await make_worker(0xA)
    b = await make_worker(0xB, peers=[a.address])
    await wait_until(lambda: b.worker_id in a.peers and a.worker_id in b.peers)
    ran: list[Any] = []
    b.register_handler("work", lambda payload, ctx: ran.append(payload))
    body = msgpack.packb("forged")
    forged = p.encode_request(a.worker_id, a.incarnation, b.incarnation, 1, "work", False, body)
    network.deliver(b.address, forged)
    await wait_until(lambda: b.stats()["messages_spoofed"] == 1)
    assert len(b._shell.trust) == len(b._shell.trust.bound)  # no claim left
    assert ran == []
    b.register_handler("echo", lambda payload, ctx: payload)
    assert await a.call(b.worker_id, "echo", 3) == 3  # A's own traffic is undisturbed


async def test_answers_on_a_link_of_ours_its_peer_has_another_of_ours_for_still_count(
    network: FakeNetwork, make_worker: Any
) -> None:
    """B reaches A at two addresses (a seed's name and the one A advertises): B's link to
    the second became its link to A while a call of B's was in flight on the first, which
    then spoke for nobody: A's answer on it was dropped as "no handshake on its link", and
    the call timed out."""
    a = await make_worker(0xA)
    listener = network.listener(a.address)
    assert listener is not None
    network.bind(listener, "fake://alias")  # A, under another name
    b = await make_worker(0xB, call_timeout=5.0)
    assert await b.connect("fake://alias") == a.worker_id
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(payload: int, ctx: Any) -> int:
        started.set()
        await release.wait()
        return payload

    a.register_handler("slow", slow)
    call = asyncio.ensure_future(b.call(a.worker_id, "slow", 1))
    async with asyncio.timeout(5):
        await started.wait()
    first = b._outbound.own_link(a.worker_id)
    assert await b.connect(a.address) == a.worker_id  # another link of B's to A
    assert b._outbound.own_link(a.worker_id) not in (first, None)
    release.set()
    assert await call == 1
    assert b.stats()["messages_spoofed"] == 0
