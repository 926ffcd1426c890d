"""The public seams: transports (and the fake network as a test double), discovery schemes,
and socket security. Each is used here the way a user would plug into it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from support import FAKE_FAST, FAST
from zmq.auth.thread import ThreadAuthenticator

from velo_am import CallContext, PeerLost, PeerUnreachable, Worker
from velo_am._cli._shared import discovery_url
from velo_am.discovery import (
    DirectoryDiscovery,
    Discovery,
    DiscoveryEntry,
    open_discovery,
    register_scheme,
    schemes,
)
from velo_am.transport import (
    FakeNetwork,
    LinkId,
    Liveness,
    Plaintext,
    Transport,
    TransportEvents,
    ZmqSecurity,
    ZmqTransport,
)

# -- transports -------------------------------------------------------------------------------


async def test_the_fake_network_is_a_test_double_for_users() -> None:
    """A user testing their own handlers: two workers, no sockets, a partition on demand."""
    network = FakeNetwork()
    async with (
        Worker(1, transport=network.transport(), **FAKE_FAST) as server,  # type: ignore[arg-type]
        Worker(2, transport=network.transport(), peers=[server.address], **FAKE_FAST) as client,  # type: ignore[arg-type]
    ):
        hang = asyncio.Event()

        @server.handler("slow")
        async def slow(payload: Any, ctx: CallContext) -> None:
            await hang.wait()

        server.register_handler("double", lambda payload, ctx: payload * 2)
        assert await client.call(1, "double", 21) == 42
        call = asyncio.ensure_future(client.call(1, "slow"))
        network.filter = lambda address, frames: address != client.address  # server goes silent
        with pytest.raises(PeerLost, match="silent"):
            await asyncio.wait_for(call, 5)
        network.deliver(server.address, [b"not a message"])
        network.filter = None
        hang.set()


class CountingTransport:
    """A user's own transport: wraps another and counts what goes through it, and which
    links it was told went up or down."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.received = 0
        self.sent = 0
        self.ups: list[LinkId] = []

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        events: TransportEvents,
        *,
        identity: bytes,
        liveness: Liveness,
    ) -> str:
        transport = self

        class Counted:
            def message(self, link: LinkId, frames: list[bytes]) -> None:
                transport.received += 1
                events.message(link, frames)

            def link_up(self, link: LinkId) -> None:
                transport.ups.append(link)
                events.link_up(link)

            def link_down(self, link: LinkId, why: str, *, refused: bool = False) -> None:
                events.link_down(link, why, refused=refused)

            def refused(self, link: LinkId, what: str) -> None:
                events.refused(link, what)

            def inbound_ended(self, peer: str, cut: str | None) -> None:
                events.inbound_ended(peer, cut)

        return self.inner.start(loop, Counted(), identity=identity, liveness=liveness)

    def connect(self, address: str, peer_id: int | None = None) -> LinkId:
        return self.inner.connect(address, peer_id)

    def send(self, link: LinkId, frames: list[bytes]) -> None:
        self.inner.send(link, frames)
        self.sent += 1

    def authenticated(self, link: LinkId) -> str | None:
        return self.inner.authenticated(link)

    def disconnect(self, link: LinkId) -> None:
        self.inner.disconnect(link)

    def open_links(self) -> int:
        return self.inner.open_links()

    async def close(self) -> None:
        await self.inner.close()


async def test_a_transport_of_ones_own_plugs_in() -> None:
    network = FakeNetwork()
    counting = CountingTransport(network.transport())
    async with (
        Worker(1, transport=network.transport(), **FAKE_FAST) as a,  # type: ignore[arg-type]
        Worker(2, transport=counting, peers=[a.address], **FAKE_FAST) as b,  # type: ignore[arg-type]
    ):
        a.register_handler("echo", lambda payload, ctx: payload)
        assert await b.call(1, "echo", "x") == "x"
        assert counting.sent >= 2 and counting.received >= 2  # handshake, call, answer
    assert counting.ups, "the link b opened to a was reported up"


# -- security ---------------------------------------------------------------------------------


class PlainSecurity:
    """ZeroMQ's PLAIN mechanism through the security seam, checked by a ZAP authenticator
    (zmq.auth) that the security starts in the transport's context."""

    def __init__(self, password: bytes = b"secret") -> None:
        self.password = password
        self.calls: list[str] = []
        self.authenticator: ThreadAuthenticator | None = None

    def start(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.authenticator = ThreadAuthenticator(context)
        self.authenticator.start()
        self.authenticator.configure_plain(domain="*", passwords={"velo": "secret"})
        self.calls.append("start")

    def configure_listener(self, socket: zmq.Socket[bytes]) -> None:
        socket.plain_server = True
        self.calls.append("listener")

    def configure_link(
        self, socket: zmq.Socket[bytes], address: str, peer_id: int | None
    ) -> str | None:
        socket.plain_username = b"velo"
        socket.plain_password = self.password
        self.calls.append(f"link {peer_id}")
        return None  # PLAIN: the server proves nothing

    def advertise(self, address: str) -> str:
        return address

    def peer_identity(self, frame: zmq.Frame) -> str | None:
        return None

    def refusal(self, event: int, address: str) -> str | None:
        return None  # the refusal is retried until the join timeout, as before

    def close(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
        self.calls.append("close")


def zmq_worker(worker_id: int, security: ZmqSecurity, **options: Any) -> Worker:
    return Worker(worker_id, security=security, **FAST, **options)  # type: ignore[arg-type]


async def test_socket_security_applies_to_every_socket() -> None:
    first, second = PlainSecurity(), PlainSecurity()
    async with zmq_worker(1, first) as a, zmq_worker(2, second, peers=[a.address]) as b:
        a.register_handler("echo", lambda payload, ctx: payload)
        assert await b.call(1, "echo", "over PLAIN") == "over PLAIN"
        assert first.calls[:2] == ["start", "listener"]
        assert "link 2" in first.calls, "a's link to b knows b's id"
        assert "link None" in second.calls, "b dialed a before it knew a's id"
    assert first.calls[-1] == second.calls[-1] == "close"


def test_security_belongs_to_the_transport_it_configures() -> None:
    with pytest.raises(ValueError, match="give security and addresses to the transport"):
        Worker(1, transport=FakeNetwork().transport(), security=Plaintext())
    with pytest.raises(ValueError, match="give security and addresses to the transport"):
        Worker(1, transport=FakeNetwork().transport(), advertise="node7")
    transport = ZmqTransport("tcp://127.0.0.1:0", max_message_size=1024, security=Plaintext())
    assert isinstance(transport.security, Plaintext)


@pytest.mark.parametrize("security", [Plaintext(), PlainSecurity(password=b"guess")])
async def test_a_peer_the_security_refuses_cannot_reach_the_worker(security: ZmqSecurity) -> None:
    async with zmq_worker(1, PlainSecurity()) as secured:
        secured.register_handler("secret", lambda payload, ctx: "the plans")
        stranger = zmq_worker(
            2, security, peers=[secured.address], handshake_timeout=1.0, join_timeout=1.0
        )
        started = time.monotonic()
        with pytest.raises(PeerUnreachable, match=r"no seed answered within 1\.0 s") as raised:
            await stranger.start()
        cause = "authentication failed" if security.__class__ is PlainSecurity else "ZMTP handshake"
        assert cause in str(raised.value), "the cause is named"
        assert time.monotonic() - started < 5
        assert stranger.state == "closed"
        assert secured.peers == {} and secured.stats()["messages_in"] == 0


# -- discovery --------------------------------------------------------------------------------


class MemoryDiscovery:
    """A user's discovery backend: one dict per name, shared in this process."""

    boards: dict[str, dict[int, DiscoveryEntry]] = {}  # noqa: RUF012 - shared on purpose

    def __init__(self, name: str) -> None:
        self.board = self.boards.setdefault(name, {})

    async def publish(self, entry: DiscoveryEntry) -> None:
        self.board[entry.worker_id] = entry

    async def withdraw(self, worker_id: int, incarnation: int) -> None:
        if (entry := self.board.get(worker_id)) is not None and entry.incarnation == incarnation:
            del self.board[worker_id]

    async def find(self, worker_id: int) -> DiscoveryEntry | None:
        return self.board.get(worker_id)

    async def seeds(self) -> list[str]:
        return [entry.address for entry in self.board.values()]


async def test_a_discovery_scheme_of_ones_own_finds_workers_by_id() -> None:
    unregister = register_scheme("memtest", MemoryDiscovery, usage="memtest:NAME")
    try:
        assert schemes()["memtest"] == "memtest:NAME"
        network = FakeNetwork()
        options: dict[str, Any] = {**FAKE_FAST, "discovery": "memtest:team"}
        async with (
            Worker(1, transport=network.transport(), **options) as a,
            Worker(2, transport=network.transport(), **options) as b,
        ):
            a.register_handler("whoami", lambda payload, ctx: 1)
            assert await b.call(1, "whoami") == 1, "b was never told a's address"
            assert set(MemoryDiscovery.boards["team"]) == {1, 2}
        assert MemoryDiscovery.boards["team"] == {}, "both withdrew on close"
    finally:
        unregister()
    assert "memtest" not in schemes()
    with pytest.raises(ValueError, match="unsupported discovery 'memtest:team'"):
        open_discovery("memtest:team")


def test_discovery_urls(tmp_path: Path) -> None:
    found: Discovery = open_discovery(f"dir:{tmp_path}")
    assert isinstance(found, DirectoryDiscovery) and found.path == tmp_path
    for bad in ("nope:x", "dir:", "", "/just/a/path"):
        with pytest.raises(ValueError, match=r"expected one of dir:PATH"):
            open_discovery(bad)
    with pytest.raises(ValueError, match="a word"):
        register_scheme("no way", MemoryDiscovery, usage="x")


def test_the_cli_reads_a_discovery_url_or_a_directory(tmp_path: Path) -> None:
    assert discovery_url(f"dir:{tmp_path}") == f"dir:{tmp_path}"
    assert discovery_url(str(tmp_path)) == f"dir:{tmp_path}", "a bare path is a directory"
    assert discovery_url("relative/dir") == "dir:relative/dir"
    assert discovery_url("dns:head:29500") == "dns:head:29500"
    with pytest.raises(Exception, match=r"unknown discovery 'consul:web'.*dir:PATH, dns:NAME:PORT"):
        discovery_url("consul:web")
