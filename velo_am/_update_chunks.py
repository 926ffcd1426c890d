"""Event updates cut into messages (pure): at most ``MAX_EVENT_ITEMS`` items and
``max_message_size`` bytes each, a completion whose reason alone would not fit cut to fit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from velo_event import EventHandle

from ._select import protocol as p

__all__ = ["HEADER_ALLOWANCE", "chunks", "fits_whole"]

#: Room left for the header frame when bounding a payload by ``max_message_size``.
HEADER_ALLOWANCE: Final = 512
# An update item's bytes besides its reason: array headers and a 16-byte handle (msgpack bin).
_ITEM_BYTES: Final = 24


def _cost(item: p.EventDone) -> int:
    """At most how many bytes a completion takes in a message (UTF-8: 4 bytes a character)."""
    return _ITEM_BYTES + (0 if item.reason is None else 4 * len(item.reason))


def _fitted(item: p.EventDone, budget: int) -> p.EventDone:
    """A completion whose reason alone would not fit in a message, with its reason cut."""
    if item.reason is None or _cost(item) <= budget:
        return item
    keep = max((budget - _ITEM_BYTES) // 4 - 40, 0)
    return item._replace(reason=f"{item.reason[:keep]}… [cut to fit max_message_size]")


def fits_whole(
    subscribe: Sequence[EventHandle], done: Sequence[p.EventDone], max_size: int
) -> bool:
    """Whether the items go in one message (the common case, checked before :func:`chunks`)."""
    count = len(subscribe) + len(done)
    if count > p.MAX_EVENT_ITEMS:
        return False
    characters = 0
    for item in done:  # (a loop, not sum() over a comprehension: no call for few items)
        if item.reason:
            characters += len(item.reason)
    return count * _ITEM_BYTES + 4 * characters <= max_size - HEADER_ALLOWANCE


def chunks(
    subscribe: Sequence[EventHandle], done: Sequence[p.EventDone], max_size: int
) -> list[tuple[tuple[EventHandle, ...], tuple[p.EventDone, ...]]]:
    """Split update items into messages of at most ``MAX_EVENT_ITEMS`` items and
    ``max_size`` bytes."""
    if fits_whole(subscribe, done, max_size):
        return [(tuple(subscribe), tuple(done))]
    limit, budget = p.MAX_EVENT_ITEMS, max_size - HEADER_ALLOWANCE
    parts: list[tuple[tuple[EventHandle, ...], tuple[p.EventDone, ...]]] = []
    part_subscribe: list[EventHandle] = []
    part_done: list[p.EventDone] = []
    size = 0
    for handle in subscribe:
        if len(part_subscribe) >= limit or size + _ITEM_BYTES > budget:
            parts.append((tuple(part_subscribe), ()))
            part_subscribe, size = [], 0
        part_subscribe.append(handle)
        size += _ITEM_BYTES
    for item in (_fitted(item, budget) for item in done):
        cost = _cost(item)
        count = len(part_subscribe) + len(part_done)
        if count and (count >= limit or size + cost > budget):
            parts.append((tuple(part_subscribe), tuple(part_done)))
            part_subscribe, part_done, size = [], [], 0
        part_done.append(item)
        size += cost
    if part_subscribe or part_done:
        parts.append((tuple(part_subscribe), tuple(part_done)))
    return parts
