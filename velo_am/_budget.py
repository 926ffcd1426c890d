"""The receive side's bound per peer (pure): what one sender's unfinished requests may cost.

Flow control (:mod:`._flow`) bounds the sends of a sender that keeps to its window; nothing
bounded its calls (each waits for its own answer, but a caller may make any number at once),
nor a sender that ignores its window. Here every inbound request (call or send) costs its
payload's bytes plus :data:`REQUEST_COST` (what a request in flight holds beyond its payload:
its message, its task or its place in a queue) from its sender's *budget*, from the moment it
is dispatched until its handler finishes (returned, raised, or the request was refused). A
request that would take a sender past ``limit`` is refused: a call is answered ``BUSY`` (its
caller gets :class:`~velo_am.PeerBusy`), a send too (its sender counts it); both are counted in
``refused_busy``. A sender that holds nothing here is always admitted, so a message of any
size allowed gets through; so are the runtime's event triggers, poisons and lease renewals
(``_ev.trigger``, ``_ev.poison``, ``_ev.renew``: they must not be lost), which are charged. The
socket keeps being read either way: answers and membership share it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

__all__ = ["REQUEST_COST", "ReceiveBudget"]

#: Bytes a request in flight is charged beyond its payload.
REQUEST_COST: Final = 4096


class ReceiveBudget:
    """Bytes held per sender (by worker id); ``limit()`` is read at each admission that may
    be past ``floor``, since ``max_message_size`` may change while the worker runs (below the
    floor, nearly every admission in a burst, it is not read: a call of the worker's own code).

    The caller guarantees ``floor <= limit()`` at every moment: an admission below the floor
    is never checked against the limit, so a limit below it would be overrun unseen.
    :class:`~velo_am._receipts.ReceiveWindows`, the one caller, holds by construction: its
    limit is its floor plus twice ``max_message_size``, which is never negative."""

    def __init__(self, limit: Callable[[], int], floor: int = 0) -> None:
        self.limit = limit
        self._floor = floor
        self._held: dict[int, int] = {}

    def admit(self, peer_id: int, payload: int, always: bool = False) -> bool:
        """A request of ``payload`` bytes from ``peer_id``: charged and ``True``, or ``False``
        (nothing charged) if it would take the sender past the limit, unless ``always``."""
        held = self._held.get(peer_id, 0)
        cost = payload + REQUEST_COST
        if held and not always and held + cost > self._floor and held + cost > self.limit():
            return False
        self._held[peer_id] = held + cost
        return True

    def release(self, peer_id: int, payload: int, requests: int = 1) -> None:
        """``requests`` requests admitted with ``payload`` bytes in all finished."""
        held = self._held.get(peer_id, 0) - payload - requests * REQUEST_COST
        if held > 0:
            self._held[peer_id] = held
        else:
            self._held.pop(peer_id, None)

    def held(self, peer_id: int | None = None) -> int:
        """Bytes held for ``peer_id``, or for every sender."""
        if peer_id is None:
            return sum(self._held.values())
        return self._held.get(peer_id, 0)
