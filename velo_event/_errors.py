"""The exceptions of `velo_event`: one base, a few specific misuse errors, the poison, and
the timeout (a ``TimeoutError`` naming what the event still waits on)."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from ._handle import EventHandle
from ._pending import PendingEvent, describe_pending

__all__ = [
    "AlreadyTriggeredError",
    "EventError",
    "EventPoison",
    "EventStatus",
    "EventTimeout",
    "ForeignHandleError",
    "InvalidGenerationError",
    "OutcomeUnknown",
    "SystemShutdownError",
    "UnknownEventError",
]


class EventStatus(enum.Enum):
    """What is known of one generation of an event. ``UNKNOWN``: nothing can be learned of
    it from whoever answers for it now (its owner restarted since it minted the handle, see
    :class:`OutcomeUnknown`); no verdict, and never recorded as one."""

    PENDING = "pending"
    READY = "ready"
    POISONED = "poisoned"
    UNKNOWN = "unknown"


class EventError(Exception):
    """Base of every error `velo_event` raises (misuse, and the poison itself)."""


class ForeignHandleError(EventError):
    """The handle belongs to another event system; the message names both systems."""


class UnknownEventError(EventError):
    """The handle names a slot this system never created."""


class InvalidGenerationError(EventError):
    """The generation is not the pending one: completed already (double trigger, trigger after
    poison) or not issued yet."""


class AlreadyTriggeredError(EventError):
    """Poison of a generation that was already triggered successfully."""


class SystemShutdownError(EventError):
    """``new_event`` or ``merge_events`` after ``force_shutdown``."""


class _AboutAHandle(EventError):
    """An error about one handle, for one reason (both kept, and through pickling)."""

    def __init__(self, handle: EventHandle, reason: str) -> None:
        super().__init__(handle, reason)
        self._handle = handle
        self._reason = reason

    @property
    def handle(self) -> EventHandle:
        return self._handle

    @property
    def reason(self) -> str:
        return self._reason

    def __reduce__(self) -> tuple[object, tuple[EventHandle, str]]:
        return (type(self), (self._handle, self._reason))


class EventPoison(_AboutAHandle):
    """An awaited event was poisoned: ``handle`` is the poisoned event (for a merge, the merged
    handle) and ``reason`` the first reason it was poisoned with."""

    def __str__(self) -> str:
        return f"Event {self._handle} poisoned: {self._reason}"


class EventTimeout(TimeoutError):
    """A wait or await with a timeout ran out while the event was still pending (the event is
    left untouched). ``handle`` is the awaited event, ``timeout`` the seconds waited and
    ``pending`` what it still waits on (:class:`PendingEvent` records): for a merge, its
    pending inputs down to the events that hold it up, at most ten, ``more`` counting the
    rest; for any other event, the event itself. A ``TimeoutError``, not an ``EventError``:
    code that catches either keeps working."""

    def __init__(
        self,
        handle: EventHandle,
        timeout: float | None,
        pending: Sequence[PendingEvent] = (),
        more: int = 0,
    ) -> None:
        self._handle = handle
        self._timeout = timeout
        self._pending = tuple(pending)
        self._more = more
        super().__init__(describe_pending(handle, timeout, self._pending, more))

    @property
    def handle(self) -> EventHandle:
        return self._handle

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @property
    def pending(self) -> tuple[PendingEvent, ...]:
        return self._pending

    @property
    def more(self) -> int:
        return self._more

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (type(self), (self._handle, self._timeout, self._pending, self._more))


class OutcomeUnknown(_AboutAHandle):
    """An await ended without the event's outcome: whoever answers for the handle could not
    (for another worker's handle: its owner was lost, closed or could not be reached, or this
    worker closed; for any handle: its owner restarted since it minted it, and the outcome
    died with the earlier incarnation). It is not a verdict: nothing recorded it as poisoned,
    and a later await or poll asks again (whoever learned the outcome before may know it).
    ``handle`` is the awaited handle and ``reason`` says why no answer came."""

    def __str__(self) -> str:
        return f"Outcome of event {self._handle} unknown: {self._reason}"
