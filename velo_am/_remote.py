"""Subscriptions: how a worker awaits other workers' events, and serves its own to them.

:class:`RemoteEvents` is the :class:`~velo_event.lowlevel.EventSource` of ``w.events``: this
worker's handles go to its :class:`~velo_event.lowlevel.EventCore`; any other distributed
handle is awaited through its owner with :class:`~velo_am._protocol.EventUpdates` messages:

* **Subscriber side.** The first local waiter of a remote handle sends one *subscribe* item
  to the owner, however many waiters follow. The owner's *done* item (its triggered or
  poisoned outcome, with the original reason) resolves every waiter and enters a bounded
  cache, so later awaits need no traffic. When the owner is lost or closes, or cannot be
  reached, the waiters are woken without an outcome (:class:`~velo_event.lowlevel.Unanswered`:
  awaits raise ``OutcomeUnknown`` naming the owner) and nothing is cached: a subscriber never
  invents an outcome for another worker's handle, so whoever asks later (an await, a poll)
  gets the owner's one verdict, the same everywhere. An owner that cannot tell (a handle of
  its earlier incarnation) says so in an *unknown* item: the waiters get ``OutcomeUnknown``
  and, again, nothing is cached. A subscription still pending
  after six heartbeat timeouts (30 s by default) is sent again, then at doubling intervals
  (up to 10 minutes): owners answer a repeat at once if the generation completed, so a done
  item lost with a link that failed costs a delay, never a hang; and a slow mesh is not
  flooded with repeats.
* **Owner side.** A subscription registers a waiter on the core; the generation's completion
  (at once if it is complete already) is sent back as a done item. A generation not issued
  yet, but which this incarnation may still issue (within ``LOOKAHEAD`` of its slot's last),
  is held until it is issued and completes; any other handle this incarnation never issued
  is a predecessor's, answered with an unknown item (its outcome died with it). A subscriber
  this worker lost keeps its subscriptions, and the done items owed to it wait, until it is
  heard from again (a loss seen from one side only: the subscriber still waits) or
  forgotten; a goodbye drops them at once.

Items for one peer queued during one loop iteration travel as one message (but a subscription
right after a READY completion to the same peer leaves with it at once). Waiters may be added
from any thread; everything that sends runs on the worker's loop.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from threading import get_ident
from typing import Any, Final, cast

from velo_event import (
    EventError,
    EventHandle,
    ForeignHandleError,
    InvalidGenerationError,
    UnknownEventError,
)
from velo_event.lowlevel import (
    PENDING,
    Answer,
    EventCore,
    Unanswered,
    Wake,
    WakeCallback,
    running_loop,
    wake_waiters,
)

from ._errors import AMError
from ._messages import EventDone, EventUpdates
from ._messenger import Messenger, Subscription

__all__ = ["DEFAULT_CACHE_SIZE", "RemoteEvents"]

logger = logging.getLogger(__name__)

_new_tuple = tuple.__new__

#: Completed remote generations remembered, so awaiting them again costs no traffic.
DEFAULT_CACHE_SIZE: Final = 10_000
#: The longest wait between two repeats of one pending subscription, in seconds.
_MAX_RESUBSCRIBE_INTERVAL: Final = 600.0
#: Bits of a handle (``EventHandle``'s layout), read here without its properties (an
#: interpreted call each, several a hop): the local flag (``is_local``) and the generation.
#: velo_event does not export its layout: tests/test_events_hop.py ties these to it.
_LOCAL_BIT: Final = 1 << 63
_GENERATION_BITS: Final = (1 << 32) - 1


def _sendable(reason: str) -> str:
    """A poison reason UTF-8 can carry (lone surrogates escaped)."""
    return reason.encode("utf-8", "backslashreplace").decode("utf-8")


class RemoteEvents:
    """Routes each handle to the core (this worker's) or to its owner (any other's)."""

    def __init__(
        self,
        core: EventCore,
        messenger: Messenger,
        counters: dict[str, int],
        liveness_timeout: float,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        """``liveness_timeout``: the worker's heartbeat timeout; a subscription pending for
        six times that long is sent again."""
        self._core = core
        self._system_id = core.system_id
        self._resubscribe_after = 6 * liveness_timeout
        # Subscriptions to send again: (when, handle, interval); stale entries are skipped.
        self._repeats: list[tuple[float, EventHandle, float]] = []
        self._messenger = messenger
        self._counters = counters
        self._cache_size = cache_size
        self._lock = threading.Lock()  # guards _remote and _completed (waiters come from anywhere)
        self._remote: dict[EventHandle, dict[Hashable, WakeCallback]] = {}
        self._completed: dict[EventHandle, str | None] = {}
        # The cached handles, oldest first: a dict and a deque cost less to insert into and
        # evict from than an OrderedDict, once a hop (an entry leaves only by eviction).
        self._completion_order: deque[EventHandle] = deque()
        # Owner side: what each subscriber waits on here, dropped when it completes, or when
        # the subscriber closes or is forgotten.
        self._served: dict[int, set[EventHandle]] = {}
        # Lost subscribers (not yet forgotten), with the done items owed to each.
        self._owed: dict[int, list[EventDone]] = {}
        # Subscribe and done items per peer, flushed as one message per loop iteration.
        self._outbox: dict[int, tuple[list[EventHandle], list[EventDone]]] = {}
        self._scheduled_flush: asyncio.Handle | None = None
        # The core's wake callback for subscriptions, bound once (not once per subscription).
        self._notify_callback: WakeCallback = self._notify
        # The loop, and the thread once seen running it: a call there while it runs needs no
        # asyncio.get_running_loop() (a getpid() system call on CPython 3.11), twice a hop.
        self._home: tuple[asyncio.AbstractEventLoop | None, int] = (None, 0)

    # -- routing (the EventSource protocol) ---------------------------------------------------

    def owner_of(self, handle: EventHandle) -> int | None:
        """``None`` for this worker's own handles, else the owner's worker id;
        ``ForeignHandleError`` for another process's local-only handle, ``TypeError`` for
        another worker's handle that is no ``EventHandle`` (a plain int: its bits are read as
        an ``EventHandle``'s, and the owner's refusal would come back as OutcomeUnknown)."""
        owner = handle >> 64
        if owner == self._system_id:
            return None
        if not isinstance(handle, EventHandle):  # (its bits are read as an EventHandle's)
            raise TypeError(
                f"expected an EventHandle, got {type(handle).__name__} "
                "(for a handle's int value, use EventHandle.from_int(value))"
            )
        if handle & _LOCAL_BIT:
            raise ForeignHandleError(
                f"Handle {handle} is local to another process's LocalEventSystem; "
                "only distributed handles travel between workers"
            )
        return owner

    def awaitable(self, handle: EventHandle) -> Answer:
        if self.owner_of(handle) is None:
            return self._core.awaitable(handle)
        return self._known(handle)

    def status(self, handle: EventHandle) -> Answer:
        if self.owner_of(handle) is None:
            return self._core.status(handle)
        return self._known(handle)

    def _known(self, handle: EventHandle) -> Answer:
        if not handle & _GENERATION_BITS:
            return None  # generation 0 is always complete
        with self._lock:
            return self._completed.get(handle, PENDING)

    def check_inputs(self, handles: Iterable[EventHandle]) -> None:
        for handle in handles:
            self.owner_of(handle)  # local-only handles of other processes are refused

    def add_waiter(self, handle: EventHandle, key: Hashable, callback: WakeCallback) -> Answer:
        owner = self.owner_of(handle)
        if owner is None:
            return self._core.add_waiter(handle, key, callback)
        if not handle & _GENERATION_BITS:
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
                loop = self._elsewhere()
                if loop is None:
                    self._subscribe(owner, handle)
                else:
                    loop.call_soon_threadsafe(self._subscribe, owner, handle)
            except BaseException:
                # No subscription went out: later waiters must not join one that never will.
                with self._lock:
                    self._remote.pop(handle, None)
                raise
        return PENDING

    def remove_waiter(self, handle: EventHandle, key: Hashable) -> None:
        if self.owner_of(handle) is None:
            self._core.remove_waiter(handle, key)
            return
        with self._lock:
            waiters = self._remote.get(handle)
            if waiters is not None:
                waiters.pop(key, None)
        # The subscription stays: the owner drops it when the generation completes.

    def in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the worker's loop: at once on the loop's own thread (so
        updates keep their order), through the loop from any other thread."""
        loop = self._elsewhere()
        if loop is None:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def _elsewhere(self) -> asyncio.AbstractEventLoop | None:
        """``None`` on the worker's loop, running on this thread (work runs at once); else the
        loop to hand work to (``AMError`` before the worker starts). The hops call this and
        the method they mean directly: no bound method and argument tuple per hop."""
        home, thread = self._home
        # A worker's loop, once set, is its loop for life, run by one thread for the worker's
        # life (the thread it was seen on): known, it is not asked for again.
        if home is not None and get_ident() == thread and home.is_running():
            return None
        loop = self._messenger.loop() if home is None else home
        if loop is None:
            raise AMError("the worker is not started")
        if running_loop() is loop:
            self._home = (loop, get_ident())
            return None
        return loop

    # -- the outbox ---------------------------------------------------------------------------

    def _post(self, peer_id: int, handle: EventHandle, done: EventDone | None = None) -> bool:
        """Queue a subscribe item (``done`` None) or a done item for a connected peer; one
        callback per loop iteration sends each peer's items as one message (a subscription
        right after a completion to the peer goes with it at once, see below). False if the
        peer is not connected now."""
        items = self._outbox.get(peer_id)
        if items is None:  # the first item for this peer in this iteration
            if not self._messenger.is_connected(peer_id):
                return False
            items = self._outbox[peer_id] = ([], [])
        if done is None:
            items[0].append(handle)
            subscribe, completed = items
            if len(subscribe) == 1 and len(completed) == 1 and completed[0].reason is None:
                # A subscription after a completion to the same peer: a task that triggered
                # and now awaits (the ping-pong a user writes), about to suspend. Both go now,
                # in one message, instead of a loop iteration later: the peer's answer waits
                # for them. Only these two small items, so they go whole or not at all (a
                # batch split to fit max_message_size could go in part, and again in the
                # flush). They stay in order; if they cannot go, the flush sends them (and
                # reports it: not inside this subscribe); other peers' items wait for it.
                try:  # (not contextlib.suppress: its object and calls cost a third of this)
                    self._messenger.post(peer_id, subscribe, completed)
                except AMError:
                    pass
                else:
                    del self._outbox[peer_id]
                    scheduled = self._scheduled_flush
                    if scheduled is not None and not self._outbox:
                        # Nothing left to flush: the loop skips the callback (a cancelled
                        # handle is not run), once per hop of the ping-pong.
                        scheduled.cancel()
                        self._scheduled_flush = None
                    return True
        else:
            items[1].append(done)
        if self._scheduled_flush is None:
            loop = self._home[0] or self._messenger.loop()  # (the worker's, once seen)
            assert loop is not None
            self._scheduled_flush = loop.call_soon(self.flush)
        return True

    def flush(self) -> None:
        """Send every queued item now (a flush still scheduled is cancelled: nothing left)."""
        scheduled = self._scheduled_flush
        if scheduled is not None:
            scheduled.cancel()  # (a no-op when the loop runs it: it is this call)
            self._scheduled_flush = None
        outbox, self._outbox = self._outbox, {}
        for peer_id, (subscribe, done) in outbox.items():
            try:
                self._messenger.post(peer_id, subscribe, done)
            except AMError as error:
                logger.info(
                    "cannot send event updates to worker %#x: %s",
                    peer_id,
                    error,
                    extra={"peer": f"{peer_id:#x}"},
                )
                for handle in subscribe:  # nobody will answer these subscriptions
                    self.resolve(handle, Unanswered(f"owner unreachable: {error}"))

    # -- subscriber side ------------------------------------------------------------------------

    def _subscribe(self, owner: int, handle: EventHandle) -> None:
        if self._post(owner, handle):  # first: it may leave at once, the rest can wait
            self._counters["events_subscriptions_sent"] += 1
        else:  # not connected yet: route (mesh, discovery) in the background
            self._messenger.spawn(self._subscribe_routed(owner, handle))
        repeats, first = self._repeats, self._resubscribe_after
        if len(repeats) > 2 * len(self._remote) + 1024:
            # Most were answered long before their repeat was due: keep the pending ones.
            with self._lock:
                repeats[:] = [entry for entry in repeats if entry[1] in self._remote]
            heapq.heapify(repeats)
        heapq.heappush(repeats, (time.monotonic() + first, handle, first))

    async def _subscribe_routed(self, owner: int, handle: EventHandle) -> None:
        try:
            await self._messenger.route(owner)
            self._messenger.post(owner, (handle,), ())
        except AMError as error:
            self.resolve(handle, Unanswered(f"owner unreachable: {error}"))
            return
        self._counters["events_subscriptions_sent"] += 1

    def tick(self, now: float) -> None:
        """Send again the subscriptions still pending since their time came (``now``:
        ``time.monotonic()``, as for the rest of the worker's clock)."""
        repeats = self._repeats
        while repeats and repeats[0][0] <= now:
            _, handle, interval = heapq.heappop(repeats)
            with self._lock:
                pending = handle in self._remote
            if not pending:
                continue
            interval = min(interval * 2, max(_MAX_RESUBSCRIBE_INTERVAL, interval))
            heapq.heappush(repeats, (now + interval, handle, interval))
            # A lost owner ends its waits (OutcomeUnknown); one not connected now is left to that.
            if self._post(handle >> 64, handle):
                self._counters["events_subscriptions_sent"] += 1

    def _on_done(self, handle: EventHandle, reason: Wake, sender: int) -> None:
        if handle >> 64 != sender:
            return  # only the owner speaks for its events
        self._counters["events_updates_received"] += 1
        self.resolve(handle, reason)

    def resolve(self, handle: EventHandle, outcome: Wake) -> None:
        """Wake every local waiter of a remote handle: with the owner's verdict (``None`` or
        its poison reason), which is remembered; or with :class:`Unanswered` (the owner lost
        or unreachable, this worker closing), which is not: a later await asks again. A
        verdict already remembered stays: the owner's successor with a colliding tag may give
        its own, but one observer gives a handle one answer."""
        completed = self._completed
        with self._lock:
            waiters = self._remote.pop(handle, None)
            if handle in completed:
                outcome = completed[handle]
            elif not isinstance(outcome, Unanswered):
                completed[handle] = outcome
                order = self._completion_order
                order.append(handle)
                if len(order) > self._cache_size:
                    del completed[order.popleft()]  # one in, the oldest out
        if waiters:
            wake_waiters(waiters, outcome)

    def abandon(self, reason: str) -> None:
        """Wake every local waiter of a remote handle without an outcome, saying ``reason``
        (this worker closes; safe from any thread, also once its loop is gone)."""
        with self._lock:
            pending = list(self._remote)
        for handle in pending:
            self.resolve(handle, Unanswered(reason))

    def on_peer_lost(self, worker_id: int, text: str, *, closed: bool) -> None:
        """Wake the waiters of the lost owner's handles without an outcome (``owner lost:
        …``). What it subscribed to here is dropped if it ``closed`` (said goodbye), else kept
        until it is back or forgotten: a loss may be seen from this side only, and the
        subscriber still waits."""
        with self._lock:
            orphaned = [handle for handle in self._remote if handle >> 64 == worker_id]
        for handle in orphaned:
            self.resolve(handle, Unanswered(f"owner lost: {text}"))
        if closed:
            self.on_peer_forgotten(worker_id)
        else:
            self._owed.setdefault(worker_id, [])

    def on_peer_joined(self, worker_id: int) -> None:
        """``worker_id`` is a live member (again): send the done items owed to it."""
        owed = self._owed.pop(worker_id, None)
        for done in owed or ():
            if self._post(worker_id, done.handle, done):
                self._counters["events_updates_sent"] += 1

    def on_peer_forgotten(self, worker_id: int) -> None:
        """``worker_id`` is gone for good: drop its subscriptions and what was owed to it."""
        self._owed.pop(worker_id, None)
        for handle in self._served.pop(worker_id, ()):
            self._core.remove_waiter(handle, _new_tuple(Subscription, (worker_id, handle)))

    # -- owner side -----------------------------------------------------------------------------

    def on_updates(self, sender: int, msg: EventUpdates) -> None:
        """An EventUpdates message from connected peer ``sender``."""
        for handle in msg.subscribe:
            self._on_subscribe(handle, sender)
        for handle, reason, unknown in msg.done:
            # An owner that cannot tell (its predecessor's handle): no verdict, nothing cached.
            # The decoder refused an unknown item without a str reason.
            self._on_done(handle, Unanswered(cast(str, reason)) if unknown else reason, sender)

    def _on_subscribe(self, handle: EventHandle, subscriber: int) -> None:
        key = _new_tuple(Subscription, (subscriber, handle))  # Subscription(...), at C speed
        try:
            # Early: a generation this incarnation may still issue waits until it does.
            outcome = self._core.add_early_waiter(handle, key, self._notify_callback)
        except (UnknownEventError, InvalidGenerationError):
            # A slot or generation this incarnation never issued, nor will: a predecessor's.
            outcome = self._core.stale
        except EventError as error:
            outcome = f"owner refused the subscription: {error}"
        if outcome is PENDING:
            served = self._served.get(subscriber)
            if served is None:
                self._served[subscriber] = {handle}
            else:
                served.add(handle)
        else:
            self._send_done(subscriber, handle, outcome)  # type: ignore[arg-type]

    def _notify(self, key: Hashable, reason: Wake) -> None:
        assert isinstance(key, Subscription)
        assert not isinstance(reason, Unanswered)  # the core completes its own: verdicts
        loop = self._elsewhere()
        if loop is None:
            self._notify_in_loop(key.subscriber, key.handle, reason)
        else:
            loop.call_soon_threadsafe(self._notify_in_loop, key.subscriber, key.handle, reason)

    def _notify_in_loop(self, subscriber: int, handle: EventHandle, reason: str | None) -> None:
        served = self._served.get(subscriber)
        if served is not None:
            served.discard(handle)
            if not served:
                del self._served[subscriber]
        self._send_done(subscriber, handle, reason)

    def _send_done(self, subscriber: int, handle: EventHandle, answer: Wake) -> None:
        unknown = isinstance(answer, Unanswered)  # the owner cannot tell: said, not a verdict
        reason = answer.reason if isinstance(answer, Unanswered) else answer
        if reason is not None and not reason.isascii():
            reason = _sendable(reason)
        done = _new_tuple(EventDone, (handle, reason, unknown))
        if self._post(subscriber, handle, done):
            self._counters["events_updates_sent"] += 1
        elif subscriber in self._owed:
            self._owed[subscriber].append(done)  # lost for now: sent if it comes back
        else:
            logger.info(
                "cannot tell worker %#x that %s completed: not connected",
                subscriber,
                handle,
                extra={"peer": f"{subscriber:#x}", "handle": str(handle)},
            )

    # -- inspection -----------------------------------------------------------------------------

    def interest(self) -> set[int]:
        """The workers this one has event business with: owners of the handles awaited here,
        and subscribers of this worker's events (both are watched while it lasts)."""
        with self._lock:
            owners = {handle >> 64 for handle in self._remote}
        return owners | set(self._served)

    def remote_waiters(self) -> list[tuple[EventHandle, list[Hashable]]]:
        """Each remote handle awaited here, with the keys of its local waiters."""
        with self._lock:
            return [(handle, list(keys)) for handle, keys in self._remote.items()]

    def served(self) -> dict[int, list[EventHandle]]:
        """Each subscriber, with this worker's handles it awaits (call on the loop)."""
        return {subscriber: sorted(handles) for subscriber, handles in self._served.items()}

    def counts(self) -> dict[str, int]:
        """This layer's counters (subscriptions and updates sent, updates received) and the
        sizes of its tables (``remote_awaited``, ``cached``, ``served``)."""
        counters = self._counters
        with self._lock:
            remote, cached = len(self._remote), len(self._completed)
        return {
            "subscriptions_sent": counters["events_subscriptions_sent"],
            "updates_received": counters["events_updates_received"],
            "updates_sent": counters["events_updates_sent"],
            "remote_awaited": remote,
            "cached": cached,
            "served": sum(len(handles) for handles in self._served.values()),
        }
