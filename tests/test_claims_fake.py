"""A link's claim to speak for a member (docs/protocol.md §9.6) on the in-process fake
network: a member's burst on a new link is held whole while the claim is proven, what a claim
holds is bounded by its sender's receive budget, and a stranger cannot get a member to prove
a claim for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from support import wait_until

from velo_am import PeerUnreachable, Worker
from velo_am import _protocol as p
from velo_am._budget import REQUEST_COST
from velo_am.transport import FakeNetwork, LinkId, Liveness

pytestmark = pytest.mark.timeout(30)


class Raw:
    """A stranger on the fake network: a transport of its own, messages made by hand."""

    def __init__(self, network: FakeNetwork) -> None:
        self.transport = network.transport()
        self.inbox: list[tuple[LinkId, p.Message]] = []
        #: Called with what arrives, as it arrives.
        self.on_message: Callable[[LinkId, list[bytes], p.Message], None] | None = None
        loop = asyncio.get_running_loop()
        self.address = self.transport.start(
            loop, self, identity=b"wstranger", liveness=Liveness(0.05, 0.3)
        )

    def message(self, link: LinkId, frames: list[bytes]) -> None:
        msg = p.decode(frames, max_size=1 << 30)
        self.inbox.append((link, msg))
        if self.on_message is not None:
            self.on_message(link, frames, msg)

    def link_up(self, link: LinkId) -> None:
        pass

    def link_down(self, link: LinkId, why: str, *, refused: bool = False) -> None:
        pass

    def refused(self, link: LinkId, what: str) -> None:
        pass

    def inbound_ended(self, peer: str, cut: str | None) -> None:
        pass

    def received(self, kind: type[p.Message]) -> list[Any]:
        return [msg for _, msg in self.inbox if isinstance(msg, kind)]


def knows(worker: Worker, other: Worker) -> bool:
    return other.worker_id in worker.peers


async def test_a_members_burst_on_a_new_link_is_held_whole(make_worker: Any) -> None:
    """B knows A; their links closed when idle, and A's next sends to B open a link whose
    claim B proves: all of them (a send window's worth, and calls) wait for the proof, none
    is dropped."""
    quiet = {"link_idle": 0.3, "gossip_fanout": 1}  # only the seed is a neighbor
    seed = await make_worker(1, **quiet)
    a = await make_worker(2, peers=[seed.address], call_timeout=5.0, **quiet)
    b = await make_worker(3, peers=[seed.address], **quiet)
    await wait_until(lambda: knows(b, a) and knows(a, b))
    await wait_until(lambda: a.stats()["links_open"] == b.stats()["links_open"] == 1)
    received: list[int] = []
    b.register_handler("take", lambda payload, ctx: received.append(payload))
    b.register_handler("echo", lambda payload, ctx: payload)
    for i in range(3000):
        a.send_nowait(b.worker_id, "take", i)
    calls = [asyncio.ensure_future(a.call(b.worker_id, "echo", i)) for i in range(200)]
    assert await asyncio.gather(*calls) == list(range(200))
    await wait_until(lambda: len(received) == 3000 and a.stats()["sends_unconfirmed"] == 0)
    assert sorted(received) == list(range(3000))
    assert b.stats()["messages_spoofed"] == 0 and b.stats()["refused_busy"] == 0
    assert a.stats()["sends_lost"] == 0 and a.stats()["sends_refused"] == 0


def hello(src: Worker, dst: Worker, *, token: int, address: str) -> list[bytes]:
    """A Hello in ``src``'s name (its id and incarnation are public)."""
    return p.encode(
        p.Hello(src.worker_id, src.incarnation, dst.incarnation, token, address, 0, 0, ())
    )


def request(src: Worker, dst: Worker, msg_id: int, handler: str, payload: Any) -> list[bytes]:
    body = msgpack.packb(payload, use_bin_type=True)
    return p.encode_request(
        src.worker_id, src.incarnation, dst.incarnation, msg_id, handler, True, body
    )


async def test_what_a_claim_holds_is_bounded_by_bytes_and_a_call_past_it_is_answered(
    make_worker: Any, network: FakeNetwork
) -> None:
    """A stranger claims member A's link to B and sends big calls: B holds them up to A's
    receive budget (2 x max_message_size + send_window x REQUEST_COST), answers the rest
    BUSY on that link and counts them; the claim is refuted and nothing runs."""
    a = await make_worker(2)
    b = await make_worker(3, peers=[a.address], send_window=1, max_message_size=64 * 1024)
    await wait_until(lambda: knows(b, a))
    ran: list[Any] = []
    b.register_handler("echo", lambda payload, ctx: ran.append(payload))
    stranger = Raw(network)
    link = stranger.transport.connect(b.address)
    stranger.transport.send(link, hello(a, b, token=1, address=stranger.address))
    calls = [request(a, b, i, "echo", bytes(16 * 1024)) for i in range(1, 11)]
    for frames in calls:
        stranger.transport.send(link, frames)
    busy_ids = lambda: [m.msg_id for m in stranger.received(p.ErrorResponse)]  # noqa: E731
    await wait_until(lambda: bool(busy_ids()) and b.stats()["messages_spoofed"] > 0)
    first = busy_ids()[0]
    assert busy_ids() == list(range(first, 11))  # the tail, past what the claim may hold
    assert all(m.code == p.ErrorCode.BUSY for m in stranger.received(p.ErrorResponse))
    held = sum(len(b"".join(frames)) + REQUEST_COST for frames in calls[: first - 1])
    assert held <= 2 * 64 * 1024 + REQUEST_COST
    assert b.stats()["refused_busy"] == len(busy_ids())
    await wait_until(lambda: b.stats()["messages_spoofed"] == first)  # the Hello and the held
    assert ran == []


async def test_a_member_proves_no_claim_on_a_dial_to_a_strangers_address(
    make_worker: Any, network: FakeNetwork
) -> None:
    """A dials a stranger's address (its worker unknown); the stranger replays A's dial token
    to B in A's name and forwards to B whatever A sends it. A must not answer B's challenge
    on that dial: the stranger would then speak as A to B."""
    a = await make_worker(2)
    b = await make_worker(3, peers=[a.address])
    await wait_until(lambda: knows(a, b) and knows(b, a))
    senders: list[int] = []
    b.register_handler("who", lambda payload, ctx: senders.append(ctx.sender))
    stranger = Raw(network)
    to_b = stranger.transport.connect(b.address)

    def relay(link: LinkId, frames: list[bytes], msg: p.Message) -> None:
        if isinstance(msg, p.Hello) and not msg.flags & p.HelloFlags.PROVE:
            stranger.transport.send(to_b, hello(a, b, token=msg.token, address=stranger.address))
            stranger.transport.send(to_b, request(a, b, 1, "who", None))
        elif isinstance(msg, p.HelloAck) and msg.flags & p.HelloFlags.PROVE:
            stranger.transport.send(to_b, frames)  # A's proof, passed on

    stranger.on_message = relay
    dial = asyncio.ensure_future(a.connect(stranger.address))
    await wait_until(lambda: b.stats()["messages_spoofed"] >= 2 or bool(senders))
    assert senders == []
    assert stranger.received(p.Response) == []
    with contextlib.suppress(PeerUnreachable):
        await dial


async def test_a_busy_answer_to_a_claimed_link_never_reaches_the_member_by_another(
    make_worker: Any, network: FakeNetwork
) -> None:
    """The stranger closes its claimed link at once: B's BUSY answers are dropped with it,
    never sent to the real A (whose calls of those ids they would fail)."""
    a = await make_worker(2)
    b = await make_worker(3, peers=[a.address], send_window=1, max_message_size=64 * 1024)
    await wait_until(lambda: knows(b, a))
    stranger = Raw(network)
    link = stranger.transport.connect(b.address)
    stranger.transport.send(link, hello(a, b, token=1, address=stranger.address))
    for i in range(1, 11):
        stranger.transport.send(link, request(a, b, i, "echo", bytes(16 * 1024)))
    stranger.transport.disconnect(link)
    await wait_until(lambda: b.stats()["refused_busy"] > 0)
    await wait_until(lambda: b.stats()["messages_spoofed"] > 0)  # the claim, refuted
    assert a.stats()["late_responses"] == a.stats()["sends_refused"] == 0
