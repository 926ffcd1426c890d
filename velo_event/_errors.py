"""The exceptions of `velo_event`: one base, a few specific misuse errors, and the poison."""

from __future__ import annotations

import enum

from ._handle import EventHandle

__all__ = [
    "AlreadyTriggeredError",
    "EventError",
    "EventPoison",
    "EventStatus",
    "ForeignHandleError",
    "InvalidGenerationError",
    "SystemShutdownError",
    "UnknownEventError",
]


class EventStatus(enum.Enum):
    """What is known of one generation of an event."""

    PENDING = "pending"
    READY = "ready"
    POISONED = "poisoned"


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


class EventPoison(EventError):
    """An awaited event was poisoned: ``handle`` is the poisoned event (for a merge, the merged
    handle) and ``reason`` the first reason it was poisoned with."""

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

    def __str__(self) -> str:
        return f"Event {self._handle} poisoned: {self._reason}"

    def __reduce__(self) -> tuple[object, tuple[EventHandle, str]]:
        return (type(self), (self._handle, self._reason))
