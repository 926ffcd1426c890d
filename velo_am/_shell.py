"""The I/O shell around the membership rules: what the transport reports is decoded, admitted
and handed on; what the :class:`~velo_am._membership.PeerTable` decides is done.

The transport reports (:class:`~velo_am.transport.TransportEvents`) a message on a link, a
link of this worker's going up or down, a message it refused unread (oversized) and an inbound
connection ending (cut for holding too much): the last two are counted and logged.
:meth:`Shell.message` decodes a message and, without awaiting, hands it to the layer it
concerns: handshakes and membership messages to the table, requests to the handler executor,
answers to the table of calls in flight, event updates to the events layer, credits to the
flow control of sends. A link going down is the table's business (a lost member).
:meth:`Shell.apply` carries out the table's effects: sends, answers on a link, dials, and the
consequences of a lost peer (its calls fail, its unconfirmed sends are counted, its links
close, the peer-lost callbacks run). Runs on the worker's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from . import _peers as ms
from ._calls import CallTable
from ._drops import Drops
from ._errors import AMError, PeerLost, PeerUnreachable
from ._flow import FlowControl
from ._keys import KeyBindings
from ._layers import HandlerExecution, RemoteEvents  # the chosen build's (not the pure one)
from ._links import LinkTrust, Speaker, Verdict
from ._log import RateLimitedLog, fields
from ._membership import PeerTable
from ._outbound import Outbound
from ._routes import Routes
from ._select import protocol as p
from ._stall import StallWatch
from .transport import LinkId

__all__ = ["PeerLostCallback", "Shell"]

logger = logging.getLogger(__name__)

PeerLostCallback = Callable[[int, str], None]

_PROVE = int(p.HelloFlags.PROVE)
_OBSERVER = int(p.HelloFlags.OBSERVER)


class Shell:
    """The transport's events and the membership effects of worker ``table.worker_id``."""

    def __init__(
        self,
        table: PeerTable,
        outbound: Outbound,
        calls: CallTable,
        execution: HandlerExecution,
        events: RemoteEvents,
        flow: FlowControl,
        counters: dict[str, int],
        log: RateLimitedLog,
        lease_holders: Callable[[], set[int]],
    ) -> None:
        """``lease_holders``: the workers whose loss breaks a lease on this worker's events."""
        self._membership = table
        self._flow = flow
        self._outbound = outbound
        outbound.business = self.interest
        self._calls = calls
        self._execution = execution
        self._remote_events = events
        self._lease_holders = lease_holders
        self._counters = counters
        self._log = log
        self._worker_id = table.worker_id
        self.routes: Routes | None = None  # set by the worker: routes and shell use each other
        #: Called with ``(worker_id, reason)`` for each peer lost, closed or restarted.
        self.peer_lost_callbacks: list[PeerLostCallback] = []
        #: While closing: set once every peer told goodbye has answered.
        self.goodbyes_answered: asyncio.Event | None = None
        self._gossip_scheduled = False
        #: Whom the links others opened to this worker speak for (see :mod:`._links`).
        self.trust: LinkTrust[p.Message] = LinkTrust(flow.receipts.budget.limit)
        self._bound = self.trust.bound
        self._peer_of = outbound.peer_of
        self._keys = KeyBindings()
        self._stalls = StallWatch(table.worker_id, outbound.connect_timeout)
        closing = self._closing
        self._drops = Drops(table.worker_id, table.incarnation, outbound, counters, log, closing)

    # -- the transport's events ---------------------------------------------------------------

    def message(self, link: LinkId, frames: list[bytes]) -> None:
        """One inbound message, on ``link``: believed only if the link speaks for its
        sender (docs/protocol.md §9.6)."""
        counters = self._counters
        counters["messages_in"] += 1
        try:
            msg = p.decode(frames, self._outbound.max_message_size)  # positional: cheaper
        except p.ProtocolError as error:
            counters["dropped_malformed"] += 1
            self._log.warning("malformed", "dropping malformed message: %s", error)
            return
        kind = type(msg)
        if kind is not p.Hello and kind is not p.HelloAck:
            # The common case first: a link others opened, bound, or one of ours, whose peer
            # is known (whoever answers at the address this worker dialed).
            speaker = self._bound.get(link)
            if speaker is None:
                owner = self._peer_of(link)
                speaker = None if owner is None else Speaker(owner, msg.src_incarnation)
            if speaker is not None:
                if speaker.worker_id == msg.src and speaker.incarnation == msg.src_incarnation:
                    self._from_peer(msg, link, time.monotonic())  # no handshake: skip _handle
                else:
                    self._drops.spoofed(msg, Verdict.SPOOFED)
                return
            if self._outbound.is_own(link):  # a dial not answered yet: only its handshake
                self._drops.spoofed(msg, Verdict.UNBOUND)
                return
        elif isinstance(msg, p.Hello | p.HelloAck) and not self._may_claim(msg, link):
            return  # a CURVE key bound to another worker: before the link is bound to it
        elif isinstance(msg, p.Hello | p.HelloAck) and msg.flags & _PROVE:
            if isinstance(msg, p.Hello):
                self._prove(msg, link)
            else:
                self._on_proof(msg, link)
            return
        elif self._outbound.is_own(link):
            self._handle(msg, link)  # handshakes on our links: matched by dial token
            return
        speaker = Speaker(msg.src, msg.src_incarnation)
        if isinstance(msg, p.Hello):
            verdict = self.trust.on_hello(
                link,
                speaker,
                needs_proof=self._needs_proof(msg),
                hello_token=msg.token,
                now=time.monotonic(),
            )
        else:  # a member's message on a link whose binding was lost is a claim of that link
            member = kind is not p.HelloAck and self._needs_proof(msg)
            verdict = self.trust.on_message(link, speaker, member=member, now=time.monotonic())
        if verdict is Verdict.PASS:
            self._handle(msg, link)
        elif verdict is Verdict.CHALLENGE or verdict is Verdict.HOLD:
            if not self.trust.hold(link, msg, sum(map(len, frames))):
                self._drops.not_held(msg, link, speaker)
            if verdict is Verdict.CHALLENGE:
                self._challenge(link)
        else:
            self._drops.spoofed(msg, verdict)

    def _needs_proof(self, msg: p.Message) -> bool:
        """Whether a message on a link others opened names a member this worker knows, as
        the incarnation it knows (or is an observer's Hello naming it): incarnations are
        public, so the link must prove it."""
        known = self._membership.get(msg.src)
        if known is None or known.observer:
            return False
        observer = isinstance(msg, p.Hello) and msg.flags & _OBSERVER
        return known.incarnation == msg.src_incarnation or bool(observer)

    def _known_as(self, msg: p.Hello | p.HelloAck) -> bool:
        """Whether membership knows the handshake's sender as that incarnation."""
        known = self._membership.get(msg.src)
        return known is not None and known.incarnation == msg.src_incarnation

    def _challenge(self, link: LinkId) -> None:
        """Ask the member a claim on ``link`` names to prove it, on this worker's own link
        to the member's known address (the secret token goes nowhere else)."""
        claim = self.trust.claim_of(link)
        member = self._membership.get(claim.speaker.worker_id) if claim else None
        if claim is None or member is None:
            return
        me, inc = self._worker_id, self._membership.incarnation
        hello = p.Hello(
            me, inc, member.incarnation, claim.token, self._membership.address, _PROVE,
            claim.hello_token, (),
        )  # fmt: skip
        try:
            self._outbound.send_on_own(member.worker_id, hello)
        except (PeerUnreachable, p.ProtocolError) as error:
            logger.debug("cannot challenge %#x: %s", member.worker_id, error)

    def _prove(self, challenge: p.Hello, link: LinkId) -> None:
        """A peer asks this worker to prove that a link is its own: the answer goes on that
        link (the one its dial ``seq`` took while the dial is in flight, else its own link
        to the peer); without one, back on the challenge's link, which refutes the claim at
        once."""
        peer, token, routes = challenge.src, challenge.seq, self.routes
        own = None
        if token and routes is not None:
            own = routes.dial_link(token, peer, challenge.address)
        if own is None:
            own = self._outbound.own_link(peer)
        me, inc = self._worker_id, self._membership.incarnation
        answer = p.HelloAck(
            me, inc, challenge.src_incarnation, challenge.token, self._membership.address,
            _PROVE, 0, (),
        )  # fmt: skip
        self._outbound.send_on(link if own is None else own, answer)

    def _on_proof(self, answer: p.HelloAck, link: LinkId) -> None:
        speaker = Speaker(answer.src, answer.src_incarnation)
        inbound = not self._outbound.is_own(link)
        claim, proven = self.trust.on_proof(answer.token, speaker, link, inbound=inbound)
        if claim is None:
            return
        if proven:
            for msg in claim.held:
                self._handle(msg, link)
        else:
            self._drops.refuted(claim, "its answer came on another link")

    def _handle(self, msg: p.Message, link: LinkId) -> None:
        """A message its link speaks for: handed to the layer it concerns."""
        now = time.monotonic()
        if isinstance(msg, p.Hello):  # a handshake may name any incarnation
            self._stalls.ran(now)  # a worker handshakes as it starts, before its first tick
            key = self._outbound.authenticated(link)
            self.apply(self._membership.on_hello(msg, link, now))
            if self._known_as(msg):
                self._outbound.heard(msg.src, link, now)
            self._bind_if_admitted(msg, key)
            return
        if isinstance(msg, p.HelloAck):
            self._stalls.ran(now)
            key = self._outbound.authenticated(link)  # before a dial's link is released
            effects = self._membership.on_hello_ack(msg, now)
            # The link is the sender's only if membership took its word (a dial's answer
            # that claims a member's id, refused, must not carry that member's traffic).
            known = self._known_as(msg)
            if known:
                self._outbound.heard(msg.src, link, now)
                self._outbound.reached(link, msg.address)  # however it was dialed
            self.apply(effects)
            if known and self._outbound.is_up(link):  # it came up before we knew whose
                incarnation = msg.src_incarnation
                self._membership.on_link_up(msg.src, address=msg.address, incarnation=incarnation)
            self._bind_if_admitted(msg, key)
            return
        self._from_peer(msg, link, now)

    def _from_peer(self, msg: p.Message, link: LinkId, now: float) -> None:
        """Any message but a handshake, its link speaking for its sender: if membership
        admits the sender, handed to the layer it concerns."""
        counters = self._counters
        peer = self._membership.admit(msg.src, msg.src_incarnation, msg.dst_incarnation, now)
        if type(peer) is not ms.Member:
            if isinstance(peer, ms.Rejected):
                self._on_rejected(msg, link, peer)
                return
            assert isinstance(peer, ms.Returned)
            self.apply(peer.effects)
            peer = peer.member
        self._outbound.heard(peer.worker_id, link, now)
        if self.goodbyes_answered is not None and self._membership.goodbyes_acknowledged:
            self.goodbyes_answered.set()
        if isinstance(msg, p.Request):
            self._execution.dispatch(peer, msg, link)
        elif isinstance(msg, p.Response):
            if not self._calls.on_response(peer.worker_id, msg.msg_id, msg.payload):
                counters["late_responses"] += 1
        elif isinstance(msg, p.EventUpdates):
            self._remote_events.on_updates(peer.worker_id, msg)
        elif isinstance(msg, p.Credit):
            self._flow.sends.on_credit(peer, msg)
        elif isinstance(msg, p.ErrorResponse):
            if self._calls.on_error(peer.worker_id, msg, peer.describe()):
                pass
            elif msg.code == p.ErrorCode.BUSY:  # a send of ours, refused unrun
                counters["sends_refused"] += 1
                self._log.warning(
                    "busy", "a send to %s was refused: %s", peer.describe(), msg.message
                )
            else:
                counters["late_responses"] += 1
        elif isinstance(msg, p.Peers):
            self.apply(self._membership.on_peers(msg.peers, peer.worker_id, now))
        elif isinstance(msg, p.Draining):
            self._membership.on_draining(peer)
            self._flow.sends.on_draining(peer.worker_id, peer.describe())
        elif isinstance(msg, p.Goodbye):
            self.apply(self._membership.on_goodbye(peer, link))
            if self._membership.get(peer.worker_id) is None:  # an observer: gone at once
                self._keys.release(peer.worker_id)

    def link_up(self, link: LinkId) -> None:
        peer_id = self._outbound.link_up(link)
        logger.debug("link %s up (to %s)", link.hex(), peer_id, extra=fields(self._worker_id))
        if peer_id is not None:
            self._membership.on_link_up(peer_id, address=self._outbound.address_of(link))

    def link_down(self, link: LinkId, why: str, *, refused: bool = False) -> None:
        peer_id = self._outbound.link_down(link)
        if peer_id is None:  # opened for a dial nobody has answered yet
            if self.routes is not None:
                self.routes.link_failed(link, why, refused=refused)
            return
        now = time.monotonic()
        self.apply(self._membership.on_link_down(peer_id, self._stalls.explain(why, now), now))

    def _may_claim(self, msg: p.Hello | p.HelloAck, link: LinkId) -> bool:
        """Whether the key the peer proved on ``link`` (if any) may speak as ``msg.src``."""
        refused = self._keys.check(self._outbound.authenticated(link), msg.src)
        if refused is None:
            return True
        self._counters["messages_spoofed"] += 1
        what = f"{type(msg).__name__} claiming worker {msg.src:#x}"
        self._log.warning("wrong key", "dropping %s: %s", what, refused, peer=msg.src)
        return False

    def _bind_if_admitted(self, msg: p.Hello | p.HelloAck, key: str | None) -> None:
        """A handshake admitted its sender (a member of that incarnation, an observer): the
        ``key`` proved on its link speaks for it from now on. A pending newcomer binds
        nothing until its address answered (see :mod:`._keys`)."""
        member = self._membership.member(msg.src)
        admitted = member is not None and member.incarnation == msg.src_incarnation
        if admitted or self._membership.is_observer(msg.src):
            self._keys.bind(key, msg.src)

    def refused(self, link: LinkId, what: str) -> None:
        """The transport dropped a message unread: over ``max_message_size``, or of more
        frames than the protocol's two."""
        self._drops.oversized(link, what)

    def inbound_ended(self, peer: str, cut: str | None) -> None:
        """A connection from ``peer`` ended; ``cut``: the transport cut it, and why."""
        self._drops.inbound_ended(peer, cut)

    def _on_rejected(self, msg: p.Message, link: LinkId, rejected: ms.Rejected) -> None:
        self._counters[rejected.counter] += 1
        if rejected.category is not None:
            what = f"{type(msg).__name__} {rejected.text}"
            self._log.warning(rejected.category, "dropping %s (%#x)", what, msg.src, peer=msg.src)
        if rejected is ms.STALE and isinstance(msg, p.Request):
            peer = self._membership.get(msg.src)
            if peer is not None:
                self._execution.refuse_stale(peer, msg, link)
        self.apply(rejected.effects)

    # -- closing --------------------------------------------------------------------------------

    def _closing(self) -> bool:
        return self.goodbyes_answered is not None

    def fail_waiting(self, error: AMError) -> None:
        """This worker is closing: its calls in flight and its sends waiting for room fail."""
        self._calls.fail_all(error)
        self._flow.sends.fail_all(error)

    def begin_drain(self) -> None:
        """The worker began closing: peers it has links to are told so."""
        self.apply(self._membership.begin_drain(self._outbound.linked()))

    async def say_goodbye(self, timeout: float) -> None:
        """The last word to every peer this worker has a link with; waits (at most
        ``timeout`` seconds) for each to acknowledge it, since a socket closed right after a
        burst may lose its tail. Senders first learn which of their sends were done."""
        self._flow.receipts.flush()
        self.apply(self._membership.begin_goodbye(self._outbound.linked()))
        if not self._membership.goodbyes_acknowledged:
            answered = self.goodbyes_answered = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await answered.wait()

    # -- time -----------------------------------------------------------------------------------

    def interest(self) -> set[int]:
        """The peers this worker has business with: its gossip neighbors, the peers of its
        calls in flight and of its unconfirmed sends, the owners of the events it awaits, the
        subscribers it serves and the holders of the leases on its events."""
        interest = self._calls.peers() | self._flow.sends.peers() | self._lease_holders()
        interest |= self._remote_events.interest()
        interest |= self._membership.neighbors
        return interest

    def tick(self, now: float) -> None:
        """Time passes for the table and the links: dials expire, old entries go, neighbors
        are kept, lost members redialed, idle links closed, the peers this worker has
        business with watched through links of its own, and credits repeated."""
        self._stalls.ran(now)
        interest = self.interest()
        self.apply(self._membership.tick(now))
        self._remote_events.tick(now)
        self._flow.receipts.tick()
        for peer_id in self._outbound.tick(now, interest):
            why = f"no connection within {self._outbound.connect_timeout} s"
            self.apply(self._membership.on_link_down(peer_id, self._stalls.explain(why, now), now))
        # A live member answers every challenge, even to refute it: only a dead or
        # unreachable one does not, and a busy one must not lose what it sent. A link bound
        # before membership knows its sender is kept as long: its handshake ends by then.
        handshake = 0.0 if self.routes is None else self.routes.handshake_timeout
        patience = max(handshake, self._outbound.connect_timeout)
        for claim in self.trust.expire(now, patience):
            self._drops.refuted(claim, "no answer to the challenge")
        known = self._membership.get
        self.trust.retain(lambda worker_id: known(worker_id) is not None, now, patience)
        self._keys.retain(lambda worker_id: known(worker_id) is not None)
        self._outbound.watch([p for p in interest if self._membership.is_connected(p)], now)

    # -- effects --------------------------------------------------------------------------------

    def apply(self, effects: Iterable[ms.Effect]) -> None:
        """Carry out what the table decided."""
        routes = self.routes
        assert routes is not None
        for effect in effects:
            if isinstance(effect, ms.Send):
                self._outbound.send_quietly(effect.peer_id, effect.message, dial=effect.dial)
            elif isinstance(effect, ms.Reply):
                self._outbound.send_on(effect.link, effect.message)
            elif isinstance(effect, ms.Lost):
                self._on_lost(effect)
            elif isinstance(effect, ms.Dial):
                routes.dial(effect)
            elif isinstance(effect, ms.DialAnswered):
                routes.answered(effect.token, effect.peer_id, keep=effect.keep)
            elif isinstance(effect, ms.DialRefused):
                routes.refused(effect.token, effect.why)
            elif isinstance(effect, ms.Joined):
                routes.changed.set()
                self._remote_events.on_peer_joined(effect.peer_id)
                self._flow.receipts.on_joined(effect.peer_id)
                extra = fields(self._worker_id, effect.peer_id)
                (logger.debug if effect.heard else logger.info)(
                    "peer %s joined", effect.text, extra=extra
                )
            elif isinstance(effect, ms.Forgotten):
                self._remote_events.on_peer_forgotten(effect.peer_id)
                self._flow.receipts.forget(effect.peer_id)
                successor = self._membership.get(effect.peer_id)
                if successor is None:  # not replaced: gone
                    self._keys.release(effect.peer_id)
                else:  # the id's links speak for the one replaced
                    self._outbound.replaced(effect.peer_id, successor.address)
            elif isinstance(effect, ms.ScheduleGossip):
                if not self._gossip_scheduled:
                    self._gossip_scheduled = True
                    asyncio.get_running_loop().call_soon(self._flush_gossip)
            elif effect.error:
                logger.error(effect.text, extra=fields(self._worker_id))
            else:
                self._log.warning(effect.category, effect.text)

    def _flush_gossip(self) -> None:
        self._gossip_scheduled = False
        self.apply(self._membership.flush_gossip())

    def _on_lost(self, lost: ms.Lost) -> None:
        self._counters["peers_lost"] += 1
        if self.routes is not None:
            self.routes.changed.set()
        extra = fields(self._worker_id, lost.peer_id)
        (logger.info if lost.closed else logger.warning)("peer %s", lost.text, extra=extra)
        self._calls.fail_peer(lost.peer_id, PeerLost(lost.text))
        self._flow.sends.on_lost(lost.peer_id, lost.text)
        self._outbound.forget(lost.peer_id)
        if self._membership.get(lost.peer_id) is None:  # an observer's link: gone at once
            self._keys.release(lost.peer_id)
        self._remote_events.on_peer_lost(lost.peer_id, lost.text, closed=lost.closed)
        for callback in list(self.peer_lost_callbacks):
            try:
                callback(lost.peer_id, lost.text)
            except Exception:
                logger.exception("peer-lost callback %r failed", callback, extra=extra)
