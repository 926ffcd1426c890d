"""How news of members spreads, as pure rules: the part of :class:`~velo_am._membership.PeerTable`
that keeps gossip neighbors and merges, queues and forwards what is said of members.

Each member keeps a few *gossip neighbors* (``fanout``, symmetric, at most three times that:
every newcomer pairs with ``fanout`` members, so degrees average twice ``fanout``). News
of a member (joined, lost, closed: a :class:`~velo_am._messages.PeerInfo` with its ``seq``)
is forwarded once to every neighbor but the one it came from, in one message per neighbor per
loop iteration: a join costs O(N) messages and reaches everyone in O(log N) hops. Newer
``seq`` wins; at one ``seq``, lost or closed beats alive; a member told it was lost announces
itself again with ``seq + 1``, and a worker that hears directly from a member it had lost
vouches for it with ``seq + 1``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Final

from . import _messages as m
from ._peers import Effect, Forgotten, Joined, Lost, Member, PeerState, ScheduleGossip, Send

__all__ = ["Gossip"]

_ALIVE_INFO: Final = int(m.MemberState.ALIVE)


class Gossip:
    """The members known to one worker, its gossip neighbors and the news it owes them."""

    def __init__(
        self,
        worker_id: int,
        incarnation: int,
        *,
        fanout: int,
        observer: bool,
        max_backoff: float,
        rng: random.Random,
    ) -> None:
        self.worker_id: Final = worker_id
        self.incarnation: Final = incarnation
        self.fanout = fanout
        self.max_neighbors = 3 * fanout
        self.observer = observer
        self.max_backoff = max_backoff
        self._rng = rng
        #: This worker's own ``seq``: it grows each time it must announce itself again.
        self.seq = 1
        #: The address peers reach this worker at.
        self.address = ""
        self.neighbors: set[int] = set()
        self._members: dict[int, Member] = {}
        self._gossip: dict[int, dict[int, m.PeerInfo]] = {}
        self._probed: dict[int, tuple[float, float]] = {}  # lost member -> (next, delay)
        #: Per id, the incarnations replaced by a verified successor (the last four): ended.
        self._replaced: dict[int, tuple[int, ...]] = {}
        #: Per id, the incarnations hearsay displaced: ended once their successor is proven
        #: (a link of this worker's to its address is up), forgotten if it is lost first.
        self._displaced: dict[int, tuple[int, ...]] = {}
        self._awaiting_acks: set[int] = set()
        #: Members this worker watches itself: a link of its own to each is up.
        self.watched: set[int] = set()
        #: Whether this worker exchanged what it knows with a neighbor it still has: until
        #: then, news may have spread past it, and its pairings exchange member lists.
        self.synced = False

    def known_peers(self) -> tuple[m.PeerInfo, ...]:
        """The live members this worker knows, to hand a newcomer (news of losses travels
        only as it happens: a stale loss must not undo a member alive on the other side)."""
        return tuple(peer.info() for peer in self._members.values() if peer.state.connected)

    # -- gossip -------------------------------------------------------------------------------

    def flush_gossip(self) -> list[Effect]:
        """The news queued since the last flush, one message per neighbor."""
        queued, self._gossip = self._gossip, {}
        me, inc = self.worker_id, self.incarnation
        effects: list[Effect] = []
        for neighbor_id, news in queued.items():
            neighbor = self._members.get(neighbor_id)
            if neighbor is not None and neighbor.state.connected:
                infos = tuple(news.values())
                effects.append(Send(neighbor_id, m.Peers(me, inc, neighbor.incarnation, infos)))
        return effects

    def _announce(self, peer: Member, exclude: int) -> list[Effect]:
        """Queue news of ``peer`` for every neighbor but ``exclude``."""
        if not self.neighbors or self.observer:
            return []
        first = not self._gossip
        info = peer.info()
        # A member told of its own loss refutes it: news of a loss goes to it too.
        subject = peer.worker_id if peer.state.connected else None
        for neighbor in self.neighbors:
            if neighbor not in (exclude, subject):
                self._gossip.setdefault(neighbor, {})[peer.worker_id] = info
        return [ScheduleGossip()] if first and self._gossip else []

    def _announce_self(self) -> list[Effect]:
        if self.observer or not self.neighbors:
            return []
        first = not self._gossip
        me = m.PeerInfo(self.worker_id, self.incarnation, self.address, self.seq, _ALIVE_INFO)
        for neighbor in self.neighbors:
            self._gossip.setdefault(neighbor, {})[self.worker_id] = me
        return [ScheduleGossip()] if first else []

    def _merge(self, infos: Iterable[m.PeerInfo], sender: int, now: float) -> list[Effect]:
        """Take in what ``sender`` knows: newer news is kept and passed on."""
        effects: list[Effect] = []
        for info in infos:
            if info.worker_id == self.worker_id:
                if info.incarnation != self.incarnation:
                    continue
                if info.state != _ALIVE_INFO and info.seq >= self.seq:
                    self.seq = info.seq + 1  # said to be lost: announce ourselves again
                    effects += self._announce_self()
                elif info.seq > self.seq:
                    self.seq = info.seq  # a peer vouched for us after a loss
                continue
            effects += self._learn(info, sender, now)
        return effects

    def _learn(self, info: m.PeerInfo, sender: int, now: float) -> list[Effect]:
        known = self._members.get(info.worker_id)
        state = (PeerState.ALIVE, PeerState.LOST, PeerState.CLOSED)[info.state]
        if known is None:
            if state is not PeerState.ALIVE:
                return []  # news of a death we never knew of
            peer = Member(info.worker_id, info.incarnation, info.address, info.seq, now)
            self._members[info.worker_id] = peer
            joined = Joined(peer.worker_id, peer.describe(), heard=True)
            return [*self._announce(peer, exclude=sender), joined]
        if known.incarnation != info.incarnation:
            replaced = info.incarnation in self._replaced.get(info.worker_id, ())
            if known.state.connected or state is not PeerState.ALIVE or replaced:
                # A live member is not replaced by hearsay; nor a lost one by an incarnation
                # known to have ended (stale news: incarnations have no order; its own word,
                # a handshake, can still bring it back).
                return []
            # Hearsay proves nothing ended: the incarnation displaced is recorded only once
            # its successor proves itself; news of it may bring it back till then.
            peer = Member(info.worker_id, info.incarnation, info.address, info.seq, now)
            self._members[info.worker_id] = peer
            displaced = self._displaced.get(info.worker_id, ())
            self._displaced[info.worker_id] = (*displaced, known.incarnation)[-4:]
            joined = Joined(peer.worker_id, peer.describe(), heard=True)
            return [Forgotten(known.worker_id), *self._announce(peer, exclude=sender), joined]
        if known.state is PeerState.CLOSED:
            return []
        if state is PeerState.ALIVE and known.state is PeerState.LOST and info.seq <= known.seq:
            return self._doubt(known, now)  # others still see it: look for ourselves
        if info.seq < known.seq:
            return []
        worse = state is not PeerState.ALIVE and known.state.connected
        if info.seq == known.seq and not worse:
            return []
        if state is PeerState.LOST and worse and known.worker_id in self.watched:
            # Hearsay of a loss, but this worker's own link to it is up: vouch for it.
            known.seq = info.seq + 1
            return self._announce(known, exclude=known.worker_id)
        known.seq = info.seq
        known.address = info.address
        if state is PeerState.ALIVE:
            return self._heard_from(known, info.address, info.seq, now, force=True, exclude=sender)
        reason = "closed" if state is PeerState.CLOSED else "lost (as its neighbors saw)"
        return self._lose(known, reason, state, exclude=sender)

    def _replace(self, old: Member | None, new: Member) -> None:
        """``new``, proven by its own word (a handshake whose address answered), takes the
        place of ``old`` (``None``: nobody) in the table; if it is another incarnation of the
        id, ``old``'s is known to have ended (lost or at the same address, or its
        predecessor check failed) and is remembered as replaced."""
        self._members[new.worker_id] = new
        if old is not None and old.incarnation != new.incarnation:
            self._ended(new, old.incarnation)

    def _proven(self, peer: Member) -> None:
        """``peer``, perhaps known by hearsay, answered at its own address: the incarnations
        hearsay displaced with it have ended."""
        for incarnation in self._displaced.pop(peer.worker_id, ()):
            self._ended(peer, incarnation)

    def _ended(self, successor: Member, incarnation: int) -> None:
        gone = self._replaced.get(successor.worker_id, ())
        skip = (successor.incarnation, incarnation)
        kept = tuple(inc for inc in gone if inc not in skip)[-3:]
        self._replaced[successor.worker_id] = (*kept, incarnation)

    def _doubt(self, peer: Member, now: float) -> list[Effect]:
        """Others say ``peer``, lost to this worker, is alive: see for ourselves."""
        return []

    def _heard_from(
        self,
        peer: Member,
        address: str,
        seq: int,
        now: float,
        *,
        force: bool = False,
        exclude: int | None = None,
    ) -> list[Effect]:
        """Direct word (or newer news) that ``peer`` is alive."""
        peer.last_seen = now
        revived = not peer.state.connected and peer.state is not PeerState.CLOSED
        peer.seq = max(peer.seq, seq)
        if not revived and not force:
            return []
        if revived:
            peer.state = PeerState.ALIVE
            peer.address = address
            peer.changed_at = now
            if not force:  # direct word after a loss: this news must beat the loss's
                peer.seq += 1
            self._probed.pop(peer.worker_id, None)
        news = self._announce(peer, exclude=peer.worker_id if exclude is None else exclude)
        return [*news, Joined(peer.worker_id, peer.describe(), heard=force)] if revived else news

    def _lose(
        self, peer: Member, reason: str, state: PeerState, exclude: int | None = None
    ) -> list[Effect]:
        if not peer.state.connected:
            if state is PeerState.CLOSED:
                peer.state = state  # a goodbye is final, even after a loss
            return []
        peer.state = state
        peer.changed_at = peer.last_seen
        self._displaced.pop(peer.worker_id, None)  # never proven: what it displaced may live
        self._awaiting_acks.discard(peer.worker_id)
        self.watched.discard(peer.worker_id)
        self.neighbors.discard(peer.worker_id)
        if not self.neighbors:
            self.synced = False  # cut off: what spread meanwhile must be fetched again
        news = self._announce(peer, exclude=peer.worker_id if exclude is None else exclude)
        lost = Lost(peer.worker_id, f"{peer.describe()} {reason}", state is PeerState.CLOSED)
        return [lost, *news]

    def _has_room(self, peer_id: int) -> bool:
        return not self.observer and (
            peer_id in self.neighbors or len(self.neighbors) < self.max_neighbors
        )

    def _add_neighbor(self, peer_id: int) -> None:
        if self._has_room(peer_id):
            self.neighbors.add(peer_id)

    def _backoff_probe(self, peer_id: int, now: float) -> None:
        _, delay = self._probed.get(peer_id, (0.0, 0.25))
        delay = min(delay * 2, self.max_backoff)
        self._probed[peer_id] = (now + self._jitter(delay), delay)

    def _jitter(self, delay: float) -> float:
        """``delay`` spread over ±25 %, so that workers who lost the same member do not
        redial it in step."""
        return delay * (0.75 + 0.5 * self._rng.random())
