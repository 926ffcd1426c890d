"""The I/O shell around the membership rules: what arrives is decoded, admitted and handed on;
what the :class:`~velo_am._membership.PeerTable` decides is done.

Inbound frames come from the transport to :meth:`Shell.on_frames`, which decodes them and,
without awaiting, hands each message to the layer it concerns: handshakes and membership
messages to the table, requests to the handler executor, answers to the table of calls in
flight, event updates to the events layer. :meth:`Shell.apply` carries out the table's effects:
sends, links, dials, and the consequences of a lost peer (its calls fail, its link closes, the
peer-lost callbacks run). Runs on the worker's loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from . import _membership as ms
from . import _protocol as p
from ._calls import CallTable
from ._errors import PeerLost
from ._execution import HandlerExecution
from ._log import RateLimitedLog, fields
from ._outbound import Outbound
from ._remote import RemoteEvents
from ._routes import Routes
from .transport import Link, LinkFull, Transport

__all__ = ["PeerLostCallback", "Shell"]

logger = logging.getLogger(__name__)

PeerLostCallback = Callable[[int, str], None]


class Shell:
    """The receive side and the membership effects of worker ``table.worker_id``."""

    def __init__(
        self,
        table: ms.PeerTable,
        transport: Transport,
        outbound: Outbound,
        calls: CallTable,
        execution: HandlerExecution,
        events: RemoteEvents,
        routes: Routes,
        counters: dict[str, int],
        log: RateLimitedLog,
    ) -> None:
        self._membership = table
        self._transport = transport
        self._outbound = outbound
        self._calls = calls
        self._execution = execution
        self._remote_events = events
        self._routes = routes
        self._counters = counters
        self._log = log
        self._worker_id = table.worker_id
        #: Called with ``(worker_id, reason)`` for each peer lost, closed or restarted.
        self.peer_lost_callbacks: list[PeerLostCallback] = []
        #: While closing: set once every peer told goodbye has answered.
        self.goodbyes_answered: asyncio.Event | None = None

    def on_frames(self, frames: list[bytes]) -> None:
        """One inbound message (the transport's sink)."""
        counters = self._counters
        counters["messages_in"] += 1
        try:
            msg = p.decode(frames, max_size=self._outbound.max_message_size)
        except p.ProtocolError as error:
            counters["dropped_malformed"] += 1
            self._log.warning("malformed", "dropping malformed message: %s", error)
            return
        if isinstance(msg, p.Hello | p.HelloAck):  # a handshake may name any incarnation
            self._on_handshake(msg)
            return
        now = time.monotonic()
        peer = self._membership.admit(msg.src, msg.src_incarnation, msg.dst_incarnation, now)
        if isinstance(peer, ms.Rejected):
            self._on_rejected(msg, peer)
            return
        if self.goodbyes_answered is not None and self._membership.goodbyes_acknowledged:
            self.goodbyes_answered.set()
        if isinstance(msg, p.Request):
            self._execution.dispatch(peer, msg)
        elif isinstance(msg, p.Response):
            if not self._calls.on_response(peer.worker_id, msg.msg_id, msg.payload):
                counters["late_responses"] += 1
        elif isinstance(msg, p.EventUpdates):
            self._remote_events.on_updates(peer.worker_id, msg)
        elif isinstance(msg, p.ErrorResponse):
            if not self._calls.on_error(peer.worker_id, msg, peer.describe()):
                counters["late_responses"] += 1
        elif isinstance(msg, p.Peers):
            self.apply(self._membership.on_peers(msg.peers))
        elif isinstance(msg, p.Draining):
            self._membership.on_draining(peer)
        elif isinstance(msg, p.Goodbye):
            self.apply(self._membership.on_goodbye(peer))

    def _on_handshake(self, msg: p.Hello | p.HelloAck) -> None:
        link: Link | None = None
        if self._membership.needs_link(msg):
            if isinstance(msg, p.HelloAck):
                link = self._routes.take_link(msg.token)  # the answer to our own dial
            if link is None:
                try:
                    link = self._transport.open_link(msg.address, msg.src)
                except LinkFull as error:
                    self._log.warning("hello", "cannot answer %#x: %s", msg.src, error)
                    return
        self.apply(self._membership.on_hello(msg, time.monotonic()), link)

    def _on_rejected(self, msg: p.Message, rejected: ms.Rejected) -> None:
        self._counters[rejected.counter] += 1
        if rejected.category is not None:
            what = f"{type(msg).__name__} {rejected.text}"
            self._log.warning(rejected.category, "dropping %s (%#x)", what, msg.src, peer=msg.src)
        if rejected is ms.STALE and isinstance(msg, p.Request):
            peer = self._membership.get(msg.src)
            if peer is not None:
                self._execution.refuse_stale(peer, msg)
        self.apply(rejected.effects)

    # -- effects ------------------------------------------------------------------------------

    def apply(self, effects: Iterable[ms.Effect], link: Link | None = None) -> None:
        """Carry out what the table decided (``link``: the one a handshake's ``Connect``
        hands to its peer)."""
        for effect in effects:
            if isinstance(effect, ms.Send):
                self._outbound.send_quietly(effect.peer_id, effect.message)
            elif isinstance(effect, ms.Connect):
                assert link is not None, "a Connect comes only with a handshake's link"
                self._outbound.attach(effect.peer_id, link)
            elif isinstance(effect, ms.Lost):
                self._on_lost(effect)
            elif isinstance(effect, ms.Dial):
                self._routes.dial(effect.address)
            elif isinstance(effect, ms.DialAnswered):
                self._routes.answered(effect.token, effect.peer_id)
            elif isinstance(effect, ms.DialRefused):
                self._routes.refused(effect.token, effect.why)
            elif isinstance(effect, ms.Joined):
                self._routes.changed.set()
                extra = fields(self._worker_id, effect.peer_id)
                logger.info("peer %s joined", effect.text, extra=extra)
            elif effect.error:
                logger.error(effect.text, extra=fields(self._worker_id))
            else:
                self._log.warning(effect.category, effect.text)

    def _on_lost(self, lost: ms.Lost) -> None:
        self._counters["peers_lost"] += 1
        self._routes.changed.set()
        extra = fields(self._worker_id, lost.peer_id)
        (logger.info if lost.closed else logger.warning)("peer %s", lost.text, extra=extra)
        self._calls.fail_peer(lost.peer_id, PeerLost(lost.text))
        self._outbound.detach(lost.peer_id, closed=lost.closed)
        for callback in list(self.peer_lost_callbacks):
            try:
                callback(lost.peer_id, lost.text)
            except Exception:
                logger.exception("peer-lost callback %r failed", callback, extra=extra)
