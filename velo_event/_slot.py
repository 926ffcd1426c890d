"""`Slot`: one reusable event slot of an :class:`~velo_event.lowlevel.EventCore`; and
`EarlyWaiters`, the early waiters of one generation not issued yet (always a dict: a slot
that takes them over stays a dict)."""

from __future__ import annotations

from collections.abc import Hashable

from ._wake import Held, WakeCallback

__all__ = ["EarlyWaiters", "Slot"]

EarlyWaiters = dict[Hashable, WakeCallback]


class Slot:
    """One reusable event slot. ``last``: highest completed generation; ``active``: the pending
    generation or 0; ``poisons``: reason of every poisoned generation (history, never pruned);
    ``attached``: what the pending generation is, if more than an event (see ``new_event``)."""

    __slots__ = ("active", "attached", "last", "poisons", "waiters")

    def __init__(self, first_generation: int) -> None:
        self.last = first_generation - 1
        self.active = 0
        self.waiters: Held | None = None  # see _wake.holding
        self.poisons: dict[int, str] | None = None
        self.attached: object = None
