"""The wire protocol's message types: frozen, self-validating values (in the style of h11).

One frozen dataclass per message kind, positional fields in header order (the common
envelope first, ``payload`` last), each validating itself on construction, so that an invalid
message can be neither built nor decoded; :mod:`velo_am._protocol` encodes and decodes them.
``docs/protocol.md`` is the normative spec. Hot kinds test a cheap sufficient condition first
and run the exact field-by-field check (which words the error) only if that fails.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, NamedTuple, TypeAlias

from velo_event import EventHandle

from ._errors import AMError

__all__ = ["PROTOCOL_VERSION", "DEFAULT_MAX_MESSAGE_SIZE", "ProtocolError", "Kind", "ErrorCode"]
__all__ += ["PeerInfo", "Hello", "HelloAck", "Heartbeat", "Peers", "Request", "Response"]
__all__ += ["ErrorResponse", "Goodbye", "Draining", "EventDone", "EventUpdates", "Message"]
__all__ += ["EventStatusCode", "HelloFlags", "MAX_EVENT_ITEMS", "MemberState", "Credit"]

#: Version 6: an EventDone says whether the owner could tell the outcome (``unknown``), and
#: ``_ev.status`` answers code 3, UNKNOWN: a handle minted by an earlier incarnation.
#: Version 5: the Hello flag PROVE (a link's claim proven, §9.6), error code 6 BUSY (the
#: receiver's per-peer budget), a routing id of its own per connection.
#: Version 4: kind 10, the receiver's credit for fire-and-forget requests (flow control).
#: Version 3: handshakes carry flags and a ``seq``, and PeerInfo a ``seq`` and a state (the
#: membership gossip); version 2 added kind 16, the events layer's updates.
PROTOCOL_VERSION: Final = 6
DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024

U64_MAX: Final = 2**64 - 1
MAX_HANDLER_BYTES: Final = 255
#: Most peers one header may list; also the largest array msgpack may build while decoding.
MAX_PEERS: Final = 65_536
#: Most subscriptions plus completions in one EventUpdates (senders split larger batches).
MAX_EVENT_ITEMS: Final = 16_384
_HANDLE_BYTES: Final = 16


class ProtocolError(AMError):
    """Raised when frames are not a valid protocol message (or a message is invalid)."""


class Kind(enum.IntEnum):
    """Message kind, the second element of every header.  16-31 belong to the events layer."""

    HELLO = 1
    HELLO_ACK = 2
    HEARTBEAT = 3
    PEERS = 4
    REQUEST = 5
    RESPONSE = 6
    ERROR_RESPONSE = 7
    GOODBYE = 8
    DRAINING = 9
    CREDIT = 10
    EVENT_UPDATES = 16


class ErrorCode(enum.IntEnum):
    """Why a request failed, carried by :class:`ErrorResponse`."""

    HANDLER_ERROR = 1
    HANDLER_NOT_FOUND = 2
    DRAINING = 3
    BAD_REQUEST = 4
    WRONG_INCARNATION = 5
    BUSY = 6


_ERROR_CODES: Final = frozenset(int(c) for c in ErrorCode)


class EventStatusCode(enum.IntEnum):
    """What an owner answers ``_ev.status`` with, first element of ``[code, reason]``."""

    PENDING = 0
    READY = 1
    POISONED = 2
    UNKNOWN = 3  # the owner cannot tell: a handle of its earlier incarnation (reason: why)


# --------------------------------------------------------------------------- validation
# A checker returns None when a value is fine, else a description of the problem.
_Checker: TypeAlias = Callable[[Any], "str | None"]


def short_repr(v: object) -> str:
    """``repr(v)``, cut to 60 characters (for error messages)."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _int_in(lo: int, hi: int) -> _Checker:
    problem = f"expected an int in {lo}..{'2**64-1' if hi == U64_MAX else hi}, got "
    return lambda v: None if type(v) is int and lo <= v <= hi else problem + short_repr(v)


def _type_is(t: type) -> _Checker:
    return lambda v: None if type(v) is t else f"expected {t.__name__}, got {type(v).__name__}"


def _nonempty_str(v: Any) -> str | None:
    return _str(v) or (None if v else "must not be empty")


def _handler(v: Any) -> str | None:
    if problem := _nonempty_str(v):
        return problem
    size = len(v.encode(errors="surrogatepass"))
    return None if size <= MAX_HANDLER_BYTES else f"is {size} UTF-8 bytes, limit is 255"


def _code(v: Any) -> str | None:
    ok = type(v) is ErrorCode or (type(v) is int and v in _ERROR_CODES)
    return None if ok else f"unknown error code {short_repr(v)}"


def _peers(v: Any) -> str | None:
    if type(v) is not tuple:
        return f"expected a tuple of PeerInfo, got {type(v).__name__}"
    bad = [i for i, p in enumerate(v) if type(p) is not PeerInfo]
    return f"element {bad[0]} is not a PeerInfo" if bad else None


_LOCAL_BIT: Final = 1 << 63  # a handle's local-only flag (the top bit of its index field)


def _handle(v: Any) -> str | None:
    ok = type(v) is EventHandle and not v & _LOCAL_BIT
    return None if ok else f"expected a distributed EventHandle, got {short_repr(v)}"


def _reason(v: Any) -> str | None:
    return None if v is None or type(v) is str else f"expected str or None, got {short_repr(v)}"


def _unknown(d: EventDone) -> str | None:
    if type(d.unknown) is not bool:
        return f"unknown: expected a bool, got {short_repr(d.unknown)}"
    return "an unknown outcome needs a reason" if d.unknown and d.reason is None else None


def _handles(v: Any) -> str | None:
    if type(v) is not tuple:
        return f"expected a tuple of EventHandle, got {type(v).__name__}"
    for i, h in enumerate(v):
        if problem := _handle(h):
            return f"element {i}: {problem}"
    return None


def _dones(v: Any) -> str | None:
    if type(v) is not tuple:
        return f"expected a tuple of EventDone, got {type(v).__name__}"
    for i, d in enumerate(v):
        if type(d) is not EventDone:
            return f"element {i} is not an EventDone"
        if problem := _handle(d.handle) or _reason(d.reason) or _unknown(d):
            return f"element {i}: {problem}"
    return None


def _valid_items(subscribe: object, done: object) -> bool:
    """Cheap sufficient check of an EventUpdates' items (the exact one words the error)."""
    if type(subscribe) is not tuple or type(done) is not tuple:
        return False
    handle_type, local = EventHandle, _LOCAL_BIT
    for h in subscribe:
        if type(h) is not handle_type or h & local:
            return False
    for d in done:
        if type(d) is not EventDone:
            return False
        h, r, u = d
        if type(h) is not handle_type or h & local or (r is not None and type(r) is not str):
            return False
        if u is not False and (u is not True or r is None):
            return False
    return True


_u64, _u64_nonzero = _int_in(0, U64_MAX), _int_in(1, U64_MAX)
_str, _bytes, _bool = (_type_is(t) for t in (str, bytes, bool))
_Spec: TypeAlias = tuple[tuple[str, _Checker], ...]
_COMMON: Final[_Spec] = (
    ("src", _u64_nonzero),
    ("src_incarnation", _u64_nonzero),
    ("dst_incarnation", _u64),
)


def _spec(**checks: _Checker) -> _Spec:
    """The (field, checker) pairs of a message: the common fields, then ``checks``."""
    return _COMMON + tuple(checks.items())


def _diagnose(obj: Any) -> None:
    """Exact validation: raise ProtocolError naming the first bad field, if any."""
    for name, check in obj.CHECKS:
        problem = check(getattr(obj, name))
        if problem is not None:
            raise ProtocolError(f"{type(obj).__name__}.{name}: {problem}")


def _fast_ok(m: _Envelope, v: object, hi: int) -> bool:
    """Cheap sufficient check of the common fields plus one int field ``v`` in 0..hi."""
    s, si, di = m.src, m.src_incarnation, m.dst_incarnation
    return (
        type(s) is type(si) is type(di) is type(v) is int
        and 0 < s <= U64_MAX
        and 0 < si <= U64_MAX
        and 0 <= di <= U64_MAX
        and 0 <= v <= hi
    )


def check_envelope(msg: Any) -> None:
    """Raise :class:`ProtocolError` if a message's common fields are invalid (for builders
    that validated the other fields themselves)."""
    if not _fast_ok(msg, 0, 0):
        _diagnose(msg)


# ----------------------------------------------------------------------------- messages
class MemberState(enum.IntEnum):
    """What a :class:`PeerInfo` says of its member."""

    ALIVE = 0
    LOST = 1  # a worker that watched it lost it (it may come back with a higher seq)
    CLOSED = 2  # it said goodbye: final for its incarnation


class HelloFlags(enum.IntFlag):
    """Flags of a handshake."""

    NONE = 0
    OBSERVER = 1  # a short-lived member (a command line): answered, never gossiped nor dialed
    NEIGHBOR = 2  # Hello: be my gossip neighbor; HelloAck: accepted
    VERIFY = 4  # Hello: only say you are here (a newcomer's address is checked before it joins)
    JOIN = 8  # Hello: answer with every live member you know; HelloAck: push me yours
    # Hello: prove that the link your Hello with token ``seq`` came on is yours (0: your own
    # link to me): answer on it; HelloAck: that answer (docs/protocol.md §9.6)
    PROVE = 16


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A mesh member as gossiped in Hello/HelloAck/Peers:
    ``[worker_id, incarnation, address, seq, state]``. ``seq`` orders what is said of one
    incarnation: it grows each time the member announces itself again."""

    CHECKS: ClassVar[_Spec] = tuple(
        {
            "worker_id": _u64_nonzero,
            "incarnation": _u64_nonzero,
            "address": _nonempty_str,
            "seq": _int_in(0, U64_MAX),
            "state": _int_in(0, 2),
        }.items()
    )
    worker_id: int
    incarnation: int
    address: str
    seq: int = 0
    state: int = 0  # a MemberState

    def __post_init__(self) -> None:  # joins carry thousands: a cheap sufficient check first
        w, i, s, st = self.worker_id, self.incarnation, self.seq, self.state
        if not (
            type(w) is type(i) is type(s) is type(st) is int
            and 0 < w <= U64_MAX
            and 0 < i <= U64_MAX
            and 0 <= s <= U64_MAX
            and 0 <= st <= 2
            and type(self.address) is str
            and self.address
        ):
            _diagnose(self)


@dataclass(frozen=True, slots=True)
class _Envelope:
    """Fields common to every message; subclasses list theirs in ``CHECKS``."""

    KIND: ClassVar[Kind]
    CHECKS: ClassVar[_Spec] = _COMMON
    src: int
    src_incarnation: int
    dst_incarnation: int

    def __post_init__(self) -> None:  # header-only kinds have a fast path, the others diagnose
        if len(self.CHECKS) > 3 or not _fast_ok(self, 0, 0):
            _diagnose(self)


@dataclass(frozen=True, slots=True)
class Hello(_Envelope):
    """Handshake opener: a dialer-chosen ``token`` (echoed by the HelloAck, so the dialer can
    match the answer to its dial), the sender's advertised endpoint, its :class:`HelloFlags`,
    its ``seq`` and the members it knows."""

    KIND: ClassVar[Kind] = Kind.HELLO
    CHECKS: ClassVar[_Spec] = _spec(
        token=_u64, address=_nonempty_str, flags=_int_in(0, 255), seq=_u64, peers=_peers
    )
    token: int
    address: str
    flags: int
    seq: int
    peers: tuple[PeerInfo, ...]


@dataclass(frozen=True, slots=True)
class HelloAck(_Envelope):
    """Answer to :class:`Hello` on the link it came on: same fields, ``token`` copied from
    the Hello."""

    KIND: ClassVar[Kind] = Kind.HELLO_ACK
    CHECKS: ClassVar[_Spec] = Hello.CHECKS
    token: int
    address: str
    flags: int
    seq: int
    peers: tuple[PeerInfo, ...]


@dataclass(frozen=True, slots=True)
class Heartbeat(_Envelope):
    """Liveness signal, sent to a peer that got no other traffic for a while."""

    KIND: ClassVar[Kind] = Kind.HEARTBEAT


@dataclass(frozen=True, slots=True)
class Peers(_Envelope):
    """Membership gossip, sent when the sender's view of the mesh changes."""

    KIND: ClassVar[Kind] = Kind.PEERS
    CHECKS: ClassVar[_Spec] = _spec(peers=_peers)
    peers: tuple[PeerInfo, ...]


@dataclass(frozen=True, slots=True)
class Request(_Envelope):
    """Invoke ``handler`` with ``payload``; ``reply`` False means fire-and-forget."""

    KIND: ClassVar[Kind] = Kind.REQUEST
    CHECKS: ClassVar[_Spec] = _spec(msg_id=_u64, handler=_handler, reply=_bool, payload=_bytes)
    msg_id: int
    handler: str
    reply: bool
    payload: bytes

    def __post_init__(self) -> None:  # cheap sufficient check first, exact one if it fails
        h = self.handler
        ok = type(h) is str and 0 < len(h) <= MAX_HANDLER_BYTES // 4  # <= 4 bytes per char
        ok = ok and type(self.reply) is bool and type(self.payload) is bytes
        if not (ok and _fast_ok(self, self.msg_id, U64_MAX)):
            _diagnose(self)


@dataclass(frozen=True, slots=True)
class Response(_Envelope):
    """Successful result of the Request ``msg_id``; ``payload`` is the encoded result."""

    KIND: ClassVar[Kind] = Kind.RESPONSE
    CHECKS: ClassVar[_Spec] = _spec(msg_id=_u64, payload=_bytes)
    msg_id: int
    payload: bytes

    def __post_init__(self) -> None:
        if not (type(self.payload) is bytes and _fast_ok(self, self.msg_id, U64_MAX)):
            _diagnose(self)


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Envelope):
    """Failure of the Request ``msg_id``.  An int ``code`` is converted to :class:`ErrorCode`."""

    KIND: ClassVar[Kind] = Kind.ERROR_RESPONSE
    CHECKS: ClassVar[_Spec] = _spec(
        msg_id=_u64, code=_code, error_type=_str, message=_str, traceback=_str
    )
    msg_id: int
    code: ErrorCode
    error_type: str
    message: str
    traceback: str

    def __post_init__(self) -> None:
        _diagnose(self)
        if type(self.code) is not ErrorCode:
            object.__setattr__(self, "code", ErrorCode(self.code))


@dataclass(frozen=True, slots=True)
class Goodbye(_Envelope):
    """Last message of a closing worker: stop sending to it, fail in-flight calls now."""

    KIND: ClassVar[Kind] = Kind.GOODBYE


@dataclass(frozen=True, slots=True)
class Draining(_Envelope):
    """The sender began draining: it refuses new requests but finishes running ones."""

    KIND: ClassVar[Kind] = Kind.DRAINING


@dataclass(frozen=True, slots=True)
class Credit(_Envelope):
    """Flow control of the receiver's fire-and-forget Requests to the sender: of those, the
    sender has received every one up to msg_id ``last_received`` that will ever arrive, and
    ``unfinished`` of them have not finished running (docs/protocol.md §10.1)."""

    KIND: ClassVar[Kind] = Kind.CREDIT
    CHECKS: ClassVar[_Spec] = _spec(last_received=_u64, unfinished=_u64)
    last_received: int
    unfinished: int


class EventDone(NamedTuple):
    """One answer in :class:`EventUpdates`: the owner's ``handle`` (that generation)
    completed, triggered (``reason`` None) or poisoned with its first ``reason``; or, with
    ``unknown``, the owner cannot tell its outcome (a handle of its earlier incarnation), and
    ``reason`` says why: no verdict, never to be recorded. A plain immutable triple, checked by
    the message that carries it."""

    handle: EventHandle
    reason: str | None
    unknown: bool = False


@dataclass(frozen=True, slots=True)
class EventUpdates(_Envelope):
    """The events layer between two workers: ``subscribe``, handles of the *receiver's*
    events the sender awaits (the receiver answers each with an :class:`EventDone`, at once if
    it is complete already); ``done``, completions of the *sender's* events the receiver
    subscribed to. Items produced in one loop iteration travel together (at most
    :data:`MAX_EVENT_ITEMS` in all)."""

    KIND: ClassVar[Kind] = Kind.EVENT_UPDATES
    CHECKS: ClassVar[_Spec] = _spec(subscribe=_handles, done=_dones)
    subscribe: tuple[EventHandle, ...]
    done: tuple[EventDone, ...]

    def __post_init__(self) -> None:
        if not (_valid_items(self.subscribe, self.done) and _fast_ok(self, 0, 0)):
            _diagnose(self)
        if len(self.subscribe) + len(self.done) > MAX_EVENT_ITEMS:
            raise ProtocolError(
                f"EventUpdates: {len(self.subscribe) + len(self.done)} items, "
                f"limit is {MAX_EVENT_ITEMS}"
            )


Message: TypeAlias = (
    (Hello | HelloAck | Heartbeat | Peers | Request | Response | ErrorResponse | Goodbye | Draining)
    | Credit
    | EventUpdates
)
