"""velo_event: generational events, merged into precondition graphs and poisoned on failure.

The core is a synchronous, thread-safe state machine; awaiting is a thin asyncio adapter on
top, and :meth:`EventManager.wait` serves plain threads. The hot path is compiled (mypyc)
where the install found a C compiler; :data:`COMPILED` says which build is in use, and
``VELO_PURE=1`` in the environment forces the pure-Python one.
"""

from typing import Final

from . import _select
from ._errors import (
    AlreadyTriggeredError,
    EventError,
    EventPoison,
    EventStatus,
    EventTimeout,
    ForeignHandleError,
    InvalidGenerationError,
    OutcomeUnknown,
    SystemShutdownError,
    UnknownEventError,
)
from ._handle import EventHandle
from ._pending import PendingEvent

#: Whether the compiled build of the event core is in use (see ``VELO_PURE``).
COMPILED: Final = _select.COMPILED

EventAwaiter = _select.awaiter.EventAwaiter
MAX_REASON_LENGTH: Final = _select.wake.MAX_REASON_LENGTH
DROPPED_REASON: Final = _select.manager.DROPPED_REASON
DistributedEventFactory = _select.manager.DistributedEventFactory
Event = _select.manager.Event
EventGuard = _select.manager.EventGuard
EventManager = _select.manager.EventManager
LocalEventSystem = _select.manager.LocalEventSystem

__all__ = [
    "COMPILED",
    "DROPPED_REASON",
    "MAX_REASON_LENGTH",
    "AlreadyTriggeredError",
    "DistributedEventFactory",
    "Event",
    "EventAwaiter",
    "EventError",
    "EventGuard",
    "EventHandle",
    "EventManager",
    "EventPoison",
    "EventStatus",
    "EventTimeout",
    "ForeignHandleError",
    "InvalidGenerationError",
    "LocalEventSystem",
    "OutcomeUnknown",
    "PendingEvent",
    "SystemShutdownError",
    "UnknownEventError",
]
