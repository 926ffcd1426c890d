"""Links on the in-process fake network, at the moments that once lost a binding: a link
bound by a handshake that comes before membership knows its sender keeps speaking for it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from velo_am import _protocol as p
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
