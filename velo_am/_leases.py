"""Leases, sans-IO: who answers for an event, and until when.

An event created on behalf of another worker (``new_event_on(owner, lease=SECONDS)``, the
``_ev.new`` handler) may carry a *lease*: its creator, the *holder*, promises to complete the
event or renew the lease every ``SECONDS``. The owner keeps a :class:`LeaseTable` and breaks
(poisons) the event, with a reason naming the lease, when

* the lease is not renewed in time (:meth:`LeaseTable.due`, driven by the worker's clock), or
* its holder is lost, closes or restarts (:meth:`LeaseTable.holder_lost`) — only for a holder
  whose loss the owner can see and that means something: a full member of the mesh other
  than the owner itself. A short-lived observer (a ``velo-am`` command) leaves right after
  creating the event; its leases end by time alone.

A completed event needs no lease: its entry is dropped at the next :meth:`LeaseTable.due`.
The table reads no clock (``now`` is an argument, ``time.monotonic()`` in the worker) and
never touches an event: it returns what to poison, and the events layer does it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from velo_event import EventHandle

__all__ = ["Broken", "Lease", "LeaseTable", "check_lease_seconds"]


def check_lease_seconds(value: object) -> float:
    """A lease's length: a finite number of seconds > 0 (``TypeError``, ``ValueError``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"a lease is a number of seconds, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"a lease is a finite number of seconds > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Lease:
    """Worker ``holder`` answers for ``handle`` until ``expires`` (monotonic seconds)."""

    handle: EventHandle
    holder: int
    #: How long each renewal extends it by default (what it was granted for).
    seconds: float
    expires: float
    #: How long the current term is (the last grant or renewal): named when it lapses.
    term: float
    #: Whose loss breaks it: the holder is a full member other than the owner.
    watch_holder: bool
    #: What the reasons call the event: its label, quoted, else its handle.
    name: str

    def expired_reason(self) -> str:
        return (
            f"lease of worker {self.holder:#x} on {self.name} expired: "
            f"not renewed within {self.term:g} s"
        )

    def holder_lost_reason(self, why: str) -> str:
        return f"lease of worker {self.holder:#x} on {self.name} ended with its holder: {why}"


@dataclass(frozen=True, slots=True)
class Broken:
    """A lease that ended without its event completing: poison ``handle`` with ``reason``."""

    handle: EventHandle
    reason: str


class LeaseTable:
    """The leases one owner keeps on its events, one per handle."""

    def __init__(self) -> None:
        self._leases: dict[EventHandle, Lease] = {}

    def __len__(self) -> int:
        return len(self._leases)

    def get(self, handle: EventHandle) -> Lease | None:
        return self._leases.get(handle)

    def grant(
        self,
        handle: EventHandle,
        holder: int,
        seconds: float,
        now: float,
        *,
        watch_holder: bool,
        label: str | None = None,
    ) -> Lease:
        """A new lease on ``handle`` (a fresh event), held by worker ``holder``."""
        seconds = check_lease_seconds(seconds)
        name = f"'{label}'" if label is not None else str(handle)
        lease = Lease(handle, holder, seconds, now + seconds, seconds, watch_holder, name)
        self._leases[handle] = lease
        return lease

    def renew(self, handle: EventHandle, now: float, seconds: float | None = None) -> Lease:
        """Extend ``handle``'s lease to ``seconds`` (default: its own length) from ``now``;
        ``KeyError`` if it has none (the caller knows why: completed, or never leased)."""
        lease = self._leases[handle]
        term = lease.seconds if seconds is None else check_lease_seconds(seconds)
        lease = self._leases[handle] = replace(lease, expires=now + term, term=term)
        return lease

    def end(self, handle: EventHandle) -> None:
        """The event completed: its lease is over."""
        self._leases.pop(handle, None)

    def due(self, now: float, pending: Callable[[EventHandle], bool]) -> list[Broken]:
        """Time passes: leases of events no longer ``pending`` end; those whose term ran out
        by ``now`` are broken (and end too)."""
        broken: list[Broken] = []
        for handle, lease in list(self._leases.items()):
            if not pending(handle):
                del self._leases[handle]
            elif lease.expires <= now:
                del self._leases[handle]
                broken.append(Broken(handle, lease.expired_reason()))
        return broken

    def holder_lost(self, worker_id: int, why: str) -> list[Broken]:
        """Worker ``worker_id`` is lost, closed or restarted (``why`` says which): the leases
        it holds and whose loss they watch are broken."""
        broken = [
            Broken(handle, lease.holder_lost_reason(why))
            for handle, lease in self._leases.items()
            if lease.holder == worker_id and lease.watch_holder
        ]
        for entry in broken:
            del self._leases[entry.handle]
        return broken

    def holders(self) -> set[int]:
        """The holders whose loss breaks a lease: the owner watches them."""
        return {lease.holder for lease in self._leases.values() if lease.watch_holder}
