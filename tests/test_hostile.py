"""A hostile client, built the way an attacker would: pyzmq, msgpack and docs/protocol.md,
frames made by hand, against real workers on real sockets. With CURVE off, a stranger
cannot take over a member's link, speak as a member, change or fake a member's events, read
a worker's state without a handshake, or evict a member; it can join under an id of its own
and do what any member or command line does, as itself (README, "Threat model")."""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from support import ROOT, wait_until

from velo_am import CallContext, Worker
from velo_event import EventPoison, EventStatus

pytestmark = pytest.mark.timeout(60)

# What an attacker reads in docs/protocol.md.
_DOC = (ROOT / "docs" / "protocol.md").read_text()
VERSION = int(re.search(r"wire protocol, version (\d+)", _DOC).group(1))  # type: ignore[union-attr]
HELLO, HELLO_ACK, REQUEST, RESPONSE, GOODBYE, EVENT_UPDATES = 1, 2, 5, 6, 8, 16
OBSERVER, JOIN = 1, 8


def header(kind: int, src: int, src_inc: int, dst_inc: int, *fields: Any) -> bytes:
    return msgpack.packb([VERSION, kind, src, src_inc, dst_inc, *fields], use_bin_type=True)


def hello(src: int, inc: int, *, token: int = 0, flags: int = 0, address: str = "") -> list[bytes]:
    address = address or "tcp://127.0.0.1:9"
    return [header(HELLO, src, inc, 0, token, address, flags, 0, [])]


def request(src: int, inc: int, handler: str, payload: Any, *, msg_id: int = 1) -> list[bytes]:
    return [
        header(REQUEST, src, inc, 0, msg_id, handler, True),
        msgpack.packb(payload, use_bin_type=True),
    ]


class Stranger:
    """A raw ZeroMQ socket connected to one worker (each stranger is one connection)."""

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

    async def answer(self) -> list[Any]:
        """The next message's header, decoded (waits up to 5 s)."""
        async with asyncio.timeout(5):
            while not self.socket.poll(0):  # noqa: ASYNC110 - a raw socket, polled
                await asyncio.sleep(0.005)
        return list(msgpack.unpackb(self.socket.recv_multipart()[0]))

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


def spoofed(worker: Worker, at_least: int) -> bool:
    """Whether ``worker`` dropped at least that many messages as spoofed (the statistic is
    new: code without it dropped nothing)."""
    return worker.stats().get("messages_spoofed", 0) >= at_least


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
        # The routing id b's link presented before (worker id and incarnation, both public).
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


async def test_poison_and_trigger_naming_a_member_change_nothing(figures: dict[str, str]) -> None:
    async with Worker() as a, Worker(peers=[a.address]) as b:
        event = a.events.new_event()
        handle = event.handle.to_bytes()
        forged = [
            request(b.worker_id, b.incarnation, "_ev.poison", [handle, "forged"]),
            request(b.worker_id, b.incarnation, "_ev.trigger", [handle], msg_id=2),
        ]
        raw, claiming = Stranger(a.address), Stranger(a.address)
        try:
            for frames in forged:  # no handshake on the link
                raw.send(frames)
            pending = lambda: a.events.poll(event.handle) is EventStatus.PENDING  # noqa: E731
            await wait_until(lambda: spoofed(a, 2) or not pending())
            assert pending()
            # A Hello in b's name, with b's (public) incarnation: b is asked to prove the
            # link is its own, and its answer comes on its own link.
            claiming.send(hello(b.worker_id, b.incarnation))
            for frames in forged:
                claiming.send(frames)
            await wait_until(lambda: spoofed(a, 5) or not pending())
            assert pending()
            assert raw.received() == [] and claiming.received() == []
        finally:
            raw.close()
            claiming.close()
        event.trigger()  # the owner still decides
        assert a.events.poll(event.handle) is EventStatus.READY
        figures["forged poison/trigger in a member's name: dropped, counted"] = str(
            a.stats()["messages_spoofed"]
        )


async def test_a_forged_completion_from_the_owner_is_not_believed() -> None:
    async with Worker() as owner, Worker(peers=[owner.address]) as subscriber:
        event = owner.events.new_event()
        wait = asyncio.ensure_future(subscriber.events.awaiter(event.handle))
        await wait_until(lambda: subscriber.stats()["events_subscriptions_sent"] >= 1)
        done = [[event.handle.to_bytes(), None, False]]  # READY
        updates = header(
            EVENT_UPDATES, owner.worker_id, owner.incarnation, subscriber.incarnation, [], done
        )
        raw, claiming = Stranger(subscriber.address), Stranger(subscriber.address)
        try:
            raw.send([updates])
            claiming.send(hello(owner.worker_id, owner.incarnation))
            claiming.send([updates])
            await wait_until(lambda: spoofed(subscriber, 2) or wait.done())
            assert not wait.done(), "a forged READY was believed"
            event.poison("the owner's own verdict")
            with pytest.raises(EventPoison, match="the owner's own verdict"):
                await asyncio.wait_for(wait, 5)
        finally:
            wait.cancel()
            raw.close()
            claiming.close()


async def test_inspect_needs_a_handshake() -> None:
    async with Worker() as a, Worker(peers=[a.address]) as b:
        stranger = Stranger(a.address)
        try:
            stranger.send(request(0x5E, 1, "_inspect", {}))  # an id of its own
            stranger.send(request(b.worker_id, b.incarnation, "_inspect", {}, msg_id=2))
            await wait_until(lambda: spoofed(a, 2) or bool(stranger.socket.poll(0)))
            assert stranger.received() == []  # no answer, no data
        finally:
            stranger.close()


async def test_a_hello_in_a_members_name_evicts_nobody(tmp_path: Path) -> None:
    async with Worker() as a, Worker(peers=[a.address]) as b:
        b.register_handler("who", lambda payload, ctx: "b")
        # The stranger listens, so that a verification dial to the address it names reaches it.
        context = zmq.Context()
        listener = context.socket(zmq.ROUTER)
        listener.setsockopt(zmq.LINGER, 0)
        listener.bind("tcp://127.0.0.1:0")
        own_address = listener.getsockopt(zmq.LAST_ENDPOINT).decode()
        stranger = Stranger(a.address)
        new_incarnation = secrets.randbits(63) + 1
        try:
            stranger.send([header(GOODBYE, b.worker_id, b.incarnation, a.incarnation)])
            # A claim of the stranger's link in b's name, which b refutes: dropped, counted.
            await wait_until(lambda: spoofed(a, 1))
            stranger.send(hello(b.worker_id, new_incarnation, token=7, address=own_address))
            # Answer a's verification dial as "b", at the stranger's own address.
            async with asyncio.timeout(5):
                while not listener.poll(0):  # noqa: ASYNC110 - a raw socket, polled
                    await asyncio.sleep(0.005)
            routing, frame = listener.recv_multipart()[:2]
            token = msgpack.unpackb(frame)[5]
            ack = header(
                HELLO_ACK, b.worker_id, new_incarnation, a.incarnation, token, own_address,
                0, 0, [],
            )  # fmt: skip
            listener.send_multipart([routing, ack])
            assert await a.call(b.worker_id, "who", timeout=5) == "b"
            assert a.peers[b.worker_id].incarnation == b.incarnation
            assert a.peers[b.worker_id].state == "alive"
            assert spoofed(a, 1)  # the goodbye
        finally:
            stranger.close()
            listener.close(linger=0)
            context.term()


async def test_a_stranger_can_join_under_its_own_id_and_act_as_itself() -> None:
    """The documented limit with CURVE off: anyone who reaches a worker can join, as an
    observer (the command line's way) or a worker of its own id, and then does what they do:
    it learns the members, runs handlers, reads ``_inspect`` and triggers events, as
    itself."""
    async with Worker() as a, Worker(peers=[a.address]) as b:
        a.register_handler("whoami", lambda payload, ctx: ctx.sender)
        event = a.events.new_event()
        me, inc = secrets.randbits(63) + 1, secrets.randbits(63) + 1
        stranger = Stranger(a.address)
        try:
            stranger.send(hello(me, inc, token=1, flags=OBSERVER | JOIN))
            ack = await stranger.answer()
            assert ack[1] == HELLO_ACK
            assert {peer[0]: peer[1] for peer in ack[-1]} == {b.worker_id: b.incarnation}
            stranger.send(request(me, inc, "whoami", None))
            assert (await stranger.answer())[1] == RESPONSE  # a handler ran, for "me"
            stranger.send(request(me, inc, "_inspect", {}, msg_id=2))
            assert (await stranger.answer())[1] == RESPONSE
            stranger.send(request(me, inc, "_ev.trigger", [event.handle.to_bytes()], msg_id=3))
            assert (await stranger.answer())[1] == RESPONSE
            assert a.events.poll(event.handle) is EventStatus.READY
            # ... but only as itself: its link speaks for its own id.
            stranger.send(request(b.worker_id, b.incarnation, "whoami", None, msg_id=4))
            await wait_until(lambda: spoofed(a, 1) or bool(stranger.socket.poll(0)))
            assert stranger.received() == []
        finally:
            stranger.close()
