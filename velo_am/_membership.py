"""Membership: who a worker's peers are and what state each is in, as pure rules (sans-IO).

:class:`PeerTable` is a state machine in the style of h11's ``_state.py``: it takes events
(a handshake, any message's proof of life, a peer's gossip, draining or goodbye, the passing
of time) and returns *effects*, the things the worker must now do (send a message, dial an
address, treat a peer as gone). It touches no socket, runs no loop and reads no clock: the
time is an argument. :class:`~velo_am.Worker` feeds it and applies what it returns.

Rules, briefly (docs/protocol.md §9-§11 has the wire side):

* A handshake (``Hello`` / ``HelloAck``) from a worker not connected yet, or from a new
  incarnation of one, makes it ``ALIVE`` (a new incarnation first loses the old one); the
  members it lists that we do not know are dialed. A worker accepting members answers a
  ``Hello`` with a ``HelloAck`` and tells its other peers of the newcomer.
* Any message from a peer proves it alive. ``Draining`` makes it ``DRAINING``; ``Goodbye``
  makes it ``CLOSED`` (its goodbye is acknowledged with a heartbeat).
* Each tick heartbeats every live peer; one silent for ``heartbeat_timeout`` is ``LOST``.
  Lost and closed peers are forgotten after ``forget_after``; a lost one that speaks again
  is redialed.
* A peer leaving ``ALIVE``/``DRAINING`` is reported once, as :class:`Lost`.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias

from . import _messages as m

__all__ = [
    "MAX_CONCURRENT_DIALS",
    "STALE",
    "UNKNOWN",
    "Connect",
    "Dial",
    "DialAnswered",
    "DialRefused",
    "Effect",
    "Joined",
    "Lost",
    "Note",
    "Peer",
    "PeerState",
    "PeerStatus",
    "PeerTable",
    "Rejected",
    "Send",
    "new_incarnation",
]

#: Gossip may name many members at once: at most this many handshakes run concurrently.
MAX_CONCURRENT_DIALS: Final = 64


def new_incarnation() -> int:
    """A random non-zero 64-bit incarnation: one per start of a worker's process."""
    return secrets.randbits(64) or 1


class PeerState(enum.StrEnum):
    """Where a peer stands. ``ALIVE`` and ``DRAINING`` peers are connected; ``LOST`` (silent
    past the window, or replaced by a new incarnation) and ``CLOSED`` (said goodbye) are kept
    for a while for inspection, then forgotten."""

    ALIVE = "alive"
    DRAINING = "draining"
    LOST = "lost"
    CLOSED = "closed"

    @property
    def connected(self) -> bool:
        return self is PeerState.ALIVE or self is PeerState.DRAINING


# The hot paths (every message admitted, every call) compare states by identity.
_ALIVE: Final = PeerState.ALIVE
_DRAINING: Final = PeerState.DRAINING


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """What a worker knows of one peer. ``state`` is a :class:`PeerState` (equal to its
    string: ``"alive"``, ``"draining"``, ``"lost"`` or ``"closed"``); ``silent_for`` is
    seconds since its last message."""

    worker_id: int
    address: str
    incarnation: int
    state: PeerState
    silent_for: float


class Peer:
    """A peer as the table tracks it. Others read it; only the table changes it."""

    __slots__ = ("address", "incarnation", "last_seen", "state", "worker_id")

    def __init__(self, worker_id: int, incarnation: int, address: str, now: float) -> None:
        self.worker_id = worker_id
        self.incarnation = incarnation
        self.address = address
        self.state = PeerState.ALIVE
        self.last_seen = now

    def describe(self) -> str:
        return f"worker {self.worker_id:#x} at {self.address}"

    def status(self, now: float) -> PeerStatus:
        return PeerStatus(
            self.worker_id, self.address, self.incarnation, self.state, now - self.last_seen
        )


# -- effects ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to connected peer ``peer_id`` (drop it quietly if that fails)."""

    peer_id: int
    message: m.Message


@dataclass(frozen=True, slots=True)
class Connect:
    """The link opened for this handshake (the dial's own, or a new one to the sender's
    address) now carries everything sent to ``peer_id``."""

    peer_id: int


@dataclass(frozen=True, slots=True)
class Dial:
    """Start a handshake with the worker at ``address`` (in the background)."""

    address: str


@dataclass(frozen=True, slots=True)
class DialAnswered:
    """Our handshake with token ``token`` was answered by worker ``peer_id``."""

    token: int
    peer_id: int


@dataclass(frozen=True, slots=True)
class DialRefused:
    """Our handshake with token ``token`` fails: the address ``why`` (e.g. is this worker)."""

    token: int
    why: str


@dataclass(frozen=True, slots=True)
class Joined:
    """``peer_id`` became a connected peer; ``text`` describes it."""

    peer_id: int
    text: str


@dataclass(frozen=True, slots=True)
class Lost:
    """``peer_id`` stopped being connected: fail its calls in flight, close its link, poison
    what waits on its events, tell the peer-lost callbacks. ``text`` names the peer and why;
    ``closed`` is True for a goodbye (an orderly close), False for a loss."""

    peer_id: int
    text: str
    closed: bool


@dataclass(frozen=True, slots=True)
class Note:
    """Something to log: ``error`` is True for an error, else a rate-limited warning."""

    category: str
    text: str
    error: bool = False


Effect: TypeAlias = Send | Connect | Dial | DialAnswered | DialRefused | Joined | Lost | Note


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a message from ``src`` was not admitted: the counter it goes to, a log category and
    text (``None``: not logged), and what to do about it."""

    counter: str
    category: str | None
    text: str
    effects: tuple[Effect, ...] = ()


#: The message names another incarnation of this worker (a predecessor's traffic).
STALE: Final = Rejected(
    "dropped_wrong_incarnation", "incarnation", "meant for an earlier incarnation"
)
#: The sender has not completed a handshake (or it is a later incarnation than we know).
UNKNOWN: Final = Rejected("dropped_unknown_peer", "unknown", "from an unknown worker")
_FROM_LOST: Final = Rejected("dropped_unknown_peer", None, "from a lost worker")


# -- the table --------------------------------------------------------------------------------


class PeerTable:
    """The peers of worker ``worker_id`` (incarnation ``incarnation``) and the rules that
    change them. Every method runs on the worker's loop; none blocks or does I/O."""

    def __init__(
        self,
        worker_id: int,
        incarnation: int,
        *,
        heartbeat_timeout: float,
        forget_after: float,
        max_dials: int = MAX_CONCURRENT_DIALS,
    ) -> None:
        self.worker_id: Final = worker_id
        self.incarnation: Final = incarnation
        self.heartbeat_timeout = heartbeat_timeout
        self.forget_after = forget_after
        self.max_dials = max_dials
        #: The address peers reach this worker at; set by :meth:`bind`.
        self.address = ""
        #: False once draining: no new members, no handshake answers, no redials.
        self.accepting = False
        self._peers: dict[int, Peer] = {}
        self._dialing: set[str] = set()
        self._awaiting_acks: set[int] = set()

    # -- queries ----------------------------------------------------------------------------

    def get(self, peer_id: int) -> Peer | None:
        """The peer, in any state, or ``None`` if unknown (or forgotten)."""
        return self._peers.get(peer_id)

    def alive(self, peer_id: int) -> Peer | None:
        """The peer if it is ``ALIVE`` (the fast path of every call and send)."""
        peer = self._peers.get(peer_id)
        return peer if peer is not None and peer.state is _ALIVE else None

    def is_connected(self, peer_id: int) -> bool:
        peer = self._peers.get(peer_id)
        return peer is not None and (peer.state is _ALIVE or peer.state is _DRAINING)

    def connected_count(self) -> int:
        return sum(1 for peer in self._peers.values() if peer.state.connected)

    def statuses(self, now: float) -> dict[int, PeerStatus]:
        return {peer_id: peer.status(now) for peer_id, peer in self._peers.items()}

    def known_peers(self) -> tuple[m.PeerInfo, ...]:
        """The members this worker vouches for: its connected peers."""
        return tuple(
            m.PeerInfo(peer.worker_id, peer.incarnation, peer.address)
            for peer in self._peers.values()
            if peer.state.connected
        )

    def is_dialing(self, address: str) -> bool:
        return address in self._dialing

    @property
    def dials_in_progress(self) -> int:
        return len(self._dialing)

    @property
    def goodbyes_acknowledged(self) -> bool:
        """Every peer told goodbye has answered since (see :meth:`begin_goodbye`)."""
        return not self._awaiting_acks

    def needs_link(self, msg: m.Hello | m.HelloAck) -> bool:
        """Whether admitting this handshake connects its sender anew (the worker opens, or
        takes over, the link that :class:`Connect` will hand to it)."""
        if msg.src == self.worker_id:
            return False
        peer = self._peers.get(msg.src)
        return peer is None or peer.incarnation != msg.src_incarnation or not peer.state.connected

    # -- lifecycle ----------------------------------------------------------------------------

    def bind(self, address: str) -> None:
        """The worker listens at ``address`` and accepts members from now on."""
        self.address = address
        self.accepting = True

    def begin_drain(self) -> list[Effect]:
        """The worker began closing: tell every connected peer, accept no new members."""
        self.accepting = False
        return self._broadcast(m.Draining)

    def begin_goodbye(self) -> list[Effect]:
        """The worker's last word to each connected peer; their acknowledgements are awaited
        (:attr:`goodbyes_acknowledged`)."""
        effects = self._broadcast(m.Goodbye)
        self._awaiting_acks = {effect.peer_id for effect in effects if isinstance(effect, Send)}
        return effects

    def _broadcast(self, kind: type[m.Heartbeat | m.Draining | m.Goodbye]) -> list[Effect]:
        me, inc = self.worker_id, self.incarnation
        return [
            Send(peer.worker_id, kind(me, inc, peer.incarnation))
            for peer in self._peers.values()
            if peer.state.connected
        ]

    # -- dials --------------------------------------------------------------------------------

    def hello(self, token: int) -> m.Hello:
        """The opener of a handshake this worker dials, ``token`` identifying the dial."""
        return m.Hello(self.worker_id, self.incarnation, 0, token, self.address, self.known_peers())

    def dial_started(self, address: str) -> None:
        self._dialing.add(address)

    def dial_ended(self, address: str) -> None:
        self._dialing.discard(address)

    # -- events -------------------------------------------------------------------------------

    def on_hello(self, msg: m.Hello | m.HelloAck, now: float) -> list[Effect]:
        """A handshake, either way: admit (or re-admit) its sender, answer a ``Hello``, and
        learn the members it lists."""
        if msg.src == self.worker_id:
            return self._hello_from_self(msg)
        peer = self._peers.get(msg.src)
        joined = self.needs_link(msg)
        effects: list[Effect] = []
        if joined:
            if peer is not None and peer.state.connected:
                effects += self._lose(peer, "restarted as a new incarnation", PeerState.LOST)
            peer = Peer(msg.src, msg.src_incarnation, msg.address, now)
            self._peers[msg.src] = peer
            effects.append(Connect(msg.src))
        else:
            assert peer is not None
            peer.last_seen = now
        if isinstance(msg, m.Hello):
            if self.accepting:
                ack = m.HelloAck(
                    self.worker_id,
                    self.incarnation,
                    peer.incarnation,
                    msg.token,
                    self.address,
                    self.known_peers(),
                )
                effects.append(Send(msg.src, ack))
        else:
            effects.append(DialAnswered(msg.token, msg.src))
        effects += self._learn(msg.peers)
        if joined:
            effects.append(Joined(msg.src, peer.describe()))
            known = self.known_peers()
            me, inc = self.worker_id, self.incarnation
            effects += [
                Send(other.worker_id, m.Peers(me, inc, other.incarnation, known))
                for other in self._peers.values()
                if other is not peer and other.state.connected
            ]
        return effects

    def _hello_from_self(self, msg: m.Hello | m.HelloAck) -> list[Effect]:
        effects: list[Effect] = []
        if msg.src_incarnation != self.incarnation:
            text = f"another live worker uses this worker's id {msg.src:#x}"
            effects.append(Note("identity", text, error=True))
        if isinstance(msg, m.HelloAck) or msg.src_incarnation == self.incarnation:
            # Our own dial reached us (its Hello came back, or we answered it ourselves).
            effects.append(DialRefused(msg.token, f"is this worker ({msg.src:#x}) itself"))
        return effects

    def admit(
        self, src: int, src_incarnation: int, dst_incarnation: int, now: float
    ) -> Peer | Rejected:
        """Any message but a handshake: its sender, if it is a connected peer this message
        proves alive, else why it is rejected."""
        if dst_incarnation and dst_incarnation != self.incarnation:
            return STALE
        peer = self._peers.get(src)
        if peer is None or peer.incarnation != src_incarnation:
            return UNKNOWN
        state = peer.state
        if state is not _ALIVE and state is not _DRAINING:
            if state is PeerState.LOST and self.accepting and peer.address not in self._dialing:
                # Silent too long but alive after all: shake hands again (what it sends now
                # waits for the new link; its calls in flight were failed already).
                self._dialing.add(peer.address)
                return Rejected(_FROM_LOST.counter, None, _FROM_LOST.text, (Dial(peer.address),))
            return _FROM_LOST if state is PeerState.LOST else UNKNOWN
        peer.last_seen = now
        if self._awaiting_acks:
            self._awaiting_acks.discard(src)
        return peer

    def on_peers(self, infos: Iterable[m.PeerInfo]) -> list[Effect]:
        """A peer's gossip: dial the members it lists that we do not know."""
        return self._learn(infos)

    def on_draining(self, peer: Peer) -> None:
        if peer.state is PeerState.ALIVE:
            peer.state = PeerState.DRAINING

    def on_goodbye(self, peer: Peer) -> list[Effect]:
        """The peer's last message: acknowledge it (the closing side waits for that), then it
        is closed."""
        ack = m.Heartbeat(self.worker_id, self.incarnation, peer.incarnation)
        return [Send(peer.worker_id, ack), *self._lose(peer, "closed", PeerState.CLOSED)]

    def tick(self, now: float) -> list[Effect]:
        """Time passes: heartbeat the live peers, lose the silent ones, forget old entries."""
        effects: list[Effect] = []
        me, inc, timeout = self.worker_id, self.incarnation, self.heartbeat_timeout
        for peer in list(self._peers.values()):
            if not peer.state.connected:
                if now - peer.last_seen > self.forget_after:  # short-lived members (the CLI)
                    del self._peers[peer.worker_id]
            elif now - peer.last_seen > timeout:
                effects += self._lose(peer, f"lost: silent for {timeout} s", PeerState.LOST)
            else:
                effects.append(Send(peer.worker_id, m.Heartbeat(me, inc, peer.incarnation)))
        return effects

    # -- rules --------------------------------------------------------------------------------

    def _lose(self, peer: Peer, reason: str, state: PeerState) -> list[Effect]:
        if not peer.state.connected:
            return []
        peer.state = state
        self._awaiting_acks.discard(peer.worker_id)
        return [Lost(peer.worker_id, f"{peer.describe()} {reason}", state is PeerState.CLOSED)]

    def _learn(self, infos: Iterable[m.PeerInfo]) -> list[Effect]:
        """Mesh join: dial every member we do not know (or know only as a dead incarnation)."""
        if not self.accepting:
            return []
        effects: list[Effect] = []
        for info in infos:
            if info.worker_id == self.worker_id:
                continue
            known = self._peers.get(info.worker_id)
            if known is not None and (
                known.state.connected
                or (known.state is PeerState.CLOSED and known.incarnation == info.incarnation)
            ):
                continue
            if len(self._dialing) >= self.max_dials:
                effects.append(Note("dials", "too many handshakes in progress; not dialing more"))
                break
            if info.address not in self._dialing:
                self._dialing.add(info.address)
                effects.append(Dial(info.address))
        return effects
