"""Sans-IO wire protocol of the velo active-messaging runtime (in the style of h11).

Nothing here touches a socket.  :func:`encode` turns a frozen message object into the list
of ZeroMQ frames a DEALER sends; :func:`decode` turns received frames (without the identity
frame a ROUTER prepends) back into a message.  ``docs/protocol.md`` is the normative spec.

Design notes:

* Frame 0 is a msgpack *array* (much cheaper to unpack than a map):
  ``[PROTOCOL_VERSION, kind, src, src_incarnation, dst_incarnation, *kind_fields]``.
  Frame 1, only for kinds with a user payload, is opaque bytes, passed through unpacked.
* Validation lives in the message classes (``__post_init__``), so an invalid message can
  be neither constructed nor decoded.  Hot kinds test a cheap sufficient condition first
  and run the exact field-by-field check (which words the error) only if that fails.
* :func:`decode` is total: a valid message or :class:`ProtocolError`, for any input.  The
  header is unpacked with msgpack limits (no maps, no ext types, bounded arrays, and an
  element budget for headers over 1 KiB) so hostile input cannot blow up memory.
* Dispatch is table driven (``kind -> decoder``, ``type -> field getter``), both tables
  derived from each class's ``_CHECKS``.  msgpack Packers are not thread-safe, so each
  thread gets its own.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, ClassVar, Final, TypeAlias, get_args

import msgpack  # type: ignore[import-untyped]

from ._errors import AMError

__all__ = ["PROTOCOL_VERSION", "DEFAULT_MAX_MESSAGE_SIZE", "ProtocolError", "Kind", "ErrorCode"]
__all__ += ["PeerInfo", "Hello", "HelloAck", "Heartbeat", "Peers", "Request", "Response"]
__all__ += ["ErrorResponse", "Goodbye", "Draining", "EventMessage", "Message", "encode", "decode"]

PROTOCOL_VERSION: Final = 1
DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024

_U64_MAX: Final = 2**64 - 1
_MAX_HANDLER_BYTES: Final = 255
_MAX_PEERS: Final = 65_536  # also the largest array msgpack may build while decoding
_SMALL_HEADER: Final = 1024  # headers up to this size skip the element budget
_MAX_HEADER_ITEMS: Final = 4 * _MAX_PEERS + 16  # total array elements in one header


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
    EVENT = 16


class ErrorCode(enum.IntEnum):
    """Why a request failed, carried by :class:`ErrorResponse`."""

    HANDLER_ERROR = 1
    HANDLER_NOT_FOUND = 2
    DRAINING = 3
    BAD_REQUEST = 4
    WRONG_INCARNATION = 5


_ERROR_CODES: Final = frozenset(int(c) for c in ErrorCode)

# --------------------------------------------------------------------------- validation
# A checker returns None when a value is fine, else a description of the problem.
_Checker: TypeAlias = Callable[[Any], "str | None"]


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _int_in(lo: int, hi: int) -> _Checker:
    problem = f"expected an int in {lo}..{'2**64-1' if hi == _U64_MAX else hi}, got "
    return lambda v: None if type(v) is int and lo <= v <= hi else problem + _short(v)


def _type_is(t: type) -> _Checker:
    return lambda v: None if type(v) is t else f"expected {t.__name__}, got {type(v).__name__}"


def _nonempty_str(v: Any) -> str | None:
    return _str(v) or (None if v else "must not be empty")


def _handler(v: Any) -> str | None:
    if problem := _nonempty_str(v):
        return problem
    size = len(v.encode(errors="surrogatepass"))
    return None if size <= _MAX_HANDLER_BYTES else f"is {size} UTF-8 bytes, limit is 255"


def _code(v: Any) -> str | None:
    ok = type(v) is ErrorCode or (type(v) is int and v in _ERROR_CODES)
    return None if ok else f"unknown error code {_short(v)}"


def _peers(v: Any) -> str | None:
    if type(v) is not tuple:
        return f"expected a tuple of PeerInfo, got {type(v).__name__}"
    bad = [i for i, p in enumerate(v) if type(p) is not PeerInfo]
    return f"element {bad[0]} is not a PeerInfo" if bad else None


_u64, _u64_nonzero = _int_in(0, _U64_MAX), _int_in(1, _U64_MAX)
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
    for name, check in obj._CHECKS:
        problem = check(getattr(obj, name))
        if problem is not None:
            raise ProtocolError(f"{type(obj).__name__}.{name}: {problem}")


def _fast_ok(m: _Envelope, v: object, hi: int) -> bool:
    """Cheap sufficient check of the common fields plus one int field ``v`` in 0..hi."""
    s, si, di = m.src, m.src_incarnation, m.dst_incarnation
    return (
        type(s) is type(si) is type(di) is type(v) is int
        and 0 < s <= _U64_MAX
        and 0 < si <= _U64_MAX
        and 0 <= di <= _U64_MAX
        and 0 <= v <= hi
    )


# ----------------------------------------------------------------------------- messages
@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A mesh member as gossiped in Hello/HelloAck/Peers: ``[worker_id, incarnation, address]``."""

    _CHECKS: ClassVar[_Spec] = tuple(
        {"worker_id": _u64_nonzero, "incarnation": _u64_nonzero, "address": _nonempty_str}.items()
    )
    worker_id: int
    incarnation: int
    address: str

    def __post_init__(self) -> None:
        _diagnose(self)


@dataclass(frozen=True, slots=True)
class _Envelope:
    """Fields common to every message; subclasses list theirs in ``_CHECKS``."""

    KIND: ClassVar[Kind]
    _CHECKS: ClassVar[_Spec] = _COMMON
    src: int
    src_incarnation: int
    dst_incarnation: int

    def __post_init__(self) -> None:  # header-only kinds have a fast path, the others diagnose
        if len(self._CHECKS) > 3 or not _fast_ok(self, 0, 0):
            _diagnose(self)


@dataclass(frozen=True, slots=True)
class Hello(_Envelope):
    """Handshake opener: a dialer-chosen ``token`` (echoed by the HelloAck, so the dialer can
    match the answer to its dial), the sender's bound endpoint and the members it knows."""

    KIND: ClassVar[Kind] = Kind.HELLO
    _CHECKS: ClassVar[_Spec] = _spec(token=_u64, address=_nonempty_str, peers=_peers)
    token: int
    address: str
    peers: tuple[PeerInfo, ...]


@dataclass(frozen=True, slots=True)
class HelloAck(_Envelope):
    """Answer to :class:`Hello`: same fields, ``token`` copied from the Hello."""

    KIND: ClassVar[Kind] = Kind.HELLO_ACK
    _CHECKS: ClassVar[_Spec] = Hello._CHECKS
    token: int
    address: str
    peers: tuple[PeerInfo, ...]


@dataclass(frozen=True, slots=True)
class Heartbeat(_Envelope):
    """Liveness signal, sent to a peer that got no other traffic for a while."""

    KIND: ClassVar[Kind] = Kind.HEARTBEAT


@dataclass(frozen=True, slots=True)
class Peers(_Envelope):
    """Membership gossip, sent when the sender's view of the mesh changes."""

    KIND: ClassVar[Kind] = Kind.PEERS
    _CHECKS: ClassVar[_Spec] = _spec(peers=_peers)
    peers: tuple[PeerInfo, ...]


@dataclass(frozen=True, slots=True)
class Request(_Envelope):
    """Invoke ``handler`` with ``payload``; ``reply`` False means fire-and-forget."""

    KIND: ClassVar[Kind] = Kind.REQUEST
    _CHECKS: ClassVar[_Spec] = _spec(msg_id=_u64, handler=_handler, reply=_bool, payload=_bytes)
    msg_id: int
    handler: str
    reply: bool
    payload: bytes

    def __post_init__(self) -> None:  # cheap sufficient check first, exact one if it fails
        h = self.handler
        ok = type(h) is str and 0 < len(h) <= _MAX_HANDLER_BYTES // 4  # <= 4 bytes per char
        ok = ok and type(self.reply) is bool and type(self.payload) is bytes
        if not (ok and _fast_ok(self, self.msg_id, _U64_MAX)):
            _diagnose(self)


@dataclass(frozen=True, slots=True)
class Response(_Envelope):
    """Successful result of the Request ``msg_id``; ``payload`` is the encoded result."""

    KIND: ClassVar[Kind] = Kind.RESPONSE
    _CHECKS: ClassVar[_Spec] = _spec(msg_id=_u64, payload=_bytes)
    msg_id: int
    payload: bytes

    def __post_init__(self) -> None:
        if not (type(self.payload) is bytes and _fast_ok(self, self.msg_id, _U64_MAX)):
            _diagnose(self)


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Envelope):
    """Failure of the Request ``msg_id``.  An int ``code`` is converted to :class:`ErrorCode`."""

    KIND: ClassVar[Kind] = Kind.ERROR_RESPONSE
    _CHECKS: ClassVar[_Spec] = _spec(
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
class EventMessage(_Envelope):
    """Events-layer message; ``op`` (0..255) and ``payload`` belong to that layer."""

    KIND: ClassVar[Kind] = Kind.EVENT
    _CHECKS: ClassVar[_Spec] = _spec(op=_int_in(0, 255), payload=_bytes)
    op: int
    payload: bytes

    def __post_init__(self) -> None:
        if not (type(self.payload) is bytes and _fast_ok(self, self.op, 255)):
            _diagnose(self)


Message: TypeAlias = (
    Hello | HelloAck | Heartbeat | Peers | Request | Response | ErrorResponse | Goodbye | Draining
) | EventMessage

# ----------------------------------------------------------------------------- encoding


class _Local(threading.local):
    def __init__(self) -> None:
        self.pack: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True).pack


_local = _Local()


def _wire_table() -> dict[Any, tuple[Callable[[Any], tuple[Any, ...]], int, bool, bool]]:
    """type -> (header field getter, header length, has payload frame, last field is peers)."""
    table: dict[Any, tuple[Callable[[Any], tuple[Any, ...]], int, bool, bool]] = {}
    for cls in get_args(Message):
        names = [name for name, _ in cls._CHECKS if name != "payload"]
        has_payload = len(names) < len(cls._CHECKS)
        table[cls] = (attrgetter(*names), 2 + len(names), has_payload, names[-1] == "peers")
    return table


_WIRE: Final = _wire_table()


def encode(msg: Message) -> list[bytes]:
    """Return the frames a DEALER sends for ``msg``: ``[header]`` or ``[header, payload]``.

    Raises :class:`TypeError` if ``msg`` is not a message and :class:`ProtocolError` if it
    cannot be encoded (e.g. a string containing a lone surrogate).
    """
    cls = type(msg)
    wire = _WIRE.get(cls)
    if wire is None:
        raise TypeError(f"encode() expects a protocol message, got {cls.__name__}")
    getter, _, has_payload, has_peers = wire
    header: list[Any] = [PROTOCOL_VERSION, msg.KIND, *getter(msg)]
    if has_peers:
        header[-1] = [[p.worker_id, p.incarnation, p.address] for p in header[-1]]
    try:
        packed = _local.pack(header)
    except Exception as exc:  # only reachable with strings msgpack cannot encode
        raise ProtocolError(f"cannot encode {cls.__name__}: {exc}") from exc
    return [packed, msg.payload] if has_payload else [packed]  # type: ignore[union-attr]


def encode_request(
    src: int,
    src_incarnation: int,
    dst_incarnation: int,
    msg_id: int,
    handler: str,
    reply: bool,
    payload: bytes,
) -> list[bytes]:
    """``encode(Request(...))`` without building the message: the hot path of every call.
    The same cheap checks as ``Request``; anything they do not clear goes the slow way, which
    words the error."""
    if (
        type(handler) is str
        and 0 < len(handler) <= _MAX_HANDLER_BYTES // 4
        and type(reply) is bool
        and type(payload) is bytes
        and type(src) is type(src_incarnation) is type(dst_incarnation) is type(msg_id) is int
        and 0 < src <= _U64_MAX
        and 0 < src_incarnation <= _U64_MAX
        and 0 <= dst_incarnation <= _U64_MAX
        and 0 <= msg_id <= _U64_MAX
    ):
        header: list[object] = [PROTOCOL_VERSION, Kind.REQUEST, src, src_incarnation]
        header += (dst_incarnation, msg_id, handler, reply)
        return [_local.pack(header), payload]
    return encode(Request(src, src_incarnation, dst_incarnation, msg_id, handler, reply, payload))


def encode_response(
    src: int, src_incarnation: int, dst_incarnation: int, msg_id: int, payload: bytes
) -> list[bytes]:
    """``encode(Response(...))`` without building the message (see :func:`encode_request`)."""
    if (
        type(payload) is bytes
        and type(src) is type(src_incarnation) is type(dst_incarnation) is type(msg_id) is int
        and 0 < src <= _U64_MAX
        and 0 < src_incarnation <= _U64_MAX
        and 0 <= dst_incarnation <= _U64_MAX
        and 0 <= msg_id <= _U64_MAX
    ):
        header = [PROTOCOL_VERSION, Kind.RESPONSE, src, src_incarnation, dst_incarnation, msg_id]
        return [_local.pack(header), payload]
    return encode(Response(src, src_incarnation, dst_incarnation, msg_id, payload))


# ----------------------------------------------------------------------------- decoding
_Decoder: TypeAlias = Callable[[list[Any], "bytes | None"], Message]


def _decode_peers(kind: str, raw: Any) -> tuple[PeerInfo, ...]:
    if type(raw) is not list:
        raise ProtocolError(f"{kind}.peers: expected an array, got {type(raw).__name__}")
    peers = []
    for i, p in enumerate(raw):
        if type(p) is not list or len(p) != 3:
            raise ProtocolError(f"{kind}.peers[{i}]: expected [worker_id, incarnation, address]")
        try:
            peers.append(PeerInfo(*p))
        except ProtocolError as exc:
            raise ProtocolError(f"{kind}.peers[{i}]: {exc}") from None
    return tuple(peers)


def _builder(cls: Any) -> Callable[..., Message]:
    """``cls(*values)`` without the frozen dataclass ``__init__`` (one ``object.__setattr__``
    per field, the costliest part of a decode): set the slots directly, then run the same
    ``__post_init__`` validation. Callers pass exactly one value per field."""
    setters = [getattr(cls, field.name).__set__ for field in fields(cls)]
    post_init = cls.__post_init__
    new = object.__new__

    def build(*values: Any) -> Message:
        msg = new(cls)
        for setter, value in zip(setters, values, strict=True):
            setter(msg, value)
        post_init(msg)
        return msg  # type: ignore[no-any-return]

    return build


def _decoder(cls: Any, has_payload: bool, has_peers: bool) -> _Decoder:
    if has_peers:
        return lambda h, _: cls(*h[2:-1], _decode_peers(cls.__name__, h[-1]))
    if has_payload:
        build = _builder(cls)
        return lambda h, payload: build(*h[2:], payload)
    return lambda h, _: cls(*h[2:])


# kind -> (decoder, class name, header length, has payload frame)
_DECODERS: Final[dict[int, tuple[_Decoder, str, int, bool]]] = {
    cls.KIND: (_decoder(cls, pay, peers), cls.__name__, length, pay)
    for cls, (_, length, pay, peers) in _WIRE.items()
}


def _item_budget() -> Callable[[list[Any]], list[Any]]:
    """A msgpack ``list_hook`` bounding the total number of array elements in one header."""
    left = _MAX_HEADER_ITEMS

    def hook(array: list[Any]) -> list[Any]:
        nonlocal left
        left -= len(array)
        if left < 0:
            raise ProtocolError("header has too many array elements")
        return array

    return hook


def _frame(frame: object, index: int) -> bytes:
    """Copy a bytes-like frame (bytearray, memoryview, zmq.Frame) into bytes."""
    try:
        return memoryview(frame).tobytes()  # type: ignore[arg-type]
    except (TypeError, ValueError, BufferError):
        raise ProtocolError(f"frame {index} is not bytes-like: {type(frame).__name__}") from None


def _version_error(version: object) -> ProtocolError:
    return ProtocolError(
        f"unsupported protocol version {_short(version)} (expected {PROTOCOL_VERSION})"
    )


def _peek_version(header: bytes) -> object:
    """First element of the header array if it is a scalar, else None (failure path only)."""
    try:
        unpacker = msgpack.Unpacker(max_buffer_size=len(header), max_array_len=0, max_map_len=0)
        unpacker.feed(header)
        return unpacker.unpack() if unpacker.read_array_header() else None
    except Exception:
        return None


def _unpack_header(header: bytes) -> Any:
    try:
        if len(header) <= _SMALL_HEADER:
            return msgpack.unpackb(header, raw=False, max_map_len=0, max_ext_len=0)
        return msgpack.unpackb(
            header,
            raw=False,
            max_map_len=0,
            max_ext_len=0,
            max_array_len=_MAX_PEERS,
            list_hook=_item_budget(),
        )
    except Exception as exc:  # any msgpack / limit / UTF-8 / budget failure
        version = _peek_version(header)  # a future version may change everything after it
        if type(version) is int and version != PROTOCOL_VERSION:
            raise _version_error(version) from exc
        if isinstance(exc, ProtocolError):
            raise
        if isinstance(exc, msgpack.ExtraData):
            raise ProtocolError("trailing bytes after the header array") from exc
        raise ProtocolError(f"malformed header frame: {exc}") from exc


def decode(frames: Sequence[bytes], *, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Message:
    """Parse the frames of one message (without the ROUTER identity frame).

    Returns a valid message or raises :class:`ProtocolError`, whatever the input.  The
    payload frame, if any, is returned as-is (it is never unpacked).  ``max_size`` bounds
    the total length of all frames.
    """
    try:
        n = len(frames)
        header, payload = (frames[0], frames[1] if n == 2 else None) if 0 < n < 3 else (b"", None)
    except Exception as exc:  # not a sequence at all
        raise ProtocolError(f"frames must be a sequence of bytes ({exc!r})") from exc
    if not 0 < n < 3:
        raise ProtocolError(f"expected 1 or 2 frames, got {n}")
    if type(header) is not bytes:
        header = _frame(header, 0)
    if type(payload) is not bytes and payload is not None:
        payload = _frame(payload, 1)
    size = len(header) if payload is None else len(header) + len(payload)
    if size > max_size:
        raise ProtocolError(f"message of {size} bytes exceeds the maximum of {max_size}")

    h = _unpack_header(header)
    if type(h) is not list or not h:
        raise ProtocolError("header frame must be a non-empty msgpack array")
    version = h[0]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise _version_error(version)
    if len(h) < 5:
        raise ProtocolError(f"header has {len(h)} elements, at least 5 are required")
    kind = h[1]
    if type(kind) is not int:
        raise ProtocolError(f"message kind must be an int, got {type(kind).__name__}")
    entry = _DECODERS.get(kind)
    if entry is None:
        raise ProtocolError(f"unknown message kind {kind}")
    decoder, name, length, has_payload = entry
    if len(h) != length:
        raise ProtocolError(
            f"{name} (kind {kind}): header must have {length} elements, got {len(h)}"
        )
    if has_payload is (payload is None):
        want = "2 frames (header, payload)" if has_payload else "1 frame (header only)"
        raise ProtocolError(f"{name} (kind {kind}) takes {want}, got {n}")
    return decoder(h, payload)
