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
import time
from collections.abc import Callable
from typing import Any

import pytest
from support import wait_until

from velo_am import Worker
from velo_am import _protocol as p
from velo_am.transport import FakeNetwork


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
    network.filter = lambda address, frames: address not in silent

    # 0x2 dies (silently: its process is gone) and starts again at a new address.
    silent.add(old.address)
    await wait_until(lambda: _member(w1, 2) == (old.incarnation, "lost"))
    await wait_until(lambda: _member(w3, 2) == (old.incarnation, "lost"))
    new = await make_worker(2)
    assert new.address != old.address
    await new.connect(w3.address)
    await wait_until(lambda: _member(w1, 2) == (new.incarnation, "alive"))  # by gossip

    # 0x1 freezes: it loses everyone, and its healing dials the lost new 0x2 (in vain).
    silent.add(w1.address)
    await wait_until(lambda: _member(w1, 2) == (new.incarnation, "lost"))
    # Meanwhile news of the old incarnation, stale (a worker whose view lagged), says it
    # is alive with a newer seq than any 0x1 saw.
    stale = p.PeerInfo(2, old.incarnation, old.address, 1000, int(p.MemberState.ALIVE))
    w1._shell.apply(w1._membership.on_peers([stale], w3.worker_id, time.monotonic()))
    silent.discard(w1.address)  # 0x1 wakes: its links come up again

    # A merge on 0x1 waits on an event of the live 0x2: it must be answered.
    handle = new.events.new_event().handle
    merged = w1.events.merge_events([handle])
    waiting = asyncio.ensure_future(w1.events.awaiter(merged))
    new.events.trigger(handle)
    assert await asyncio.wait_for(waiting, 10.0) is None
    assert _member(w1, 2) == (new.incarnation, "alive")
