"""Payload encoding: msgpack, the same on every worker (bytes stay bytes, maps may have any
keys), with one extension type: an :class:`~velo_event.EventHandle` travels as itself
(docs/protocol.md §2.1).

A handle is an ``int`` subclass of 128 bits, too wide for a msgpack integer: msgpack hands any
integer it cannot encode to ``default``, which turns a handle into ext type
:data:`HANDLE_EXT` (its 16 bytes, big-endian). Every other value is encoded by msgpack's C
code alone, so payloads without handles cost what they did. (``strict_types`` would catch
handles below 2**64 too, but sends every tuple and subclass through ``default``: tuple-heavy
payloads then pack about 2.8 times slower. Only a handle of worker id 0 is that small, and no
event system mints one.)
"""

from __future__ import annotations

import threading
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]

from velo_event import EventHandle

__all__ = ["HANDLE_EXT", "pack", "unpack"]

#: The msgpack ext type code of an event handle in a payload; other codes pass through as
#: ``msgpack.ExtType``.
HANDLE_EXT: Final = 1

_packers = threading.local()


def _encode_handle(value: Any) -> Any:
    if isinstance(value, EventHandle):
        return msgpack.ExtType(HANDLE_EXT, value.to_bytes())
    if isinstance(value, int):  # msgpack asks only for integers it cannot encode
        raise OverflowError(
            f"an integer of {value.bit_length()} bits is out of msgpack's range, -2**63 .. 2**64-1"
        )
    raise TypeError(f"cannot encode an object of type {type(value).__name__}")


def _decode_ext(code: int, data: bytes) -> Any:
    if code != HANDLE_EXT:
        return msgpack.ExtType(code, data)
    if len(data) != 16:
        raise ValueError(
            f"malformed EventHandle in payload: ext type {HANDLE_EXT} holds {len(data)} bytes, "
            "an EventHandle is 16"
        )
    return EventHandle.from_bytes(data)


def pack(value: Any) -> bytes:
    # A Packer reused per thread: msgpack.packb builds a new one on every call.
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, default=_encode_handle)
    try:
        return packer.pack(value)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as error:
        raise TypeError(f"payload cannot be encoded with msgpack: {error}") from error


def unpack(data: bytes) -> Any:
    """The value ``data`` encodes; ``ValueError`` (or another ``msgpack`` error) for bytes
    that are not one well-formed msgpack value, or a malformed handle."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_decode_ext)
