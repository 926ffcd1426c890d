"""Membership: who the mesh's members are and how news of them spreads, as pure rules (sans-IO).

:class:`PeerTable` is a state machine in the style of h11's ``_state.py``: it takes events
(handshakes, messages, gossip, a link that went down, draining, goodbye, the passing of time)
and returns *effects*, the things the worker must now do (send, answer on a link, dial,
treat a peer as gone). It touches no socket, runs no loop, reads no clock (time is an
argument) and draws its randomness from the ``random.Random`` it is given.
:class:`~velo_am.Worker` feeds it and applies what it returns; docs/architecture.md explains
who watches whom, and why.

The rules, briefly:

* **Joining.** A newcomer's ``Hello`` is answered at once, on the link it came on, with every
  member the acceptor knows. The newcomer is *pending* until its advertised address answers
  a ``Hello`` of the acceptor's own (so an address nobody listens on is never spread); then
  it is a member, announced once, as a delta. Handshakes from unknown workers are
  rate-limited and the pending ones capped. A ``Hello`` never evicts a live member: a new
  incarnation of a live member's id elsewhere waits while that member is dialed at *its*
  address, and replaces it only if it does not answer there.
* **Spreading news** to a few *gossip neighbors*: :mod:`velo_am._gossip` (a join costs
  O(N) messages and reaches everyone in O(log N) hops).
* **Liveness by interest.** Nothing is heartbeated here. A member is lost when a link this
  worker opened to it goes down (the transport watches its links below the application, so a
  busy worker is not dead), when a dial to it gets no answer, or when gossip says so. The
  worker watches who it has business with: its neighbors, and the peers of its calls,
  awaited events and served subscriptions.
* **Healing.** A worker without a live neighbor redials its seeds, else lost members, with
  back-off; lost and closed members are forgotten after ``forget_after``.
* **Observers** (short-lived members such as the command line) are answered but never
  verified, gossiped nor remembered after they leave.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from typing import Final

from . import _messages as m
from ._dials import Dialed
from ._peers import (
    FROM_CLOSED,
    FROM_LOST,
    STALE,
    UNKNOWN,
    DialAnswered,
    DialRefused,
    Effect,
    Forgotten,
    Joined,
    Lost,
    Member,
    Note,
    PeerState,
    PeerStatus,
    Purpose,
    RateLimit,
    Rejected,
    Reply,
    Returned,
    Send,
)
from ._successors import Pending, Successors
from .transport import LinkId

__all__ = ["PeerTable"]

_ALIVE: Final = PeerState.ALIVE
_DRAINING: Final = PeerState.DRAINING


# -- the table --------------------------------------------------------------------------------


class PeerTable(Successors):
    """The members known to worker ``worker_id`` (incarnation ``incarnation``) and the rules
    that change them. Every method runs on the worker's loop; none blocks or does I/O."""

    def __init__(
        self,
        worker_id: int,
        incarnation: int,
        *,
        handshake_timeout: float,
        forget_after: float,
        rng: random.Random,
        seeds: Iterable[str] = (),
        observer: bool = False,
        fanout: int = 3,
        max_pending: int = 256,
        hello_rate: float = 500.0,
        hello_burst: float = 1024.0,
        max_backoff: float = 30.0,
        sync_every: float = 10.0,
    ) -> None:
        super().__init__(
            worker_id,
            incarnation,
            seeds=seeds,
            fanout=fanout,
            observer=observer,
            max_backoff=max_backoff,
            rng=rng,
            sync_every=sync_every,
        )
        self.handshake_timeout = handshake_timeout
        self.forget_after = forget_after
        self.max_pending = max_pending
        self._pending: dict[int, Pending] = {}
        self._observers: dict[int, Member] = {}
        self._hello_budget = RateLimit(hello_rate, hello_burst)

    # -- queries ----------------------------------------------------------------------------

    def get(self, peer_id: int) -> Member | None:
        """The member (any state), pending newcomer or observer; ``None`` if unknown."""
        member = self._members.get(peer_id)
        return member if member is not None else self._unlisted(peer_id)

    def _unlisted(self, peer_id: int) -> Member | None:
        """A pending newcomer or an observer (not in the member list), else ``None``."""
        pending = self._pending.get(peer_id)
        return pending.member if pending is not None else self._observers.get(peer_id)

    def member(self, peer_id: int) -> Member | None:
        return self._members.get(peer_id)

    def address_of(self, peer_id: int) -> str | None:
        """Where ``peer_id`` listens, as it advertised it; ``None`` if unknown."""
        peer = self.get(peer_id)
        return None if peer is None else peer.address

    def state_of(self, peer_id: int) -> str | None:
        """``peer_id``'s state (``"alive"``, ``"lost"``…); ``None`` if unknown."""
        peer = self.get(peer_id)
        return None if peer is None else str(peer.state)

    def alive(self, peer_id: int) -> Member | None:
        """The peer if it can be called now (the fast path of every call and send)."""
        peer = self._members.get(peer_id)
        if peer is None:
            return self._unlisted(peer_id)
        return peer if peer.state is _ALIVE else None

    def connected(self, peer_id: int) -> Member | None:
        """The peer if messages may go to it now (the fast path of every update sent)."""
        peer = self._members.get(peer_id)
        if peer is None:
            return self._unlisted(peer_id)
        return peer if peer.state is _ALIVE or peer.state is _DRAINING else None

    def is_connected(self, peer_id: int) -> bool:
        return self.connected(peer_id) is not None

    def is_observer(self, peer_id: int) -> bool:
        return peer_id in self._observers

    def connected_count(self) -> int:
        return sum(1 for peer in self._members.values() if peer.state.connected)

    def statuses(self, now: float) -> dict[int, PeerStatus]:
        """Every member (observers and pending newcomers are not)."""
        return {peer_id: peer.status(now) for peer_id, peer in self._members.items()}

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def goodbyes_acknowledged(self) -> bool:
        """Every peer told goodbye has answered since (see :meth:`begin_goodbye`)."""
        return not self._awaiting_acks

    # -- lifecycle ----------------------------------------------------------------------------

    def bind(self, address: str, now: float) -> None:
        """The worker listens at ``address`` and takes part from now on."""
        self.address = address
        self.accepting = True
        self._hello_budget.reset(now)

    def begin_drain(self, linked: Collection[int]) -> list[Effect]:
        """The worker began closing: tell the peers it has links to; accept no newcomer."""
        self.accepting = False
        me, inc = self.worker_id, self.incarnation
        return [
            Send(peer.worker_id, m.Draining(me, inc, peer.incarnation), dial=False)
            for peer in self._linked(linked)
        ]

    def begin_goodbye(self, linked: Collection[int]) -> list[Effect]:
        """The worker's last word to each peer it has a link to; their acknowledgements are
        awaited (:attr:`goodbyes_acknowledged`)."""
        me, inc = self.worker_id, self.incarnation
        peers = list(self._linked(linked))
        self._awaiting_acks = {peer.worker_id for peer in peers}
        return [
            Send(peer.worker_id, m.Goodbye(me, inc, peer.incarnation), dial=False) for peer in peers
        ]

    def _linked(self, linked: Collection[int]) -> Iterable[Member]:
        for peer_id in linked:
            peer = self.get(peer_id)
            if peer is not None and (peer.observer or peer.state.connected):
                yield peer

    # -- dials --------------------------------------------------------------------------------

    def dial_failed(self, token: int, now: float) -> list[Effect]:
        """Dial ``token`` got no answer in time (or could not be made)."""
        dial = self._end_dial(token)
        if dial is None:
            return []
        if dial.purpose is Purpose.VERIFY and dial.peer_id is not None:
            pending = self._pending.get(dial.peer_id)
            if pending is not None and pending.token == token:
                del self._pending[dial.peer_id]
                text = f"{pending.member.describe()} did not answer at its address"
                gone = self._newcomer_gone(pending.member, "did not answer at its address")
                return [Note("verify", f"not admitting {text}"), *gone]
        if dial.purpose is Purpose.PROBE and dial.peer_id is not None:
            self._backoff_probe(dial.peer_id, now)
        if dial.purpose is Purpose.PREDECESSOR:
            return self._predecessor_checked(dial, token, None, now)
        return []

    # -- handshakes ---------------------------------------------------------------------------

    def on_hello(self, msg: m.Hello, link: LinkId, now: float) -> list[Effect]:
        """A ``Hello`` arrived on ``link``. A member (or an observer) is answered there at
        once; a newcomer only once its own address has answered (so, when its ``connect``
        returns, both sides know each other); a verification at once, and nothing else."""
        src, inc = msg.src, msg.src_incarnation
        if src == self.worker_id:
            return self._hello_from_self(msg)
        if not self.accepting:
            return []
        flags = m.HelloFlags(msg.flags)
        if flags & m.HelloFlags.VERIFY:
            return [Reply(link, self._ack(msg, m.HelloFlags.NONE, peers=()))]
        if flags & m.HelloFlags.OBSERVER:
            effects: list[Effect] = []
            if src not in self._observers:
                if len(self._observers) >= self.max_pending:  # killed ones never say goodbye
                    oldest = min(self._observers.values(), key=lambda o: o.last_seen)
                    del self._observers[oldest.worker_id]
                observer = Member(src, inc, msg.address, msg.seq, now)
                observer.observer = True
                self._observers[src] = observer
                effects.append(Joined(src, f"{observer.describe()} (an observer)"))
            if msg.token:
                effects.insert(0, Reply(link, self._ack(msg, m.HelloFlags.NONE)))
            return effects
        known = self._members.get(src)
        if known is not None and known.incarnation == inc:
            effects = self._heard_from(known, msg.address, msg.seq, now)
            effects += self._merge(msg.peers, src, now)
            return [*self._answer(msg, link), *effects]
        pending = self._pending.get(src)
        if pending is not None and pending.member.incarnation == inc:
            pending.waiting.append((link, msg))  # answered once verified
            return []
        if not self._hello_budget.take(now):
            return [Note("hello", f"handshake rate limit: not answering {src:#x}")]
        if len(self._pending) >= self.max_pending:
            return [Note("hello", f"too many unverified newcomers: ignoring {src:#x}")]
        verify = self.start_dial(msg.address, Purpose.VERIFY, now, src)
        newcomer = Member(src, inc, msg.address, msg.seq, now)
        replaced = self._pending.get(src)
        self._pending[src] = Pending(newcomer, [(link, msg)], verify.hello.token)
        if replaced is None:
            return [verify]
        return [*self._newcomer_gone(replaced.member, "was replaced by a new incarnation"), verify]

    def _answer(self, msg: m.Hello, link: LinkId) -> list[Effect]:
        """The answer to a member's ``Hello`` (none for an introduction, token 0)."""
        if not msg.token:
            return []
        answer = m.HelloFlags.NONE
        if m.HelloFlags(msg.flags) & m.HelloFlags.NEIGHBOR and self._has_room(msg.src):
            answer |= m.HelloFlags.NEIGHBOR
            self._add_neighbor(msg.src)
            if not self.synced:  # paired: what the new neighbor knows, if we lack it
                self.synced = True
                if not msg.peers:
                    answer |= m.HelloFlags.JOIN  # "tell me": it pushes its member list
        return [Reply(link, self._ack(msg, answer))]

    def _ack(
        self, msg: m.Hello, flags: m.HelloFlags, peers: tuple[m.PeerInfo, ...] | None = None
    ) -> m.HelloAck:
        if peers is None:
            joining = m.HelloFlags(msg.flags) & m.HelloFlags.JOIN
            peers = self.known_peers() if joining else ()
        me, inc = self.worker_id, self.incarnation
        return m.HelloAck(
            me, inc, msg.src_incarnation, msg.token, self.address, int(flags), self.seq, peers
        )

    def on_hello_ack(self, msg: m.HelloAck, now: float) -> list[Effect]:
        """The answer to one of this worker's dials (or a stray one, ignored)."""
        src, inc = msg.src, msg.src_incarnation
        dial = self._end_dial(msg.token)
        if dial is not None and dial.purpose is Purpose.PREDECESSOR:
            return self._predecessor_checked(dial, msg.token, msg, now)
        if src == self.worker_id:
            if dial is None:
                return []
            self._own_addresses.add(dial.address)
            why = f"is this worker ({src:#x}) itself"
            return [*self._hello_from_self(msg), DialRefused(msg.token, why)]
        if dial is None:
            return []
        effects: list[Effect] = []
        if dial.purpose is Purpose.VERIFY:
            pending = self._pending.get(src)
            if pending is None or pending.member.incarnation != inc or dial.peer_id != src:
                claimed = self._pending.get(dial.peer_id or 0)
                gone: list[Effect] = []
                if claimed is not None and claimed.token == msg.token:
                    del self._pending[claimed.member.worker_id]
                    gone = self._newcomer_gone(claimed.member, f"is not at {dial.address}")
                why = f"is worker {src:#x}, not the newcomer that named it"
                return [
                    Note("verify", f"not admitting: {dial.address} {why}"),
                    DialRefused(msg.token, why),
                    *gone,
                ]
            del self._pending[src]
            effects = self._admit_verified(pending, now)
            return [*effects, DialAnswered(msg.token, src, keep=src in self.neighbors)]
        else:
            member = self._members.get(src)
            if member is not None and member.incarnation != inc:
                if member.state.connected and member.address != msg.address:
                    text = f"another live worker uses id {src:#x} ({msg.address})"
                    refused: list[Effect] = [Note("identity", text, error=True)]
                    refused.append(DialRefused(msg.token, text))
                    return refused + self._check_predecessor(member, None, now)
                effects += self._lose(member, "restarted as a new incarnation", PeerState.LOST)
                effects.append(Forgotten(src))
            if member is None or member.incarnation != inc:
                new = Member(src, inc, msg.address, msg.seq, now)
                self._replace(member, new)
                member = new
                effects += self._announce(member, exclude=src)
                effects.append(Joined(src, member.describe()))
            else:
                effects += self._heard_from(member, msg.address, msg.seq, now)
                self._proven(member)
            self._probed.pop(src, None)
            if dial.purpose is Purpose.JOIN:
                self._seed_members[dial.address] = src
            if m.HelloFlags(msg.flags) & m.HelloFlags.NEIGHBOR and not self.observer:
                self._add_neighbor(src)
                if dial.exchange and src in self.neighbors:
                    self.synced = True
                if m.HelloFlags(msg.flags) & m.HelloFlags.JOIN and src in self.neighbors:
                    effects += self._push_all(src)
            elif dial.purpose is Purpose.SYNC:
                self.neighbors.discard(src)  # it has no room for us: pairing is mutual
                if not self.neighbors:
                    self.synced = False  # cut off: the next pairing exchanges lists again
        effects += self._merge(msg.peers, src, now)
        if dial.purpose is Purpose.JOIN and self.accepting and not self.observer:
            effects += self._recruit(now)  # at once: until paired, news passes this worker by
        effects.append(DialAnswered(msg.token, src, keep=src in self.neighbors))
        return effects

    def _admit_verified(self, pending: Pending, now: float) -> list[Effect]:
        """A pending newcomer answered at its address: it is a member now, its handshakes
        are answered, and everyone hears of it. A live member of its id is replaced only if
        the newcomer answers at that member's very address (one endpoint cannot host both:
        the old one is gone)."""
        newcomer = pending.member
        effects: list[Effect] = []
        old = self._members.get(newcomer.worker_id)
        if old is not None and old.incarnation != newcomer.incarnation:
            if old.state.connected and old.address != newcomer.address:
                return self._check_predecessor(old, pending, now)
            effects += self._lose(old, "restarted as a new incarnation", PeerState.LOST)
            effects.append(Forgotten(old.worker_id))
        newcomer.last_seen = newcomer.changed_at = now
        self._replace(old, newcomer)
        effects += self._announce(newcomer, exclude=newcomer.worker_id)
        effects.append(Joined(newcomer.worker_id, newcomer.describe()))
        for link, hello in pending.waiting:
            effects = [*self._answer(hello, link), *effects]
            effects += self._merge(hello.peers, newcomer.worker_id, now)
        return effects

    def _newcomer_gone(self, newcomer: Member, why: str) -> list[Effect]:
        """A pending newcomer left the table unadmitted. While no member holds its id, it
        was the peer of that id (calls and event subscriptions went to it): it is gone for
        good, so what waits on it fails now instead of waiting for an answer nobody owes."""
        if newcomer.worker_id in self._members:
            return []  # what went to that id went to the member, not to the newcomer
        text = f"{newcomer.describe()} {why} (never admitted)"
        return [Lost(newcomer.worker_id, text, closed=True), Forgotten(newcomer.worker_id)]

    def _predecessor_checked(
        self, dial: Dialed, token: int, answer: m.HelloAck | None, now: float
    ) -> list[Effect]:
        effects, freed, alive = self._predecessor_verdict(dial, token, answer, now)
        if freed is None or alive:
            return effects
        return [*effects, *self._admit_verified(freed, now)]

    def _hello_from_self(self, msg: m.Hello | m.HelloAck) -> list[Effect]:
        if msg.src_incarnation != self.incarnation:
            text = f"another live worker uses this worker's id {msg.src:#x}"
            return [Note("identity", text, error=True)]
        dial = self._end_dial(msg.token) if isinstance(msg, m.Hello) else None
        if dial is None:
            return []
        self._own_addresses.add(dial.address)  # our own dial reached us: its Hello came back
        return [DialRefused(msg.token, f"is this worker ({msg.src:#x}) itself")]

    # -- messages -----------------------------------------------------------------------------

    def admit(
        self, src: int, src_incarnation: int, dst_incarnation: int, now: float
    ) -> Member | Rejected | Returned:
        """Any message but a handshake: its sender, if it may speak to this worker (a live
        member, a pending newcomer or an observer, of that incarnation), else why not. A
        member this worker had lost is alive again by its own word (:class:`Returned`)."""
        if dst_incarnation and dst_incarnation != self.incarnation:
            return STALE
        peer = self._members.get(src)
        if peer is None:
            peer = self._unlisted(src)
            if peer is None or peer.incarnation != src_incarnation:
                return UNKNOWN
        elif peer.incarnation != src_incarnation:
            return UNKNOWN
        state = peer.state
        if state is not _ALIVE and state is not _DRAINING:
            if state is PeerState.LOST and self.accepting:
                # Lost, but it speaks: the loss was this side's alone (its link timed out,
                # say), and the member still counts on what it sends.
                return Returned(peer, tuple(self._heard_from(peer, peer.address, peer.seq, now)))
            return FROM_LOST if state is PeerState.LOST else FROM_CLOSED
        peer.last_seen = now
        if self._awaiting_acks:
            self._awaiting_acks.discard(src)
        return peer

    def on_peers(self, infos: Iterable[m.PeerInfo], sender: int, now: float) -> list[Effect]:
        """Gossip from ``sender``: what it knows of some members."""
        return self._merge(infos, sender, now)

    def on_draining(self, peer: Member) -> None:
        if peer.state is _ALIVE:
            peer.state = PeerState.DRAINING

    def on_goodbye(self, peer: Member, link: LinkId) -> list[Effect]:
        """The peer's last message: acknowledge it on its link (the closing side waits for
        that), then it is closed, and everyone hears so."""
        ack = m.Heartbeat(self.worker_id, self.incarnation, peer.incarnation)
        if peer.observer:
            self._observers.pop(peer.worker_id, None)
            return [Reply(link, ack)]
        if peer.worker_id in self._pending:
            del self._pending[peer.worker_id]
            return [Reply(link, ack), *self._newcomer_gone(peer, "closed before it was admitted")]
        return [Reply(link, ack), *self._lose(peer, "closed", PeerState.CLOSED)]

    def on_link_up(self, peer_id: int, *, address: str, incarnation: int | None = None) -> None:
        """A link this worker opened to ``address`` for ``peer_id`` reaches a worker there
        (``incarnation``, if it said so): the member is watched now, and its own word beats
        hearsay of its loss. A link speaks for one incarnation: one that has not said who it
        reaches counts only if it leads to the member's own address (a link opened for an
        earlier or later incarnation of the id reaches another process), and not while a
        newcomer of that id is pending (it may be the newcomer's)."""
        peer = self._members.get(peer_id)
        if peer is None or not peer.state.connected:
            return
        if incarnation is not None:
            if peer.incarnation == incarnation:
                self.watched.add(peer_id)
        elif address == peer.address and peer_id not in self._pending:
            self.watched.add(peer_id)
        if peer_id in self.watched:
            self._proven(peer)

    def on_link_down(self, peer_id: int, why: str, now: float) -> list[Effect]:
        """A link this worker opened to ``peer_id`` stopped reaching it."""
        self.watched.discard(peer_id)
        peer = self._members.get(peer_id)
        if peer is None:
            pending = self._pending.pop(peer_id, None)
            if pending is not None:
                return self._newcomer_gone(pending.member, f"lost before it was admitted: {why}")
            observer = self._observers.pop(peer_id, None)
            if observer is not None:
                return [Lost(peer_id, f"{observer.describe()} lost: {why}", closed=False)]
            return []
        effects = self._lose(peer, f"lost: {why}", PeerState.LOST)
        if effects:
            self._backoff_probe(peer_id, now)
        return effects

    # -- time ---------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        """Time passes: expire dials and forget old entries; keep ``fanout`` neighbors;
        redial seeds that are not live members, and the members this worker lost, with
        back-off (this is how a mesh reforms after a partition of any length)."""
        effects: list[Effect] = []
        for token, dial in list(self._dials.items()):
            if now - dial.started > self.handshake_timeout:
                effects += self.dial_failed(token, now)
        for peer in list(self._members.values()):
            if not peer.state.connected and now - peer.changed_at > self.forget_after:
                del self._members[peer.worker_id]
                self._replaced.pop(peer.worker_id, None)
                self._displaced.pop(peer.worker_id, None)
                self._probed.pop(peer.worker_id, None)
                effects.append(Forgotten(peer.worker_id))
        return [*effects, *self.heal(now)]
