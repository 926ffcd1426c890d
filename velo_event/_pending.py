"""What a pending event waits on: the records a timed-out wait names, and the walk that finds
them (pure: the caller says which handles are merges and which of their inputs are pending)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from ._handle import EventHandle

__all__ = [
    "MAX_PENDING_SHOWN",
    "THIS_WORKER",
    "UNKNOWN",
    "PendingEvent",
    "WaitingOn",
    "blocking_events",
    "describe_pending",
]

#: How many pending events a timeout names; the rest are counted ("… and N more").
MAX_PENDING_SHOWN: Final = 10
#: The liveness of an event owned by the waiting system itself.
THIS_WORKER: Final = "this worker"
#: The liveness of an owner the waiting worker knows nothing of.
UNKNOWN: Final = "unknown"


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """One event a wait is held up by: its ``handle``, its ``label`` if known, its ``owner``
    (the worker id in the handle) and the owner's ``liveness``: ``"this worker"`` (the waiting
    worker owns it), ``"alive"``, ``"draining"``, ``"lost"``, ``"closed"`` or ``"unknown"``,
    as worker ``seen_by`` sees it (``None``: the waiting worker itself)."""

    handle: EventHandle
    owner: int
    label: str | None = None
    liveness: str = UNKNOWN
    seen_by: int | None = None

    @property
    def name(self) -> str:
        """Its label and handle, or its handle."""
        return f"{self.label} ({self.handle})" if self.label else str(self.handle)

    @property
    def whose(self) -> str:
        """Its owner and the owner's liveness (empty for a LocalEventSystem's handle, which
        has no other owner)."""
        if self.handle.is_local:
            return ""
        seen = "" if self.seen_by is None else f" (as seen by worker {self.seen_by:#x})"
        return f"owner {self.owner:#x}: {self.liveness}{seen}"

    def __str__(self) -> str:
        return f"{self.name}, {self.whose}" if self.whose else self.name


#: What a pending event waits on: at most a limit of events, and how many more there are.
WaitingOn = tuple[tuple[PendingEvent, ...], int]


def blocking_events(
    target: EventHandle,
    pending_inputs: Callable[[EventHandle], Sequence[EventHandle] | None],
) -> list[EventHandle]:
    """The events that hold ``target`` up, each once, in input order: walking down from it
    through the merges ``pending_inputs`` knows (it gives a merge's inputs still pending, and
    ``None`` for anything it cannot see into), the pending events that are not such merges.
    ``[target]`` if ``target`` is not one; ``[]`` for a merge with nothing left pending."""
    leaves: list[EventHandle] = []
    seen: set[EventHandle] = set()
    stack = [target]
    while stack:
        handle = stack.pop()
        if handle in seen:
            continue
        seen.add(handle)
        inputs = pending_inputs(handle)
        if inputs is None:
            leaves.append(handle)
        else:
            stack.extend(reversed(inputs))  # depth first, in input order
    return leaves


def describe_pending(
    handle: EventHandle, timeout: float | None, pending: Sequence[PendingEvent], more: int
) -> str:
    """The message of a timed-out wait: the event, and one line per event it waits on."""
    after = "" if timeout is None else f" after {timeout:g} s"
    if len(pending) == 1 and not more and pending[0].handle == handle:  # not a merge
        event = pending[0]
        text = f"event {event.name} still pending{after}"
        return f"{text}; {event.whose}" if event.whose else text
    lines = [f"event {handle} still pending{after}" + (", waiting on:" if pending else "")]
    lines.extend(f"  {event}" for event in pending)
    if more:
        lines.append(f"  … and {more} more")
    return "\n".join(lines)
