"""The vocabulary of membership: a member and its states, what the rules may tell the worker
to do (the effects), and why a message may be refused. :mod:`velo_am._membership` holds the
rules themselves."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from typing import Final, TypeAlias

from . import _messages as m
from .transport import LinkId

__all__ = [
    "FROM_CLOSED",
    "FROM_LOST",
    "STALE",
    "UNKNOWN",
    "Dial",
    "DialAnswered",
    "DialRefused",
    "Effect",
    "Forgotten",
    "Joined",
    "Lost",
    "Member",
    "Note",
    "PeerState",
    "PeerStatus",
    "Purpose",
    "RateLimit",
    "Rejected",
    "Reply",
    "Returned",
    "ScheduleGossip",
    "Send",
    "new_incarnation",
]

_ALIVE_INFO: Final = int(m.MemberState.ALIVE)
_LOST_INFO: Final = int(m.MemberState.LOST)
_CLOSED_INFO: Final = int(m.MemberState.CLOSED)


def new_incarnation() -> int:
    """A random non-zero 64-bit incarnation: one per start of a worker's process."""
    return secrets.randbits(64) or 1


class PeerState(enum.StrEnum):
    """Where a member stands. ``ALIVE`` and ``DRAINING`` members are reachable; ``LOST``
    (a link to it went down, or gossip says so) and ``CLOSED`` (it said goodbye) are kept for
    a while for inspection, then forgotten."""

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
_INFO_STATE: Final = {
    PeerState.ALIVE: _ALIVE_INFO,
    PeerState.DRAINING: _ALIVE_INFO,
    PeerState.LOST: _LOST_INFO,
    PeerState.CLOSED: _CLOSED_INFO,
}


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """What a worker knows of one member. ``state`` is a :class:`PeerState` (equal to its
    string: ``"alive"``, ``"draining"``, ``"lost"`` or ``"closed"``); ``silent_for`` is
    seconds since this worker last heard from it or of it."""

    worker_id: int
    address: str
    incarnation: int
    state: PeerState
    silent_for: float


class Member:
    """A member (or a pending newcomer, or an observer) as the table tracks it. Others read
    it; only the table changes it."""

    __slots__ = (
        "_info",
        "address",
        "changed_at",
        "incarnation",
        "last_seen",
        "observer",
        "seq",
        "state",
        "worker_id",
    )

    def __init__(
        self, worker_id: int, incarnation: int, address: str, seq: int, now: float
    ) -> None:
        self.worker_id = worker_id
        self.incarnation = incarnation
        self.address = address
        self.seq = seq
        self.state = PeerState.ALIVE
        self.observer = False
        self.last_seen = now
        self.changed_at = now
        self._info: m.PeerInfo | None = None

    def describe(self) -> str:
        return f"worker {self.worker_id:#x} at {self.address}"

    def status(self, now: float) -> PeerStatus:
        return PeerStatus(
            self.worker_id, self.address, self.incarnation, self.state, now - self.last_seen
        )

    def info(self) -> m.PeerInfo:
        """What is said of it in gossip (built again only when it changed: a join hands
        out every member's)."""
        info, state = self._info, _INFO_STATE[self.state]
        if (
            info is None
            or info.seq != self.seq
            or info.state != state
            or (info.address is not self.address)
        ):
            info = self._info = m.PeerInfo(
                self.worker_id, self.incarnation, self.address, self.seq, state
            )
        return info


class Purpose(enum.Enum):
    """Why this worker dialed: to join (``connect``, seeds), to verify a newcomer's address,
    to win a gossip neighbor, to see whether a lost member is back, whether a live member
    still answers at its address when a new incarnation of its id claims its place, or to
    exchange member lists with a neighbor (anti-entropy)."""

    JOIN = "join"
    VERIFY = "verify"
    NEIGHBOR = "neighbor"
    PROBE = "probe"
    PREDECESSOR = "predecessor"
    SYNC = "sync"


class RateLimit:
    """A token bucket: ``rate`` a second, at most ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._refilled = 0.0

    def reset(self, now: float) -> None:
        self._tokens, self._refilled = self.burst, now

    def take(self, now: float) -> bool:
        """One token, if there is one left."""
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


# -- effects ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to member ``peer_id``; ``dial``: open a link to it if there is none
    (else only an existing link will do)."""

    peer_id: int
    message: m.Message
    dial: bool = True


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``message`` on ``link``, the link a handshake came on."""

    link: LinkId
    message: m.Message


@dataclass(frozen=True, slots=True)
class Dial:
    """Open a link to ``address`` (or use the one there is) and send ``hello`` on it; its
    answer, or :meth:`PeerTable.dial_failed`, ends dial ``hello.token``."""

    address: str
    hello: m.Hello
    peer_id: int | None


@dataclass(frozen=True, slots=True)
class DialAnswered:
    """Dial ``token`` was answered by worker ``peer_id``; ``keep``: its link stays open (the
    peer is a gossip neighbor), else it is closed unless this worker has business with it."""

    token: int
    peer_id: int
    keep: bool = True


@dataclass(frozen=True, slots=True)
class DialRefused:
    """Dial ``token`` fails: its address ``why`` (e.g. is this worker)."""

    token: int
    why: str


@dataclass(frozen=True, slots=True)
class Joined:
    """``peer_id`` became (again) a live member; ``text`` describes it; ``heard``: this
    worker learned it from gossip, not from the member itself."""

    peer_id: int
    text: str
    heard: bool = False


@dataclass(frozen=True, slots=True)
class Lost:
    """``peer_id`` stopped being reachable: fail its calls in flight, close its links, poison
    what waits on its events, tell the peer-lost callbacks. ``closed`` is True when it is gone
    for good, nothing of it kept (a goodbye, a newcomer never admitted), False for a loss."""

    peer_id: int
    text: str
    closed: bool


@dataclass(frozen=True, slots=True)
class Forgotten:
    """``peer_id``, lost or closed, left the table (``forget_after`` passed, or a new
    incarnation took its place): what was kept for its return can go."""

    peer_id: int


@dataclass(frozen=True, slots=True)
class Note:
    """Something to log: ``error`` is True for an error, else a rate-limited warning."""

    category: str
    text: str
    error: bool = False


@dataclass(frozen=True, slots=True)
class ScheduleGossip:
    """News waits for :meth:`PeerTable.flush_gossip`: call it once this loop iteration ends
    (news of one burst travels together)."""


Effect: TypeAlias = (
    Send
    | Reply
    | Dial
    | DialAnswered
    | DialRefused
    | Joined
    | Lost
    | Forgotten
    | Note
    | ScheduleGossip
)


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a message from ``src`` was not admitted: the counter it goes to, a log category and
    text (``None``: not logged), and what to do about it."""

    counter: str
    category: str | None
    text: str
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True, slots=True)
class Returned:
    """A member this worker had lost spoke (its incarnation, on a link): it is alive after
    all. Carry out ``effects`` (news of it, ``Joined``), then handle the message as from
    ``member``: dropping it would lose what the member believes delivered."""

    member: Member
    effects: tuple[Effect, ...]


#: The message names another incarnation of this worker (a predecessor's traffic).
STALE: Final = Rejected(
    "dropped_wrong_incarnation", "incarnation", "meant for an earlier incarnation"
)
#: The sender has not introduced itself (or it is a later incarnation than we know).
UNKNOWN: Final = Rejected("dropped_unknown_peer", "unknown", "from an unknown worker")
FROM_LOST: Final = Rejected("dropped_unknown_peer", None, "from a lost worker")
#: A closed member's last words (the acknowledgement of our own goodbye): expected, quiet.
FROM_CLOSED: Final = Rejected("dropped_unknown_peer", None, "from a closed worker")
