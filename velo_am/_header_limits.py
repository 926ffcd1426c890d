"""What keeps a hostile header frame from costing much (pure): the element budget of a large
header's msgpack arrays, and the version read from a header that did not decode (a future
version may change everything after it). The failure and large-header paths of
:func:`velo_am._protocol.decode`, apart from its per-message path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]

from ._messages import MAX_PEERS, ProtocolError

__all__ = ["item_budget", "peek_version"]

#: Total array elements in one header.
MAX_HEADER_ITEMS: Final = 6 * MAX_PEERS + 16


def item_budget() -> Callable[[list[Any]], list[Any]]:
    """A msgpack ``list_hook`` bounding the total number of array elements in one header."""
    left = MAX_HEADER_ITEMS

    def hook(array: list[Any]) -> list[Any]:
        nonlocal left
        left -= len(array)
        if left < 0:
            raise ProtocolError("header has too many array elements")
        return array

    return hook


def peek_version(header: bytes) -> object:
    """First element of the header array if it is a scalar, else None (failure path only)."""
    try:
        unpacker = msgpack.Unpacker(max_buffer_size=len(header), max_array_len=0, max_map_len=0)
        unpacker.feed(header)
        return unpacker.unpack() if unpacker.read_array_header() else None
    except Exception:
        return None
