"""Inbound connections of the ZeroMQ transport, watched for what libzmq cannot bound.

libzmq 4.3 bounds each frame (``ZMQ_MAXMSGSIZE``) but not a message: a ROUTER keeps the frames
of a multipart message until its last one arrives, out of the application's sight, so a peer
that never ends one grows the process without bound (measured: +855 MiB in 1.5 s on
loopback). What can be seen from outside libzmq: the kernel's count of bytes received on each
TCP connection (``TCP_INFO``) and, for each message read, the connection it came on
(``ZMQ_SRCFD``). A connection that received more than ``limit`` bytes beyond what it delivered
and beyond its protocol chatter, while every complete message had been read and it delivered
none since the previous look, holds an unfinished message larger than any message may be: it
is cut (``shutdown``), so libzmq drops it and frees what it held.

:class:`InboundLedger` decides (pure, given the kernel's counts); :func:`bytes_received`,
:func:`endpoints` and :func:`cut` are the system calls. Connections other than TCP (``ipc://``)
have no ``TCP_INFO`` and are not watched.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from typing import Final

import zmq

from ._base import LinkId

__all__ = ["FRAMING", "WATCH_EVERY", "Inbound", "InboundLedger", "InboundWatch", "bytes_received"]
__all__ += ["cut", "endpoints"]

#: Seconds between looks at the inbound connections' byte counts.
WATCH_EVERY: Final = 0.1
#: Room, beyond the largest message, for what the kernel has received and libzmq not read.
KERNEL_ROOM: Final = 16 * 1024 * 1024
#: Bytes of ZMTP framing counted per frame read (a long frame's header is 9 bytes).
FRAMING: Final = 9
#: Growth between two looks small enough to be protocol chatter (heartbeats): it moves the
#: baseline instead of counting against the limit.
CHATTER: Final = 256
# struct tcp_info (linux/tcp.h): tcpi_bytes_received is the u64 at offset 128 (Linux >= 4.1).
_TCP_INFO: Final = getattr(socket, "TCP_INFO", 11)
_BYTES_RECEIVED: Final = struct.Struct("=Q")
_OFFSET: Final = 128


class Inbound:
    """One connection another process opened to this one: ``fd`` (libzmq's descriptor),
    ``peer`` (its remote address), what it delivered (``delivered`` bytes in ``messages``
    messages) and the ledger's state as of the previous look."""

    __slots__ = ("base", "delivered", "fd", "local", "messages", "peer", "received", "seen")

    def __init__(self, fd: int, peer: str, local: str) -> None:
        self.fd = fd
        self.peer = peer
        self.local = local
        self.delivered = 0
        self.messages = 0
        self.seen = 0
        self.received = 0
        #: Bytes received and not delivered that are explained (chatter, a message in flight).
        self.base = 0


class InboundLedger:
    """The watched inbound connections by descriptor. ``limit``: the most bytes one connection
    may hold unfinished (a message's largest size, and room for the kernel's buffer)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_fd: dict[int, Inbound] = {}

    def accepted(self, fd: int, peer: str, local: str) -> None:
        self.by_fd[fd] = Inbound(fd, peer, local)

    def delivered(self, fd: int, delivered: int, messages: int) -> None:
        """Connection ``fd`` delivered ``messages`` messages of ``delivered`` bytes."""
        conn = self.by_fd.get(fd)
        if conn is not None:
            conn.delivered += delivered
            conn.messages += messages

    def closed(self, fd: int) -> Inbound | None:
        return self.by_fd.pop(fd, None)

    def look(self, received: Mapping[int, int]) -> list[Inbound]:
        """The kernel's byte counts now (by descriptor), taken while no complete message
        waited to be read: the connections that hold more than ``limit`` unfinished bytes."""
        hoarding = []
        for fd, now in received.items():
            conn = self.by_fd.get(fd)
            if conn is None:
                continue
            held = now - conn.delivered
            if conn.messages != conn.seen or now - conn.received <= CHATTER:
                conn.base = held  # it finished a message, or only chattered: all explained
            elif held - conn.base > self.limit:
                hoarding.append(conn)
            conn.seen, conn.received = conn.messages, now
        return hoarding


def _socket(fd: int) -> socket.socket:
    return socket.socket(fileno=fd)


def bytes_received(fd: int) -> int | None:
    """The bytes TCP received on ``fd`` since it opened; ``None`` if it is not TCP (or no
    longer open: libzmq may close it before the monitor says so)."""
    try:
        sock = _socket(fd)
    except OSError:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _OFFSET + 8)
    except OSError:
        return None
    finally:
        sock.detach()  # the descriptor is libzmq's: never closed here
    if len(info) < _OFFSET + 8:
        return None
    return int(_BYTES_RECEIVED.unpack_from(info, _OFFSET)[0])


def endpoints(fd: int) -> tuple[str, str] | None:
    """``(remote, local)`` addresses of a TCP connection's descriptor, else ``None``."""
    try:
        sock = _socket(fd)
    except OSError:
        return None
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        remote, local = sock.getpeername(), sock.getsockname()
    except OSError:
        return None
    finally:
        sock.detach()
    return f"{remote[0]}:{remote[1]}", f"{local[0]}:{local[1]}"


def cut(fd: int) -> None:
    """End a connection libzmq holds: its engine sees the end and drops it (and its frames)."""
    try:
        sock = _socket(fd)
    except OSError:
        return  # already gone
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone
    finally:
        sock.detach()


class InboundWatch:
    """The ledger of the transport's inbound connections, fed by the socket monitor and the
    drain, and the system calls that read and cut them. A connection may hold
    ``max_message_size`` and the kernel's room unfinished."""

    def __init__(self, max_message_size: int) -> None:
        self.ledger = InboundLedger(max_message_size + KERNEL_ROOM)
        #: What each link delivered since the last look: [its connection's fd, bytes,
        #: messages]. The drain fills it; the fd (``ZMQ_SRCFD``) is asked once per link per
        #: look, not per message.
        self.deliveries: dict[LinkId, list[int]] = {}

    def concerns(self, kind: int, fd: int) -> bool:
        """Whether a monitor event is about an inbound connection: its acceptance, or the
        end of one accepted (and watched)."""
        return kind == zmq.EVENT_ACCEPTED or (
            kind == zmq.EVENT_DISCONNECTED and fd in self.ledger.by_fd
        )

    def on_event(self, kind: int, fd: int) -> str | None:
        """A monitor event of an inbound connection: accepted (watched, if TCP) or ended.
        Returns the remote address of a watched connection that ended."""
        if kind == zmq.EVENT_ACCEPTED:
            addresses = endpoints(fd)
            if addresses is not None:
                self.ledger.accepted(fd, *addresses)
        elif kind == zmq.EVENT_DISCONNECTED:
            inbound = self.ledger.closed(fd)
            if inbound is not None:
                return inbound.peer
        return None

    def book_deliveries(self) -> bool:
        """Book what the drain delivered since the last call; whether any connection is
        watched."""
        ledger = self.ledger
        for fd, delivered, messages in self.deliveries.values():
            ledger.delivered(fd, delivered, messages)
        self.deliveries.clear()
        return bool(ledger.by_fd)

    def cut_hoarders(self) -> list[tuple[str, str]]:
        """Cut the connections holding more than the limit of an unfinished message (to be
        called while no complete message waits to be read); ``(peer, why)`` for each."""
        ledger = self.ledger
        counts = {}
        for fd in ledger.by_fd:
            count = bytes_received(fd)
            if count is not None:
                counts[fd] = count
        ended = []
        for inbound in ledger.look(counts):
            ledger.closed(inbound.fd)
            if endpoints(inbound.fd) != (inbound.peer, inbound.local):
                continue  # the descriptor is another connection's by now
            cut(inbound.fd)
            held = counts[inbound.fd] - inbound.delivered
            why = (
                f"it held {held} bytes of an unfinished message (more than the "
                f"{ledger.limit} bytes any message may take, with the kernel's buffer)"
            )
            ended.append((inbound.peer, why))
        return ended

    def clear(self) -> None:
        self.ledger.by_fd.clear()
        self.deliveries.clear()
