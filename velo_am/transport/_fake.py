"""An in-process stand-in for ZeroMQ, for tests: no sockets, fast and deterministic.

A supported test double (like httpcore's mock backend): make one :class:`FakeNetwork` per
test, give each worker ``transport=network.transport()``, and the workers reach each other by
their ``fake://N`` addresses. Messages arrive in order through the event loop, as over a real
link; a message to an address nobody listens on is silently lost, as on a real network.
``network.filter`` drops chosen messages (a partition, a silent peer) and
``network.deliver`` injects raw frames (malformed or forged input)::

    network = FakeNetwork()
    async with Worker(1, transport=network.transport()) as a, \
            Worker(2, transport=network.transport(), peers=[a.address]) as b:
        network.filter = lambda address, frames: address != a.address  # b goes silent
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ._base import FrameSink, Link, LinkFull

__all__ = ["FakeNetwork", "FakeTransport"]


class _FakeLink:
    __slots__ = ("_address", "_closed", "_network")

    def __init__(self, network: FakeNetwork, address: str) -> None:
        self._network = network
        self._address = address
        self._closed = False

    def send(self, frames: list[bytes]) -> None:
        if self._closed:
            raise LinkFull("link closed")
        self._network.deliver(self._address, list(frames))

    def close(self, linger: float) -> None:
        self._closed = True


class FakeNetwork:
    """Transports that reach each other by address, within one process and event loop."""

    def __init__(self) -> None:
        self._listeners: dict[str, FakeTransport] = {}
        self._next = 0
        #: ``(address, frames) -> bool``, consulted for every message; False drops it.
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

    def deliver(self, address: str, frames: list[bytes]) -> None:
        """Hand ``frames`` to whoever listens at ``address`` (through ``filter``); lost if
        nobody does."""
        if self.filter is not None and not self.filter(address, frames):
            return
        target = self._listeners.get(address)
        if target is not None:
            target.receive(frames)


class FakeTransport:
    """One worker's transport on a :class:`FakeNetwork` (made by ``network.transport()``)."""

    def __init__(self, network: FakeNetwork, bind: str) -> None:
        self._network = network
        self._bind = bind
        self._address: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: FrameSink | None = None

    def start(self, loop: asyncio.AbstractEventLoop, sink: FrameSink) -> str:
        self._loop = loop
        self._sink = sink
        self._address = self._network.bind(self, self._bind)
        return self._address

    def receive(self, frames: list[bytes]) -> None:
        if self._loop is not None and self._sink is not None:
            self._loop.call_soon(self._sink, frames)

    def open_link(self, address: str, peer_id: int | None = None) -> Link:
        return _FakeLink(self._network, address)

    async def close(self) -> None:
        if self._address is not None:
            self._network.unbind(self._address)
            self._address = None
