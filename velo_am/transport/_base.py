"""The transport seam: what a :class:`~velo_am.Worker` needs from whatever carries its frames.

A transport binds one inbound endpoint and hands every inbound message (its frames, without
any routing envelope) to a sink on the worker's event loop; for each peer, the worker opens a
:class:`Link` by address and sends frames on it. Sends never block: a link that cannot take a
message now raises :class:`LinkFull`, for that peer only. Messages on one link arrive in the
order they were sent; nothing is promised across links.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

__all__ = ["FrameSink", "Link", "LinkFull", "Transport"]

#: Called on the worker's loop with the frames of each inbound message.
FrameSink = Callable[[list[bytes]], None]


class LinkFull(Exception):
    """A send to one peer could not be queued (its queue is full, or the link is closed), or
    a link could not be opened (out of sockets, a malformed address)."""


class Link(Protocol):
    """The outbound path to one peer."""

    def send(self, frames: list[bytes]) -> None:
        """Queue one message (its frames) without blocking; :class:`LinkFull` if it cannot."""
        ...

    def close(self, linger: float) -> None:
        """Close, letting queued messages go out for at most ``linger`` seconds."""
        ...


class Transport(Protocol):
    """How a worker's messages travel: :class:`~velo_am.transport.ZmqTransport` in
    production, :class:`~velo_am.transport.FakeNetwork`'s transports in tests."""

    def start(self, loop: asyncio.AbstractEventLoop, sink: FrameSink) -> str:
        """Bind and start delivering inbound messages to ``sink`` on ``loop``; returns the
        address actually bound (a port 0 resolved), the one peers dial."""
        ...

    def open_link(self, address: str, peer_id: int | None = None) -> Link:
        """A link to the worker listening at ``address``; ``peer_id`` is that worker's id when
        known (a transport may apply per-peer settings, such as its security keys). Raises
        :class:`LinkFull` if no link can be opened."""
        ...

    async def close(self) -> None:
        """Stop receiving, close every link still open and release the endpoint."""
        ...
