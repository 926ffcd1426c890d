"""velo_event: generational events, merged into precondition graphs and poisoned on failure.

The core is a synchronous, thread-safe state machine; awaiting is a thin asyncio adapter on
top, and :meth:`EventManager.wait` serves plain threads.
"""

from ._awaiter import EventAwaiter
from ._core import MAX_REASON_LENGTH
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
from ._manager import (
    DROPPED_REASON,
    DistributedEventFactory,
    Event,
    EventGuard,
    EventManager,
    LocalEventSystem,
)
from ._pending import PendingEvent

__all__ = [
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
