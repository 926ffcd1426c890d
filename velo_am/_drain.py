"""The ZeroMQ transport's receive loop, in velo_am's hot set (compiled where it can be built):
a burst of messages read from its ROUTER without blocking and handed on one by one. Every
inbound message passes through it, so it is kept apart from the transport's lifecycle and
compiled with the decode it feeds; it imports nothing of the transport (which imports it)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final, cast

import zmq

__all__ = ["EMPTY", "FULL", "Receiver"]

# The transport's logger, not this module's (``velo_am._drain`` or ``velo_am._compiled._drain``
# by build): what the transport logs has one name, whichever build of its loop is in use.
logger = logging.getLogger("velo_am.transport._zmq")

#: What :meth:`Receiver.drain` found: nothing left to read, or a whole batch read (more may
#: wait).
EMPTY: Final = 0
FULL: Final = 1

_NOBLOCK: Final = int(zmq.NOBLOCK)
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
_SRCFD: Final = int(zmq.SRCFD)
#: A message received: its link, first frame, frames kept, size in bytes and frame count.
_Message = tuple[bytes, zmq.Frame, list[zmq.Frame], int, int]
# The compiled socket's own methods, called directly: pyzmq's Python wrappers add a call each.
_recv_bytes: Final = cast(Callable[[Any, int], bytes], zmq.backend.Socket.recv)
_recv_frame: Final = cast(Callable[[Any, int, bool], zmq.Frame], zmq.backend.Socket.recv)
_get_option: Final = cast(Callable[[Any, int], int], zmq.backend.Socket.get)


class Receiver:
    """Reads a ROUTER's messages for a transport: each to ``deliver(link, frames)``, or, past
    ``max_size`` bytes or ``max_frames`` frames, uncopied to ``refused(link, what)``; what each
    watched connection delivered (by its file descriptor) booked in ``deliveries``, ``framing``
    bytes a frame on top of its own. ``delivering``: the link and first frame of the message
    being handed on (what a peer proved is read from that frame, if asked)."""

    def __init__(
        self,
        deliver: Callable[[bytes, list[bytes]], object],
        refused: Callable[[bytes, str], object],
        deliveries: dict[bytes, list[int]],
        max_size: int,
        max_frames: int,
        framing: int,
    ) -> None:
        self._deliver = deliver
        self._refused = refused
        self._deliveries = deliveries
        self._max_size = max_size
        self._max_frames = max_frames
        self._framing = framing
        self.delivering: tuple[bytes, zmq.Frame] | None = None
        # The message a look inside a send found, received then (see hold), not handed on yet.
        self._held: _Message | None = None

    def hold(self, router: zmq.Socket[bytes]) -> None:
        """Receive the next message now and hand it on at the next :meth:`drain`, before any
        other: for a look inside a send that found one. It must be received at once (libzmq
        aborts if the connection of a message it prefetched for a look drops: libzmq #3485)
        but not handed on inside the send, whose caller is in the middle of its own work.
        One message: receiving it leaves nothing prefetched."""
        if self._held is None:
            with contextlib.suppress(zmq.Again):
                self._held = self._receive(router)

    def _receive(self, router: zmq.Socket[bytes]) -> _Message:
        """The next message (``zmq.Again`` if none waits): its link, first frame, the frames
        kept (those past ``max_frames`` are counted, never kept), size and frame count."""
        link = _recv_bytes(router, _NOBLOCK)
        frame = first = _recv_frame(router, _NOBLOCK, False)
        parts = [frame]
        size, frames = len(frame), 1
        while frame.more:
            frame = _recv_frame(router, _NOBLOCK, False)
            size += len(frame)
            frames += 1
            if frames <= self._max_frames:
                parts.append(frame)
        return link, first, parts, size, frames

    def drain(
        self,
        router: zmq.Socket[bytes],
        batch: int,
        watched: dict[int, Any],
        renamed: dict[bytes, bytes],
    ) -> int:
        """Read and hand on up to ``batch`` messages: :data:`EMPTY` once none is left,
        :data:`FULL` after ``batch`` (``zmq.ZMQError`` other than ``zmq.Again`` escapes). After
        the first, ``ZMQ_EVENTS`` says whether more wait: a lone message (the latency case)
        ends the drain there, without the ``zmq.Again`` a failed receive raises (an exception
        costs twice the look); a burst is read until ``zmq.Again``, one look and one exception
        in all. The look also consumes any edge a send made while delivering: nothing is left
        unseen. ``watched``: the inbound connections whose deliveries are booked; ``renamed``:
        the links whose connection has a routing id of its own (a re-dial's)."""
        get, deliver, deliveries = _get_option, self._deliver, self._deliveries
        max_size, max_frames = self._max_size, self._max_frames
        for count in range(batch):
            message = self._held
            if message is None:
                try:
                    if count == 1 and not get(router, _EVENTS) & _POLLIN:
                        return EMPTY
                    message = self._receive(router)
                except zmq.Again:
                    return EMPTY
            else:
                self._held = None
            link, first, parts, size, frames = message
            if watched:
                delivery = deliveries.get(link)
                if delivery is None:
                    delivery = deliveries[link] = [first.get(_SRCFD), 0, 0]
                delivery[1] += size + self._framing * frames
                delivery[2] += 1
            if renamed:
                link = renamed.get(link, link)
            self.delivering = (link, first)
            try:
                if size > max_size or frames > max_frames:
                    self._refused(link, f"{frames} frames, {size} bytes")
                elif frames == 2:  # nearly every message: no comprehension
                    deliver(link, [first.bytes, parts[1].bytes])
                else:
                    deliver(link, [part.bytes for part in parts])
            except Exception:
                logger.exception("inbound message handler failed")
            finally:
                self.delivering = None
        return FULL
