"""Which key each worker speaks with (pure): with CURVE, a worker id is bound to the key it
proved when it was admitted (a member verified at its address, an observer answered), so no
other allowed key can speak as that member while this worker knows it.

A key is checked at every handshake but bound only on admission: a handshake that admits
nobody (a claim never verified, a newcomer dropped) binds nothing, so no allowed key can
reserve an id that a future worker will have. A worker id, once bound, is spoken for by its
key only (any incarnation: a restarted worker keeps its certificate) until this worker no
longer knows it: an observer that said goodbye or whose link was lost, a member forgotten
(``forget_after`` after it was lost or closed). The table stays as small as the membership.
One key may speak for several ids: the short-lived members of the command line draw a fresh
id each run and share their operator's key, and with a key shared mesh-wide every member
speaks with it (a shared key tells no member from another).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["KeyBindings"]


class KeyBindings:
    """The bindings of the members one worker knows."""

    def __init__(self) -> None:
        self._key_of: dict[int, str] = {}

    def check(self, key: str | None, worker_id: int) -> str | None:
        """``None`` if ``key`` may speak as ``worker_id`` (the id is bound to it, or to no
        key), else why not. ``key`` ``None``: nothing proved, nothing to check."""
        bound = self._key_of.get(worker_id)
        if key is None or bound is None or bound == key:
            return None
        return f"worker {worker_id:#x} speaks with another key ({bound}), not {key}"

    def bind(self, key: str | None, worker_id: int) -> None:
        """``worker_id`` was admitted, speaking with ``key``: only that key speaks for it now
        (a binding made earlier stays)."""
        if key is not None:
            self._key_of.setdefault(worker_id, key)

    def release(self, worker_id: int) -> None:
        """This worker no longer knows ``worker_id``: the id is free to bind again."""
        self._key_of.pop(worker_id, None)

    def retain(self, known: Callable[[int], bool]) -> None:
        """Release every id ``known`` denies (an observer evicted unannounced, …)."""
        for worker_id in [w for w in self._key_of if not known(w)]:
            del self._key_of[worker_id]
