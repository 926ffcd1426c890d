"""A link speaks for one incarnation: a restarted worker's waiters never hang on a dead entry.

The soak once left three merges on worker 0x1 waiting for ever on events of worker 0x2, alive
but restarted twice. 0x1 had been frozen; when it woke, the dead incarnation of 0x2 stood in
its table, *watched*: a link 0x1 had opened for id 0x2 reached the live incarnation, at
another address, and its heartbeats were answered. So the dead entry was never lost (nothing
failed the waiters), subscriptions went out in its name and were dropped as stale by the
live one, the live one was refused as "another live worker uses id 0x2", and 0x1 vouched for
the dead entry to everyone else. Here that sequence runs on the fake network."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from support import FAKE_FAST, wait_until

from velo_am import Worker
from velo_am import _protocol as p
from velo_am.transport import FakeNetwork, LinkId


def _member(worker: Worker, peer_id: int) -> tuple[int, str] | None:
    status = worker.peers.get(peer_id)
    return None if status is None else (status.incarnation, str(status.state))


@pytest.mark.timeout(30)
async def test_a_frozen_worker_waits_on_a_restarted_workers_events_and_is_answered(
    make_worker: Callable[..., Any], network: FakeNetwork
) -> None:
    w1 = await make_worker(1)
    w3 = await make_worker(3)
    old = await make_worker(2)
    await w3.connect(w1.address)
    await old.connect(w1.address)
    await wait_until(lambda: _member(w1, 2) == (old.incarnation, "alive"))
    silent: set[str] = set()
    stale_frames: list[bytes] = []  # set once 0x1 is frozen

    def passes(address: str, frames: list[bytes]) -> bool:
        if address not in silent:
            return True
        return bool(stale_frames) and frames == stale_frames  # a lagging worker's word

    network.filter = passes

    # 0x2 dies (silently: its process is gone) and starts again at a new address.
    silent.add(old.address)
    await wait_until(lambda: _member(w1, 2) == (old.incarnation, "lost"))
    await wait_until(lambda: _member(w3, 2) == (old.incarnation, "lost"))
    new = await make_worker(2, peers=[w3.address])  # joins (retrying with back-off)
    assert new.address != old.address
    await wait_until(lambda: _member(w1, 2) == (new.incarnation, "alive"))  # by gossip

    # 0x1 freezes: it loses everyone, and its healing dials the lost new 0x2 (in vain).
    silent.add(w1.address)
    await wait_until(lambda: _member(w1, 2) == (new.incarnation, "lost"))
    # Meanwhile news of the old incarnation, stale (a worker whose view lagged), says it
    # is alive with a newer seq than any 0x1 saw: 0x3 gossips it to 0x1.
    stale = p.PeerInfo(2, old.incarnation, old.address, 1000, int(p.MemberState.ALIVE))
    news = p.Peers(w3.worker_id, w3.incarnation, w1.incarnation, (stale,))
    stale_frames[:] = p.encode(news)
    heard = w1.stats()["messages_in"]  # nothing else reaches the frozen 0x1
    w3._outbound.send_frames(w1.worker_id, stale_frames)
    await wait_until(lambda: w1.stats()["messages_in"] > heard)
    silent.discard(w1.address)  # 0x1 wakes: its links come up again

    # A merge on 0x1 waits on an event of the live 0x2: it must be answered.
    handle = new.events.new_event().handle
    merged = w1.events.merge_events([handle])
    waiting = asyncio.ensure_future(w1.events.awaiter(merged))
    new.events.trigger(handle)
    assert await asyncio.wait_for(waiting, 10.0) is None
    assert _member(w1, 2) == (new.incarnation, "alive")


@pytest.mark.timeout(30)
async def test_a_link_opened_for_a_dead_incarnation_does_not_carry_its_successors_traffic(
    make_worker: Callable[..., Any], network: FakeNetwork
) -> None:
    """0x1 lost the old 0x2 and redials it at its address (a probe, in vain). Meanwhile the
    new 0x2 joins elsewhere and 0x1 hears of it by gossip: the entry is replaced, with no
    loss. The probe's link was the id's: what 0x1 sent the new 0x2 went to the dead
    address, and the link, never connecting, was reported stalled, a loss of the live new
    0x2 (the soak's "worker 0x2 at …43179 lost: no connection within 1.0 s"). 0x1 keeps
    one gossip neighbor (0x3): it does not pair with the new 0x2, which would open a link of
    the id's to the new address and hide the old one."""
    w1 = await make_worker(1, gossip_fanout=1)
    w3 = await make_worker(3)
    old = await make_worker(2)
    await w3.connect(w1.address)
    await old.connect(w1.address)
    await wait_until(lambda: _member(w1, 2) == (old.incarnation, "alive"))
    probing = asyncio.Event()

    def old_is_gone(address: str, frames: list[bytes]) -> bool:
        if frames[0].startswith(b"\x00") or address not in (old.address, w1.address):
            return address != old.address  # the fake's heartbeats, and the rest
        msg = p.decode(frames, max_size=1 << 20)
        if address == old.address:
            if isinstance(msg, p.Hello) and msg.src == w1.worker_id and msg.token:
                probing.set()  # 0x1 redials the lost old 0x2
            return False
        # The new 0x2 does not handshake with 0x1 (it pairs with 0x3 only; it may prove a
        # link its own): 0x1 learns of it by gossip, and has no link to it until it has
        # business with it.
        dial = isinstance(msg, p.Hello) and msg.token and not msg.flags & p.HelloFlags.PROVE
        return not (dial and msg.src == 2 and msg.src_incarnation != old.incarnation)

    network.filter = old_is_gone
    await wait_until(lambda: _member(w1, 2) == (old.incarnation, "lost"))
    await wait_until(lambda: _member(w3, 2) == (old.incarnation, "lost"))
    probing.clear()
    await asyncio.wait_for(probing.wait(), 10.0)
    new = await make_worker(2, peers=[w3.address])  # within the probe's connect timeout
    await wait_until(lambda: _member(w1, 2) == (new.incarnation, "alive"))
    handle = new.events.new_event().handle
    waiting = asyncio.ensure_future(w1.events.awaiter(handle))

    # The probe's link connects or is given up within the connect timeout.
    def probe_given_up() -> bool:
        link = w1._outbound.own_link(2)
        return link is None or bool(w1._outbound.address_of(link) != old.address)

    await wait_until(probe_given_up)
    assert _member(w1, 2) == (new.incarnation, "alive")
    new.events.trigger(handle)
    assert await asyncio.wait_for(waiting, 10.0) is None
    assert _member(w1, 2) == (new.incarnation, "alive")


@pytest.mark.timeout(30)
async def test_a_seed_spelled_otherwise_is_the_members_link_through_a_rejoin(
    network: FakeNetwork,
) -> None:
    """0x2's seed names 0x1 by another spelling than the address 0x1 advertises (a host
    name for its IP, say): the seed's link, once 0x1 answered on it, leads to 0x1's own
    address, so it watches 0x1. When 0x1 restarts there, 0x2's link to it, after the new
    incarnation answered, leads to that address too (none is closed as another's)."""
    first = Worker(1, transport=network.transport(), **FAKE_FAST)
    await first.start()
    address = first.address
    network.alias("fake://seed", address)
    w2 = Worker(2, transport=network.transport(), peers=["fake://seed"], **FAKE_FAST)
    await w2.start()
    try:
        await wait_until(lambda: _member(w2, 1) == (first.incarnation, "alive"))
        link = w2._outbound.own_link(1)
        assert link is not None and w2._outbound.address_of(link) == address
        await first.close(grace=0)
        await wait_until(lambda: _member(w2, 1) not in (None, (first.incarnation, "alive")))
        again = Worker(1, transport=network.transport(address), **FAKE_FAST)
        await again.start()
        try:
            rejoined: list[LinkId | None] = []

            def answered() -> bool:
                if _member(w2, 1) == (again.incarnation, "alive"):
                    rejoined.append(w2._outbound.own_link(1))
                return bool(rejoined)

            await wait_until(answered)
            assert rejoined[0] is not None, "the link the answer came on was closed"
            assert w2._outbound.address_of(rejoined[0]) == address
        finally:
            await again.close(grace=0)
    finally:
        await w2.close(grace=0)
