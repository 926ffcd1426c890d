"""The dials of the membership rules: the handshakes a worker starts (to join, to verify a
newcomer's address, to win a gossip neighbor, to see whether a lost member is back, to
exchange member lists with a neighbor) and the healing that starts them: seeds that are not
live members and members this worker lost are redialed with back-off, a worker keeps
``fanout`` gossip neighbors and asks each in turn what it missed (anti-entropy). Pure, like
the rest of :class:`~velo_am._membership.PeerTable`, which builds on this."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from . import _messages as m
from ._gossip import Gossip
from ._peers import Dial, Effect, Member, PeerState, Purpose, Send

__all__ = ["Dials", "Dialed"]


@dataclass(slots=True)
class Dialed:
    """A dial in progress."""

    address: str
    purpose: Purpose
    started: float
    peer_id: int | None = None  # VERIFY: the newcomer; PROBE: the member
    exchange: bool = False  # the Hello carried this worker's member list, and asked for one


class Dials(Gossip):
    """Gossip, plus the dials of one worker and the rules that start them."""

    def __init__(
        self,
        worker_id: int,
        incarnation: int,
        *,
        seeds: Iterable[str],
        fanout: int,
        observer: bool,
        max_backoff: float,
        rng: random.Random,
        sync_every: float,
    ) -> None:
        super().__init__(
            worker_id,
            incarnation,
            fanout=fanout,
            observer=observer,
            max_backoff=max_backoff,
            rng=rng,
        )
        self.seeds = tuple(seeds)
        #: False until bound and once draining: no new members, no handshake answers, no dials.
        self.accepting = False
        self._dials: dict[int, Dialed] = {}
        self._dialing: set[str] = set()
        self._seed_members: dict[str, int] = {}  # a seed's address -> the worker found there
        self._own_addresses: set[str] = set()  # addresses that turned out to be this worker
        self._next_rejoin = 0.0
        self._rejoin_delay = 0.5
        self._next_sync = 0.0
        self._synced_at: dict[int, float] = {}  # neighbor -> when anti-entropy last asked it
        #: Seconds between anti-entropy exchanges (each with one neighbor, in turn).
        self.sync_every = sync_every

    def is_dialing(self, address: str) -> bool:
        return address in self._dialing

    def is_own_address(self, address: str) -> bool:
        """Whether a dial to ``address`` reached this very worker."""
        return address in self._own_addresses

    @property
    def dials_in_progress(self) -> int:
        return len(self._dials)

    def is_connected(self, peer_id: int) -> bool:
        peer = self._members.get(peer_id)
        return peer is not None and peer.state.connected

    def start_dial(
        self, address: str, purpose: Purpose, now: float, peer_id: int | None = None
    ) -> Dial:
        """A dial this worker makes: its ``Hello`` (its token names the dial)."""
        token = self._rng.getrandbits(64) or 1
        self._dialing.add(address)
        flags = m.HelloFlags.NONE
        if purpose is Purpose.VERIFY:
            flags |= m.HelloFlags.VERIFY
        elif self.observer:
            flags |= m.HelloFlags.OBSERVER
        elif purpose is Purpose.SYNC:
            flags |= m.HelloFlags.NEIGHBOR  # still neighbors? (re-pairs one that dropped us)
        elif purpose in (Purpose.JOIN, Purpose.NEIGHBOR) and len(self.neighbors) < self.fanout:
            flags |= m.HelloFlags.NEIGHBOR
        # A join, anti-entropy, and pairings until one gave a neighbor (see ``synced``),
        # exchange what each side knows (push-pull): news that spread while a worker had no
        # neighbor is not lost, and a join heals a partition both ways. Other dials stay small.
        exchange = purpose in (Purpose.JOIN, Purpose.SYNC) or (
            purpose is Purpose.NEIGHBOR and not self.synced
        )
        if exchange:
            flags |= m.HelloFlags.JOIN
        peers = self.known_peers() if exchange and not self.observer else ()
        self._dials[token] = Dialed(address, purpose, now, peer_id, exchange)
        hello = m.Hello(
            self.worker_id, self.incarnation, 0, token, self.address, int(flags), self.seq, peers
        )
        return Dial(address, hello, peer_id)

    def _end_dial(self, token: int) -> Dialed | None:
        dial = self._dials.pop(token, None)
        if dial is not None and not any(d.address == dial.address for d in self._dials.values()):
            self._dialing.discard(dial.address)
        return dial

    def introduction(self) -> m.Hello:
        """The first message on a link opened for business: who this worker is (token 0:
        nobody waits for an answer)."""
        flags = m.HelloFlags.OBSERVER if self.observer else m.HelloFlags.NONE
        return m.Hello(
            self.worker_id, self.incarnation, 0, 0, self.address, int(flags), self.seq, ()
        )

    def heal(self, now: float) -> list[Effect]:
        """Keep ``fanout`` neighbors; redial seeds that are not live members, and the
        members this worker lost, with back-off (how a mesh reforms after a partition of any
        length)."""
        if not self.accepting or self.observer:
            return []
        effects: list[Effect] = []
        if len([n for n in self.neighbors if self.is_connected(n)]) < self.fanout:
            effects += self._recruit(now)
        if now >= self._next_sync:
            self._next_sync = now + self._jitter(self.sync_every)
            effects += self._sync(now)
        if now >= self._next_rejoin:
            missing = [seed for seed in self.seeds if self._seed_missing(seed)]
            if missing:
                self._next_rejoin = now + self._jitter(self._rejoin_delay)
                self._rejoin_delay = min(self._rejoin_delay * 2, self.max_backoff)
                effects += [self.start_dial(seed, Purpose.JOIN, now) for seed in missing]
            else:
                self._rejoin_delay = 0.5
        for peer_id, (due, _) in list(self._probed.items()):
            lost = self._members.get(peer_id)
            if lost is None or lost.state is not PeerState.LOST:
                del self._probed[peer_id]
            elif now >= due and lost.address not in self._dialing:
                effects.append(self.start_dial(lost.address, Purpose.PROBE, now, peer_id))
        return effects

    def _sync(self, now: float) -> list[Effect]:
        """Anti-entropy: exchange member lists with one live neighbor, in a ``Hello``
        that also asks to stay neighbors. Gossip forwards news once; this mends what either
        side missed, at one exchange per worker per ``sync_every`` whatever the mesh's size.
        A push alone would not: a worker whose neighbors all dropped it (each lost it for a
        moment) still counts them, so nobody forwards news to it and its pushes teach them
        nothing; the exchange teaches it, and the neighbor pairs with it again or says no."""
        live = [
            n
            for n in self.neighbors
            if self.is_connected(n) and self._members[n].address not in self._dialing
        ]
        if not live:
            return []
        # Round robin (the least recently synced first): each neighbor is asked in turn.
        chosen = min(live, key=lambda n: (self._synced_at.get(n, -1.0), self._rng.random()))
        self._synced_at = {n: at for n, at in self._synced_at.items() if n in self.neighbors}
        self._synced_at[chosen] = now
        neighbor = self._members[chosen]
        return [self.start_dial(neighbor.address, Purpose.SYNC, now, neighbor.worker_id)]

    def _push_all(self, to: int) -> list[Effect]:
        """Everything this worker knows, to neighbor ``to``: a pairing's answer asked for it."""
        if to not in self.neighbors or not self.is_connected(to):
            return []
        neighbor = self._members[to]
        me = m.PeerInfo(
            self.worker_id, self.incarnation, self.address, self.seq, int(m.MemberState.ALIVE)
        )
        everyone = (me, *self.known_peers())
        msg = m.Peers(self.worker_id, self.incarnation, neighbor.incarnation, everyone)
        return [Send(neighbor.worker_id, msg)]

    def _seed_missing(self, seed: str) -> bool:
        """A seed to dial again: not this worker, not being dialed, and not (any more) the
        address of a live member."""
        if seed in self._own_addresses or seed in self._dialing:
            return False
        found = self._seed_members.get(seed)
        return found is None or not self.is_connected(found)

    def _doubt(self, peer: Member, now: float) -> list[Effect]:
        if not self.accepting or self.observer or peer.address in self._dialing:
            return []
        return [self.start_dial(peer.address, Purpose.PROBE, now, peer.worker_id)]

    def _recruit(self, now: float) -> list[Effect]:
        pairing = sum(1 for dial in self._dials.values() if dial.purpose is Purpose.NEIGHBOR)
        live = len([n for n in self.neighbors if self.is_connected(n)])
        wanted = self.fanout - live - pairing
        candidates = [
            peer
            for peer in self._members.values()
            if peer.state is PeerState.ALIVE
            and peer.worker_id not in self.neighbors
            and peer.address not in self._dialing
        ]
        if wanted <= 0 or not candidates:
            return []
        chosen = self._rng.sample(candidates, min(wanted, len(candidates)))
        return [
            self.start_dial(peer.address, Purpose.NEIGHBOR, now, peer.worker_id) for peer in chosen
        ]
