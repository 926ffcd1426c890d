"""Which key each worker speaks with (pure): with CURVE, the key a peer proved on a link is
bound to the worker id claimed with it at the handshake, so no allowed member can speak as a
member this worker has already seen with another key.

A worker id, once bound, is spoken for by its key only (any incarnation: a restarted worker
keeps its certificate), until this worker forgets the member (``forget_after`` after it was
lost or closed): the table stays as small as the membership. One key may speak for several
ids: the short-lived members of the command line draw a fresh id each run and share their
operator's key, and with a key shared mesh-wide every member speaks with it (a shared key
tells no member from another).
"""

from __future__ import annotations

__all__ = ["KeyBindings"]


class KeyBindings:
    """The bindings of the members one worker knows."""

    def __init__(self) -> None:
        self._key_of: dict[int, str] = {}

    def claim(self, key: str | None, worker_id: int) -> str | None:
        """``None`` if ``key`` may speak as ``worker_id`` (bound now if the id was not), else
        why not. ``key`` ``None``: nothing proved, nothing to check."""
        if key is None:
            return None
        bound = self._key_of.setdefault(worker_id, key)
        if bound != key:
            return f"worker {worker_id:#x} speaks with another key ({bound}), not {key}"
        return None

    def release(self, worker_id: int) -> None:
        """The member was forgotten: its id is free to bind again."""
        self._key_of.pop(worker_id, None)

    def key_of(self, worker_id: int) -> str | None:
        """The key ``worker_id`` is bound to, if any."""
        return self._key_of.get(worker_id)
