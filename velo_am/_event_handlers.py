"""The runtime handlers by which other workers operate on this worker's events (``_ev.*``,
docs/protocol.md §12):

* ``_ev.trigger`` / ``_ev.poison`` / ``_ev.status``: remote completion and polling.
* ``_ev.new`` / ``_ev.merge``: create an event (or a merge) owned by this worker on behalf of
  a process that will not stay (the CLI), returning its handle; ``_ev.new`` may give it a
  lease (:mod:`velo_am._leases`), which ``_ev.renew`` renews.
* ``_ev.pending``: what one of this worker's pending events waits on (a timed-out wait on it
  elsewhere names that, see :meth:`DistributedEvents.waiting_on_remote`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from velo_event import (
    EventHandle,
    ForeignHandleError,
    InvalidGenerationError,
    UnknownEventError,
)
from velo_event.lowlevel import PENDING, Unanswered

from ._events import DistributedEvents
from ._handlers import CallContext, Handler
from ._protocol import EventStatusCode
from ._waiting import MAX_PENDING_ANSWERED, encode_answer

__all__ = ["runtime_handlers"]


def runtime_handlers(events: DistributedEvents) -> dict[str, Handler]:
    """The handlers by which other workers operate on ``events``' own events (``_ev.*``)."""
    core = events.core

    @contextlib.contextmanager
    def stale_as_invalid(handle: EventHandle) -> Iterator[None]:
        try:
            yield
        except UnknownEventError:
            raise InvalidGenerationError(f"{core.stale_reason}: {handle}") from None

    def trigger(payload: list[Any], ctx: CallContext) -> None:
        handle = EventHandle.from_bytes(payload[0])
        with stale_as_invalid(handle):
            core.trigger(handle)

    def poison(payload: list[Any], ctx: CallContext) -> None:
        handle = EventHandle.from_bytes(payload[0])
        with stale_as_invalid(handle):
            core.poison(handle, payload[1])

    def status(payload: bytes, ctx: CallContext) -> list[Any]:
        # A handle this incarnation never issued, nor will soon, reads as stale: unknown.
        outcome = core.status(EventHandle.from_bytes(payload))
        if outcome is PENDING:
            return [EventStatusCode.PENDING, None]
        if outcome is None:
            return [EventStatusCode.READY, None]
        if isinstance(outcome, Unanswered):
            return [EventStatusCode.UNKNOWN, outcome.reason]
        return [EventStatusCode.POISONED, outcome]

    def new(payload: dict[str, Any], ctx: CallContext) -> bytes | list[Any]:
        label, lease = payload.get("label"), payload.get("lease")
        handle = events.new_event_for(ctx.sender, label, lease).to_bytes()
        return handle if lease is None else [handle, lease]  # the lease kept: creators check

    def renew(payload: list[Any], ctx: CallContext) -> float:
        return events.renew_own_lease(EventHandle.from_bytes(payload[0]), payload[1])

    def pending(payload: list[Any], ctx: CallContext) -> list[Any]:
        handle = EventHandle.from_bytes(payload[0])
        if events.owner_of(handle) is not None:
            raise ForeignHandleError(f"{handle} is not an event of worker {core.system_id:#x}")
        limit = min(max(int(payload[1]), 0), MAX_PENDING_ANSWERED)
        # A predecessor's handle reads as stale here, not pending: it waits on nothing.
        shown, more = events.waiting_on(handle, limit)
        return encode_answer(shown, more)

    def merge(payload: dict[str, Any], ctx: CallContext) -> bytes:
        handles = [EventHandle.from_bytes(data) for data in payload["handles"]]
        merged = events.merge_events(
            handles, fail_fast=bool(payload.get("fail_fast")), label=payload.get("label")
        )
        return merged.to_bytes()

    return {
        "_ev.trigger": trigger,
        "_ev.poison": poison,
        "_ev.status": status,
        "_ev.new": new,
        "_ev.merge": merge,
        "_ev.pending": pending,
        "_ev.renew": renew,
    }
