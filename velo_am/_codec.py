"""Payload encoding: msgpack, the same on every worker (bytes stay bytes, maps may have any
keys)."""

from __future__ import annotations

import threading
from typing import Any

import msgpack  # type: ignore[import-untyped]

__all__ = ["pack", "unpack"]

_packers = threading.local()


def pack(value: Any) -> bytes:
    # A Packer reused per thread: msgpack.packb builds a new one on every call.
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    try:
        return packer.pack(value)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as error:
        raise TypeError(f"payload cannot be encoded with msgpack: {error}") from error


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
