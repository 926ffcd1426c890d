"""The transport seam: what a :class:`~velo_am.Worker` needs from whatever carries its frames.

A transport binds one endpoint that accepts connections and can also open connections to
other workers' endpoints. Every connection is a *link*, named by an opaque :data:`LinkId`
that is only meaningful to this transport: the links this worker opened (``connect``), and
the links other workers opened to it (they appear with the first message that arrives on
them). A message is sent on a link and arrives on the receiver's side of the same link, so an
answer goes back on the link its question came on. Messages on one link arrive in order.

Links this worker opened are *watched*: the transport reports, through
:meth:`TransportEvents.link_up` and :meth:`TransportEvents.link_down`, when the remote end
answers and when it stops answering (its process died or froze, the network between failed),
using heartbeats below the application (ZeroMQ's ZMTP heartbeats), so a worker whose event
loop is busy is still seen alive. Sends never block: a link that cannot take a message now
raises :class:`LinkFull`; a link that no longer exists raises :class:`LinkClosed`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

__all__ = ["LinkClosed", "LinkError", "LinkFull", "LinkId", "Liveness", "Transport"]
__all__ += ["TransportEvents"]

#: One connection as this worker's transport names it.
LinkId = bytes


class LinkError(Exception):
    """A message could not be sent on a link, or a link could not be opened."""


class LinkFull(LinkError):
    """The link's queue is full (the peer does not keep up), or no link could be opened (out
    of sockets, a malformed address)."""


class LinkClosed(LinkError):
    """The link does not exist (any more): the connection was closed or lost."""


@dataclass(frozen=True, slots=True)
class Liveness:
    """How links are watched: a heartbeat every ``interval`` seconds; a link whose remote end
    has not answered for ``timeout`` seconds is down."""

    interval: float
    timeout: float


class TransportEvents(Protocol):
    """What a transport reports to its worker, on the worker's event loop."""

    def message(self, link: LinkId, frames: list[bytes]) -> None:
        """A message arrived on ``link``."""
        ...

    def link_up(self, link: LinkId) -> None:
        """A link this worker opened reached its peer (again, after a loss)."""
        ...

    def link_down(self, link: LinkId, why: str, *, refused: bool = False) -> None:
        """A link this worker opened stopped reaching its peer (it may come back);
        ``refused``: the peer refused this worker's credentials (retrying cannot help)."""
        ...

    def refused(self, link: LinkId, what: str) -> None:
        """A message on ``link`` was dropped unread: it had more frames or bytes than a
        message may have (``what`` says how many)."""
        ...

    def inbound_ended(self, peer: str, cut: str | None) -> None:
        """A connection another process opened to this one (from ``peer``, its address)
        ended: closed by that process or dropped by the transport (``cut`` is ``None``), or
        cut by the transport for holding more than a message may take (``cut`` says why)."""
        ...


class Transport(Protocol):
    """How a worker's messages travel: :class:`~velo_am.transport.ZmqTransport` in
    production, :class:`~velo_am.transport.FakeNetwork`'s transports in tests."""

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        events: TransportEvents,
        *,
        identity: bytes,
        liveness: Liveness,
    ) -> str:
        """Bind and start reporting to ``events`` on ``loop``; returns the address peers
        connect to (a port 0 resolved): the bound endpoint, or what the worker advertises
        (one or more endpoints, separated by spaces). ``identity`` names this worker's
        side of the links it opens, as the other end sees them (unique per incarnation),
        followed by a nonce of each link's own: no two links collide, and nobody can present
        the name of another's link."""
        ...

    def connect(self, address: str, peer_id: int | None = None) -> LinkId:
        """Open a watched link to the worker listening at ``address`` (as it advertised it:
        with several endpoints, the transport picks the one to dial; ``peer_id``: that
        worker's id, when known, for per-peer settings such as security keys). Messages may
        be sent on it at once; they wait for the connection. Raises :class:`LinkFull` if no
        link can be opened."""
        ...

    def send(self, link: LinkId, frames: list[bytes]) -> None:
        """Queue one message on ``link`` without blocking: :class:`LinkFull` if its queue is
        full, :class:`LinkClosed` if the link is gone."""
        ...

    def authenticated(self, link: LinkId) -> str | None:
        """What the peer on ``link`` proved who it is with (its key, with CURVE), asked while
        a message on ``link`` is delivered; ``None``: nothing proved (plaintext). A key
        shared mesh-wide is returned like any other: it proves membership of the mesh, and
        every member speaks with it."""
        ...

    def disconnect(self, link: LinkId) -> None:
        """Close a link this worker opened (what is queued on it may still go out for a
        moment). Unknown links are ignored."""
        ...

    async def close(self) -> None:
        """Stop receiving, close every link and release the endpoint."""
        ...
