"""The remote event ping-pong's pattern with nothing of velo in it: the least work that
pattern needs in Python on libzmq, both sides of ``bench_events.py``'s "bare pattern" case.

Each side owns events (plain ints) and awaits the other side's. ``wait(handle)`` subscribes
(a future registered under the handle, the handle queued for the peer); ``trigger(handle)``
answers the peer's subscription, or remembers the event as done for a subscription still to
come; ``flush()`` sends what is queued as one message. A message is one msgpack frame,
``[src, [subscribed handle, ...], [[done handle, reason, unknown], ...]]``, with the handles
as 16 big-endian bytes: velo's update message without its envelope's other fields. The
socket is drained in its reader callback (``loop.add_reader(FD)``, ``recv(NOBLOCK)`` while
``ZMQ_EVENTS`` says a message waits), and a drain's answers go out in one send at its end.

Left out, as velo cannot leave them out: checks of what arrives (a malformed message, an
unknown sender, a spoofed link), generations and poison, timeouts, flow control, several
peers, waiters that give up, and any accounting.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import msgpack  # type: ignore[import-untyped]
import zmq

#: Messages handled per drain callback before yielding (as in velo's transport).
DRAIN_BATCH = 512
HANDLE_BYTES = 16
#: The handles of the driver's events and of the peer's: the i-th round's are base + i.
DRIVER_EVENTS = 1 << 64
PEER_EVENTS = 2 << 64
_packb, _unpackb = msgpack.packb, msgpack.unpackb
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)  # no enum ops


def _readable(sock: zmq.Socket[bytes]) -> bool:
    return bool(cast(int, sock.getsockopt(_EVENTS)) & _POLLIN)


class BareEvents:
    """Remote events on one socket to one peer. ``router``: the socket is a ROUTER, which
    learns its peer's identity from the peer's first message and sends nothing before it."""

    def __init__(
        self, sock: zmq.Socket[bytes], src: int, *, router: bool, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.sock = sock
        self._src = src
        self._router = router
        self._route: list[bytes] | None = None if router else []
        self._loop = loop
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._subscribed: set[int] = set()  # our events the peer awaits
        self._done: set[int] = set()  # our events done before the peer subscribed
        self._out_subscribe: list[bytes] = []
        self._out_done: list[list[Any]] = []
        self._scheduled = False
        loop.add_reader(sock.FD, self._drain)
        self._schedule()

    def wait(self, handle: int) -> asyncio.Future[None]:
        future = self._loop.create_future()
        self._waiters[handle] = future
        self._out_subscribe.append(handle.to_bytes(HANDLE_BYTES, "big"))
        return future

    def trigger(self, handle: int) -> None:
        if handle in self._subscribed:
            self._subscribed.discard(handle)
            self._out_done.append([handle.to_bytes(HANDLE_BYTES, "big"), None, False])
        else:
            self._done.add(handle)

    def flush(self) -> None:
        if self._route is None or not (self._out_subscribe or self._out_done):
            return  # a ROUTER that has not heard from its peer yet keeps the queue
        message = _packb([self._src, self._out_subscribe, self._out_done])
        self._out_subscribe, self._out_done = [], []
        self.sock.send_multipart([*self._route, message], _NOBLOCK)
        # The send may have taken the edge of ZMQ_FD for a message that arrived meanwhile.
        if _readable(self.sock):
            self._schedule()

    def close(self) -> None:
        self._loop.remove_reader(self.sock.FD)
        self.sock.close(linger=0)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        # ``ZMQ_EVENTS`` before each receive: cheaper than the exception of a receive that
        # finds nothing, and it clears the edge of ZMQ_FD that woke the loop.
        self._scheduled = False
        sock = self.sock
        if sock.closed:  # a drain still scheduled when the socket closed
            return
        for _ in range(DRAIN_BATCH):
            if not _readable(sock):
                break
            frames = sock.recv_multipart(_NOBLOCK)
            if self._router:
                self._route = frames[:1]
            _src, subscribe, done = _unpackb(frames[-1])
            for wire in subscribe:
                handle = int.from_bytes(wire, "big")
                if handle in self._done:
                    self._done.discard(handle)
                    self._out_done.append([wire, None, False])
                else:
                    self._subscribed.add(handle)
            for wire, _reason, _unknown in done:
                waiter = self._waiters.pop(int.from_bytes(wire, "big"), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        else:
            self._schedule()  # more may be queued; let the loop breathe first
        self.flush()
