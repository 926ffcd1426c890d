"""An in-process stand-in for ZeroMQ, for tests: no sockets, fast and deterministic.

A supported test double (like httpcore's mock backend): make one :class:`FakeNetwork` per
test, give each worker ``transport=network.transport()``, and the workers reach each other by
their ``fake://N`` addresses. It keeps the real transport's semantics: links are connections
that carry messages both ways, in order, through the event loop; the links a worker opens are
watched (up once the other end listens, down once it has been unreachable for the liveness
timeout, or at once when it closes), and a message to nobody is lost, as on a real network.

``network.filter`` drops chosen messages (a partition, a silent peer): it is asked about every
message and every heartbeat, by the address it is going to. ``network.deliver`` injects raw
frames on a link of their own (malformed or forged input)::

    network = FakeNetwork()
    async with Worker(1, transport=network.transport()) as a, \\
            Worker(2, transport=network.transport(), peers=[a.address]) as b:
        network.filter = lambda address, frames: address != a.address  # b goes silent
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable
from typing import Final

from ._base import LinkClosed, LinkId, Liveness, TransportEvents

__all__ = ["FakeNetwork", "FakeTransport"]

_HEARTBEAT: Final = [b"\x00heartbeat"]


class _Connection:
    """One link between a dialer and a listener, as each end names it."""

    __slots__ = ("address", "dialer", "dialer_link", "listener", "listener_link", "open")

    def __init__(self, dialer: FakeTransport, dialer_link: LinkId, address: str) -> None:
        self.dialer = dialer
        self.dialer_link = dialer_link
        self.address = address
        self.listener: FakeTransport | None = None
        self.listener_link: LinkId = b""
        self.open = True


class _Watch:
    """A dialer's view of one of its links: is it up, and since when is it unreachable."""

    __slots__ = ("connection", "silent_since", "up")

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.up = False
        self.silent_since: float | None = None


class FakeNetwork:
    """Transports that reach each other by address, within one process and event loop."""

    def __init__(self) -> None:
        self._listeners: dict[str, FakeTransport] = {}
        self._aliases: dict[str, str] = {}
        self._next = 0
        #: ``(address, frames) -> bool``, asked about every message (and heartbeat) going to
        #: ``address``; False drops it.
        self.filter: Callable[[str, list[bytes]], bool] | None = None

    def transport(self, bind: str = "fake://auto") -> FakeTransport:
        """A transport on this network; ``fake://auto`` binds the next ``fake://N``."""
        return FakeTransport(self, bind)

    def bind(self, transport: FakeTransport, bind: str) -> str:
        """Register ``transport`` as the listener at ``bind`` (called by its ``start``)."""
        if bind == "fake://auto":
            self._next += 1
            bind = f"fake://{self._next}"
        if bind in self._listeners:
            raise OSError(f"address in use: {bind}")
        self._listeners[bind] = transport
        return bind

    def unbind(self, address: str) -> None:
        self._listeners.pop(address, None)

    def alias(self, other: str, address: str) -> None:
        """``other`` is another spelling of ``address`` (a host name for an IP address):
        what goes to ``other`` reaches whoever listens at ``address``, now or later."""
        self._aliases[other] = address

    def listener(self, address: str) -> FakeTransport | None:
        return self._listeners.get(self._aliases.get(address, address))

    def passes(self, address: str, frames: list[bytes]) -> bool:
        return self.filter is None or self.filter(address, frames)

    def deliver(self, address: str, frames: list[bytes]) -> None:
        """Hand ``frames`` to whoever listens at ``address`` (through ``filter``), as if on
        a link nobody opened before; lost if nobody listens."""
        target = self.listener(address)
        if target is not None and self.passes(address, frames):
            target.inject(frames)


class FakeTransport:
    """One worker's transport on a :class:`FakeNetwork` (made by ``network.transport()``)."""

    def __init__(self, network: FakeNetwork, bind: str) -> None:
        self._network = network
        self._bind = bind
        self._address: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: TransportEvents | None = None
        self._identity = b""
        self._liveness = Liveness(1.0, 5.0)
        self._ids = itertools.count(1)
        self._watches: dict[LinkId, _Watch] = {}  # links this transport opened
        self._accepted: dict[LinkId, _Connection] = {}  # links others opened to it
        self._by_address: dict[str, LinkId] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        events: TransportEvents,
        *,
        identity: bytes,
        liveness: Liveness,
    ) -> str:
        self._loop = loop
        self._events = events
        self._identity = identity
        self._liveness = liveness
        self._address = self._network.bind(self, self._bind)
        self._timer = loop.call_later(liveness.interval, self._heartbeat)
        return self._address

    async def close(self) -> None:
        if self._address is None:
            return
        self._network.unbind(self._address)
        self._address = None
        if self._timer is not None:
            self._timer.cancel()
        for watch in list(self._watches.values()):
            watch.connection.open = False
        for connection in list(self._accepted.values()):
            connection.open = False
            connection.dialer.lost(connection.dialer_link, "disconnected (its endpoint closed)")
        self._watches.clear()
        self._accepted.clear()
        self._by_address.clear()

    # -- links --------------------------------------------------------------------------------

    def connect(self, address: str, peer_id: int | None = None) -> LinkId:
        existing = self._by_address.get(address)
        if existing is not None:
            return existing
        link = b"o" + next(self._ids).to_bytes(8, "big")
        connection = _Connection(self, link, address)
        self._watches[link] = _Watch(connection)
        self._by_address[address] = link
        assert self._loop is not None, "transport not started"
        self._loop.call_soon(self._check, link)
        return link

    def disconnect(self, link: LinkId) -> None:
        watch = self._watches.pop(link, None)
        if watch is not None:
            self._by_address.pop(watch.connection.address, None)
            self._close_connection(watch.connection)

    def send(self, link: LinkId, frames: list[bytes]) -> None:
        watch = self._watches.get(link)
        if watch is not None:
            connection = watch.connection
            target = self._attach(connection)
            if target is not None and self._network.passes(connection.address, frames):
                target.receive(connection.listener_link, frames)
            return  # not reachable now: lost, as a real link's queue would be
        connection_in = self._accepted.get(link)
        if connection_in is None or not connection_in.open:
            raise LinkClosed("no such connection (closed or lost)")
        dialer = connection_in.dialer
        back = dialer.address
        if back is not None and self._network.passes(back, frames):
            dialer.receive(connection_in.dialer_link, frames)

    def open_links(self) -> int:
        return len(self._watches)

    @property
    def address(self) -> str | None:
        return self._address

    # -- the network's side -------------------------------------------------------------------

    def receive(self, link: LinkId, frames: list[bytes]) -> None:
        if self._loop is not None and self._events is not None and self._address is not None:
            self._loop.call_soon(self._events.message, link, list(frames))

    def inject(self, frames: list[bytes]) -> None:
        self.receive(b"i" + next(self._ids).to_bytes(8, "big"), frames)

    def accept(self, connection: _Connection) -> None:
        # As with ZeroMQ: the listener names a link by the routing id the dialer presents,
        # its identity and a nonce of this connection's own.
        link = connection.dialer.identity + secrets.token_bytes(8)
        connection.listener = self
        connection.listener_link = link
        self._accepted[link] = connection

    def authenticated(self, link: LinkId) -> str | None:
        return None  # no security: nobody proves anything

    @property
    def identity(self) -> bytes:
        return self._identity

    def lost(self, link: LinkId, why: str) -> None:
        """The listener of one of this transport's links went away."""
        watch = self._watches.get(link)
        if watch is not None and watch.up:
            watch.up = False
            watch.silent_since = None
            if self._events is not None and self._loop is not None:
                self._loop.call_soon(self._events.link_down, link, why)

    def _attach(self, connection: _Connection) -> FakeTransport | None:
        """The listener this connection reaches now (connecting it on first use)."""
        if not connection.open:
            return None
        listener = self._network.listener(connection.address)
        if listener is None:
            return None
        if connection.listener is not listener:
            listener.accept(connection)
        return listener

    def _close_connection(self, connection: _Connection) -> None:
        connection.open = False
        listener = connection.listener
        if listener is not None:
            listener.forget(connection.listener_link)

    def forget(self, link: LinkId) -> None:
        self._accepted.pop(link, None)

    # -- watching: the ZMTP heartbeat, emulated -----------------------------------------------

    def _reachable(self, connection: _Connection) -> bool:
        network = self._network
        return (
            self._attach(connection) is not None
            and network.passes(connection.address, _HEARTBEAT)
            and self._address is not None
            and network.passes(self._address, _HEARTBEAT)
        )

    def _check(self, link: LinkId) -> None:
        watch = self._watches.get(link)
        loop, events = self._loop, self._events
        if watch is None or loop is None or events is None:
            return
        now = loop.time()
        if self._reachable(watch.connection):
            watch.silent_since = None
            if not watch.up:
                watch.up = True
                events.link_up(link)
        elif watch.up:
            if watch.silent_since is None:
                watch.silent_since = now
            elif now - watch.silent_since >= self._liveness.timeout:
                watch.up = False
                events.link_down(link, f"silent for {self._liveness.timeout} s")
        elif self._network.listener(watch.connection.address) is None and (
            watch.silent_since is None
        ):
            watch.silent_since = now  # reported once: nobody listens there
            events.link_down(link, "connection refused")

    def _heartbeat(self) -> None:
        if self._loop is None or self._address is None:
            return
        for link in list(self._watches):
            self._check(link)
        self._timer = self._loop.call_later(self._liveness.interval, self._heartbeat)
