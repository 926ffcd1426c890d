"""The ZeroMQ transport: one bound ROUTER for everything inbound, one DEALER per peer for
everything outbound (the ZeroMQ guide's Harmony pattern).

Replies travel on the responder's own DEALER to the requester's ROUTER, so a worker only ever
*reads* its ROUTER: one reader, driven by the ROUTER's file descriptor on the event loop and
drained with non-blocking receives until empty (``ZMQ_FD`` is edge-triggered, so a drain
that stops early reschedules itself instead of waiting for an edge that will not come).
Sends never block: a full or dead peer queue raises :class:`LinkFull` for that peer only, so
no peer delays traffic to another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq

from ._base import FrameSink, Link, LinkFull
from ._security import Plaintext, ZmqSecurity

__all__ = ["ZmqTransport"]

logger = logging.getLogger(__name__)

# Messages handled per loop callback before yielding to other tasks.
_DRAIN_BATCH = 512
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.NOBLOCK | zmq.SNDMORE)


class _ZmqLink:
    __slots__ = ("_on_close", "_socket")

    def __init__(self, socket: zmq.Socket[bytes], on_close: Callable[[_ZmqLink], None]) -> None:
        self._socket = socket
        self._on_close = on_close

    def send(self, frames: list[bytes]) -> None:
        # Frame by frame with plain int flags: half the cost of send_multipart per message.
        send = self._socket.send
        try:
            for frame in frames[:-1]:
                send(frame, _MORE_NOBLOCK)
            send(frames[-1], _NOBLOCK)
        except zmq.Again:
            raise LinkFull("peer queue is full") from None
        except zmq.ZMQError as error:
            raise LinkFull(str(error)) from None

    def close(self, linger: float) -> None:
        if not self._socket.closed:
            self._socket.close(linger=int(linger * 1000))
            self._on_close(self)


class ZmqTransport:
    """ROUTER/DEALER over real ZeroMQ sockets; the context is created by :meth:`start`, in the
    process (and on the loop) that uses it.

    ``bind`` is the ROUTER's endpoint (``tcp://HOST:PORT``, port 0 for any free one;
    ``ipc://PATH``); ``max_message_size`` bounds each inbound frame (libzmq drops the
    connection of a peer that sends a larger one); ``send_queue`` and ``receive_queue`` are the
    high-water marks of each DEALER and of the ROUTER; ``security`` configures every socket
    (:class:`Plaintext` by default).
    """

    def __init__(
        self,
        bind: str,
        *,
        max_message_size: int,
        send_queue: int = 100_000,
        receive_queue: int = 100_000,
        security: ZmqSecurity | None = None,
    ) -> None:
        self._bind = bind
        self.security: ZmqSecurity = Plaintext() if security is None else security
        self._max_message_size = max_message_size
        self._send_queue = send_queue
        self._receive_queue = receive_queue
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: FrameSink | None = None
        self._drain_scheduled = False
        self._links: set[_ZmqLink] = set()

    def start(self, loop: asyncio.AbstractEventLoop, sink: FrameSink) -> str:
        self._loop = loop
        self._sink = sink
        self._context = context = zmq.Context()
        self.security.start(context)
        self._router = router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, self._max_message_size)
        router.setsockopt(zmq.RCVHWM, self._receive_queue)
        try:
            self.security.configure_listener(router)
            router.bind(self._bind)
        except zmq.ZMQError:
            router.close(linger=0)
            self.security.close()
            context.term()
            raise
        address = router.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(address, bytes)
        loop.add_reader(router.FD, self._on_readable)
        self._schedule_drain()  # messages may have arrived before the reader was added
        return address.decode()

    def _on_readable(self) -> None:
        self._drain()  # now, not one loop iteration later

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        router, sink = self._router, self._sink
        if router is None or sink is None or router.closed:
            return
        recv = router.recv
        for _ in range(_DRAIN_BATCH):
            try:
                frame = recv(_NOBLOCK, copy=False)  # the identity frame: never copied
                frames = []
                while frame.more:
                    frame = recv(_NOBLOCK, copy=False)
                    frames.append(frame.bytes)
            except zmq.Again:
                return
            except zmq.ZMQError as error:
                logger.warning("receive failed: %s", error)
                return
            try:
                sink(frames)
            except Exception:
                logger.exception("inbound message handler failed")
        self._schedule_drain()  # more may be queued; let other tasks run first

    def open_link(self, address: str, peer_id: int | None = None) -> Link:
        assert self._context is not None, "transport not started"
        try:
            dealer = self._context.socket(zmq.DEALER)
        except zmq.ZMQError as error:  # out of sockets or file descriptors
            raise LinkFull(f"cannot open a socket for {address}: {error}") from None
        dealer.setsockopt(zmq.SNDHWM, self._send_queue)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.RECONNECT_IVL, 100)
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        try:
            self.security.configure_link(dealer, address, peer_id)
            dealer.connect(address)
        except zmq.ZMQError as error:
            dealer.close(linger=0)
            raise LinkFull(f"cannot connect to {address}: {error}") from None
        link = _ZmqLink(dealer, self._links.discard)
        self._links.add(link)
        return link

    async def close(self) -> None:
        router, context = self._router, self._context
        if router is None or context is None:
            return
        self._router = None
        self._context = None
        if self._loop is not None and not router.closed:
            self._loop.remove_reader(router.FD)
        router.close(linger=0)
        for link in list(self._links):  # normally closed by the worker already; term needs all
            link.close(0)
        self.security.close()
        try:
            await asyncio.to_thread(context.term)
        except RuntimeError:
            # At interpreter exit (a worker closed by an atexit hook) executors refuse new
            # jobs. Every socket is closed with linger 0, so term() returns at once anyway.
            context.term()
