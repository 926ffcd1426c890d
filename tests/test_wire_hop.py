"""The wire hop's per-message work (issue 13): less of it, the same behaviour.

Real ZeroMQ sockets, two transports in this process: a lone message ends its drain on a
``ZMQ_EVENTS`` look rather than on a failed receive (``zmq.Again``), a burst of sends looks
at the socket once, and nothing that arrives meanwhile is left unread. Event updates are
encoded without building the message, to the same bytes and with the same errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from velo_am import _protocol as p
from velo_am.transport import LinkId, Liveness, ZmqTransport, _zmq
from velo_event import EventHandle

pytestmark = pytest.mark.timeout(60)

LIVENESS = Liveness(interval=1.0, timeout=5.0)


@dataclass
class Inbox:
    """A transport's reports; ``echo`` sends every message back on its link (from within the
    drain that delivered it)."""

    transport: ZmqTransport | None = None
    echo: bool = False
    messages: list[tuple[LinkId, list[bytes]]] = field(default_factory=list)
    up: list[LinkId] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def message(self, link: LinkId, frames: list[bytes]) -> None:
        self.messages.append((link, frames))
        if self.echo:
            assert self.transport is not None
            self.transport.send(link, frames)
        self.changed.set()

    def link_up(self, link: LinkId) -> None:
        self.up.append(link)
        self.changed.set()

    def link_down(self, link: LinkId, why: str) -> None:
        raise AssertionError(f"link {link!r} down: {why}")

    async def until(self, count: int, within: float = 10.0) -> None:
        """Wait (bounded) until ``count`` messages have arrived."""
        async with asyncio.timeout(within):
            while len(self.messages) < count:
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Pair:
    a: ZmqTransport
    b: ZmqTransport
    a_inbox: Inbox
    b_inbox: Inbox
    link: LinkId  # a's link to b


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    loop = asyncio.get_running_loop()
    a, b = (ZmqTransport("tcp://127.0.0.1:0", max_message_size=1 << 20) for _ in range(2))
    a_inbox, b_inbox = Inbox(a), Inbox(b, echo=True)
    b_address = b.start(loop, b_inbox, identity=b"B", liveness=LIVENESS)
    a.start(loop, a_inbox, identity=b"A", liveness=LIVENESS)
    try:
        link = a.connect(b_address)
        async with asyncio.timeout(10):
            while link not in a_inbox.up:
                a_inbox.changed.clear()
                await a_inbox.changed.wait()
        yield Pair(a, b, a_inbox, b_inbox, link)
    finally:
        await a.close()
        await b.close()


def count_again(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the ``zmq.Again`` exceptions raised from now on (a failed non-blocking receive)."""
    raised = [0]
    original = zmq.Again.__init__

    def counting(self: zmq.Again, *args: Any, **kwargs: Any) -> None:
        raised[0] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(zmq.Again, "__init__", counting)
    return raised


async def test_a_lone_message_ends_its_drain_without_a_failed_receive(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = 200
    raised = count_again(monkeypatch)
    for i in range(rounds):  # one message in flight at a time: each drain finds just one
        pair.a.send(pair.link, [b"ping", str(i).encode()])
        await pair.a_inbox.until(i + 1)
    assert [frames for _, frames in pair.a_inbox.messages] == [
        [b"ping", str(i).encode()] for i in range(rounds)
    ]
    # Before: every drain, on both sides, ended on zmq.Again (2 per round). A drain woken by
    # a descriptor edge with nothing to read (rare) still costs one.
    assert raised[0] < rounds // 10, f"{raised[0]} failed receives in {rounds} round trips"


async def test_a_burst_of_sends_looks_at_the_socket_once(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    looks = [0]
    original = _zmq._get_option

    def counting(socket: zmq.Socket[bytes], option: int) -> int:
        looks[0] += option == zmq.EVENTS
        return original(socket, option)

    monkeypatch.setattr(_zmq, "_get_option", counting)
    burst = 100
    for i in range(burst):
        pair.a.send(pair.link, [str(i).encode()])
    assert looks[0] == 1  # the first send's own; the rest leave one to the next iteration
    await pair.a_inbox.until(burst)  # every echo read: no message left behind an edge
    assert [frames for _, frames in pair.a_inbox.messages] == [
        [str(i).encode()] for i in range(burst)
    ]
    # Before: one look per send (100 here), on the sending side alone.
    assert looks[0] < burst // 4, f"{looks[0]} looks for {burst} sends"


async def test_a_lone_send_looks_at_once_and_schedules_no_loop_callback(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ping-pong's send: a look of its own is cheaper than a loop callback to look.
    Fails before: every send left its look to a callback (``call_soon``)."""
    loop = asyncio.get_running_loop()
    scheduled: list[object] = []
    original = loop.call_soon

    def counting(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        scheduled.append(callback)
        return original(callback, *args, **kwargs)

    for i in range(20):
        monkeypatch.setattr(loop, "call_soon", counting)
        pair.a.send(pair.link, [b"ping", str(i).encode()])  # the first since the last drain
        monkeypatch.setattr(loop, "call_soon", original)
        await pair.a_inbox.until(i + 1)  # its echo, drained
    assert scheduled == []
    assert [frames[1] for _, frames in pair.a_inbox.messages] == [b"%d" % i for i in range(20)]


async def test_a_message_a_sends_look_finds_is_received_then_and_handed_on_after_the_send() -> None:
    """A peer's message waits, its descriptor edge already consumed (here by the test's own
    look); the next send's look finds it, receives it at once (libzmq must not keep it
    prefetched) and leaves it to a drain the loop runs next: not handed on inside the send,
    and the one behind it follows in order."""
    loop = asyncio.get_running_loop()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    peer = context.socket(zmq.ROUTER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.RCVTIMEO, 10_000)
    port = peer.bind_to_random_port("tcp://127.0.0.1")
    a = ZmqTransport("tcp://127.0.0.1:0", max_message_size=1 << 20)
    inbox = Inbox(a)
    a.start(loop, inbox, identity=b"A", liveness=LIVENESS)
    try:
        link = a.connect(f"tcp://127.0.0.1:{port}")
        async with asyncio.timeout(10):
            while link not in inbox.up:
                inbox.changed.clear()
                await inbox.changed.wait()
        a.send(link, [b"hello"])
        identity, hello = peer.recv_multipart()  # bounded by RCVTIMEO
        assert hello == b"hello"
        peer.send_multipart([identity, b"first"])
        await inbox.until(1)  # drained: the next send is the first since
        peer.send_multipart([identity, b"second"])
        peer.send_multipart([identity, b"third"])
        router = a._router
        assert router is not None
        assert router.poll(10_000, zmq.POLLIN)  # both wait; the edge is spent
        a.send(link, [b"reply"])
        assert [frames for _, frames in inbox.messages] == [[b"first"]], "not inside the send"
        await inbox.until(3)
        assert [frames for _, frames in inbox.messages] == [[b"first"], [b"second"], [b"third"]]
        assert peer.recv_multipart() == [identity, b"reply"]
    finally:
        await a.close()
        peer.close()
        context.term()


async def test_echoes_arriving_during_long_bursts_are_all_read(pair: Pair) -> None:
    """The receiving side answers from within its drain while this side keeps sending: each
    side's sends may consume the descriptor edge that announced the other's messages."""
    total = 0
    for burst in (1, 7, 64, 500):
        for i in range(burst):
            pair.a.send(pair.link, [b"%d" % (total + i)])
        total += burst
        await pair.a_inbox.until(total)
        await asyncio.sleep(0)  # the next burst starts from a loop iteration of its own
    assert [int(frames[0]) for _, frames in pair.a_inbox.messages] == list(range(total))
    assert len(pair.b_inbox.messages) == total


# -- event updates, encoded without building the message ---------------------------------------

handles = st.builds(
    EventHandle.from_parts,
    st.integers(1, 2**64 - 1),
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**32 - 1),
)
reasons = st.none() | st.text(max_size=40)
verdicts = st.builds(p.EventDone, handles, reasons, st.just(False))
unknowns = st.builds(p.EventDone, handles, st.text(max_size=40), st.just(True))  # with a why
dones = verdicts | unknowns
envelope = st.tuples(
    st.integers(1, 2**64 - 1), st.integers(1, 2**64 - 1), st.integers(0, 2**64 - 1)
)


@given(envelope, st.lists(handles, max_size=5), st.lists(dones, max_size=5))
def test_encode_updates_is_encode_of_the_message(
    env: tuple[int, int, int], subscribe: list[EventHandle], done: list[p.EventDone]
) -> None:
    message = p.EventUpdates(*env, tuple(subscribe), tuple(done))
    frames = p.encode_updates(*env, subscribe, done)
    assert frames == p.encode(message)
    assert p.decode(frames) == message


@pytest.mark.parametrize(
    ("env", "subscribe", "done"),
    [
        ((0, 1, 0), [], []),  # src 0
        ((1, 1, -1), [], []),  # a negative incarnation
        ((2**64, 1, 0), [], []),  # past 64 bits: msgpack refuses it, the slow path words it
        ((1, 2**64, 0), [], []),
        ((1, 1, 2**64), [], []),
        ((1, 1, 0), [5], []),  # not a handle
        ((1, 1, 0), [EventHandle.from_parts(1, 2, 3, local=True)], []),  # a local handle
        ((1, 1, 0), [], [(EventHandle.from_parts(1, 2, 3), None)]),  # not an EventDone
        ((1, 1, 0), [], [p.EventDone(EventHandle.from_parts(1, 2, 3), b"bytes")]),  # reason
        ((1, 1, 0), [], [p.EventDone(EventHandle.from_parts(1, 2, 3), "\udcff")]),  # surrogate
        ((1, 1, 0), [], [p.EventDone(EventHandle.from_parts(1, 2, 3), None, True)]),  # no why
        ((1, 1, 0), [], [p.EventDone(EventHandle.from_parts(1, 2, 3), "x", 1)]),  # type: ignore[arg-type]
    ],
)
def test_encode_updates_refuses_what_the_message_refuses(
    env: tuple[int, int, int], subscribe: list[Any], done: list[Any]
) -> None:
    with pytest.raises(p.ProtocolError) as expected:
        p.encode(p.EventUpdates(*env, tuple(subscribe), tuple(done)))
    with pytest.raises(p.ProtocolError) as got:
        p.encode_updates(*env, subscribe, done)
    assert str(got.value) == str(expected.value)


def test_encode_updates_refuses_too_many_items() -> None:
    handle = EventHandle.from_parts(1, 2, 3)
    with pytest.raises(p.ProtocolError, match="limit is"):
        p.encode_updates(1, 1, 0, [handle] * (p.MAX_EVENT_ITEMS + 1), [])
