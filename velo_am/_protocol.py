"""Sans-IO wire protocol of the velo active-messaging runtime (in the style of h11).

Nothing here touches a socket.  :func:`encode` turns a frozen message (the types of
:mod:`velo_am._messages`, re-exported here) into the list of ZeroMQ frames a DEALER sends;
:func:`decode` turns received frames (without the identity frame a ROUTER prepends) back into
a message.  ``docs/protocol.md`` is the normative spec.

Design notes:

* Frame 0 is a msgpack *array* (much cheaper to unpack than a map):
  ``[PROTOCOL_VERSION, kind, src, src_incarnation, dst_incarnation, *kind_fields]``.
  Frame 1, only for kinds with a user payload, is opaque bytes, passed through unpacked.
* :func:`decode` is total: a valid message or :class:`ProtocolError`, for any input.  The
  header is unpacked with msgpack limits (no maps, no ext types, bounded arrays, and an
  element budget for headers over 1 KiB) so hostile input cannot blow up memory.
* Dispatch is table driven (``kind -> decoder``, ``type -> field getter``), both tables
  derived from each class's ``CHECKS``.  msgpack Packers are not thread-safe, so each
  thread gets its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import fields
from operator import attrgetter
from typing import Any, Final, TypeAlias, get_args

import msgpack  # type: ignore[import-untyped]

from velo_event import EventHandle

from ._header_limits import item_budget, peek_version
from ._messages import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_EVENT_ITEMS,
    MAX_HANDLER_BYTES,
    MAX_PEERS,
    PROTOCOL_VERSION,
    U64_MAX,
    Credit,
    Draining,
    ErrorCode,
    ErrorResponse,
    EventDone,
    EventStatusCode,
    EventUpdates,
    Goodbye,
    Heartbeat,
    Hello,
    HelloAck,
    HelloFlags,
    Kind,
    MemberState,
    Message,
    PeerInfo,
    Peers,
    ProtocolError,
    Request,
    Response,
    check_envelope,
    short_repr,
)

__all__ = ["PROTOCOL_VERSION", "DEFAULT_MAX_MESSAGE_SIZE", "ProtocolError", "Kind", "ErrorCode"]
__all__ += ["PeerInfo", "Hello", "HelloAck", "Heartbeat", "Peers", "Request", "Response"]
__all__ += ["ErrorResponse", "Goodbye", "Draining", "EventDone", "EventUpdates", "Message"]
__all__ += ["EventStatusCode", "HelloFlags", "MAX_EVENT_ITEMS", "MemberState", "Credit"]
__all__ += ["encode", "decode", "encode_request", "encode_response", "encode_updates"]

_REQUEST: Final = int(Kind.REQUEST)
_EVENT_UPDATES: Final = int(Kind.EVENT_UPDATES)  # a plain int packs faster than the enum
_SMALL_HEADER: Final = 1024  # headers up to this size skip the element budget


# ----------------------------------------------------------------------------- encoding


_local: Final = threading.local()  # a Packer per thread; no subclass: mypyc makes those native


def _pack(obj: object) -> bytes:
    try:
        pack: Callable[[object], bytes] = _local.pack
    except AttributeError:
        pack = _local.pack = msgpack.Packer(use_bin_type=True).pack
    return pack(obj)


def _wire_table() -> dict[Any, tuple[Callable[[Any], tuple[Any, ...]], int, bool, str]]:
    """type -> (header field getter, header length, has payload frame, last field's name)."""
    table: dict[Any, tuple[Callable[[Any], tuple[Any, ...]], int, bool, str]] = {}
    for cls in get_args(Message):
        names = [name for name, _ in cls.CHECKS if name != "payload"]
        has_payload = len(names) < len(cls.CHECKS)
        table[cls] = (attrgetter(*names), 2 + len(names), has_payload, names[-1])
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
    getter, _, has_payload, last = wire
    header: list[Any] = [PROTOCOL_VERSION, msg.KIND, *getter(msg)]
    if last == "peers":
        header[-1] = [[p.worker_id, p.incarnation, p.address, p.seq, p.state] for p in header[-1]]
    elif last == "done":
        to_bytes = int.to_bytes
        header[-2] = [to_bytes(h, 16, "big") for h in header[-2]]
        header[-1] = [(to_bytes(h, 16, "big"), r, unknown) for h, r, unknown in header[-1]]
    try:
        packed = _pack(header)
    except Exception as exc:  # only reachable with strings msgpack cannot encode
        raise ProtocolError(f"cannot encode {cls.__name__}: {exc}") from exc
    return [packed, msg.payload] if has_payload else [packed]  # type: ignore[union-attr]


def encode_request(
    src: object,
    src_incarnation: object,
    dst_incarnation: object,
    msg_id: object,
    handler: object,
    reply: object,
    payload: object,
) -> list[bytes]:
    """``encode(Request(...))`` without building the message: the hot path of every call.
    The same cheap checks as ``Request``; anything they do not clear goes the slow way, which
    words the error. (``object``: a caller's handler name reaches here unchecked, and a
    compiled build refuses a declared type's misfit before the check that words it.)"""
    if (
        type(handler) is str
        and 0 < len(handler) <= MAX_HANDLER_BYTES // 4
        and type(reply) is bool
        and type(payload) is bytes
        and type(src) is type(src_incarnation) is type(dst_incarnation) is type(msg_id) is int
        and 0 < src <= U64_MAX
        and 0 < src_incarnation <= U64_MAX
        and 0 <= dst_incarnation <= U64_MAX
        and 0 <= msg_id <= U64_MAX
    ):
        header: list[object] = [PROTOCOL_VERSION, Kind.REQUEST, src, src_incarnation]
        header += (dst_incarnation, msg_id, handler, reply)
        return [_pack(header), payload]
    args = (src, src_incarnation, dst_incarnation, msg_id, handler, reply, payload)
    return encode(Request(*args))  # type: ignore[arg-type]


def encode_response(
    src: int, src_incarnation: int, dst_incarnation: int, msg_id: int, payload: bytes
) -> list[bytes]:
    """``encode(Response(...))`` without building the message (see :func:`encode_request`)."""
    if (
        type(payload) is bytes
        and type(src) is type(src_incarnation) is type(dst_incarnation) is type(msg_id) is int
        and 0 < src <= U64_MAX
        and 0 < src_incarnation <= U64_MAX
        and 0 <= dst_incarnation <= U64_MAX
        and 0 <= msg_id <= U64_MAX
    ):
        header = [PROTOCOL_VERSION, Kind.RESPONSE, src, src_incarnation, dst_incarnation, msg_id]
        return [_pack(header), payload]
    return encode(Response(src, src_incarnation, dst_incarnation, msg_id, payload))


def encode_updates(
    src: int,
    src_incarnation: int,
    dst_incarnation: int,
    subscribe: Sequence[EventHandle],
    done: Sequence[EventDone],
) -> list[bytes]:
    """``encode(EventUpdates(...))`` without building the message (see :func:`encode_request`):
    the hot path of every remote await and completion. No upper bounds checked here: msgpack
    refuses an integer past 64 bits, and the slow path words that too."""
    if (
        type(src) is type(src_incarnation) is type(dst_incarnation) is int
        and src > 0
        and src_incarnation > 0
        and dst_incarnation >= 0
        and len(subscribe) + len(done) <= MAX_EVENT_ITEMS
    ):
        try:
            header: list[object] = [PROTOCOL_VERSION, _EVENT_UPDATES, src, src_incarnation]
            header.append(dst_incarnation)
            header.append([_wire_handle(handle) for handle in subscribe])
            header.append([_wire_done(item) for item in done])
            return [_pack(header)]
        except Exception:  # a bad item, a number out of range, or a reason msgpack cannot
            pass  # encode: worded below
    return encode(
        EventUpdates(src, src_incarnation, dst_incarnation, tuple(subscribe), tuple(done))
    )


_int_to_bytes: Final = int.to_bytes


def _wire_handle(handle: EventHandle) -> bytes:
    if type(handle) is not EventHandle or handle & _LOCAL:
        raise TypeError("not a distributed EventHandle")
    return _int_to_bytes(handle, 16, "big")


def _wire_done(item: EventDone) -> tuple[bytes, str | None, bool]:
    if type(item) is not EventDone:
        raise TypeError("not an EventDone")
    handle, reason, unknown = item
    if reason is not None and type(reason) is not str:
        raise TypeError("not a reason")
    if unknown is not False and (unknown is not True or reason is None):
        raise TypeError("not an unknown flag, or an unknown outcome without a reason")
    return _wire_handle(handle), reason, unknown


# ----------------------------------------------------------------------------- decoding
_Decoder: TypeAlias = Callable[[list[Any], "bytes | None"], Message]


def _decode_peers(kind: str, raw: Any) -> tuple[PeerInfo, ...]:
    if type(raw) is not list:
        raise ProtocolError(f"{kind}.peers: expected an array, got {type(raw).__name__}")
    peers = []
    for i, p in enumerate(raw):
        if type(p) is not list or len(p) != 5:
            raise ProtocolError(
                f"{kind}.peers[{i}]: expected [worker_id, incarnation, address, seq, state]"
            )
        try:
            peers.append(PeerInfo(*p))
        except ProtocolError as exc:
            raise ProtocolError(f"{kind}.peers[{i}]: {exc}") from None
    return tuple(peers)


def _bad_handle(where: str, raw: Any) -> ProtocolError:
    if type(raw) is bytes and len(raw) == 16:
        return ProtocolError(f"{where}: expected a distributed EventHandle (local flag set)")
    got = f"{len(raw)} bytes" if type(raw) is bytes else type(raw).__name__
    return ProtocolError(f"{where}: expected a 16-byte handle, got {got}")


def _decode_updates(header: list[Any], _: bytes | None) -> Message:
    """Items are checked as they are decoded; the message is then built without checking
    them again (the common fields still are). Well-formed items take one comprehension each;
    the first bad one sends the whole message down the slow path, which names it."""
    raw_subscribe, raw_done = header[5], header[6]
    if type(raw_subscribe) is not list:
        raise ProtocolError("EventUpdates.subscribe: expected an array")
    if type(raw_done) is not list:
        raise ProtocolError("EventUpdates.done: expected an array")
    if len(raw_subscribe) + len(raw_done) > MAX_EVENT_ITEMS:
        raise ProtocolError(f"EventUpdates: more than {MAX_EVENT_ITEMS} items")
    try:
        subscribe = tuple([_handle_of(raw) for raw in raw_subscribe])
        done = tuple([_new_tuple(EventDone, _done_of(item)) for item in raw_done])
    except _BadItem:
        subscribe, done = _slow_items(raw_subscribe, raw_done)
    src, src_incarnation, dst_incarnation = header[2], header[3], header[4]
    msg = _new_message(EventUpdates)
    _set_src(msg, src)
    _set_src_incarnation(msg, src_incarnation)
    _set_dst_incarnation(msg, dst_incarnation)
    _set_subscribe(msg, subscribe)
    _set_done(msg, done)
    # The common fields' cheap checks inline (see _decode_request); check_envelope words a
    # failure.
    if not (
        type(src) is type(src_incarnation) is type(dst_incarnation) is int
        and src > 0
        and src_incarnation > 0
        and dst_incarnation >= 0
    ):
        check_envelope(msg)
    return msg


class _BadItem(Exception):
    """An update item failed the fast check (the slow path words the error)."""


_new_tuple: Final = tuple.__new__
_new_int: Final = int.__new__
_from_bytes: Final = int.from_bytes
_LOCAL: Final = 1 << 63  # a handle's local-only flag: such handles never travel


def _handle_of(raw: Any) -> EventHandle:
    if type(raw) is not bytes or len(raw) != 16:
        raise _BadItem
    value = _from_bytes(raw)
    if value & _LOCAL:
        raise _BadItem
    return _new_int(EventHandle, value)


def _done_of(item: Any) -> tuple[EventHandle, str | None, bool]:
    if type(item) is not list or len(item) != 3:
        raise _BadItem
    raw, reason, unknown = item
    if reason is not None and type(reason) is not str:
        raise _BadItem
    if unknown is not False and (unknown is not True or reason is None):
        raise _BadItem
    return _handle_of(raw), reason, unknown


def _slow_items(
    raw_subscribe: list[Any], raw_done: list[Any]
) -> tuple[tuple[EventHandle, ...], tuple[EventDone, ...]]:
    """The items one by one, raising the :class:`ProtocolError` naming the first bad one."""
    subscribe = []
    for i, raw in enumerate(raw_subscribe):
        try:
            subscribe.append(_handle_of(raw))
        except _BadItem:
            raise _bad_handle(f"EventUpdates.subscribe[{i}]", raw) from None
    done = []
    for i, item in enumerate(raw_done):
        if type(item) is not list or len(item) != 3:
            raise ProtocolError(f"EventUpdates.done[{i}]: expected [handle, reason, unknown]")
        raw, reason, unknown = item
        try:
            handle = _handle_of(raw)
        except _BadItem:
            raise _bad_handle(f"EventUpdates.done[{i}].handle", raw) from None
        if reason is not None and type(reason) is not str:
            raise ProtocolError(f"EventUpdates.done[{i}].reason: expected str or None")
        if type(unknown) is not bool:
            raise ProtocolError(f"EventUpdates.done[{i}].unknown: expected a bool")
        if unknown and reason is None:
            raise ProtocolError(f"EventUpdates.done[{i}]: an unknown outcome needs a reason")
        done.append(EventDone(handle, reason, unknown))
    return tuple(subscribe), tuple(done)


def _decoder(cls: Any, has_payload: bool, last: str) -> _Decoder:
    if last == "peers":
        return lambda h, _: cls(*h[2:-1], _decode_peers(cls.__name__, h[-1]))
    if cls is EventUpdates:
        return _decode_updates
    if cls is Request:
        return _decode_request
    if cls is Response:
        return _decode_response
    return lambda h, _: cls(*h[2:])


# The hot kinds are built without the frozen dataclass __init__ (one object.__setattr__ per
# field, the costliest part of a decode): their slots are set directly, unrolled, then the
# same validation runs (__post_init__; for EventUpdates, whose items the decoder checked, the
# common fields only).
_new_message: Final = object.__new__
# (Final, one name each: a compiled build keeps them in statics, not in the module's dict.)
_SETTERS: Final = {
    cls: {f.name: getattr(cls, f.name).__set__ for f in fields(cls)}
    for cls in (EventUpdates, Request, Response)
}
_set_src: Final = _SETTERS[EventUpdates]["src"]
_set_src_incarnation: Final = _SETTERS[EventUpdates]["src_incarnation"]
_set_dst_incarnation: Final = _SETTERS[EventUpdates]["dst_incarnation"]
_set_subscribe: Final = _SETTERS[EventUpdates]["subscribe"]
_set_done: Final = _SETTERS[EventUpdates]["done"]
_set_msg_id: Final = _SETTERS[Request]["msg_id"]
_set_handler: Final = _SETTERS[Request]["handler"]
_set_reply: Final = _SETTERS[Request]["reply"]
_set_payload: Final = _SETTERS[Request]["payload"]
_set_response_id: Final = _SETTERS[Response]["msg_id"]
_set_response_payload: Final = _SETTERS[Response]["payload"]


def _decode_request(h: list[Any], payload: bytes | None) -> Message:
    _, _, src, src_incarnation, dst_incarnation, msg_id, handler, reply = h
    # Request's cheap checks inline; what they do not clear, its constructor's checks word.
    if not (
        type(handler) is str
        and 0 < len(handler) <= MAX_HANDLER_BYTES // 4
        and type(reply) is bool
        and type(payload) is bytes
        and type(src) is type(src_incarnation) is type(dst_incarnation) is type(msg_id) is int
        # no upper bounds: msgpack has no integer past 64 bits, so none decodes above U64_MAX
        and src > 0
        and src_incarnation > 0
        and dst_incarnation >= 0
        and msg_id >= 0
    ):
        args = (src, src_incarnation, dst_incarnation, msg_id, handler, reply)
        return Request(*args, payload)  # type: ignore[arg-type]
    msg = _new_message(Request)
    _set_src(msg, src)
    _set_src_incarnation(msg, src_incarnation)
    _set_dst_incarnation(msg, dst_incarnation)
    _set_msg_id(msg, msg_id)
    _set_handler(msg, handler)
    _set_reply(msg, reply)
    _set_payload(msg, payload)
    return msg


def _decode_response(h: list[Any], payload: bytes | None) -> Message:
    _, _, src, src_incarnation, dst_incarnation, msg_id = h
    if not (  # Response's cheap checks, inline (see _decode_request)
        type(payload) is bytes
        and type(src) is type(src_incarnation) is type(dst_incarnation) is type(msg_id) is int
        and src > 0
        and src_incarnation > 0
        and dst_incarnation >= 0
        and msg_id >= 0
    ):
        return Response(src, src_incarnation, dst_incarnation, msg_id, payload)  # type: ignore[arg-type]
    msg = _new_message(Response)
    _set_src(msg, src)
    _set_src_incarnation(msg, src_incarnation)
    _set_dst_incarnation(msg, dst_incarnation)
    _set_response_id(msg, msg_id)
    _set_response_payload(msg, payload)
    return msg


# kind -> (decoder, class name, header length, has payload frame)
_DECODERS: Final[dict[int, tuple[_Decoder, str, int, bool]]] = {
    cls.KIND: (_decoder(cls, pay, last), cls.__name__, length, pay)
    for cls, (_, length, pay, last) in _WIRE.items()
}


def _frame(frame: object, index: int) -> bytes:
    """Copy a bytes-like frame (bytearray, memoryview, zmq.Frame) into bytes."""
    try:
        return memoryview(frame).tobytes()  # type: ignore[arg-type]
    except (TypeError, ValueError, BufferError):
        raise ProtocolError(f"frame {index} is not bytes-like: {type(frame).__name__}") from None


def _version_error(version: object) -> ProtocolError:
    return ProtocolError(
        f"unsupported protocol version {short_repr(version)} (expected {PROTOCOL_VERSION})"
    )


def _unpack_header(header: bytes) -> Any:
    try:
        if len(header) <= _SMALL_HEADER:
            return msgpack.unpackb(header, raw=False, max_map_len=0, max_ext_len=0)
        return msgpack.unpackb(
            header,
            raw=False,
            max_map_len=0,
            max_ext_len=0,
            max_array_len=MAX_PEERS,
            list_hook=item_budget(),
        )
    except Exception as exc:  # any msgpack / limit / UTF-8 / budget failure
        version = peek_version(header)  # a future version may change everything after it
        if type(version) is int and version != PROTOCOL_VERSION:
            raise _version_error(version) from exc
        if isinstance(exc, ProtocolError):
            raise
        if isinstance(exc, msgpack.ExtraData):
            raise ProtocolError("trailing bytes after the header array") from exc
        raise ProtocolError(f"malformed header frame: {exc}") from exc


def decode(frames: Sequence[object], max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Message:
    """Parse the frames of one message (without the ROUTER identity frame).

    Returns a valid message or raises :class:`ProtocolError`, whatever the input.  The
    payload frame, if any, is returned as-is (it is never unpacked).  ``max_size`` bounds
    the total length of all frames.
    """
    try:  # frames typed as objects: a compiled build must not refuse bytes-like ones
        n = len(frames)
        first, second = (frames[0], frames[1] if n == 2 else None) if 0 < n < 3 else (b"", None)
    except Exception as exc:  # not a sequence at all
        raise ProtocolError(f"frames must be a sequence of bytes ({exc!r})") from exc
    if not 0 < n < 3:
        raise ProtocolError(f"expected 1 or 2 frames, got {n}")
    header = first if type(first) is bytes else _frame(first, 0)
    payload = second if type(second) is bytes or second is None else _frame(second, 1)
    size = len(header) if payload is None else len(header) + len(payload)
    if size > max_size:
        raise ProtocolError(f"message of {size} bytes exceeds the maximum of {max_size}")

    h = _unpack_header(header)
    if type(h) is list and len(h) == 8 and payload is not None:  # nearly always a Request:
        version, kind = h[0], h[1]  # the table's choice below, without its lookups
        if type(version) is type(kind) is int and version == PROTOCOL_VERSION and kind == _REQUEST:
            return _decode_request(h, payload)
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
