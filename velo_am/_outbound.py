"""The one outbound path: every message a worker sends goes through :class:`Outbound`.

It keeps the worker's links and does, in one place, what every send needs: the size bound on
payloads, the envelope (this worker's id and incarnation, the peer's incarnation), encoding,
the choice of link, the transport send and its failure, and the ``messages_out`` count.

**Links on demand.** A message to a peer goes on this worker's own link to it, opened when
there is first business with that peer (and introduced with a ``Hello``); without one, on a
link the peer opened to this worker, but for this worker's own business (below). An answer
(``Response``, ``ErrorResponse``) goes back on the link its request came on, so a worker
serving many callers holds no link of its own to each. Links this worker opened are closed
after ``link_idle`` seconds without traffic unless its business with the peer goes on
(``interest``), and at most ``max_links`` stay open: past that, the least recently used idle
one is closed first.

**Business rides on its owner's link.** A link is closed by the worker that opened it, on
that worker's own reckoning of its business, and what is in flight to it then is lost. So
what this worker needs answered or confirmed (calls, sends, event subscriptions:
``ours=True``) goes on a link of its own, which its business keeps open until that is done,
never on the peer's: a server with ``max_links`` links of its own to a thousand callers
closes them as it pleases. Messages on two links may overtake each other; fire-and-forget
requests keep to this worker's one link to the peer, so they arrive in the order they were
made.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Protocol

from velo_event import EventHandle

from ._codec import pack
from ._errors import PeerUnreachable
from ._log import RateLimitedLog
from ._select import protocol as p
from ._update_chunks import HEADER_ALLOWANCE, chunks, fits_whole
from .transport import LinkClosed, LinkError, LinkFull, LinkId, Transport

__all__ = ["Addressee", "Outbound"]

logger = logging.getLogger(__name__)


class Addressee(Protocol):
    """Where a message goes: the peer's id and the incarnation its envelope names (a
    membership :class:`~velo_am._membership.Member` is one)."""

    @property
    def worker_id(self) -> int: ...

    @property
    def incarnation(self) -> int: ...


class Outbound:
    """Sends and links of worker ``worker_id`` (incarnation ``incarnation``). ``locate``
    gives a peer's address (``None`` if unknown) and ``introduction`` the frames that open a
    new link. Runs on the worker's loop."""

    def __init__(
        self,
        worker_id: int,
        incarnation: int,
        max_message_size: int,
        *,
        transport: Transport,
        locate: Callable[[int], str | None],
        introduction: Callable[[], list[bytes]],
        counters: dict[str, int],
        log: RateLimitedLog,
        link_idle: float = 60.0,
        max_links: int = 256,
        connect_timeout: float = 5.0,
    ) -> None:
        self.worker_id = worker_id
        self.incarnation = incarnation
        #: Largest message, header included, this worker sends (and accepts).
        self.max_message_size = max_message_size
        self.link_idle = link_idle
        self.max_links = max_links
        self.connect_timeout = connect_timeout
        self._transport = transport
        self._locate = locate
        self._introduction = introduction
        self._counters = counters
        self._log = log
        self._own: dict[int, LinkId] = {}  # peer -> the link this worker opened to it
        self._owner: dict[LinkId, int] = {}  # our links whose peer is known
        self._superseded: dict[LinkId, int] = {}  # our links whose peer took another of ours
        self._dials: set[LinkId] = set()  # our links opened to an address, peer not known yet
        self._address: dict[LinkId, str] = {}  # our links -> the address dialed
        self._theirs: dict[int, LinkId] = {}  # peer -> the link it opened to this worker
        self._closed = False  # set by close(): the worker is going
        self._used: dict[LinkId, float] = {}  # our links -> last traffic (loop time)
        self._up: set[LinkId] = set()  # our links that reach their peer now
        self._dialing: dict[LinkId, int] = {}  # our links -> handshakes in flight on them
        self._connecting: dict[LinkId, float] = {}  # our links not up yet -> opened at
        self._now = 0.0
        self._interest: Collection[int] = ()  # peers with business, as of the last tick
        #: The peers this worker has business with now (set by the shell), for the cap.
        self.business: Callable[[], Collection[int]] = lambda: self._interest
        # Links that carried a message while a handshake was in flight on them (a call just
        # sent on one keeps it open); one that carried nothing is closed once its handshake ends
        # without business: what follows goes on the peer's link, never overtaking the answer.
        self._carried: set[LinkId] = set()
        self._nothing_to_close_at = -1.0  # when the cap last found no idle link to close

    # -- links ------------------------------------------------------------------------------

    def dial(
        self,
        address: str,
        peer_id: int | None,
        now: float,
        *,
        handshake: bool = False,
        adopt: bool = True,
    ) -> LinkId:
        """This worker's link to ``address`` (opened if there is none); ``peer_id`` when the
        worker there is known (or, without ``adopt``, claimed: the link is not its until its
        answer is taken); ``handshake``: one starts on it (see :meth:`dial_ended`). Raises
        :class:`PeerUnreachable` if none can be opened."""
        try:
            link = self._transport.connect(address, peer_id)
        except LinkError as error:
            raise PeerUnreachable(f"cannot connect to {address}: {error}") from None
        if link not in self._used:
            self._connecting[link] = now
            self._address[link] = address
        self._used[link] = now
        if peer_id is not None and adopt:
            self._adopt(peer_id, link)
        elif link not in self._owner:
            self._dials.add(link)
        if handshake:
            self._dialing[link] = self._dialing.get(link, 0) + 1
        self._enforce_cap(now)
        return link

    def dial_ended(self, link: LinkId, *, release: bool) -> None:
        """A handshake on ``link`` ended. A link whose peer never answered is closed; with
        ``release`` (the peer is no gossip neighbor), so is one that carried nothing during
        the handshake and whose peer had no business as of the last tick."""
        left = self._dialing.get(link, 0) - 1
        if left > 0:
            self._dialing[link] = left
            return
        self._dialing.pop(link, None)
        carried = link in self._carried
        self._carried.discard(link)
        if link in self._dials or (
            release and not carried and self._owner.get(link) not in self._interest
        ):
            self._close(link)

    def heard(self, peer_id: int, link: LinkId, now: float) -> None:
        """A message from ``peer_id`` came on ``link``: remembered for answers and sends, in use."""
        self._now = now
        if link in self._used:
            self._used[link] = now
            if self._owner.get(link) != peer_id and self._superseded.get(link) != peer_id:
                self._adopt(peer_id, link)
        elif self._theirs.get(peer_id) != link:
            self._theirs[peer_id] = link

    def _adopt(self, peer_id: int, link: LinkId) -> None:
        self._dials.discard(link)
        old = self._own.get(peer_id)
        if old is not None and old != link:  # it still speaks for the peer, on its way out
            self._superseded[old] = self._owner.pop(old, peer_id)
        self._own[peer_id] = link
        self._owner[link] = peer_id

    def link_up(self, link: LinkId) -> int | None:
        """The transport says ``link`` (ours) reaches its peer: that peer, if known."""
        if link in self._used:
            self._up.add(link)
            self._connecting.pop(link, None)
        return self._owner.get(link)

    def link_down(self, link: LinkId) -> int | None:
        """The transport says ``link`` (ours) stopped reaching its peer: that peer, if
        known. The link may reconnect, to a new connection on the other side: it is introduced
        again first (the other side believes nothing on a link before a handshake)."""
        self._up.discard(link)
        if link in self._used and not self._closed:
            try:
                self._introduce(link)
            except LinkError as error:
                logger.debug("cannot introduce link %s again: %s", link.hex(), error)
        return self._owner.get(link)

    def address_of(self, link: LinkId) -> str:
        """The address ``link``, one of this worker's own, leads to: the one it was dialed
        to, or the one its peer advertised once a handshake's answer proved who is there
        (:meth:`reached`). Raises :class:`KeyError` for a link not this worker's."""
        return self._address[link]

    def reached(self, link: LinkId, address: str) -> None:
        """A handshake's answer on ``link`` (ours) proved it reaches the member advertising
        ``address``: the link leads there, however the address it was dialed to was spelled
        (``localhost`` for ``127.0.0.1``, a seed's name for a wildcard bind's address)."""
        if link in self._used:
            self._address[link] = address

    def replaced(self, peer_id: int, address: str) -> None:
        """Another incarnation of ``peer_id``, at ``address``, took the place of the one
        this worker knew: a link of the id's (its own, or one superseded on its way out) that
        leads elsewhere reaches another process (or none), so it is closed; the link the old
        one opened is forgotten."""
        self._theirs.pop(peer_id, None)
        own = self._own.get(peer_id)
        superseded = [link for link, owner in self._superseded.items() if owner == peer_id]
        for link in [*superseded, *([] if own is None else [own])]:
            if self._address.get(link) != address:
                self._close(link)

    def is_own(self, link: LinkId) -> bool:
        """Whether this worker opened ``link`` (and has not closed it)."""
        return link in self._used

    def own_link(self, peer_id: int) -> LinkId | None:
        """This worker's own link to ``peer_id``, if it has one."""
        return self._own.get(peer_id)

    def send_on_own(self, peer_id: int, msg: p.Message) -> None:
        """Send on this worker's own link to ``peer_id`` (opened and introduced if there is
        none), never on one the peer opened. Raises :class:`PeerUnreachable`."""
        link = self._own.get(peer_id) or self._open_for(peer_id, dial=True)
        self._used[link] = self._now
        try:
            self._transport.send(link, p.encode(msg))
        except LinkError as error:
            raise PeerUnreachable(f"cannot send to worker {peer_id:#x}: {error}") from None
        self._counters["messages_out"] += 1

    def is_up(self, link: LinkId) -> bool:
        return link in self._up

    def authenticated(self, link: LinkId) -> str | None:
        """What the peer on ``link`` proved (its key), while a message on it is delivered."""
        return self._transport.authenticated(link)

    def peer_of(self, link: LinkId) -> int | None:
        """The peer of one of this worker's links, if known (one it no longer sends on too)."""
        owner = self._owner.get(link)
        return self._superseded.get(link) if owner is None else owner

    def forget(self, peer_id: int) -> None:
        """The peer is gone: close this worker's link to it, forget the one it opened."""
        self._theirs.pop(peer_id, None)
        link = self._own.pop(peer_id, None)
        if link is not None:
            self._close(link)

    def _close(self, link: LinkId) -> None:
        peer_id = self._owner.pop(link, None)
        if peer_id is not None and self._own.get(peer_id) == link:
            del self._own[peer_id]
        self._dials.discard(link)
        self._superseded.pop(link, None)
        self._address.pop(link, None)
        self._used.pop(link, None)
        self._up.discard(link)
        self._dialing.pop(link, None)
        self._carried.discard(link)
        self._connecting.pop(link, None)
        self._transport.disconnect(link)

    def linked(self) -> set[int]:
        """Every peer this worker has a link with, either way."""
        return set(self._own) | set(self._theirs)

    def has_link(self, peer_id: int) -> bool:
        """Whether this worker has a link with ``peer_id``, either way."""
        return peer_id in self._own or peer_id in self._theirs

    def own_links(self) -> int:
        return len(self._used)

    def watch(self, peers: Iterable[int], now: float) -> None:
        """Make sure this worker has its own (watched) link to each of ``peers``."""
        for peer_id in peers:
            if peer_id not in self._own:
                address = self._locate(peer_id)
                if address is not None:
                    try:
                        self._introduce(self.dial(address, peer_id, now))
                    except (PeerUnreachable, LinkError) as error:
                        logger.debug("cannot watch worker %#x: %s", peer_id, error)

    def tick(self, now: float, interest: Collection[int]) -> list[int]:
        """Close this worker's links idle for ``link_idle`` whose peer it has no business
        with. Returns the peers whose link of ours has not come up within
        ``connect_timeout`` (a link that never connects is never reported down)."""
        self._now, self._interest = now, interest
        for link, used in list(self._used.items()):
            if now - used > self.link_idle and self._owner.get(link) not in interest:
                self._close(link)
        stalled = []
        for link, opened in list(self._connecting.items()):
            peer_id = self._owner.get(link)
            if now - opened > self.connect_timeout and peer_id is not None:
                del self._connecting[link]
                stalled.append(peer_id)
        self._enforce_cap(now)  # business that ended may leave links to close
        return stalled

    def _enforce_cap(self, now: float) -> None:
        excess = len(self._used) - self.max_links
        if excess <= 0 or now == self._nothing_to_close_at:
            return
        self._interest = self.business()
        idle = heapq.nsmallest(
            excess,
            (
                (used, link)
                for link, used in self._used.items()
                if self._owner.get(link) not in self._interest and link not in self._dialing
            ),
        )
        for _, link in idle:
            self._close(link)
        if len(idle) < excess:
            # Every other link has business: the dials of this instant (a worker watching
            # a thousand peers) need not look again.
            self._nothing_to_close_at = now

    def close(self) -> None:
        """Close every link at once (the worker is closing)."""
        self._closed = True
        for link in list(self._used):
            self._close(link)
        self._theirs.clear()

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

    def send_frames(
        self,
        peer_id: int,
        frames: list[bytes],
        *,
        dial: bool = True,
        ours: bool = False,
    ) -> None:
        """Hand encoded frames to a link to ``peer_id`` (see the module's doc; ``ours``:
        this worker's business, never on the peer's link); :class:`PeerUnreachable` if there
        is none (and ``dial`` is false, or the peer's address is unknown) or its queue is
        full."""
        # Our own link even while it connects (what waits on it is ours to keep); else
        # theirs, which keeps what follows a handshake's answer in order after it.
        link = self._own.get(peer_id)
        if link is None:
            theirs = None if ours else self._theirs.get(peer_id)
            link = theirs or self._open_for(peer_id, dial)
        if link in self._used:
            self._used[link] = self._now
            if link in self._dialing:
                self._carried.add(link)
        try:
            self._transport.send(link, frames)
        except LinkFull as error:
            raise PeerUnreachable(f"cannot send to worker {peer_id:#x}: {error}") from None
        except LinkClosed:
            if self._theirs.get(peer_id) != link:
                raise PeerUnreachable(f"worker {peer_id:#x} is not connected") from None
            del self._theirs[peer_id]  # its link is gone: ours, then
            self.send_frames(peer_id, frames, dial=dial, ours=ours)
            return
        self._counters["messages_out"] += 1

    def _open_for(self, peer_id: int, dial: bool) -> LinkId:
        address = self._locate(peer_id) if dial else None
        if address is None:
            raise PeerUnreachable(f"worker {peer_id:#x} is not connected")
        link = self.dial(address, peer_id, self._now)
        try:
            self._introduce(link)
        except LinkError as error:
            raise PeerUnreachable(f"cannot send to worker {peer_id:#x}: {error}") from None
        return link

    def _introduce(self, link: LinkId) -> None:
        self._transport.send(link, self._introduction())
        self._counters["messages_out"] += 1

    def send(self, peer_id: int, msg: p.Message, *, dial: bool = True) -> None:
        """Encode and send a protocol message (its envelope already filled in)."""
        self.send_frames(peer_id, p.encode(msg), dial=dial)

    def send_on(self, link: LinkId, msg: p.Message) -> None:
        """Send on one given link (a handshake's answer), dropping it quietly if it is gone."""
        try:
            self._transport.send(link, p.encode(msg))
        except LinkClosed as error:  # whoever spoke on it is gone: nobody to answer
            logger.debug("dropping %s: %s", type(msg).__name__, error)
            return
        except LinkError as error:
            self._log.warning("send", "dropping %s: %s", type(msg).__name__, error)
            return
        self._counters["messages_out"] += 1

    def send_quietly(self, peer_id: int, msg: p.Message, *, dial: bool = True) -> None:
        """:meth:`send`, logging (rate-limited) instead of raising when it cannot."""
        try:
            self.send(peer_id, msg, dial=dial)
        except (PeerUnreachable, p.ProtocolError) as error:
            if self._closed:  # membership news of a worker that closed concern nobody now
                logger.debug("dropping %s: %s", type(msg).__name__, error)
                return
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
        self.send_frames(peer.worker_id, frames, ours=True)

    def _answer(self, peer: Addressee, link: LinkId, frames: list[bytes], what: str) -> None:
        """An answer goes back on the link its request came on (else by any link)."""
        try:
            self._transport.send(link, frames)
        except LinkFull as error:
            self._log.warning("send", "dropping %s to %#x: %s", what, peer.worker_id, error)
            return
        except LinkClosed:
            try:  # the caller still waits: reach it by any link, ours if need be
                self.send_frames(peer.worker_id, frames)
            except PeerUnreachable as error:
                self._log.warning(
                    "send",
                    "dropping %s to %#x: %s",
                    what,
                    peer.worker_id,
                    error,
                    peer=peer.worker_id,
                )
            return
        self._counters["messages_out"] += 1

    def reply(self, peer: Addressee, link: LinkId, msg_id: int, body: bytes) -> None:
        """The successful result (already packed) of request ``msg_id``, which came on
        ``link``; dropped with a warning if the peer cannot be reached any more."""
        frames = p.encode_response(self.worker_id, self.incarnation, peer.incarnation, msg_id, body)
        self._answer(peer, link, frames, "the response")

    def reply_error(
        self,
        peer: Addressee,
        link: LinkId,
        msg_id: int,
        code: p.ErrorCode,
        error_type: str,
        message: str,
        remote_traceback: str = "",
        *,
        as_incarnation: int | None = None,
    ) -> None:
        """Request ``msg_id`` (on ``link``) failed; ``as_incarnation`` answers in a
        predecessor's name (a request meant for an earlier incarnation of this worker)."""
        # Exception texts may hold lone surrogates (undecodable file names), which UTF-8
        # cannot carry: escape them rather than lose the reply.
        texts = [
            text.encode("utf-8", "backslashreplace").decode("utf-8")
            for text in (error_type, message, remote_traceback)
        ]
        source = self.incarnation if as_incarnation is None else as_incarnation
        error = p.ErrorResponse(self.worker_id, source, peer.incarnation, msg_id, code, *texts)
        try:
            frames = p.encode(error)
        except p.ProtocolError as problem:
            self._log.warning("send", "dropping an error response: %s", problem)
            return
        self._answer(peer, link, frames, "an error response")

    def event_updates(
        self,
        peer: Addressee,
        subscribe: Sequence[EventHandle],
        done: Sequence[p.EventDone],
    ) -> None:
        """The events layer's items for ``peer``, in as many messages as the item limit and
        ``max_message_size`` require. Raises :class:`PeerUnreachable`."""
        if fits_whole(subscribe, done, self.max_message_size):  # nearly always: no parts
            self._send_updates(peer, subscribe, done)
            return
        for subscribe_part, done_part in chunks(subscribe, done, self.max_message_size):
            self._send_updates(peer, subscribe_part, done_part)

    def _send_updates(
        self, peer: Addressee, subscribe: Sequence[EventHandle], done: Sequence[p.EventDone]
    ) -> None:
        """One message of update items (a call within Python: it costs tens of instructions)."""
        frames = p.encode_updates(
            self.worker_id, self.incarnation, peer.incarnation, subscribe, done
        )
        # A subscription is this worker's business; done items answer the peer's.
        self.send_frames(peer.worker_id, frames, ours=bool(subscribe))
