"""The links a :class:`~velo_am.transport.ZmqTransport` opened: what it keeps of each, and
what the socket monitor's events on them mean."""

from __future__ import annotations

from typing import Final

import zmq

__all__ = ["FAILED", "REDIAL_EVERY", "WATCHED", "Outgoing"]

# A link re-dialed at most once a second: a peer that accepts and drops connections at once
# gets libzmq's own reconnection, which backs off, not a loop.
REDIAL_EVERY: Final = 1.0

# libzmq reports every connection error during a handshake as HANDSHAKE_FAILED_NO_DETAIL: a
# server that does not hold the key dialled, and as well one that accepts and closes (it is
# restarting, overloaded, or no ZeroMQ server at all). The link's end is reported only when
# that many handshakes in a row failed so (libzmq redials in between: 0.1 s, then backing
# off), none succeeding: a wrong key fails every time, a restart seldom so often.
UNEXPLAINED_IN_A_ROW: Final = 3

WATCHED: Final = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_CONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
FAILED: Final[dict[int, str]] = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the ZMTP handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: (
        "the ZMTP handshake failed (protocol error: does one side use CURVE, the other not?)"
    ),
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication failed (the peer refused our credentials)",
}


class Outgoing:
    """One link this worker opened. ``fd`` is its current connection's descriptor: the
    monitor reports events by endpoint, and an event of an earlier connection to the same
    address (the link closed and reopened, a peer restarted there) must not count.
    ``connection`` is the routing id of its current ZeroMQ connection: the link's own id
    until the link is re-dialed (see :meth:`ZmqTransport._redial`)."""

    __slots__ = (
        "address",
        "connection",
        "dialled",
        "fd",
        "identity",
        "peer_id",
        "redialed_at",
        "reported_down",
        "unexplained_failures",
        "up",
    )

    def __init__(self, address: str, dialled: str, connection: bytes, peer_id: int | None) -> None:
        self.address = address
        #: The address as given (with its tokens, e.g. the key dialled).
        self.dialled = dialled
        self.connection = connection
        self.peer_id = peer_id
        self.redialed_at = -REDIAL_EVERY
        #: What the peer proves by answering (the security's; e.g. the server key dialled).
        self.identity: str | None = None
        self.fd: int | None = None
        self.up = False
        self.reported_down = False
        #: Handshakes failed without detail since the last that succeeded.
        self.unexplained_failures = 0

    def unexplained(self) -> bool:
        """A handshake failed without detail: whether to let libzmq redial (fewer than
        :data:`UNEXPLAINED_IN_A_ROW` in a row), not report the link down."""
        self.unexplained_failures += 1
        return self.unexplained_failures < UNEXPLAINED_IN_A_ROW
