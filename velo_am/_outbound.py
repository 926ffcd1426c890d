"""The one outbound path: every message a worker sends to a peer goes through :class:`Outbound`.

It holds the link of each connected peer and does, in one place, what every send needs: the
size bound on payloads, the envelope (this worker's id and incarnation, the peer's
incarnation), encoding, the transport send and its failure, and the ``messages_out`` count.
Requests, replies (success and error), event updates and membership messages all use it;
``send_quietly`` and ``broadcast`` are the variants that drop (and log) instead of raising.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

from velo_event import EventHandle

from . import _protocol as p
from ._codec import pack
from ._errors import PeerUnreachable
from ._log import RateLimitedLog
from .transport import Link, LinkFull

__all__ = ["HEADER_ALLOWANCE", "Outbound", "Addressee"]

logger = logging.getLogger(__name__)

#: Room left for the header frame when bounding a payload by ``max_message_size``.
HEADER_ALLOWANCE: Final = 512
# A goodbye's acknowledgement must get out before the link to the closing peer closes.
_CLOSED_PEER_LINGER: Final = 0.1
# An update item's bytes besides its reason: array headers and a 16-byte handle (msgpack bin).
_ITEM_BYTES: Final = 24


class Addressee(Protocol):
    """Where a message goes: the peer's id and the incarnation its envelope names (a
    membership :class:`~velo_am._membership.Peer` is one)."""

    @property
    def worker_id(self) -> int: ...

    @property
    def incarnation(self) -> int: ...


class Outbound:
    """Sends for worker ``worker_id`` (incarnation ``incarnation``). Runs on the worker's loop."""

    def __init__(
        self,
        worker_id: int,
        incarnation: int,
        max_message_size: int,
        *,
        counters: dict[str, int],
        log: RateLimitedLog,
    ) -> None:
        self.worker_id = worker_id
        self.incarnation = incarnation
        #: Largest message, header included, this worker sends (and accepts).
        self.max_message_size = max_message_size
        self._counters = counters
        self._log = log
        self._links: dict[int, Link] = {}

    # -- links ------------------------------------------------------------------------------

    def attach(self, peer_id: int, link: Link) -> None:
        """``link`` now carries what is sent to ``peer_id`` (an older link is closed)."""
        old = self._links.get(peer_id)
        if old is not None and old is not link:
            old.close(0)
        self._links[peer_id] = link

    def detach(self, peer_id: int, *, closed: bool = False) -> None:
        """Close the link of a peer no longer connected (``closed``: it said goodbye, and its
        acknowledgement may still be queued)."""
        link = self._links.pop(peer_id, None)
        if link is not None:
            link.close(_CLOSED_PEER_LINGER if closed else 0)

    def close(self) -> None:
        """Close every link at once (the worker is closing)."""
        links, self._links = self._links, {}
        for link in links.values():
            link.close(0)

    # -- the send path ----------------------------------------------------------------------

    def pack_bounded(self, value: Any, what: str) -> bytes:
        """msgpack ``value``; a message a receiver would drop fails here, loudly, instead
        (``ValueError``; ``TypeError`` for a value msgpack cannot encode)."""
        body = pack(value)
        if len(body) + HEADER_ALLOWANCE > self.max_message_size:
            raise ValueError(
                f"{what} of {len(body)} bytes exceeds max_message_size ({self.max_message_size})"
            )
        return body

    def send_frames(self, peer_id: int, frames: list[bytes]) -> None:
        """Hand encoded frames to the peer's link; :class:`PeerUnreachable` if it has none or
        its queue is full."""
        link = self._links.get(peer_id)
        if link is None:
            raise PeerUnreachable(f"worker {peer_id:#x} is not connected")
        try:
            link.send(frames)
        except LinkFull as error:
            raise PeerUnreachable(f"cannot send to worker {peer_id:#x}: {error}") from None
        self._counters["messages_out"] += 1

    def send(self, peer_id: int, msg: p.Message) -> None:
        """Encode and send a protocol message (its envelope already filled in)."""
        self.send_frames(peer_id, p.encode(msg))

    def send_quietly(self, peer_id: int, msg: p.Message) -> None:
        """:meth:`send`, logging (rate-limited) instead of raising when it cannot."""
        try:
            self.send(peer_id, msg)
        except (PeerUnreachable, p.ProtocolError) as error:
            self._log.warning("send", "dropping %s: %s", type(msg).__name__, error, peer=peer_id)

    def request(
        self, peer: Addressee, msg_id: int, name: str, payload: Any, *, reply: bool
    ) -> None:
        """Ask ``peer`` to run handler ``name``; ``reply``: it answers ``msg_id``. Raises
        ``TypeError`` / ``ValueError`` for the payload, :class:`PeerUnreachable`."""
        body = self.pack_bounded(payload, "payload")
        frames = p.encode_request(
            self.worker_id, self.incarnation, peer.incarnation, msg_id, name, reply, body
        )
        self.send_frames(peer.worker_id, frames)

    def reply(self, peer: Addressee, msg_id: int, body: bytes) -> None:
        """The successful result (already packed) of request ``msg_id``, dropped with a
        warning if the peer cannot be reached any more."""
        frames = p.encode_response(self.worker_id, self.incarnation, peer.incarnation, msg_id, body)
        try:
            self.send_frames(peer.worker_id, frames)
        except PeerUnreachable as error:
            self._log.warning(
                "send",
                "dropping the response to %#x: %s",
                peer.worker_id,
                error,
                peer=peer.worker_id,
            )

    def reply_error(
        self,
        peer: Addressee,
        msg_id: int,
        code: p.ErrorCode,
        error_type: str,
        message: str,
        remote_traceback: str = "",
        *,
        as_incarnation: int | None = None,
    ) -> None:
        """Request ``msg_id`` failed; ``as_incarnation`` answers in a predecessor's name (a
        request meant for an earlier incarnation of this worker)."""
        # Exception texts may hold lone surrogates (undecodable file names), which UTF-8
        # cannot carry: escape them rather than lose the reply.
        texts = [
            text.encode("utf-8", "backslashreplace").decode("utf-8")
            for text in (error_type, message, remote_traceback)
        ]
        source = self.incarnation if as_incarnation is None else as_incarnation
        error = p.ErrorResponse(self.worker_id, source, peer.incarnation, msg_id, code, *texts)
        self.send_quietly(peer.worker_id, error)

    def event_updates(
        self,
        peer: Addressee,
        subscribe: Sequence[EventHandle],
        done: Sequence[p.EventDone],
    ) -> None:
        """The events layer's items for ``peer``, in as many messages as the item limit and
        ``max_message_size`` require. Raises :class:`PeerUnreachable`."""
        for subscribe_part, done_part in _chunks(subscribe, done, self.max_message_size):
            msg = p.EventUpdates(
                self.worker_id, self.incarnation, peer.incarnation, subscribe_part, done_part
            )
            self.send(peer.worker_id, msg)


def _cost(item: p.EventDone) -> int:
    """At most how many bytes a completion takes in a message (UTF-8: 4 bytes a character)."""
    return _ITEM_BYTES + (0 if item.reason is None else 4 * len(item.reason))


def _fitted(item: p.EventDone, budget: int) -> p.EventDone:
    """A completion whose reason alone would not fit in a message, with its reason cut."""
    if item.reason is None or _cost(item) <= budget:
        return item
    keep = max((budget - _ITEM_BYTES) // 4 - 40, 0)
    return p.EventDone(item.handle, f"{item.reason[:keep]}… [cut to fit max_message_size]")


def _chunks(
    subscribe: Sequence[EventHandle], done: Sequence[p.EventDone], max_size: int
) -> Iterable[tuple[tuple[EventHandle, ...], tuple[p.EventDone, ...]]]:
    """Split update items into messages of at most ``MAX_EVENT_ITEMS`` items and
    ``max_size`` bytes; the common case is one message."""
    limit, budget = p.MAX_EVENT_ITEMS, max_size - HEADER_ALLOWANCE
    count = len(subscribe) + len(done)
    if count <= limit:
        characters = sum([len(reason) for _, reason in done if reason])
        if count * _ITEM_BYTES + 4 * characters <= budget:
            yield tuple(subscribe), tuple(done)
            return
    part_subscribe: list[EventHandle] = []
    part_done: list[p.EventDone] = []
    size = 0
    for handle in subscribe:
        if len(part_subscribe) >= limit or size + _ITEM_BYTES > budget:
            yield tuple(part_subscribe), ()
            part_subscribe, size = [], 0
        part_subscribe.append(handle)
        size += _ITEM_BYTES
    for item in (_fitted(item, budget) for item in done):
        cost = _cost(item)
        count = len(part_subscribe) + len(part_done)
        if count and (count >= limit or size + cost > budget):
            yield tuple(part_subscribe), tuple(part_done)
            part_subscribe, part_done, size = [], [], 0
        part_done.append(item)
        size += cost
    if part_subscribe or part_done:
        yield tuple(part_subscribe), tuple(part_done)
