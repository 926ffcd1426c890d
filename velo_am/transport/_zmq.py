"""The ZeroMQ transport: one ROUTER socket per worker, both bound and connected.

The ROUTER binds the worker's endpoint, accepting the links other workers open, and connects
out to the workers this one has business with, naming each such link with a routing id of
its own (``ZMQ_CONNECT_ROUTING_ID``). Every message, both ways, carries its link's routing id,
so an answer goes back on the link its question came on: a worker that serves many callers
needs no connection of its own to each. One socket per worker, whatever the mesh's size; one
TCP connection per pair of workers that talk.

Links are watched below the application: ZMTP heartbeats, answered by libzmq's I/O thread even
while the worker's event loop is busy, and the socket monitor's events (handshake succeeded,
disconnected, connection refused, handshake failed) become ``link_up`` / ``link_down``.
Inbound connections are watched for what libzmq cannot bound (:mod:`._inbound`): a message
of more frames or bytes than the protocol allows is dropped uncopied, and a connection
holding an unfinished message larger than any message may be is cut.
The socket is read from the event loop: its descriptor is edge-triggered, so a drain reads
until empty (a lone message: until ``ZMQ_EVENTS`` says so; a burst: until ``zmq.Again``), one
cut short reschedules itself. A send may take the edge: the first since the last drain looks
at once, later ones leave one look to the loop's next iteration. A look that finds a message
receives it at once: libzmq 4.3.5 aborts (``!_more``, fq.cpp:80; libzmq #3485) if a
connection is dropped while a message of it is prefetched, as a look does. A look inside a
send hands what it received on at the next drain, scheduled at once, not inside the send.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import zmq
from zmq.utils.monitor import recv_monitor_message

from .._select import COMPILED
from ._addresses import (
    Interface,
    advertised_address,
    choose_endpoint,
    endpoints_of,
    listen_endpoint,
    local_interfaces,
)
from ._base import LinkClosed, LinkFull, LinkId, Liveness, TransportEvents
from ._inbound import FRAMING, WATCH_EVERY, InboundWatch
from ._outgoing import FAILED, REDIAL_EVERY, WATCHED, Outgoing
from ._security import Plaintext, ZmqSecurity

if TYPE_CHECKING or not COMPILED:
    from .._drain import EMPTY, Receiver
else:
    from .._compiled._drain import EMPTY, Receiver

__all__ = ["ZmqTransport"]

logger = logging.getLogger(__name__)

#: Connections waiting to be accepted (ZeroMQ's default is 100).
_LISTEN_BACKLOG: Final = 4096
# Messages handled per loop callback before yielding to other tasks.
_DRAIN_BATCH: Final = 512
_NOBLOCK: Final = int(zmq.NOBLOCK)
# The compiled socket's methods, called directly: the hot path skips pyzmq's Python wrappers.
_send_frame: Final = zmq.backend.Socket.send
_get_option: Final = cast(Callable[[zmq.Socket[bytes], int], int], zmq.backend.Socket.get)
_MORE_NOBLOCK: Final = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)


class ZmqTransport:
    """Links over real ZeroMQ sockets; the context is created by :meth:`start`, in the
    process (and on the loop) that uses it.

    ``bind`` is the endpoint (``tcp://HOST:PORT``, port 0 for any free one; ``ipc://PATH``);
    ``advertise`` and ``interface`` say what address others dial (see
    :mod:`~velo_am.transport._addresses`: a wildcard bind advertises the host's addresses);
    ``max_message_size`` bounds each inbound frame (libzmq drops the connection of a peer that
    sends a larger one) and each message (``max_frames`` frames at most, the protocol's two by
    default; a larger message is dropped uncopied, reported by ``TransportEvents.refused``);
    an inbound connection holding an unfinished message larger than that is cut (reported by
    ``TransportEvents.inbound_ended``); ``send_queue`` and ``receive_queue`` are the
    high-water marks of each link; ``security`` configures the socket before it binds and
    before each connection (:class:`Plaintext` by default).
    """

    def __init__(
        self,
        bind: str,
        *,
        max_message_size: int,
        max_frames: int = 2,
        send_queue: int = 100_000,
        receive_queue: int = 100_000,
        security: ZmqSecurity | None = None,
        advertise: str | None = None,
        interface: str | None = None,
    ) -> None:
        self._bind = bind
        self._advertise = advertise or None  # "": the bound address, whatever else is set
        self._interface = interface or None
        #: This host's interfaces, read at start: dials choose among a peer's endpoints by them.
        self._interfaces: list[Interface] = []
        self.security: ZmqSecurity = Plaintext() if security is None else security
        self._max_message_size = max_message_size
        self._max_frames = max_frames
        self._inbound = InboundWatch(max_message_size)
        self._deliveries = self._inbound.deliveries
        self._watch_timer: asyncio.TimerHandle | None = None
        self._watch_due = False
        self._send_queue = send_queue
        self._receive_queue = receive_queue
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: TransportEvents | None = None
        self._drain_scheduled = False
        self._receiver: Receiver | None = None  # the receive loop, made at start
        self._draining = False  # a drain is delivering: sends leave the last look to it
        self._looked = False  # a send has looked at once since the last drain or look
        self._ids = itertools.count(1)
        self._outgoing: dict[LinkId, Outgoing] = {}
        self._by_address: dict[str, LinkId] = {}
        # Links re-dialed after a lost connection: the link -> its connection's routing id,
        # and back. Empty unless a connection was lost while its link stayed open.
        self._connection_of: dict[LinkId, bytes] = {}
        self._link_of: dict[bytes, LinkId] = {}
        self._silent = ""
        self._identity = b""

    # -- lifecycle ----------------------------------------------------------------------------

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
        self._receiver = Receiver(
            events.message,
            self._refused,
            self._deliveries,
            self._max_message_size,
            self._max_frames,
            FRAMING,
        )
        self._identity = identity
        self._interfaces = local_interfaces()
        bind = listen_endpoint(self._bind, self._interface, self._interfaces)
        self._context = context = zmq.Context()
        self.security.start(context)
        self._router = router = context.socket(zmq.ROUTER)
        # A ping every interval; the link is dropped when nothing answers a ping within
        # timeout - interval, so a dead peer is noticed within ``timeout`` of its last sign.
        interval_ms = max(int(liveness.interval * 1000), 1)
        timeout_ms = max(int(liveness.timeout * 1000) - interval_ms, interval_ms)
        for option, value in (
            (zmq.ROUTER_MANDATORY, 1),
            # No ROUTER_HANDOVER: each connection this worker opens presents a routing id of
            # its own (see connect), so a reconnecting worker never collides with its old
            # connection lingering on the other side, and nobody can take over a link by
            # presenting a member's id (handover also let libzmq replace a connection in the
            # middle of a message).
            # A link closed while messages wait on it (a goodbye's answer) lets them out first.
            (zmq.LINGER, 200),
            (zmq.MAXMSGSIZE, self._max_message_size),
            (zmq.RCVHWM, self._receive_queue),
            (zmq.SNDHWM, self._send_queue),
            (zmq.HEARTBEAT_IVL, interval_ms),
            (zmq.HEARTBEAT_TIMEOUT, timeout_ms),
            (zmq.HEARTBEAT_TTL, int(liveness.timeout * 1000)),
            (zmq.RECONNECT_IVL, 100),
            (zmq.RECONNECT_IVL_MAX, 2000),
            # ZeroMQ's default accept queue (100) overflowed when a few hundred peers dialed
            # at once, and each dropped dial waited seconds for its retry (the kernel caps
            # this at net.core.somaxconn).
            (zmq.BACKLOG, _LISTEN_BACKLOG),
        ):
            router.setsockopt(option, value)
        try:
            self.security.configure_listener(router)
            router.bind(bind)
            bound = router.getsockopt(zmq.LAST_ENDPOINT)
            assert isinstance(bound, bytes)
            advertised = self.security.advertise(
                advertised_address(
                    bound.decode(),
                    advertise=self._advertise,
                    interface=self._interface,
                    interfaces=self._interfaces,
                )
            )
        except (zmq.ZMQError, ValueError):  # no port is left bound, nothing half-started
            router.close(linger=0)
            self.security.close()
            context.term()
            self._router = self._context = None
            raise
        self._silent = (
            f"silent for {liveness.timeout} s or disconnected (no heartbeat answer, or the "
            "connection closed)"
        )
        self._monitor = monitor = router.get_monitor_socket(WATCHED)
        loop.add_reader(router.FD, self._drain)
        loop.add_reader(monitor.FD, self._drain_monitor)
        self._schedule_drain()  # messages may have arrived before the readers were added
        loop.call_soon(self._drain_monitor)
        self._watch_timer = loop.call_later(WATCH_EVERY, self._watch_inbound)
        if advertised != bound.decode():
            logger.info("listening on %s, advertised as %s", bound.decode(), advertised)
        return advertised

    async def close(self) -> None:
        router, monitor, context = self._router, self._monitor, self._context
        if router is None or context is None:
            return
        self._router = self._monitor = None
        self._context = None
        if self._watch_timer is not None:
            self._watch_timer.cancel()
        self._inbound.clear()
        if self._loop is not None:
            self._loop.remove_reader(router.FD)
            if monitor is not None:
                self._loop.remove_reader(monitor.FD)
        if monitor is not None:
            router.disable_monitor()
            monitor.close(linger=0)
        router.close(linger=0)
        self._outgoing.clear()
        self._by_address.clear()
        self._connection_of.clear()
        self._link_of.clear()
        self.security.close()
        try:
            await asyncio.to_thread(context.term)
        except RuntimeError:
            # At interpreter exit (a worker closed by an atexit hook) executors refuse new
            # jobs. Every socket is closed with linger 0, so term() returns at once anyway.
            context.term()

    # -- links --------------------------------------------------------------------------------

    def connect(self, address: str, peer_id: int | None = None) -> LinkId:
        router = self._router
        if router is None:
            raise LinkClosed("transport closed")
        given = address
        address = choose_endpoint(endpoints_of(address), self._interfaces)
        existing = self._by_address.get(address)
        if existing is not None:
            return existing
        link = self._new_connection_id()
        try:
            outgoing = Outgoing(address, given, link, peer_id)
            self._connect(router, link, outgoing)
        except (zmq.ZMQError, ValueError) as error:
            raise LinkFull(f"cannot connect to {address}: {error}") from None
        self._outgoing[link] = outgoing
        self._by_address[address] = link
        self._recheck()
        return link

    def _new_connection_id(self) -> bytes:
        return b"o" + next(self._ids).to_bytes(8, "big")  # never 0-led: libzmq's own ids are

    def _connect(self, router: zmq.Socket[bytes], connection: bytes, outgoing: Outgoing) -> None:
        router.setsockopt(zmq.CONNECT_ROUTING_ID, connection)
        # What the other side names this connection: libzmq copies the socket's options at
        # connect, so each connection presents a routing id of its own that nobody can
        # predict (the bound listener keeps the options it had at bind).
        router.setsockopt(zmq.ROUTING_ID, self._identity + secrets.token_bytes(8))
        outgoing.identity = self.security.configure_link(router, outgoing.dialled, outgoing.peer_id)
        router.connect(outgoing.address)

    def _redial(self, link: LinkId, outgoing: Outgoing) -> None:
        """The link's connection, which had completed its handshake, was lost: connect
        again under fresh routing ids. libzmq's own reconnection would present the old
        routing id, which the other side may still hold for the old connection (a peer
        frozen, a partition): without handover it would ignore the new one. The link keeps
        its id; what was queued on it is dropped. A new connection that fails is retried by
        libzmq, backing off (``RECONNECT_IVL`` to ``RECONNECT_IVL_MAX``), as is one lost
        within ``REDIAL_EVERY`` of the last re-dial."""
        router, loop = self._router, self._loop
        if router is None or loop is None or loop.time() - outgoing.redialed_at < REDIAL_EVERY:
            return
        outgoing.redialed_at = loop.time()
        try:
            router.disconnect(outgoing.address)
        except zmq.ZMQError as error:
            logger.debug("disconnecting %s: %s", outgoing.address, error)
        self._link_of.pop(outgoing.connection, None)
        connection = self._new_connection_id()
        try:
            self._connect(router, connection, outgoing)
        except (zmq.ZMQError, ValueError) as error:  # the link stays down; its owner closes it
            logger.warning("reconnecting to %s: %s", outgoing.address, error)
            return
        outgoing.connection = connection
        self._connection_of[link] = connection
        self._link_of[connection] = link
        self._recheck()

    def disconnect(self, link: LinkId) -> None:
        outgoing = self._outgoing.pop(link, None)
        if outgoing is None or self._router is None:
            return
        self._by_address.pop(outgoing.address, None)
        self._connection_of.pop(link, None)
        self._link_of.pop(outgoing.connection, None)
        try:
            self._router.disconnect(outgoing.address)
        except zmq.ZMQError as error:  # the endpoint was never connected (a bad address)
            logger.debug("disconnecting %s: %s", outgoing.address, error)
        self._recheck()

    def send(self, link: LinkId, frames: list[bytes]) -> None:
        router = self._router
        if router is None:
            raise LinkClosed("transport closed")
        # Frame by frame with plain int flags, through the compiled socket's own method (the
        # Python wrapper around it adds a call per frame): half the cost of send_multipart.
        send = _send_frame
        if self._connection_of:
            link = self._connection_of.get(link, link)
        try:
            send(router, link, _MORE_NOBLOCK)
            for frame in frames[:-1]:
                send(router, frame, _MORE_NOBLOCK)
            send(router, frames[-1], _NOBLOCK)
        except zmq.Again:
            raise LinkFull("the peer's queue is full") from None
        except zmq.ZMQError as error:
            if error.errno == errno.EHOSTUNREACH:
                raise LinkClosed("no such connection (closed or lost)") from None
            raise LinkFull(str(error)) from None
        # A send may consume the edge of the socket's descriptor that announced messages to
        # read: look (else they would wait for the next edge, maybe forever). A drain
        # delivering, or a look or drain due, sees what this send may have hidden. Else the
        # first send since the last drain looks at once: a lone send (the latency case) costs
        # no loop callback. Later ones leave one look to the loop's next iteration.
        if self._draining or self._drain_scheduled:
            return
        if self._looked:
            self._recheck()
        else:
            self._looked = True
            receiver = self._receiver
            if receiver is not None and _get_option(router, _EVENTS) & _POLLIN:
                receiver.hold(router)  # received at once, handed on by the drain
                self._schedule_drain()

    def _recheck(self) -> None:
        """Any operation on the socket (a send, a connect) may consume the edge of its file
        descriptor that announced messages to read: look, and drain if some wait (else they
        would wait for the next edge, maybe forever). The look (``ZMQ_EVENTS``, as dear as a
        send) is made once, by the loop's next iteration, however many operations come
        first."""
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._look)

    def authenticated(self, link: LinkId) -> str | None:
        """What the peer on ``link`` proved (its key, with CURVE): for a link this worker
        opened, the identity it dialled; for another, what the message being delivered on
        it proved. ``None``: nothing (plaintext); a key shared mesh-wide is that key."""
        outgoing = self._outgoing.get(link)
        if outgoing is not None:
            return outgoing.identity
        delivering = None if self._receiver is None else self._receiver.delivering
        if delivering is None or delivering[0] != link:
            return None
        return self.security.peer_identity(delivering[1])

    def open_links(self) -> int:
        """Links this worker opened and has not closed (for statistics and tests)."""
        return len(self._outgoing)

    # -- reading ------------------------------------------------------------------------------

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain_later)

    def _drain_later(self) -> None:
        self._drain_scheduled = False
        self._drain()

    def _look(self) -> None:
        self._drain_scheduled = False
        self._looked = False
        router = self._router
        if router is not None and _get_option(router, _EVENTS) & _POLLIN:
            self._drain()

    def _drain(self) -> None:
        """Read and deliver up to ``_DRAIN_BATCH`` messages (:mod:`velo_am._drain`'s loop,
        compiled with the hot set); the inbound connections are checked once none is left."""
        router, receiver = self._router, self._receiver
        if router is None or receiver is None:
            return
        self._draining = True
        self._looked = False
        try:
            found = receiver.drain(router, _DRAIN_BATCH, self._inbound.ledger.by_fd, self._link_of)
        except zmq.ZMQError as error:
            logger.warning("receive failed: %s", error)
            return
        finally:
            self._draining = False
        if found == EMPTY:
            if self._watch_due:
                self._check_inbound()
        else:
            self._schedule_drain()  # more may be queued; let other tasks run first

    def _refused(self, link: LinkId, what: str) -> None:
        # Looked up when a message is refused, not bound at start: a partial events object
        # (the tests' inboxes report only what they watch) works until one is.
        if self._events is not None:
            self._events.refused(link, what)

    def _drain_monitor(self) -> None:
        monitor, events = self._monitor, self._events
        if monitor is None or events is None:
            return
        while True:
            try:
                event = recv_monitor_message(monitor, _NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            kind, value = int(event["event"]), int(event["value"])
            if self._inbound.concerns(kind, value):  # a connection another worker opened to us
                # (told apart by kind and descriptor first: a worker that dialed its own
                # address sees its inbound connections under that address too)
                ended = self._inbound.on_event(kind, value)
                if ended is not None:
                    events.inbound_ended(ended, None)
                continue
            endpoint = event["endpoint"].decode(errors="replace")
            link = self._by_address.get(endpoint)
            outgoing = self._outgoing.get(link) if link is not None else None
            if link is None or outgoing is None:
                continue  # watched from the side that opened it
            try:
                if kind == zmq.EVENT_CONNECTED:
                    outgoing.fd = value
                elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    outgoing.unexplained_failures = 0
                    if outgoing.fd is not None and not outgoing.up:
                        outgoing.up, outgoing.reported_down = True, False
                        events.link_up(link)
                elif kind == zmq.EVENT_DISCONNECTED:
                    if value == outgoing.fd:
                        outgoing.fd = None
                        if outgoing.up:  # never up (a handshake failed): libzmq retries it
                            self._redial(link, outgoing)  # first: what is sent next goes on it
                        self._down(link, outgoing, self._silent)
                elif outgoing.fd is not None:  # the current connection's handshake failed
                    if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and outgoing.unexplained():
                        outgoing.fd = None  # libzmq redials; its disconnection ends nothing
                        continue
                    refusal = self.security.refusal(kind, outgoing.dialled)
                    if refusal is not None:
                        self._down(link, outgoing, refusal, refused=True)
                    else:
                        self._down(link, outgoing, FAILED.get(kind, "the handshake failed"))
            except Exception:
                logger.exception("link event handler failed")

    def _watch_inbound(self) -> None:
        """Every ``WATCH_EVERY`` s: cut the inbound connections that hold an
        unfinished message larger than any message may be (see :mod:`._inbound`), once every
        complete message was read: what a connection holds is not known before."""
        router, loop = self._router, self._loop
        if router is None or loop is None:
            return
        self._watch_timer = loop.call_later(WATCH_EVERY, self._watch_inbound)
        self._drain_monitor()  # connections that ended are forgotten first
        if self._inbound.book_deliveries():
            self._watch_due = True  # checked when a drain ends with nothing left to read
            self._drain()

    def _check_inbound(self) -> None:
        self._watch_due = False
        self._inbound.book_deliveries()  # what the drain delivered meanwhile
        for peer, why in self._inbound.cut_hoarders():
            if self._events is not None:
                self._events.inbound_ended(peer, why)

    def _down(self, link: LinkId, outgoing: Outgoing, why: str, *, refused: bool = False) -> None:
        if outgoing.reported_down:
            return
        outgoing.up, outgoing.reported_down = False, True
        assert self._events is not None
        self._events.link_down(link, why, refused=refused)
