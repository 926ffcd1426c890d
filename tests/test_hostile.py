"""A hostile client, built the way an attacker would: pyzmq, msgpack and docs/protocol.md,
frames made by hand, against real workers on real sockets. With CURVE off, a stranger
cannot take over a member's link, speak as a member, change or fake a member's events, read
a worker's state, or evict a member; it can join as a worker of its own and run handlers as
itself (README, "Threat model")."""

from __future__ import annotations

import asyncio

import pytest
import zmq
from support import wait_until

from velo_am import CallContext, Worker

pytestmark = pytest.mark.timeout(60)


class Stranger:
    """A raw ZeroMQ socket, connected to one worker."""

    def __init__(self, address: str, routing_id: bytes | None = None) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            self.socket.setsockopt(zmq.ROUTING_ID, routing_id)
        self.socket.connect(address)

    def send(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def received(self) -> list[list[bytes]]:
        """What has arrived so far."""
        messages = []
        while self.socket.poll(0):
            messages.append(self.socket.recv_multipart())
        return messages

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


async def test_a_stranger_presenting_a_members_routing_id_cannot_take_its_link() -> None:
    async with Worker() as a, Worker(peers=[a.address]) as b:
        started, release = asyncio.Event(), asyncio.Event()

        @a.handler("slow")
        async def slow(x: int, ctx: CallContext) -> int:
            started.set()
            await release.wait()
            return x + 1

        # b's call arrives on the link b opened to a; a answers on that link.
        call = asyncio.ensure_future(b.call(a.worker_id, "slow", 41, timeout=10))
        async with asyncio.timeout(5):
            await started.wait()
        # The routing id b's link presented before (docs/protocol.md §1, before this change).
        member = b"w" + b.worker_id.to_bytes(8, "big") + b.incarnation.to_bytes(8, "big")
        stranger = Stranger(a.address, routing_id=member)
        try:
            malformed = a.stats()["dropped_malformed"]
            stranger.send([b"\xc1"])  # proves the stranger's connection is attached at a
            await wait_until(lambda: a.stats()["dropped_malformed"] > malformed)
            release.set()
            assert await call == 42  # the answer reached b, on b's own link
            assert stranger.received() == []
        finally:
            call.cancel()
            stranger.close()
