"""The public faces of an event system: `EventManager`, `Event`, `EventGuard`, and the two
concrete systems, `LocalEventSystem` and `DistributedEventFactory`."""

from __future__ import annotations

import abc
import contextlib
import math
import numbers
import secrets
import threading
from collections.abc import Hashable, Iterable, Sequence
from types import TracebackType
from typing import Final, Protocol

from ._awaiter import READY_AWAITER, EventAwaiter, running_loop
from ._core import EventCore
from ._errors import (
    EventError,
    EventPoison,
    EventStatus,
    EventTimeout,
    ForeignHandleError,
    OutcomeUnknown,
)
from ._handle import EventHandle
from ._hot import mypyc_attr
from ._merge import merge_of, start_merge
from ._pending import MAX_PENDING_SHOWN, THIS_WORKER, PendingEvent, WaitingOn, blocking_events
from ._wake import PENDING, Answer, Unanswered, Wake, WakeCallback

__all__ = [
    "DROPPED_REASON",
    "CoreEventManager",
    "DistributedEventFactory",
    "Event",
    "EventGuard",
    "EventManager",
    "EventSource",
    "LocalEventSystem",
]

#: The reason an armed guard poisons its event with when it is garbage-collected.
DROPPED_REASON: Final = "event dropped without being triggered"


def check_timeout(timeout: object) -> float | None:
    """A timeout in seconds (``None``: none; a negative one has run out already). Methods that
    take a timeout declare it ``object`` and check it here, so that a compiled build (which
    checks declared types first, in words of its own) says the same as the pure one."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"a timeout is a number of seconds, got {type(timeout).__name__}")
    if math.isnan(timeout):
        raise ValueError("a timeout cannot be NaN")
    return max(float(timeout), 0.0)


# Runtimes subclass these in interpreted code (velo_am's distributed events).
@mypyc_attr(allow_interpreted_subclasses=True)
class EventManager(abc.ABC):
    """What every event system offers; code written against it works with any of them.

    Errors: misuse raises a subclass of :class:`EventError`; awaiting a poisoned event raises
    :class:`EventPoison` (itself an ``EventError``) carrying the handle and the first reason;
    an await that could not learn the outcome (a remote owner lost) raises
    :class:`OutcomeUnknown`, which is no outcome: the event may still complete.
    """

    @abc.abstractmethod
    def new_event(self) -> Event:
        """A new pending event. Raises ``SystemShutdownError`` after :meth:`force_shutdown`."""

    @abc.abstractmethod
    def awaiter(self, handle: EventHandle, timeout: float | None = None) -> EventAwaiter:
        """An awaitable for the handle's generation: ``await`` returns ``None`` or raises
        :class:`EventPoison`, or with a ``timeout`` (seconds, for each await)
        :class:`EventTimeout`, a ``TimeoutError`` naming what the event still waits on (the
        event is left untouched). Raises ``EventError`` at once for a handle it cannot serve
        (another system's, unknown, a generation not issued yet)."""

    @abc.abstractmethod
    def trigger(self, handle: EventHandle) -> None:
        """Complete the pending generation successfully; ``InvalidGenerationError`` if it is
        not pending (double trigger, trigger after poison)."""

    @abc.abstractmethod
    def poison(self, handle: EventHandle, reason: str) -> None:
        """Complete the pending generation as failed. Poisoning a poisoned generation is a
        no-op (the first reason stands); ``AlreadyTriggeredError`` if it was triggered."""

    @abc.abstractmethod
    def poll(self, handle: EventHandle) -> EventStatus:
        """What is known of the handle's generation now (a future generation is PENDING; one
        minted by an earlier incarnation of its owner is UNKNOWN)."""

    @abc.abstractmethod
    def merge_events(
        self, handles: Iterable[EventHandle], *, fail_fast: bool = False
    ) -> EventHandle:
        """A new event that completes once every input has: ready if all were triggered, else
        poisoned with every failed input's reason (with ``fail_fast``, at the first poison)."""

    @abc.abstractmethod
    def force_shutdown(self, reason: str) -> None:
        """Poison every pending event with ``reason`` and refuse new events; idempotent."""

    @abc.abstractmethod
    def wait(self, handle: EventHandle, timeout: float | None = None) -> None:
        """Block the calling thread until the handle's generation completes. Raises
        :class:`EventPoison`, :class:`OutcomeUnknown` (no outcome could be learned), or
        :class:`EventTimeout` (a ``TimeoutError`` naming what the event still waits on) after
        ``timeout`` seconds (the event is left untouched). Refuses to run inside a running
        event loop, which it would freeze."""

    def poison_from_finalizer(self, handle: EventHandle, reason: str) -> None:
        """Poison on behalf of a garbage-collected guard: never raises, never blocks."""
        with contextlib.suppress(Exception):
            self.poison(handle, reason)


# One freed instance kept for the next (compiled build): most events live briefly, one at a time.
@mypyc_attr(free_list_len=1)
class Event:
    """A pending event of a manager: its :attr:`handle` plus the ways to complete it.

    An ``Event`` never poisons on its own when forgotten; :meth:`into_guard` makes a guard that
    does.
    """

    __slots__ = ("_handle", "_manager")

    def __init__(self, manager: EventManager, handle: EventHandle) -> None:
        self._manager = manager
        self._handle = handle

    @property
    def handle(self) -> EventHandle:
        return self._handle

    @property
    def manager(self) -> EventManager:
        return self._manager

    def trigger(self) -> None:
        self._manager.trigger(self._handle)

    def poison(self, reason: str) -> None:
        self._manager.poison(self._handle, reason)

    def awaiter(self, timeout: object = None) -> EventAwaiter:
        return self._manager.awaiter(self._handle, check_timeout(timeout))

    def into_guard(self, reason: str | None = None) -> EventGuard:
        """A guard that poisons this event unless it is completed first (``reason`` replaces
        the default drop reason)."""
        return EventGuard(self._manager, self._handle, reason)

    def __repr__(self) -> str:
        return f"<Event {self._handle}>"


class EventGuard:
    """Poisons its event unless completed first: on leaving a ``with`` block, or when
    garbage-collected while still armed (safe on any thread, at any time).

    Leaving the block by an exception puts its type and message in the reason.
    """

    __slots__ = ("_armed", "_handle", "_manager", "_reason")

    def __init__(
        self, manager: EventManager, handle: EventHandle, reason: str | None = None
    ) -> None:
        self._armed = False  # so that __del__ of a guard whose checks failed does nothing
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"a poison reason is a str, got {type(reason).__name__}")
        self._manager = manager
        self._handle = handle
        self._reason = reason
        self._armed = True

    @property
    def handle(self) -> EventHandle:
        return self._handle

    @property
    def armed(self) -> bool:
        return self._armed

    def trigger(self) -> None:
        self._armed = False
        self._manager.trigger(self._handle)

    def poison(self, reason: str) -> None:
        self._armed = False
        self._manager.poison(self._handle, reason)

    def disarm(self) -> EventHandle:
        """Stand down: the event is left as it is, and the handle returned."""
        self._armed = False
        return self._handle

    def __enter__(self) -> EventGuard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._armed:
            return
        self._armed = False
        reason = self._reason or DROPPED_REASON
        if exc is not None:
            reason = f"{reason}: {type(exc).__name__}: {exc}"
        with contextlib.suppress(EventError):  # completed meanwhile: that outcome stands
            self._manager.poison(self._handle, reason)

    def __del__(self) -> None:
        if self._armed:
            self._armed = False
            self._manager.poison_from_finalizer(self._handle, self._reason or DROPPED_REASON)

    def __repr__(self) -> str:
        state = "armed" if self._armed else "disarmed"
        return f"<EventGuard {self._handle} {state}>"


class _ThreadWaiter:
    """A blocked thread: the lock is held until the wake-up releases it."""

    __slots__ = ("lock", "reasons")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.reasons: list[Wake] = []

    @staticmethod
    def wake(key: Hashable, reason: Wake) -> None:
        waiter: _ThreadWaiter = key  # type: ignore[assignment]
        waiter.reasons.append(reason)
        waiter.lock.release()


class EventSource(Protocol):
    """Where a :class:`CoreEventManager` finds the state of each handle it is given.

    An :class:`~velo_event.lowlevel.EventCore` is one (it serves its own handles); a runtime
    that also serves other systems' handles (velo_am's distributed events, which route each
    handle to its owner) implements these five methods and passes itself as ``source``. Every
    method may be called from any thread.
    """

    def awaitable(self, handle: EventHandle) -> Answer:
        """The generation's outcome, or ``PENDING``, or :class:`~velo_event.lowlevel.Unanswered`
        when none can be learned (an earlier incarnation's handle); raise ``EventError`` for a
        handle nothing could ever complete (unknown, another system's, not issued yet)."""
        ...

    def status(self, handle: EventHandle) -> Answer:
        """Like :meth:`awaitable`, but a generation not issued yet is ``PENDING``."""
        ...

    def add_waiter(self, handle: EventHandle, key: Hashable, callback: WakeCallback) -> Answer:
        """Register ``callback(key, reason)`` for the generation's completion and return
        ``PENDING``; if it is complete already, register nothing and return its outcome. A
        source that cannot learn the outcome (a remote owner lost) wakes the waiter with, or
        returns, :class:`~velo_event.lowlevel.Unanswered`, never a poison of its own making."""
        ...

    def remove_waiter(self, handle: EventHandle, key: Hashable) -> None:
        """Drop the waiter ``key`` (a cancelled wait); unknown keys are ignored."""
        ...

    def check_inputs(self, handles: Iterable[EventHandle]) -> None:
        """Raise ``EventError`` for the first handle a merge here cannot take."""
        ...


@mypyc_attr(allow_interpreted_subclasses=True)
class CoreEventManager(EventManager):
    """An :class:`EventManager` whose new events live in one :class:`EventCore`.

    ``source`` answers for the handles it is given (awaits, polls, merge inputs); by default
    the core itself, which serves its own handles only. Completion (``trigger``, ``poison``)
    of the core's handles goes to the core; of any other, to ``_trigger_elsewhere`` and
    ``_poison_elsewhere``, which a subclass that completes other systems' handles overrides.
    """

    __slots__ = (
        "_add_waiter",
        "_awaitable",
        "_core",
        "_core_is_source",
        "_remove_waiter",
        "_source",
    )

    def __init__(self, core: EventCore, source: EventSource | None = None) -> None:
        self._core = core
        self._source: EventSource = core if source is None else source
        # A compiled build calls the core's own method natively, a source's through Python.
        self._core_is_source = source is None or source is core
        # Bound once: every awaiter takes them (a pending one keeps two).
        self._awaitable = self._source.awaitable
        self._add_waiter = self._source.add_waiter
        self._remove_waiter = self._source.remove_waiter

    @property
    def core(self) -> EventCore:
        """The core this manager's own events live in."""
        return self._core

    @property
    def system_id(self) -> int:
        """The id carried in the upper 64 bits of every handle of this system."""
        return self._core.system_id

    @property
    def worker_id(self) -> int:
        return self._core.system_id

    def new_event(self) -> Event:
        return Event(self, self._core.new_event())

    def awaiter(self, handle: EventHandle, timeout: object = None) -> EventAwaiter:
        outcome = self._core.awaitable(handle) if self._core_is_source else self._awaitable(handle)
        if outcome is None:
            return READY_AWAITER
        if timeout is None:
            return EventAwaiter(handle, outcome, self._add_waiter, self._remove_waiter)
        return EventAwaiter(
            handle,
            outcome,
            self._add_waiter,
            self._remove_waiter,
            check_timeout(timeout),
            self._expired,
        )

    async def _expired(self, handle: EventHandle, timeout: float) -> Answer:
        """An await's timeout ran out: its outcome if it completed meanwhile, else the timeout."""
        outcome = self._source.status(handle)
        if outcome is PENDING:
            raise EventTimeout(handle, timeout, *await self._pending_for_timeout_async(handle))
        return outcome

    def waiting_on(self, handle: EventHandle, limit: int = MAX_PENDING_SHOWN) -> WaitingOn:
        """What the handle's pending generation waits on, as this system knows it now: for a
        merge of this system, its pending inputs, down through the merges of this system among
        them to the events that hold it up (each once, in input order); for any other event,
        the event itself. At most ``limit`` of them, and how many more; nothing once it
        completed. Costs one look at each pending input of the merges walked through."""
        if self._source.status(handle) is not PENDING:
            return (), 0
        leaves = blocking_events(handle, self._pending_inputs) or [handle]
        shown = tuple(self.describe_pending(leaf) for leaf in leaves[: max(limit, 0)])
        return shown, len(leaves) - len(shown)

    def _pending_inputs(self, handle: EventHandle) -> Sequence[EventHandle] | None:
        view = merge_of(self._core, handle)
        if view is None:
            return None
        return [view.inputs[position] for position in sorted(view.pending)]

    def describe_pending(self, handle: EventHandle) -> PendingEvent:
        """How :meth:`waiting_on` names one pending event (a subclass that knows labels and
        other owners says more)."""
        return PendingEvent(handle, handle.worker_id, None, THIS_WORKER)

    def _pending_for_timeout(self, handle: EventHandle) -> WaitingOn:
        """What a timed-out :meth:`wait` names (a subclass may ask further, briefly)."""
        return self.waiting_on(handle)

    async def _pending_for_timeout_async(self, handle: EventHandle) -> WaitingOn:
        """What a timed-out await names (a subclass may ask further, briefly)."""
        return self.waiting_on(handle)

    # The core's own handles cost no check here (the core makes it) and no call through Python;
    # the core refuses any other, which goes on to whoever completes it.

    def trigger(self, handle: EventHandle) -> None:
        try:
            self._core.trigger(handle)
            return
        except ForeignHandleError:
            pass  # (handed on outside the handler: its errors are not "during" this one)
        self._trigger_elsewhere(handle)

    def poison(self, handle: EventHandle, reason: str) -> None:
        try:
            self._core.poison(handle, reason)
            return
        except ForeignHandleError:
            pass
        self._poison_elsewhere(handle, reason)

    def _trigger_elsewhere(self, handle: EventHandle) -> None:
        """Trigger another system's handle: the core's refusal (``ForeignHandleError``). A
        subclass that completes other systems' handles overrides this (and the next)."""
        self._core.trigger(handle)

    def _poison_elsewhere(self, handle: EventHandle, reason: str) -> None:
        self._core.poison(handle, reason)

    def poison_from_finalizer(self, handle: EventHandle, reason: str) -> None:
        self._core.poison_soon(handle, reason)

    def poll(self, handle: EventHandle) -> EventStatus:
        outcome = self._source.status(handle)
        if outcome is None:
            return EventStatus.READY
        if outcome is PENDING:
            return EventStatus.PENDING
        return EventStatus.UNKNOWN if isinstance(outcome, Unanswered) else EventStatus.POISONED

    def poison_reason(self, handle: EventHandle) -> str | None:
        """The reason the handle's generation was poisoned with, or ``None``."""
        outcome = self._source.status(handle)
        return outcome if isinstance(outcome, str) else None

    def merge_events(
        self, handles: Iterable[EventHandle], *, fail_fast: bool = False
    ) -> EventHandle:
        inputs = list(handles)
        if not inputs:
            raise EventError("Cannot merge empty event list")
        source = self._source
        source.check_inputs(inputs)
        return start_merge(self._core, inputs, fail_fast, source.add_waiter, source.remove_waiter)

    def force_shutdown(self, reason: str) -> None:
        self._core.force_shutdown(reason)

    def wait(self, handle: EventHandle, timeout: object = None) -> None:
        if running_loop() is not None:
            raise EventError(
                "wait() would block the running event loop; use `await manager.awaiter(handle)`"
            )
        timeout = check_timeout(timeout)
        source = self._source
        waiter = _ThreadWaiter()
        outcome: Answer = source.add_waiter(handle, waiter, waiter.wake)
        if outcome is PENDING:
            try:
                woken = waiter.lock.acquire(timeout=-1 if timeout is None else timeout)
            except BaseException:  # interrupted (KeyboardInterrupt): nobody waits any more
                source.remove_waiter(handle, waiter)
                raise
            if woken:
                outcome = waiter.reasons[0]
            else:
                source.remove_waiter(handle, waiter)
                # Completed meanwhile, its wake-up maybe not delivered yet: the outcome stands.
                outcome = waiter.reasons[0] if waiter.reasons else source.status(handle)
                if outcome is PENDING:
                    raise EventTimeout(handle, timeout, *self._pending_for_timeout(handle))
        if isinstance(outcome, Unanswered):
            raise OutcomeUnknown(handle, outcome.reason)
        if outcome is not None:
            raise EventPoison(handle, str(outcome))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} system={self._core.system_id:#x}>"


class LocalEventSystem(CoreEventManager):
    """An independent in-process event system with a random non-zero 64-bit id; its handles
    are local-only."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(EventCore(secrets.randbits(64) or 1, local=True))


class DistributedEventFactory:
    """Mints distributed handles carrying ``worker_id``; every manager it gives out shares
    one system."""

    __slots__ = ("_core",)

    def __init__(self, worker_id: object) -> None:  # object: checked here, in either build
        if isinstance(worker_id, bool) or not isinstance(worker_id, int):
            raise TypeError(f"worker_id must be an int, got {type(worker_id).__name__}")
        if not 0 < worker_id < 1 << 64:
            raise ValueError(f"worker_id must be a non-zero 64-bit integer, got {worker_id}")
        self._core = EventCore(worker_id, local=False)

    @property
    def worker_id(self) -> int:
        return self._core.system_id

    def event_manager(self) -> CoreEventManager:
        return CoreEventManager(self._core)
