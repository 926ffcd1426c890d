"""Distributed events: ``w.events``, an :class:`~velo_event.EventManager` for the whole mesh.

The worker's own events live in an :class:`~velo_event.lowlevel.EventCore` whose handles carry
the worker id; any other worker's distributed handle is awaited through its owner
(:mod:`velo_am._remote`: subscriptions, completions, the cache). Completing another worker's
handle, asking its owner, or having it create an event goes through runtime handlers
(:mod:`velo_am._event_handlers`, docs/protocol.md §12).

When an owner is lost (heartbeats), closes or cannot be reached, every local waiter on its
handles ends with ``OutcomeUnknown`` naming why, and nothing is recorded: only the owner
decides a handle's outcome, and a later await asks it again. A closing worker first poisons
its own pending events, so remote waiters learn it before the goodbye. A restarted worker
starts its slots at a random generation: handles of its predecessor read as unknown
(``OutcomeUnknown``, ``EventStatus.UNKNOWN``), never as a success or a poison.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any, Final

from velo_event import (
    AlreadyTriggeredError,
    Event,
    EventError,
    EventHandle,
    EventStatus,
    ForeignHandleError,
    InvalidGenerationError,
    PendingEvent,
    SystemShutdownError,
    UnknownEventError,
)
from velo_event.lowlevel import (
    MAX_PENDING_SHOWN,
    PENDING,
    THIS_WORKER,
    UNKNOWN,
    CoreEventManager,
    EventCore,
    Unanswered,
    WaitingOn,
)

from ._errors import AMError, RemoteError
from ._leases import Broken, LeaseTable, check_lease_seconds
from ._messenger import Messenger, read_status_reply
from ._waiting import Asker, ask_from_any_loop, ask_from_thread, ask_owners

if TYPE_CHECKING:  # (the worker builds the layer, from the build in use)
    from ._remote import RemoteEvents

__all__ = ["DistributedEvents", "event_core"]

logger = logging.getLogger(__name__)

#: Labels are for people reading `velo-am inspect`: bounded, like poison reasons.
MAX_LABEL_LENGTH: Final = 200
#: How long a timed-out wait asks other workers what their events wait on, at most.
ASK_OWNER_TIMEOUT: Final = 1.0
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


def event_core(worker_id: int, incarnation: int) -> EventCore:
    """The core of one incarnation of a worker. Per incarnation, a random index tag and a
    random first generation: a predecessor's handle names no slot here (unless the 8-bit tags
    collide) and, even then, most likely a generation never issued here. Either way it reads
    as stale."""
    return EventCore(
        worker_id,
        local=False,
        first_generation=secrets.randbelow(1 << 30) + (1 << 20),
        index_tag=incarnation % 255 + 1,
    )


class DistributedEvents(CoreEventManager):
    """``w.events``: every operation takes a handle of any worker of the mesh.

    Local handles go straight to this worker's core; remote ones are routed to their owner.
    ``trigger``/``poison`` of a remote handle are fire-and-forget; :meth:`trigger_confirmed`
    and :meth:`poison_confirmed` wait for the owner's verdict. Awaiting a remote handle raises
    :class:`~velo_event.EventPoison` with the owner's reason, or
    :class:`~velo_event.OutcomeUnknown` (``owner lost: …`` / ``owner unreachable: …``) when the
    owner dies, closes or cannot be reached before it answers: that is no outcome, the owner
    alone decides one, and a later await or :meth:`poll_remote` asks it again. A wait or await
    that times out raises :class:`~velo_event.EventTimeout` naming what the event still waits
    on, with labels and owners' liveness (see :meth:`waiting_on_remote`).
    """

    def __init__(self, core: EventCore, remote: RemoteEvents, messenger: Messenger) -> None:
        super().__init__(core, remote)
        self._remote = remote
        self._messenger = messenger
        # Labels of this worker's events, for inspection; pruned as their events complete.
        self._labels_lock = threading.Lock()
        self._labels: dict[EventHandle, str] = {}
        # Leases on this worker's events (used on the worker's loop only).
        self._leases = LeaseTable()

    def owner_of(self, handle: EventHandle) -> int | None:
        """``None`` for this worker's own handles, else the owner's worker id. Raises
        ``ForeignHandleError`` for another process's local-only handle, ``TypeError`` for
        another worker's handle passed as a plain int (use ``EventHandle.from_int(value)``)."""
        return self._remote.owner_of(handle)

    # -- creation, with labels -----------------------------------------------------------------

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
        with self._labels_lock:
            if len(self._labels) >= 2 * max(self._core.pending_count(), 1024):
                self._prune_labels()
            self._labels[handle] = label[:MAX_LABEL_LENGTH]

    def _prune_labels(self) -> None:
        """Drop the labels of completed events (called with the labels' lock held)."""
        for handle in list(self._labels):
            if self._core.status(handle) is not PENDING:
                del self._labels[handle]

    def labels(self) -> dict[EventHandle, str]:
        """The labels of this worker's pending events."""
        with self._labels_lock:
            self._prune_labels()
            return dict(self._labels)

    async def new_event_on(
        self,
        owner: int,
        label: str | None = None,
        timeout: float | None = None,
        *,
        lease: float | None = None,
    ) -> EventHandle:
        """Have worker ``owner`` create (and own) a new event; returns its handle. For a
        process that will not outlive the event (a script, the CLI).

        ``lease`` (seconds) makes this worker answer for the event: unless it completes, the
        owner poisons it with a reason naming the lease (``lease of worker 0x… on 'label'
        expired: not renewed within … s``) when ``lease`` seconds pass without a
        :meth:`renew_lease`; and, if this worker is a full member other than the owner (not
        an observer such as a ``velo-am`` command), as soon as the owner loses it or it
        closes (``… ended with its holder: worker 0x… at … lost: …``).

        Raises ``TypeError`` / ``ValueError`` for a bad label or lease (nothing is created),
        ``PeerUnreachable``, ``PeerLost``, ``CallTimeout`` when the owner cannot answer,
        ``AMError`` when the owner predates leases (the event it made is poisoned)."""
        if lease is not None:
            lease = check_lease_seconds(lease)
        if owner == self._core.system_id:
            return self.new_event_for(self._core.system_id, label, lease)
        if lease is None:
            data = await self._messenger.call(owner, "_ev.new", {"label": label}, timeout)
            return EventHandle.from_bytes(data)
        payload = {"label": label, "lease": lease}
        data = await self._messenger.call(owner, "_ev.new", payload, timeout)
        if isinstance(data, bytes):  # a bare handle: an owner that predates leases ignored it
            handle = EventHandle.from_bytes(data)
            self.poison(handle, "its creator asked for a lease, which its owner cannot keep")
            raise AMError(f"worker {owner:#x} predates leases: it cannot keep one on {handle}")
        return EventHandle.from_bytes(data[0])

    def new_event_for(self, creator: int, label: str | None, lease: float | None) -> EventHandle:
        """A new event of this worker made at worker ``creator``'s request (``_ev.new``),
        leased to it for ``lease`` seconds unless ``None`` (call on the worker's loop)."""
        if label is not None and not isinstance(label, str):
            raise TypeError(f"a label is a str, got {type(label).__name__}")
        if lease is not None:
            lease = check_lease_seconds(lease)
        handle = self.new_event(label).handle
        if lease is not None:
            # Only a member's loss is seen, and means the creator is gone: an observer (the
            # CLI) leaves right after asking, and this worker outlives its own events.
            member = creator != self._core.system_id and not self._messenger.is_observer(creator)
            label = None if label is None else label[:MAX_LABEL_LENGTH]
            now = time.monotonic()
            self._leases.grant(handle, creator, lease, now, watch_holder=member, label=label)
        return handle

    async def renew_lease(
        self, handle: EventHandle, seconds: float | None = None, timeout: float | None = None
    ) -> float:
        """Renew the lease on ``handle`` (any worker may, not only its holder): it now ends
        ``seconds`` from now (default: the length it was granted for) unless renewed again.
        Returns that length.

        Raises ``InvalidGenerationError`` if the event already completed (its lease ended
        with it; the message says how, e.g. poisoned because the lease expired),
        ``EventError`` if the event has no lease, ``TypeError`` / ``ValueError`` for bad
        ``seconds``, ``PeerUnreachable`` / ``PeerLost`` / ``CallTimeout`` when the owner
        cannot answer."""
        if seconds is not None:
            seconds = check_lease_seconds(seconds)
        owner = self._remote.owner_of(handle)
        if owner is None:
            return self.renew_own_lease(handle, seconds)
        payload = [handle.to_bytes(), seconds]
        try:
            term = await self._messenger.call(owner, "_ev.renew", payload, timeout)
        except RemoteError as error:
            raise _REMOTE_ERRORS.get(error.error_type, EventError)(error.message) from None
        return float(term)

    def renew_own_lease(self, handle: EventHandle, seconds: float | None) -> float:
        """Renew the lease on one of this worker's events (see :meth:`renew_lease`; call on
        the worker's loop)."""
        outcome = self._core.status(handle)
        if isinstance(outcome, Unanswered):  # a predecessor's handle: no lease of ours
            raise InvalidGenerationError(f"{outcome.reason}: {handle}")
        if outcome is not PENDING:
            self._leases.end(handle)
            how = "ready" if outcome is None else f"poisoned: {outcome}"
            raise InvalidGenerationError(f"{handle} already completed ({how}); no lease to renew")
        try:
            return self._leases.renew(handle, time.monotonic(), seconds).term
        except KeyError:
            raise EventError(f"{handle} has no lease: it was created without one") from None

    # -- leases kept --------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Time passes (``now``: ``time.monotonic()``): leases not renewed in time break."""
        self._break(self._leases.due(now, self._is_pending))

    def holder_lost(self, worker_id: int, why: str) -> None:
        """Worker ``worker_id`` was lost, closed or restarted: the leases it holds break."""
        self._break(self._leases.holder_lost(worker_id, why))

    def lease_holders(self) -> set[int]:
        """The workers whose loss would break a lease here: this worker watches them."""
        return self._leases.holders()

    def _is_pending(self, handle: EventHandle) -> bool:
        return self._core.status(handle) is PENDING

    def _break(self, broken: list[Broken]) -> None:
        for lease in broken:
            if not self._is_pending(lease.handle):
                continue  # completed meanwhile: the lease ended with it
            logger.warning("%s", lease.reason, extra={"handle": str(lease.handle)})
            with contextlib.suppress(AlreadyTriggeredError):  # triggered from another thread
                self._core.poison(lease.handle, lease.reason)

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
            data = await self._messenger.call(owner, "_ev.merge", payload, timeout)
        except RemoteError as error:
            raise _REMOTE_ERRORS.get(error.error_type, EventError)(error.message) from None
        return EventHandle.from_bytes(data)

    # -- remote completion ---------------------------------------------------------------------

    # ``trigger`` and ``poison`` (the core manager's) complete this worker's events in the
    # core; another worker's come here, forwarded without waiting (errors are logged: use
    # :meth:`trigger_confirmed` and :meth:`poison_confirmed` to learn them). Only a handle the
    # core refused as another system's comes here, so it has an owner (or ``owner_of`` says
    # why not); a poison's reason the core has checked already.

    def _trigger_elsewhere(self, handle: EventHandle) -> None:
        owner = self._remote.owner_of(handle)
        self._remote.in_loop(self._forward, owner, "_ev.trigger", [handle.to_bytes()])

    def _poison_elsewhere(self, handle: EventHandle, reason: str) -> None:
        owner = self._remote.owner_of(handle)
        self._remote.in_loop(self._forward, owner, "_ev.poison", [handle.to_bytes(), reason])

    def poison_from_finalizer(self, handle: EventHandle, reason: str) -> None:
        """A dropped guard: this worker's events are poisoned in the core (deferred if its
        lock is busy), another worker's through its owner. Never raises, never blocks."""
        try:
            owner = self._remote.owner_of(handle)
            if owner is None:
                self._core.poison_soon(handle, reason)
            else:
                loop = self._messenger.loop()
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
        """Ask the owner (``poll`` answers from what this worker knows). Raises ``PeerLost`` /
        ``PeerUnreachable`` / ``CallTimeout`` when the owner cannot answer, ``ProtocolError``
        when its answer is not a status."""
        return (await self.status_remote(handle, timeout))[0]

    async def status_remote(
        self, handle: EventHandle, timeout: float | None = None
    ) -> tuple[EventStatus, str | None]:
        """:meth:`poll_remote` with the reason: the poison's, or why the owner cannot tell
        (``UNKNOWN``: a handle its earlier incarnation minted; nothing is recorded then).
        Raises as :meth:`poll_remote`, and ``ProtocolError`` for an answer that is not a
        status (nothing is remembered then)."""
        owner = self._remote.owner_of(handle)
        if owner is None:
            outcome = self._core.status(handle)
            if outcome is PENDING or outcome is None:
                return (EventStatus.PENDING if outcome is PENDING else EventStatus.READY), None
            if isinstance(outcome, Unanswered):
                return EventStatus.UNKNOWN, outcome.reason
            return EventStatus.POISONED, str(outcome)
        reply = await self._messenger.call(owner, "_ev.status", handle.to_bytes(), timeout)
        status, reason = read_status_reply(owner, reply)
        if status in (EventStatus.READY, EventStatus.POISONED):  # verdicts, remembered
            self._remote.resolve(handle, reason)
        return status, reason

    async def _confirmed(
        self, handle: EventHandle, name: str, payload: list[Any], timeout: float | None
    ) -> None:
        owner = self._remote.owner_of(handle)
        if owner is None:
            if name == "_ev.trigger":
                self._core.trigger(handle)
            else:
                self._core.poison(handle, payload[1])
            return
        try:
            await self._messenger.call(owner, name, payload, timeout)
        except RemoteError as error:
            raise _REMOTE_ERRORS.get(error.error_type, EventError)(error.message) from None

    def _forward(self, owner: int, name: str, payload: list[Any]) -> None:
        try:
            self._messenger.send_now(owner, name, payload)
        except AMError:  # not connected now: route (mesh, discovery) in the background
            self._messenger.spawn(self._forward_routed(owner, name, payload))

    async def _forward_routed(self, owner: int, name: str, payload: list[Any]) -> None:
        try:
            await self._messenger.route(owner)
            self._messenger.send_now(owner, name, payload)
        except AMError as error:
            logger.warning(
                "could not forward %s to worker %#x: %s",
                name,
                owner,
                error,
                extra={"peer": f"{owner:#x}", "handle": str(EventHandle.from_bytes(payload[0]))},
            )

    # -- what a pending event waits on -----------------------------------------------------------

    def describe_pending(self, handle: EventHandle) -> PendingEvent:
        """One pending event as this worker knows it: its label (if this worker gave it one),
        its owner and the owner's liveness here (``"this worker"``, a member's state, or
        ``"unknown"``)."""
        return PendingEvent(
            handle, handle.worker_id, self.label_of(handle), self._liveness(handle.worker_id)
        )

    def _liveness(self, worker_id: int) -> str:
        if worker_id == self._core.system_id:
            return THIS_WORKER
        state = self._messenger.peer_state(worker_id)
        if state is None:
            return "alive" if self._messenger.is_connected(worker_id) else UNKNOWN
        return state

    async def waiting_on_remote(
        self,
        handle: EventHandle,
        limit: int = MAX_PENDING_SHOWN,
        timeout: float = ASK_OWNER_TIMEOUT,
    ) -> WaitingOn:
        """:meth:`waiting_on`, seen across the mesh: each event it names that another
        connected worker owns is asked of that owner, who sees into its merges and knows its
        label (all at once, a few rounds at most, everything within ``timeout``). Events whose
        owner this worker does not know keep the answering owner's view (``seen_by``); what
        is not answered in time stays as this worker sees it. Call on the worker's loop;
        never raises for an owner's failure."""
        shown, more = self.waiting_on(handle, limit)
        if not shown:
            return shown, more
        asker = Asker(
            self._core.system_id,
            self.waiting_on,
            self._liveness,
            self.label_of,
            self._messenger.is_connected,
            self._messenger.call,
        )
        return await ask_owners(asker, shown, more, limit, timeout)

    def _pending_for_timeout(self, handle: EventHandle) -> WaitingOn:
        """A timed-out thread wait: other workers' events are asked of their owners, on the
        worker's loop, briefly (see :meth:`waiting_on_remote`)."""
        return ask_from_thread(
            self._messenger.loop(),
            lambda: self.waiting_on_remote(handle),
            lambda: self.waiting_on(handle),
            ASK_OWNER_TIMEOUT + 1.0,
        )

    async def _pending_for_timeout_async(self, handle: EventHandle) -> WaitingOn:
        """A timed-out await: as for :meth:`_pending_for_timeout`, on whichever loop awaits."""
        return await ask_from_any_loop(
            self._messenger.loop(),
            lambda: self.waiting_on_remote(handle),
            lambda: self.waiting_on(handle),
            ASK_OWNER_TIMEOUT + 1.0,
        )

    # -- lifecycle and inspection -----------------------------------------------------------------

    def close(self, reason: str) -> None:
        """The worker is closing: poison this worker's pending events (remote waiters learn it
        before the goodbye) and end the local waits on remote handles without an outcome."""
        self._core.force_shutdown(reason)
        self.abandon_remote(reason)
        self._remote.flush()  # the poisons go out now, before the goodbye

    def abandon_remote(self, reason: str) -> None:
        """End every local wait on another worker's handle without an outcome, saying
        ``reason`` (``OutcomeUnknown``: the worker is gone; safe from any thread, also once
        its loop has ended)."""
        self._remote.abandon(reason)

    def pending_waiters(self) -> list[tuple[EventHandle, list[Hashable]]]:
        """This worker's pending events, each with the keys of its waiters."""
        return self._core.pending_waiters()

    def remote_waiters(self) -> list[tuple[EventHandle, list[Hashable]]]:
        """Other workers' handles awaited here, each with the keys of its local waiters."""
        return self._remote.remote_waiters()

    def served(self) -> dict[int, list[EventHandle]]:
        """Each subscribed worker, with this worker's handles it awaits."""
        return self._remote.served()

    def stats(self) -> dict[str, int]:
        """Subscriptions and updates sent and received, pending events, remote handles
        awaited, cache size, subscriptions served, leases kept."""
        counts = self._remote.counts()
        return {**counts, "pending": self._core.pending_count(), "leases": len(self._leases)}
