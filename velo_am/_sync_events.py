"""`SyncEvents`: ``SyncWorker.events``, the mesh's events for plain threads.

Every method may be called from any thread: the non-blocking ones go straight to the worker's
:class:`~velo_am._events.DistributedEvents` (thread-safe), the blocking ones wait for the
worker's loop (``*_confirmed``, ``*_remote``, ``*_on``) or for the event (``wait``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from velo_event import (
    Event,
    EventAwaiter,
    EventError,
    EventHandle,
    EventManager,
    EventStatus,
)
from velo_event.lowlevel import MAX_PENDING_SHOWN, WaitingOn, running_loop

from ._errors import AMError, WorkerClosed
from ._events import DistributedEvents
from ._sync_runtime import Runtime

__all__ = ["SyncEvents"]

T = TypeVar("T")


class _WouldBlockLoop(EventError, RuntimeError):
    """``SyncEvents.wait`` on a thread running an event loop: it would freeze that loop."""


class SyncEvents(EventManager):
    """``SyncWorker.events``: the mesh's events for plain threads, an
    :class:`~velo_event.EventManager` (code written against one works with it).

    Every method takes a handle of any worker of the mesh and may be called from any thread.
    :meth:`new_event` returns :class:`~velo_event.Event` objects whose ``trigger()`` and
    ``poison()`` work from any thread. ``trigger``/``poison`` of another worker's handle are
    fire-and-forget; :meth:`trigger_confirmed`/:meth:`poison_confirmed` wait for the owner's
    verdict. After the worker closed, this worker's events are poisoned (the shutdown
    reason), and operations on other workers' handles raise :class:`WorkerClosed`.
    """

    def __init__(self, runtime: Runtime, events: DistributedEvents, owner: object) -> None:
        self._runtime = runtime
        self._events = events
        self._owner = owner  # the SyncWorker, kept alive while its events are in use

    @property
    def worker_id(self) -> int:
        """The owner id carried by this worker's handles (its worker id)."""
        return self._events.worker_id

    system_id = worker_id

    # -- non-blocking operations ------------------------------------------------------------

    def new_event(self, label: str | None = None) -> Event:
        """A new pending event owned by this worker; ``label`` names it in ``velo-am
        inspect`` while it is pending. Raises ``SystemShutdownError`` once the worker
        closed."""
        return Event(self, self._events.new_event(label).handle)

    def label_of(self, handle: EventHandle) -> str | None:
        """The label this worker gave one of its events, while the event is pending."""
        return self._events.label_of(handle)

    def labels(self) -> dict[EventHandle, str]:
        """The labels of this worker's pending events."""
        return self._events.labels()

    def trigger(self, handle: EventHandle) -> None:
        """Complete the pending generation successfully (``InvalidGenerationError`` if it is
        not pending). Another worker's handle is forwarded to its owner without waiting."""
        self._routed(self._events.trigger, handle)

    def poison(self, handle: EventHandle, reason: str) -> None:
        """Complete the pending generation as failed with ``reason`` (a poisoned one keeps
        its first reason; ``AlreadyTriggeredError`` if it was triggered). Another worker's
        handle is forwarded to its owner without waiting."""
        self._routed(self._events.poison, handle, reason)

    def poll(self, handle: EventHandle) -> EventStatus:
        """What this worker knows of the handle's generation now (see :meth:`poll_remote`)."""
        return self._events.poll(handle)

    def poison_reason(self, handle: EventHandle) -> str | None:
        """The reason the handle's generation was poisoned with, if known here, or ``None``."""
        return self._events.poison_reason(handle)

    def merge_events(
        self,
        handles: Iterable[EventHandle],
        *,
        fail_fast: bool = False,
        label: str | None = None,
    ) -> EventHandle:
        """A new event of this worker that completes once every input (of any worker) has:
        ready if all were triggered, else poisoned with every failed input's reason (with
        ``fail_fast``, at the first poison); ``label`` as for :meth:`new_event`."""
        inputs = list(handles)
        self._check_routable(inputs)
        merge = functools.partial(
            self._events.merge_events, inputs, fail_fast=fail_fast, label=label
        )
        return self._routed(merge)

    def awaiter(self, handle: EventHandle, timeout: float | None = None) -> EventAwaiter:
        """For asyncio code on another loop (any thread): ``await events.awaiter(handle)``;
        with a ``timeout``, :class:`~velo_event.EventTimeout` as for :meth:`wait`."""
        return self._events.awaiter(handle, timeout)

    def waiting_on(self, handle: EventHandle, limit: int = MAX_PENDING_SHOWN) -> WaitingOn:
        """What the handle's pending generation waits on, as this worker knows it now (see
        :meth:`~velo_event.lowlevel.CoreEventManager.waiting_on`; read on the loop thread,
        which knows its peers' liveness)."""
        return self._runtime.read(self._events.waiting_on, handle, limit)

    def waiting_on_remote(
        self, handle: EventHandle, limit: int = MAX_PENDING_SHOWN, timeout: float = 1.0
    ) -> WaitingOn:
        """:meth:`waiting_on`, another worker's handle asked of its owner (one call, bounded
        by ``timeout``; without an answer, what this worker knows). Raises
        :class:`WorkerClosed` once this worker is closed."""
        result: WaitingOn = self._runtime.blocking(
            "events.waiting_on_remote", self._events.waiting_on_remote, handle, limit, timeout
        )
        return result

    def force_shutdown(self, reason: str) -> None:
        """Poison every pending event of this worker with ``reason`` and refuse new ones."""
        self._events.force_shutdown(reason)

    def poison_from_finalizer(self, handle: EventHandle, reason: str) -> None:
        """For a garbage-collected guard: never raises, never blocks."""
        self._events.poison_from_finalizer(handle, reason)

    # -- blocking operations ----------------------------------------------------------------

    def wait(self, handle: EventHandle, timeout: float | None = None) -> None:
        """Block the calling thread until the handle's generation completes. Raises
        :class:`~velo_event.EventPoison` with the first poison reason;
        :class:`~velo_event.OutcomeUnknown` for another worker's handle when its owner is
        lost, closes or cannot be reached, or this worker closes meanwhile (no outcome: a
        later wait asks again); :class:`~velo_event.EventTimeout` (a ``TimeoutError`` naming
        what the event still waits on: labels, owners and their liveness, asked briefly of the
        owner for another worker's merge) after ``timeout`` seconds (the event is left
        pending), :class:`WorkerClosed` for another worker's handle once this worker is
        closed, and ``RuntimeError`` (an ``EventError`` too) on a thread running an event
        loop, such as the worker's own (in a handler)."""
        if running_loop() is not None:
            where = "the worker's own loop" if self._runtime.on_loop_thread() else "a running loop"
            raise _WouldBlockLoop(
                f"wait() would block {where}; there, `await events.awaiter(handle)` instead"
            )
        if self._events.owner_of(handle) is not None:
            self._check_routable([handle])
            if self._runtime.state == "closed":
                raise WorkerClosed(self._runtime.closed_text())
        # A remote wait whose subscription never leaves (the loop ended first) is still woken:
        # the runtime ends every remote wait (OutcomeUnknown) once its loop is gone.
        self._routed(self._events.wait, handle, timeout)

    def trigger_confirmed(self, handle: EventHandle, timeout: float | None = None) -> None:
        """Trigger and wait for the owner's verdict: raises the owner's ``EventError``
        (``InvalidGenerationError`` if not pending, ``UnknownEventError``), or
        :class:`PeerLost` / :class:`PeerUnreachable` / :class:`CallTimeout` when the owner
        cannot answer, :class:`WorkerClosed` once this worker is closed."""
        self._runtime.blocking(
            "events.trigger_confirmed", self._events.trigger_confirmed, handle, timeout
        )

    def poison_confirmed(
        self, handle: EventHandle, reason: str, timeout: float | None = None
    ) -> None:
        """Poison and wait for the owner's verdict (errors as :meth:`trigger_confirmed`,
        ``AlreadyTriggeredError`` if it was triggered)."""
        self._runtime.blocking(
            "events.poison_confirmed", self._events.poison_confirmed, handle, reason, timeout
        )

    def poll_remote(self, handle: EventHandle, timeout: float | None = None) -> EventStatus:
        """Ask the owner (:meth:`poll` answers from what this worker knows). Raises
        :class:`PeerLost` / :class:`PeerUnreachable` / :class:`CallTimeout` when the owner
        cannot answer, :class:`WorkerClosed` once this worker is closed."""
        status: EventStatus = self._runtime.blocking(
            "events.poll_remote", self._events.poll_remote, handle, timeout
        )
        return status

    def status_remote(
        self, handle: EventHandle, timeout: float | None = None
    ) -> tuple[EventStatus, str | None]:
        """:meth:`poll_remote` with the reason: the poison's, or why the owner cannot tell
        (``UNKNOWN``); raises as :meth:`poll_remote`."""
        answer: tuple[EventStatus, str | None] = self._runtime.blocking(
            "events.status_remote", self._events.status_remote, handle, timeout
        )
        return answer

    def new_event_on(
        self,
        owner: int,
        label: str | None = None,
        timeout: float | None = None,
        *,
        lease: float | None = None,
    ) -> EventHandle:
        """Have worker ``owner`` create (and own) a new event; returns its handle. With
        ``lease`` (seconds), this worker answers for it: the owner poisons it unless it
        completes or is renewed (:meth:`renew_lease`) within ``lease`` seconds, or as soon as
        this worker is lost or closes first (see ``Worker.events.new_event_on``). Raises
        ``TypeError`` / ``ValueError`` for a bad label or lease, :class:`PeerUnreachable` /
        :class:`PeerLost` / :class:`CallTimeout` when the owner cannot answer,
        :class:`WorkerClosed` once this worker is closed."""
        new_on = functools.partial(self._events.new_event_on, owner, label, timeout, lease=lease)
        handle: EventHandle = self._runtime.blocking("events.new_event_on", new_on)
        return handle

    def renew_lease(
        self, handle: EventHandle, seconds: float | None = None, timeout: float | None = None
    ) -> float:
        """Renew the lease on ``handle`` for ``seconds`` (default: its own length) from now;
        returns that length. Raises ``InvalidGenerationError`` if the event already completed,
        ``EventError`` if it has no lease, ``TypeError`` / ``ValueError`` for bad ``seconds``,
        :class:`PeerUnreachable` / :class:`PeerLost` / :class:`CallTimeout` when the owner
        cannot answer, :class:`WorkerClosed` once this worker is closed."""
        term: float = self._runtime.blocking(
            "events.renew_lease", self._events.renew_lease, handle, seconds, timeout
        )
        return term

    def merge_events_on(
        self,
        owner: int,
        handles: Iterable[EventHandle],
        *,
        fail_fast: bool = False,
        label: str | None = None,
        timeout: float | None = None,
    ) -> EventHandle:
        """Have worker ``owner`` create (and own) a merge of ``handles``; errors as
        :meth:`new_event_on`, plus the owner's ``EventError`` (an empty merge)."""
        merge = functools.partial(
            self._events.merge_events_on,
            owner,
            list(handles),
            fail_fast=fail_fast,
            label=label,
            timeout=timeout,
        )
        handle: EventHandle = self._runtime.blocking("events.merge_events_on", merge)
        return handle

    def stats(self) -> dict[str, int]:
        """Subscriptions and updates sent and received, remote handles awaited, cache size,
        subscriptions served (a snapshot taken on the loop thread)."""
        return self._runtime.read(self._events.stats)

    def __repr__(self) -> str:
        return f"<SyncEvents of {self._owner!r}>"

    # -- plumbing ---------------------------------------------------------------------------

    def _check_routable(self, handles: list[EventHandle]) -> None:
        """Remote handles need a started worker: refuse before anything is registered."""
        if self._runtime.state == "new" and any(
            self._events.owner_of(handle) is not None for handle in handles
        ):
            raise AMError(f"{self._runtime.describe()} is not started: start() it first")

    def _routed(self, fn: Callable[..., T], *args: Any) -> T:
        """Run an operation that may route a remote handle through the worker's loop, which
        is gone once the worker closed: that is :class:`WorkerClosed`."""
        try:
            return fn(*args)
        except RuntimeError as error:
            if self._runtime.loop.is_closed() and not isinstance(error, EventError):
                raise WorkerClosed(self._runtime.closed_text()) from error
            raise
