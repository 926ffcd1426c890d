"""Distributed events: ``w.events``, an :class:`~velo_event.EventManager` for the whole mesh.

The worker's own events live in a local :class:`~velo_event._core.EventCore` whose handles
carry the worker id. Any other distributed handle is served by its owner over runtime
handlers:

* ``_ev.updates``: a list of items, each ``[0, handle]`` (subscribe: subscriber → owner, once
  per handle however many local waiters) or ``[1, handle, reason or None]`` (done: owner →
  subscriber, when the generation completes — at once if it already has — with the original
  poison reason). A done item resolves every local waiter of the handle and enters a bounded
  cache, so later awaits need no traffic. Items for one peer queued during one loop
  iteration travel as one message.
* ``_ev.trigger`` / ``_ev.poison`` / ``_ev.status``: remote completion and polling.
* ``_ev.new`` / ``_ev.merge``: create an event (or a merge) owned by this worker on behalf of
  a process that will not stay (the CLI), returning its handle.

When an owner is lost (heartbeats), closes or cannot be reached, every local waiter on its
handles is poisoned with a reason naming it. A closing worker first poisons its own pending
events, so remote waiters learn it before the goodbye. A restarted worker starts its slots at
a random generation: handles of its predecessor read as poisoned, never as a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

from velo_event import (
    AlreadyTriggeredError,
    Event,
    EventError,
    EventHandle,
    EventStatus,
    ForeignHandleError,
    InvalidGenerationError,
    SystemShutdownError,
    UnknownEventError,
)
from velo_event._core import PENDING, EventCore, Outcome, WakeCallback, _wake
from velo_event._manager import CoreEventManager

from ._errors import AMError, RemoteError
from ._handlers import CallContext

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["DistributedEvents"]

logger = logging.getLogger(__name__)

#: Completed remote generations remembered, so awaiting them again costs no traffic.
DEFAULT_CACHE_SIZE: Final = 10_000
#: Labels are for people reading `velo-am inspect`: bounded, like poison reasons.
MAX_LABEL_LENGTH: Final = 200
_REMOTE_ERRORS: Final[dict[str, type[EventError]]] = {
    cls.__name__: cls
    for cls in (
        AlreadyTriggeredError,
        ForeignHandleError,
        InvalidGenerationError,
        SystemShutdownError,
        UnknownEventError,
    )
}
_STATUS_CODES: Final = (EventStatus.PENDING, EventStatus.READY, EventStatus.POISONED)


class DistributedEvents(CoreEventManager):
    """``w.events``: every operation takes a handle of any worker of the mesh.

    Local handles go straight to this worker's core; remote ones are routed to their owner.
    ``trigger``/``poison`` of a remote handle are fire-and-forget; :meth:`trigger_confirmed`
    and :meth:`poison_confirmed` wait for the owner's verdict. Awaiting a remote handle raises
    :class:`~velo_event.EventPoison` with the owner's reason, or with ``owner lost: …`` /
    ``owner unreachable: …`` when the owner dies, closes or cannot be reached.
    """

    def __init__(self, worker: Worker, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        # Per incarnation, a random index tag and a random first generation: a predecessor's
        # handle names no slot here (unless the 8-bit tags collide) and, even then, most
        # likely a generation never issued here. Either way it reads as stale.
        core = EventCore(
            worker.worker_id,
            local=False,
            first_generation=secrets.randbelow(1 << 30) + (1 << 20),
            index_tag=worker.incarnation % 255 + 1,
        )
        super().__init__(core)
        self._worker = worker
        self._lock = threading.Lock()  # guards _remote and _completed (waiters come from anywhere)
        self._remote: dict[EventHandle, dict[Hashable, WakeCallback]] = {}
        self._completed: OrderedDict[EventHandle, str | None] = OrderedDict()
        self._cache_size = cache_size
        # Owner side: what each subscriber waits on here, dropped when it completes or is lost.
        self._served: dict[int, set[EventHandle]] = {}
        # Subscribe/done items per peer, flushed as one message per loop iteration.
        self._outbox: dict[int, list[list[Any]]] = {}
        self._flush_scheduled = False
        # Labels of this worker's events, for inspection; pruned as their events complete.
        self._labels: dict[EventHandle, str] = {}
        self.counters = {"subscriptions_sent": 0, "updates_received": 0, "updates_sent": 0}
        for name, handler in (
            ("_ev.updates", self._on_updates),
            ("_ev.trigger", self._on_trigger),
            ("_ev.poison", self._on_poison),
            ("_ev.status", self._on_status),
            ("_ev.new", self._on_new),
            ("_ev.merge", self._on_merge),
        ):
            worker.register_internal_handler(name, handler)
        worker.on_peer_lost(self._on_peer_lost)

    # -- routing hooks of CoreEventManager ------------------------------------------------

    def _owner(self, handle: EventHandle) -> int | None:
        """``None`` for this worker's own handles, else the owner's worker id."""
        owner = handle >> 64
        if owner == self._core.system_id:
            return None
        if handle.is_local:
            raise ForeignHandleError(
                f"Handle {handle} is local to another process's LocalEventSystem; "
                "only distributed handles travel between workers"
            )
        return owner

    def _awaitable(self, handle: EventHandle) -> Outcome:
        if self._owner(handle) is None:
            return self._core.awaitable(handle)
        return self._known(handle)

    def _status(self, handle: EventHandle) -> Outcome:
        if self._owner(handle) is None:
            return self._core.status(handle)
        return self._known(handle)

    def _known(self, handle: EventHandle) -> Outcome:
        if not handle.generation:
            return None  # generation 0 is always complete
        with self._lock:
            return self._completed.get(handle, PENDING)

    def _check_inputs(self, handles: list[EventHandle]) -> None:
        for handle in handles:
            self._owner(handle)  # local-only handles of other processes are refused

    def _add_waiter(self, handle: EventHandle, key: Hashable, callback: WakeCallback) -> Outcome:
        owner = self._owner(handle)
        if owner is None:
            return self._core.add_waiter(handle, key, callback)
        if not handle.generation:
            return None
        with self._lock:
            outcome = self._completed.get(handle, PENDING)
            if outcome is not PENDING:
                return outcome
            waiters = self._remote.get(handle)
            first = waiters is None
            if waiters is None:
                self._remote[handle] = {key: callback}
            else:
                waiters[key] = callback
        if first:
            try:
                self._in_loop(self._subscribe, owner, handle)
            except BaseException:
                # No subscription went out: later waiters must not join one that never will.
                with self._lock:
                    self._remote.pop(handle, None)
                raise
        return PENDING

    def _remove_waiter(self, handle: EventHandle, key: Hashable) -> None:
        if self._owner(handle) is None:
            self._core.remove_waiter(handle, key)
            return
        with self._lock:
            waiters = self._remote.get(handle)
            if waiters is not None:
                waiters.pop(key, None)
        # The subscription stays: the owner drops it when the generation completes.

    # -- creation, with labels ---------------------------------------------------------------

    def new_event(self, label: str | None = None) -> Event:
        """A new pending event owned by this worker. ``label`` names it in ``velo-am inspect``
        and the graph views (at most 200 characters; kept while the event is pending)."""
        event = super().new_event()
        if label is not None:
            self._label(event.handle, label)
        return event

    def merge_events(
        self,
        handles: Iterable[EventHandle],
        *,
        fail_fast: bool = False,
        label: str | None = None,
    ) -> EventHandle:
        """A merge of any workers' handles, owned by this worker (see
        :meth:`~velo_event.EventManager.merge_events`); ``label`` as for :meth:`new_event`."""
        merged = super().merge_events(handles, fail_fast=fail_fast)
        if label is not None:
            self._label(merged, label)
        return merged

    def label_of(self, handle: EventHandle) -> str | None:
        """The label this worker gave one of its events, while the event is pending."""
        return self._labels.get(handle)

    def _label(self, handle: EventHandle, label: str) -> None:
        if not isinstance(label, str):
            raise TypeError(f"a label is a str, got {type(label).__name__}")
        with self._lock:
            if len(self._labels) >= 2 * max(self._core.pending_count(), 1024):
                self._prune_labels()
            self._labels[handle] = label[:MAX_LABEL_LENGTH]

    def _prune_labels(self) -> None:
        """Drop the labels of completed events (called with ``_lock`` held)."""
        for handle in list(self._labels):
            if self._core.status(handle) is not PENDING:
                del self._labels[handle]

    def labels(self) -> dict[EventHandle, str]:
        """The labels of this worker's pending events."""
        with self._lock:
            self._prune_labels()
            return dict(self._labels)

    def _on_new(self, payload: dict[str, Any], ctx: CallContext) -> bytes:
        return self.new_event(payload.get("label")).handle.to_bytes()

    def _on_merge(self, payload: dict[str, Any], ctx: CallContext) -> bytes:
        handles = [EventHandle.from_bytes(data) for data in payload["handles"]]
        merged = self.merge_events(
            handles, fail_fast=bool(payload.get("fail_fast")), label=payload.get("label")
        )
        return merged.to_bytes()

    async def new_event_on(
        self, owner: int, label: str | None = None, timeout: float | None = None
    ) -> EventHandle:
        """Have worker ``owner`` create (and own) a new event; returns its handle. For a
        process that will not outlive the event (a script, the CLI). Raises
        ``PeerUnreachable``, ``PeerLost``, ``CallTimeout`` when the owner cannot answer."""
        if owner == self._core.system_id:
            return self.new_event(label).handle
        data = await self._worker.call(owner, "_ev.new", {"label": label}, timeout)
        return EventHandle.from_bytes(data)

    async def merge_events_on(
        self,
        owner: int,
        handles: Iterable[EventHandle],
        *,
        fail_fast: bool = False,
        label: str | None = None,
        timeout: float | None = None,
    ) -> EventHandle:
        """Have worker ``owner`` create (and own) a merge of ``handles``; errors as
        :meth:`new_event_on`, plus the owner's ``EventError`` for an empty merge."""
        inputs = list(handles)
        if owner == self._core.system_id:
            return self.merge_events(inputs, fail_fast=fail_fast, label=label)
        payload = {
            "handles": [handle.to_bytes() for handle in inputs],
            "fail_fast": fail_fast,
            "label": label,
        }
        try:
            data = await self._worker.call(owner, "_ev.merge", payload, timeout)
        except RemoteError as error:
            raise _REMOTE_ERRORS.get(error.error_type, EventError)(error.message) from None
        return EventHandle.from_bytes(data)

    # -- remote completion -----------------------------------------------------------------

    def trigger(self, handle: EventHandle) -> None:
        """Trigger; a remote handle's trigger is forwarded without waiting (errors are logged:
        use :meth:`trigger_confirmed` to learn them)."""
        owner = self._owner(handle)
        if owner is None:
            self._core.trigger(handle)
        else:
            self._in_loop(self._forward, owner, "_ev.trigger", [handle.to_bytes()])

    def poison(self, handle: EventHandle, reason: str) -> None:
        """Poison; for a remote handle, forwarded without waiting (see :meth:`poison_confirmed`)."""
        if not isinstance(reason, str):
            raise TypeError(f"a poison reason is a str, got {type(reason).__name__}")
        owner = self._owner(handle)
        if owner is None:
            self._core.poison(handle, reason)
        else:
            self._in_loop(self._forward, owner, "_ev.poison", [handle.to_bytes(), reason])

    def poison_from_finalizer(self, handle: EventHandle, reason: str) -> None:
        """A dropped guard: this worker's events are poisoned in the core (deferred if its
        lock is busy), another worker's through its owner. Never raises, never blocks."""
        try:
            owner = self._owner(handle)
            if owner is None:
                self._core.poison_soon(handle, reason)
            else:
                loop = self._worker._loop
                if loop is not None and not loop.is_closed():
                    payload = [handle.to_bytes(), reason]
                    loop.call_soon_threadsafe(self._forward, owner, "_ev.poison", payload)
        except Exception:  # a finalizer must not raise
            logger.debug("could not poison dropped guard's event %s", handle, exc_info=True)

    async def trigger_confirmed(self, handle: EventHandle, timeout: float | None = None) -> None:
        """Trigger and wait for the owner's verdict: raises the owner's ``EventError``
        (already completed, unknown event), or ``PeerLost`` / ``PeerUnreachable`` /
        ``CallTimeout`` when the owner cannot answer."""
        await self._confirmed(handle, "_ev.trigger", [handle.to_bytes()], timeout)

    async def poison_confirmed(
        self, handle: EventHandle, reason: str, timeout: float | None = None
    ) -> None:
        """Poison and wait for the owner's verdict (errors as :meth:`trigger_confirmed`)."""
        await self._confirmed(handle, "_ev.poison", [handle.to_bytes(), reason], timeout)

    async def poll_remote(self, handle: EventHandle, timeout: float | None = None) -> EventStatus:
        """Ask the owner (``poll`` answers from what this worker knows)."""
        owner = self._owner(handle)
        if owner is None:
            return self.poll(handle)
        code, reason = await self._worker.call(owner, "_ev.status", handle.to_bytes(), timeout)
        if code != 0:
            self._resolve(handle, reason, cache=True)
        return _STATUS_CODES[code]

    async def _confirmed(
        self, handle: EventHandle, name: str, payload: list[Any], timeout: float | None
    ) -> None:
        owner = self._owner(handle)
        if owner is None:
            if name == "_ev.trigger":
                self._core.trigger(handle)
            else:
                self._core.poison(handle, payload[1])
            return
        try:
            await self._worker.call(owner, name, payload, timeout)
        except RemoteError as error:
            raise _REMOTE_ERRORS.get(error.error_type, EventError)(error.message) from None

    def _forward(self, owner: int, name: str, payload: list[Any]) -> None:
        try:
            self._worker.send_nowait(owner, name, payload)
        except AMError:
            self._worker._spawn_background(self._forward_routed(owner, name, payload))

    async def _forward_routed(self, owner: int, name: str, payload: list[Any]) -> None:
        try:
            await self._worker.send(owner, name, payload)
        except AMError as error:
            logger.warning(
                "could not forward %s to worker %#x: %s",
                name,
                owner,
                error,
                extra={"peer": f"{owner:#x}", "handle": str(EventHandle.from_bytes(payload[0]))},
            )

    # -- subscriber side -------------------------------------------------------------------

    def _post(self, peer_id: int, item: list[Any]) -> bool:
        """Queue an update item for a connected peer; one callback per loop iteration sends
        each peer's items as one message (half the messages under load). False if the peer
        is not connected now."""
        if not self._worker.is_connected(peer_id):
            return False
        items = self._outbox.get(peer_id)
        if items is None:
            self._outbox[peer_id] = [item]
        else:
            items.append(item)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._worker._loop.call_soon(self._flush)  # type: ignore[union-attr]
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        for peer_id, items in outbox.items():
            try:
                self._worker.send_nowait(peer_id, "_ev.updates", items)
            except AMError as error:
                logger.info(
                    "cannot send event updates to worker %#x: %s",
                    peer_id,
                    error,
                    extra={"peer": f"{peer_id:#x}"},
                )
                for item in items:
                    if item[0] == 0:  # nobody will answer these subscriptions
                        handle = EventHandle.from_bytes(item[1])
                        self._resolve(handle, f"owner unreachable: {error}", cache=False)

    def _on_updates(self, items: list[list[Any]], ctx: CallContext) -> None:
        for item in items:
            if item[0] == 0:
                self._on_subscribe(EventHandle.from_bytes(item[1]), ctx.sender)
            else:
                self._on_done(EventHandle.from_bytes(item[1]), item[2], ctx.sender)

    def _subscribe(self, owner: int, handle: EventHandle) -> None:
        if not self._post(owner, [0, handle.to_bytes()]):
            # Not connected yet: route (mesh, discovery) in the background.
            self._worker._spawn_background(self._subscribe_routed(owner, handle))
            return
        self.counters["subscriptions_sent"] += 1

    async def _subscribe_routed(self, owner: int, handle: EventHandle) -> None:
        try:
            await self._worker.send(owner, "_ev.updates", [[0, handle.to_bytes()]])
        except AMError as error:
            self._resolve(handle, f"owner unreachable: {error}", cache=False)
            return
        self.counters["subscriptions_sent"] += 1

    def _on_done(self, handle: EventHandle, reason: str | None, sender: int) -> None:
        if handle >> 64 != sender:
            return  # only the owner speaks for its events
        self.counters["updates_received"] += 1
        self._resolve(handle, reason, cache=True)

    def _resolve(self, handle: EventHandle, reason: str | None, *, cache: bool) -> None:
        with self._lock:
            waiters = self._remote.pop(handle, None)
            if cache:
                self._completed[handle] = reason
                self._completed.move_to_end(handle)
                while len(self._completed) > self._cache_size:
                    self._completed.popitem(last=False)
        if waiters:
            _wake(waiters, reason)

    def _on_peer_lost(self, worker_id: int, text: str) -> None:
        with self._lock:
            orphaned = [handle for handle in self._remote if handle >> 64 == worker_id]
        for handle in orphaned:
            self._resolve(handle, f"owner lost: {text}", cache=False)
        for handle in self._served.pop(worker_id, ()):
            self._core.remove_waiter(handle, (worker_id, handle))

    # -- owner side ------------------------------------------------------------------------

    def _on_subscribe(self, handle: EventHandle, subscriber: int) -> None:
        key = (subscriber, handle)
        try:
            outcome = self._core.add_waiter(handle, key, self._notify)
        except (UnknownEventError, InvalidGenerationError):
            # No slot or generation of this incarnation: only a predecessor minted it.
            outcome = self._core.stale_reason
        except EventError as error:
            outcome = f"owner refused the subscription: {error}"
        if outcome is PENDING:
            self._served.setdefault(subscriber, set()).add(handle)
        else:
            self._send_done(subscriber, handle, outcome)

    def _notify(self, key: Hashable, reason: str | None) -> None:
        subscriber: int
        handle: EventHandle
        subscriber, handle = key  # type: ignore[misc]
        self._in_loop(self._notify_in_loop, subscriber, handle, reason)

    def _notify_in_loop(self, subscriber: int, handle: EventHandle, reason: str | None) -> None:
        served = self._served.get(subscriber)
        if served is not None:
            served.discard(handle)
            if not served:
                del self._served[subscriber]
        self._send_done(subscriber, handle, reason)

    def _send_done(self, subscriber: int, handle: EventHandle, reason: Outcome) -> None:
        if self._post(subscriber, [1, handle.to_bytes(), reason]):
            self.counters["updates_sent"] += 1
        else:
            logger.info(
                "cannot tell worker %#x that %s completed: not connected",
                subscriber,
                handle,
                extra={"peer": f"{subscriber:#x}", "handle": str(handle)},
            )

    def _on_trigger(self, payload: list[Any], ctx: CallContext) -> None:
        handle = EventHandle.from_bytes(payload[0])
        with self._stale_as_invalid(handle):
            self._core.trigger(handle)

    def _on_poison(self, payload: list[Any], ctx: CallContext) -> None:
        handle = EventHandle.from_bytes(payload[0])
        with self._stale_as_invalid(handle):
            self._core.poison(handle, payload[1])

    @contextlib.contextmanager
    def _stale_as_invalid(self, handle: EventHandle) -> Iterator[None]:
        try:
            yield
        except UnknownEventError:
            raise InvalidGenerationError(f"{self._core.stale_reason}: {handle}") from None

    def _on_status(self, payload: bytes, ctx: CallContext) -> list[Any]:
        try:
            outcome = self._core.status(EventHandle.from_bytes(payload))
        except UnknownEventError:
            outcome = self._core.stale_reason
        if outcome is PENDING:
            return [0, None]
        return [1, None] if outcome is None else [2, outcome]

    # -- plumbing --------------------------------------------------------------------------

    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the worker's loop: at once on the loop's own thread (so updates
        keep their order), through the loop from any other thread."""
        loop = self._worker._loop
        if loop is None:
            raise AMError("the worker is not started")
        if asyncio.events._get_running_loop() is loop:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def close(self, reason: str) -> None:
        """The worker is closing: poison this worker's pending events (remote waiters learn it
        before the goodbye) and the local waiters of remote handles."""
        self._core.force_shutdown(reason)
        with self._lock:
            pending = list(self._remote)
        for handle in pending:
            self._resolve(handle, reason, cache=False)
        self._flush()  # the poisons go out now, before the goodbye

    def stats(self) -> dict[str, int]:
        with self._lock:
            remote = len(self._remote)
            cached = len(self._completed)
        served = sum(len(handles) for handles in self._served.values())
        return {
            **self.counters,
            "pending": self._core.pending_count(),
            "remote_awaited": remote,
            "cached": cached,
            "served": served,
        }
