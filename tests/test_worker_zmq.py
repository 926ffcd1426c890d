"""Real ZeroMQ sockets between workers in one process: transports, bad input, discovery."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
import zmq
from support import wait_until

from velo_am import CallContext, PeerUnreachable, Worker
from velo_am.discovery import DirectoryDiscovery
from velo_am.transport import Liveness, ZmqTransport
from velo_am.transport._inbound import bytes_received, cut, endpoints

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("scheme", ["tcp", "ipc"])
async def test_call_over_real_sockets(scheme: str, tmp_path: Path) -> None:
    bind = "tcp://127.0.0.1:0" if scheme == "tcp" else f"ipc://{tmp_path}/b.sock"
    async with Worker(bind=bind) as b, Worker() as a:
        assert b.address.startswith(f"{scheme}://")
        assert b.address != "tcp://127.0.0.1:0"  # port 0 resolved

        @b.handler("square")
        async def square(x: int, ctx: CallContext) -> int:
            return x * x

        assert await a.connect(b.address) == b.worker_id
        results = await asyncio.gather(*(a.call(b.worker_id, "square", i) for i in range(200)))
        assert results == [i * i for i in range(200)]


async def test_messages_from_one_sender_arrive_in_order() -> None:
    async with Worker() as a, Worker() as b:
        seen: list[int] = []
        b.register_handler("n", lambda n, ctx: seen.append(n))
        await a.connect(b.address)
        for i in range(2000):
            await a.send(b.worker_id, "n", i)
        await wait_until(lambda: len(seen) == 2000)
        # Handlers run as tasks, started in arrival order: the appends keep that order.
        assert seen == list(range(2000))


async def test_garbage_and_oversized_input_leave_the_worker_serving() -> None:
    async with Worker(max_message_size=4096) as b, Worker() as a:
        b.register_handler("ok", lambda payload, ctx: "ok")
        context = zmq.Context()
        raw = context.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(b.address)
        try:
            raw.send_multipart([b"not msgpack \xff"])
            raw.send_multipart([b"\x93\x01\x02"])  # msgpack, not a header
            raw.send_multipart([b"x" * 10_000])  # over ZMQ_MAXMSGSIZE: libzmq drops it
            await wait_until(lambda: b.stats()["dropped_malformed"] >= 2)
            await a.connect(b.address)
            assert await a.call(b.worker_id, "ok") == "ok"
        finally:
            raw.close(linger=0)
            context.term()


async def test_unknown_worker_id_fails_promptly() -> None:
    async with Worker(handshake_timeout=0.5) as a:
        with pytest.raises(PeerUnreachable, match="unknown worker"):
            async with asyncio.timeout(5):
                await a.call(0xDEAD, "x")
        with pytest.raises(PeerUnreachable, match=r"no handshake answer|connection refused"):
            await a.connect("tcp://127.0.0.1:9")  # nothing listens there


async def test_discovery_directory_finds_workers_by_id(tmp_path: Path) -> None:
    spec = f"dir:{tmp_path}"
    async with Worker(discovery=spec) as a, Worker(discovery=spec) as b:
        a.register_handler("hi", lambda payload, ctx: f"hi {ctx.sender:#x}")
        entries = {entry.worker_id for entry in DirectoryDiscovery(tmp_path).entries()}
        assert entries == {a.worker_id, b.worker_id}
        # b was never told a's address: discovery supplies it.
        assert await b.call(a.worker_id, "hi") == f"hi {b.worker_id:#x}"
    assert DirectoryDiscovery(tmp_path).entries() == []  # both removed themselves on close


async def test_discovery_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VELO_DISCOVERY", f"dir:{tmp_path}")
    async with Worker() as a:
        a.register_handler("hi", lambda payload, ctx: "hi")
        monkeypatch.delenv("VELO_DISCOVERY")
        monkeypatch.setenv("VELO_PEERS", a.address)
        async with Worker() as b:  # joins through $VELO_PEERS
            assert a.worker_id in b.peers
            assert await b.call(a.worker_id, "hi") == "hi"
        assert DirectoryDiscovery(tmp_path).lookup(a.worker_id) is not None


class Recorder:
    """A transport's events, recorded: messages with the link they came on, links up and
    down."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, list[bytes]]] = []
        self.ups: list[bytes] = []
        self.downs: list[bytes] = []

    def message(self, link: bytes, frames: list[bytes]) -> None:
        self.messages.append((link, frames))

    def link_up(self, link: bytes) -> None:
        self.ups.append(link)

    def link_down(self, link: bytes, why: str, *, refused: bool = False) -> None:
        self.downs.append(link)

    def refused(self, link: bytes, what: str) -> None:
        pass

    def inbound_ended(self, peer: str, cut: str | None) -> None:
        pass


async def test_a_lost_connection_is_redialed_under_a_fresh_routing_id(tmp_path: Path) -> None:
    """Each connection presents a routing id of its own (docs/protocol.md §1): one that was
    lost is dialed again under a new one, so a peer still holding the old connection does
    not ignore the new one, and the link keeps its name."""
    loop = asyncio.get_running_loop()
    liveness = Liveness(0.1, 1.0)
    bind = f"ipc://{tmp_path}/peer.sock"
    dialer, dialer_events = ZmqTransport("tcp://127.0.0.1:0", max_message_size=4096), Recorder()
    dialer.start(loop, dialer_events, identity=b"w-dialer", liveness=liveness)
    link = dialer.connect(bind)
    seen: list[bytes] = []  # the routing id each listener saw the dialer's message under

    async def one_listener() -> None:
        listener, events = ZmqTransport(bind, max_message_size=4096), Recorder()
        listener.start(loop, events, identity=b"w-listener", liveness=liveness)
        try:
            await wait_until(lambda: len(dialer_events.ups) > len(seen))
            dialer.send(link, [b"hello"])
            await wait_until(lambda: events.messages != [])
            (routing_id, frames), *_ = events.messages
            assert frames == [b"hello"] and routing_id.startswith(b"w-dialer")
            seen.append(routing_id)
        finally:
            await listener.close()
        await wait_until(lambda: len(dialer_events.downs) == len(seen))

    try:
        await one_listener()
        await one_listener()  # the same address, after the first connection was lost
        assert dialer_events.ups == [link, link]  # one link throughout
        assert seen[1] != seen[0]
    finally:
        await dialer.close()


async def test_a_worker_linked_to_its_own_address_tells_inbound_connections_apart() -> None:
    """The monitor names events by endpoint, and a worker linked to its own address sees the
    connections others open to it under that same address: they are inbound connections
    (watched for their size), not its own link's (a false "the handshake failed")."""
    loop = asyncio.get_running_loop()
    liveness = Liveness(0.1, 1.0)
    a, a_events = ZmqTransport("tcp://127.0.0.1:0", max_message_size=4096), Recorder()
    b, b_events = ZmqTransport("tcp://127.0.0.1:0", max_message_size=4096), Recorder()
    address = a.start(loop, a_events, identity=b"w-a", liveness=liveness)
    b.start(loop, b_events, identity=b"w-b", liveness=liveness)
    try:
        own = a.connect(address)
        await wait_until(lambda: a_events.ups == [own])
        link = b.connect(address)
        await wait_until(lambda: b_events.ups == [link])
        b.send(link, [b"hello"])
        await wait_until(lambda: [b"hello"] in [frames for _, frames in a_events.messages])
        assert a_events.downs == []
    finally:
        await a.close()
        await b.close()


def test_a_descriptor_closed_before_the_monitor_said_so_reads_as_not_watched() -> None:
    """libzmq may close a connection's descriptor before its DISCONNECTED event is read: the
    inbound watch then reads nothing, and raises nothing out of its timer."""
    reader, writer = socket.socketpair()
    fd = reader.fileno()
    reader.close()
    writer.close()
    assert bytes_received(fd) is None and endpoints(fd) is None
    cut(fd)
