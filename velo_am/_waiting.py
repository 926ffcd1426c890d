"""What a pending event waits on, seen across the mesh: the owners of the events that hold it
up are asked (runtime handler ``_ev.pending``, docs/protocol.md §12), since only an owner sees
into its merges and knows its labels. A timed-out wait names what this finds.

Asking is bounded: one call per event still to ask, all at once, at most :data:`MAX_HOPS`
rounds (an owner's answer may name a third worker's events), everything within one timeout.
Only connected owners are asked; whatever is not answered in time stays as this worker sees it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

from velo_event import EventError, EventHandle, PendingEvent
from velo_event.lowlevel import UNKNOWN, WaitingOn

from ._errors import AMError

__all__ = ["MAX_HOPS", "MAX_PENDING_ANSWERED", "Asker", "ask_owners", "encode_answer"]
__all__ += ["ask_from_any_loop", "ask_from_thread"]

logger = logging.getLogger(__name__)

#: Rounds of asking: this worker's view, the owners' answers, their owners' answers.
MAX_HOPS: Final = 3
#: The most events an ``_ev.pending`` answer names.
MAX_PENDING_ANSWERED: Final = 100
_MAX_LABEL: Final = 200
_MAX_LIVENESS: Final = 20


@dataclass(frozen=True, slots=True)
class Asker:
    """What asking needs of its worker."""

    worker_id: int
    #: What this worker sees one of its own events wait on (``waiting_on``).
    local: Callable[[EventHandle, int], WaitingOn]
    #: An owner's liveness as this worker sees it (``"unknown"`` if it knows nothing of it).
    liveness: Callable[[int], str]
    label_of: Callable[[EventHandle], str | None]
    is_connected: Callable[[int], bool]
    #: ``Worker.call`` of a runtime handler.
    call: Callable[[int, str, Any, float | None], Awaitable[Any]]


def encode_answer(shown: tuple[PendingEvent, ...], more: int) -> list[Any]:
    """An owner's ``_ev.pending`` answer: ``[[[handle, label, liveness], …], more]``."""
    return [[[event.handle.to_bytes(), event.label, event.liveness] for event in shown], more]


def _decode(asker: Asker, owner: int, answer: Any) -> WaitingOn:
    """An owner's answer as this worker sees it; ``TypeError``/``ValueError`` if malformed.
    Liveness is this worker's where it knows the owner, else the answering owner's."""
    entries, more = answer
    if not isinstance(entries, list) or isinstance(more, bool) or not isinstance(more, int):
        raise TypeError("malformed answer")
    pending = []
    for data, owners_label, liveness in entries[:MAX_PENDING_ANSWERED]:
        handle = EventHandle.from_bytes(data)
        if not isinstance(owners_label, str | None) or not isinstance(liveness, str):
            raise TypeError("malformed answer")
        label = asker.label_of(handle) or (owners_label and owners_label[:_MAX_LABEL])
        mine = asker.liveness(handle.worker_id)
        if mine == UNKNOWN:  # the owner knows it, this worker does not: say whose view it is
            event = PendingEvent(
                handle, handle.worker_id, label, liveness[:_MAX_LIVENESS], seen_by=owner
            )
        else:
            event = PendingEvent(handle, handle.worker_id, label, mine)
        pending.append(event)
    return tuple(pending), max(more, 0)


async def _ask(asker: Asker, event: PendingEvent, limit: int, timeout: float) -> WaitingOn | None:
    """The owner's view of ``event``, or ``None`` (no answer, or it names nothing: completed
    meanwhile, its news on the way). This worker's own events it sees into itself."""
    owner = event.owner
    if owner == asker.worker_id:
        try:
            shown, more = asker.local(event.handle, limit)
        except EventError:  # named by another worker, but no event of this incarnation
            return None
        opened = shown and [found.handle for found in shown] != [event.handle]
        return (shown, more) if opened else None  # None: not a merge, nothing to add
    try:
        answer = await asker.call(owner, "_ev.pending", [event.handle.to_bytes(), limit], timeout)
        shown, more = _decode(asker, owner, answer)
    except (AMError, TypeError, ValueError) as error:
        logger.debug("could not ask worker %#x what %s waits on: %s", owner, event.handle, error)
        return None
    return (shown, more) if shown else None


async def ask_owners(
    asker: Asker, shown: tuple[PendingEvent, ...], more: int, limit: int, timeout: float
) -> WaitingOn:
    """``shown`` (what this worker sees, ``more`` not shown), with each event of another
    connected worker replaced by what its owner says it waits on; at most ``limit`` events,
    and how many more (summed over the answers: an event two owners wait on may count
    twice). Never raises for an owner's failure."""
    asked: set[EventHandle] = set()
    try:
        async with asyncio.timeout(timeout):
            for _ in range(MAX_HOPS):
                ask = [
                    event
                    for event in shown
                    if event.handle not in asked
                    and (event.owner == asker.worker_id or asker.is_connected(event.owner))
                ]
                if not ask:
                    break
                asked.update(event.handle for event in ask)
                answers = await asyncio.gather(
                    *(_ask(asker, event, limit, timeout) for event in ask)
                )
                replaced = dict(zip((event.handle for event in ask), answers, strict=True))
                found: dict[EventHandle, PendingEvent] = {}
                for event in shown:
                    answer = replaced.get(event.handle)
                    for found_event in (event,) if answer is None else answer[0]:
                        found.setdefault(found_event.handle, found_event)
                    if answer is not None:
                        more += answer[1]
                        # An owner's answer about its own events is final: it sees into them.
                        asked.update(e.handle for e in answer[0] if e.owner == event.owner)
                shown = tuple(found.values())[:limit]
                more += max(len(found) - limit, 0)
    except TimeoutError:  # what was learnt by then stands
        logger.debug("asking owners what events wait on ran out of time (%s s)", timeout)
    return shown, more


# -- asking from wherever a wait timed out ---------------------------------------------------

Question = Callable[[], Coroutine[Any, Any, WaitingOn]]


def ask_from_thread(
    loop: asyncio.AbstractEventLoop | None,
    question: Question,
    known: Callable[[], WaitingOn],
    timeout: float,
) -> WaitingOn:
    """``question()`` run on the worker's ``loop`` for a thread whose wait timed out; what is
    ``known`` here if the loop has ended, ends meanwhile, or takes over ``timeout`` seconds."""
    future = _on_loop(loop, question)
    if future is None:
        return known()
    try:
        return future.result(timeout)
    except (TimeoutError, concurrent.futures.CancelledError):  # the loop ended first
        future.cancel()
        return known()


async def ask_from_any_loop(
    loop: asyncio.AbstractEventLoop | None,
    question: Question,
    known: Callable[[], WaitingOn],
    timeout: float,
) -> WaitingOn:
    """As :func:`ask_from_thread`, for a task on any loop (the worker's own included)."""
    if loop is not None and asyncio.get_running_loop() is loop:
        return await question()
    future = _on_loop(loop, question)
    if future is None:
        return known()
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.wrap_future(future)
    except TimeoutError:
        future.cancel()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not future.cancelled() or task is None or task.cancelling():
            raise  # this task was cancelled, not the question
    return known()


def _on_loop(
    loop: asyncio.AbstractEventLoop | None, question: Question
) -> concurrent.futures.Future[WaitingOn] | None:
    if loop is None or not loop.is_running():
        return None
    coroutine = question()
    try:
        return asyncio.run_coroutine_threadsafe(coroutine, loop)
    except RuntimeError:  # the loop closed since
        coroutine.close()
        return None
