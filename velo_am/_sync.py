"""`SyncWorker`: a :class:`~velo_am.Worker` for plain scripts and threads, with blocking methods.

A SyncWorker owns a daemon thread running a private asyncio event loop. The :class:`Worker` is
built, started and closed on that thread (ZeroMQ sockets live on the loop that uses them), and
each blocking method hands its coroutine to the loop and waits for the outcome, so any number
of threads may share one SyncWorker::

    with SyncWorker(peers=["tcp://10.0.0.5:5555"]) as w:
        peer_id = next(iter(w.peers))
        print(w.call(peer_id, "add", [2, 3]))
        event = w.events.new_event()  # any worker of the mesh can trigger it by its handle
        w.events.wait(event.handle, timeout=30.0)

Handlers and peer-lost callbacks run on the worker's loop thread, as with :class:`Worker`.
There the blocking methods raise ``RuntimeError`` (the loop would wait for itself): an
``async def`` handler awaits the async API of :attr:`SyncWorker.worker` instead.

A SyncWorker left open is closed gracefully when the interpreter exits (its peers see it
close, not get lost), and when it is garbage-collected (with a ``ResourceWarning``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
import weakref
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import Any, ParamSpec, TypeVar

from velo_event import (
    Event,
    EventAwaiter,
    EventError,
    EventHandle,
    EventManager,
    EventPoison,
    EventStatus,
)
from velo_event._core import PENDING

from ._errors import AMError, WorkerClosed
from ._events import DistributedEvents
from ._handlers import Handler, HandlerStats
from ._peers import PeerStatus
from ._sync_runtime import CLOSE_MARGIN, BlockedThread, Runtime, track
from ._worker import PeerLostCallback, Worker

__all__ = ["SyncEvents", "SyncWorker"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Handler)

# -- the public face --------------------------------------------------------------------------


class _WouldBlockLoop(EventError, RuntimeError):
    """``SyncEvents.wait`` on a thread running an event loop: it would freeze that loop."""


def _loop_thread_error(name: str) -> RuntimeError:
    return RuntimeError(
        f"{name}() blocks, and was called on the worker's own event loop thread (in a handler "
        "or a callback), which it would wait for forever; there, await the async API "
        f"instead: make the handler `async def` and `await sync_worker.worker.{name}(...)`"
    )


class SyncWorker:
    """A :class:`~velo_am.Worker` with blocking methods, running on a thread of its own.

    ``SyncWorker(worker_id=None, *, start=True, **options)`` takes the options of
    :class:`Worker` (``peers``, ``bind``, ``heartbeat_timeout``, ``transport``, …). With
    ``start=True`` it starts at once (``PeerUnreachable`` if a seed does not answer); with
    ``start=False``, register handlers first, then call :meth:`start`, so no peer finds them
    missing. Use as ``with SyncWorker(...) as w:``.

    Every method may be called from any thread. The blocking ones raise ``RuntimeError`` on
    the worker's own loop thread (inside a handler or callback), and :class:`WorkerClosed`
    once the worker is closed (or closing). Errors of the runtime propagate unchanged
    (:class:`RemoteError`, :class:`CallTimeout`, :class:`PeerLost`, …).

    Handlers (sync or async) and peer-lost callbacks run on the loop thread (named
    ``velo-am-<worker id>``) as with :class:`Worker`: a sync handler holds the loop while it
    runs, so keep it short.
    """

    def __init__(
        self, worker_id: int | None = None, *, start: bool = True, **worker_options: Any
    ) -> None:
        self._runtime = runtime = Runtime()
        runtime.thread.start()
        track(runtime)
        try:
            worker: Worker = runtime.run(functools.partial(Worker, worker_id, **worker_options))
        except BaseException:
            runtime.begin_close(0)
            runtime.thread.join(CLOSE_MARGIN)
            raise
        runtime.worker = self._worker = worker
        runtime.worker_id = worker.worker_id
        runtime.thread.name = f"velo-am-{worker.worker_id:#x}"
        #: The mesh's events, for threads: see :class:`SyncEvents`.
        self.events = SyncEvents(self)
        # Closes the worker if this object is collected while open (not at exit: the hook).
        self._finalizer = weakref.finalize(self, runtime.abandon)
        self._finalizer.atexit = False
        if start:
            self.start()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Bind, start the heartbeat and connect to the seeds (``peers`` / ``$VELO_PEERS``).
        Raises :class:`PeerUnreachable` if a seed does not answer the handshake (the worker
        is then closed), :class:`AMError` if already started, :class:`WorkerClosed` once
        closed."""
        runtime = self._runtime
        if runtime.on_loop_thread():
            raise _loop_thread_error("start")
        with runtime.lock:
            if runtime.state != "new":
                if runtime.state in ("closing", "closed"):
                    raise WorkerClosed(runtime.closed_text())
                raise AMError(f"{runtime.describe()} was already started")
            runtime.state = "started"
        try:
            runtime.run(runtime.start_worker)
        except BaseException:
            self.close(grace=0)
            raise

    def close(self, grace: float | None = None) -> None:
        """Close gracefully: refuse new requests, let in-flight handlers finish within
        ``grace`` seconds (default: the ``close_grace`` option), poison this worker's
        pending events, say goodbye to the peers, and end the loop thread. Blocks until
        done, at most ``grace`` + 5 s (a warning is logged if the thread is still running
        then). Idempotent, from any thread; on the loop thread (in a handler) it only starts
        the close, which proceeds once the handler returns. Threads blocked in other methods
        get :class:`WorkerClosed`, or :class:`~velo_event.EventPoison` in ``events.wait``."""
        runtime = self._runtime
        runtime.begin_close(grace)
        if runtime.on_loop_thread():
            return
        runtime.thread.join(runtime.close_bound())
        if runtime.thread.is_alive():
            logger.warning(
                "%s still closing after %.1f s (a handler holding its loop?)",
                runtime.describe(),
                runtime.close_bound(),
            )
        else:
            self._finalizer.detach()

    def __enter__(self) -> SyncWorker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def state(self) -> str:
        """The worker's: ``new``, ``running``, ``draining`` (closing: refusing requests,
        handlers finishing), ``closing`` or ``closed``."""
        return self._worker.state

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has begun (then every blocking method raises
        :class:`WorkerClosed`)."""
        return self._runtime.state in ("closing", "closed")

    def serve_forever(self) -> None:
        """Block until the worker is closed (by another thread, a handler, or at exit) or,
        when called on the main thread, until SIGINT or SIGTERM (handled from the moment it
        is called until it returns); then return, so that a ``with`` block closes
        gracefully."""
        runtime = self._runtime
        if runtime.on_loop_thread():
            raise _loop_thread_error("serve_forever")
        wakeup = threading.Event()
        with runtime.lock:
            if runtime.state in ("closing", "closed"):
                return
            runtime.wakeups.add(wakeup)
        previous: dict[int, Any] = {}

        def on_signal(number: int, frame: FrameType | None) -> None:
            wakeup.set()

        try:
            if threading.current_thread() is threading.main_thread():
                for signum in (signal.SIGINT, signal.SIGTERM):
                    previous[signum] = signal.signal(signum, on_signal)
            wakeup.wait()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            with runtime.lock:
                runtime.wakeups.discard(wakeup)

    # -- identity ---------------------------------------------------------------------------

    @property
    def worker(self) -> Worker:
        """The underlying async :class:`Worker`. Use it on the loop thread only: in async
        handlers (``await sync_worker.worker.call(...)``) and callbacks."""
        return self._worker

    @property
    def worker_id(self) -> int:
        return self._worker.worker_id

    @property
    def incarnation(self) -> int:
        """Random per start of a process: tells a restarted worker from its predecessor."""
        return self._worker.incarnation

    @property
    def address(self) -> str:
        """The endpoint actually bound (port 0 resolved); empty before :meth:`start`."""
        return self._worker.address

    # -- peers ------------------------------------------------------------------------------

    def connect(self, address: str) -> int:
        """Handshake with the worker at ``address``; returns its worker id. Raises
        :class:`PeerUnreachable` if it does not answer within ``handshake_timeout``."""
        return int(self._blocking("connect", self._worker.connect, address))

    def wait_for_peers(self, count: int, timeout: float | None = None) -> None:
        """Block until at least ``count`` peers are alive (a mesh join completes in the
        background). Raises ``TimeoutError`` after ``timeout`` seconds, :class:`WorkerClosed`
        if this worker closes meanwhile."""
        self._blocking("wait_for_peers", self._worker.wait_for_peers, count, timeout)

    def wait_for_peer(self, worker_id: int, timeout: float | None = None) -> PeerStatus:
        """Block until worker ``worker_id`` is a live peer (joined through the mesh, or found
        in discovery) and return its status. Raises :class:`PeerUnreachable` if it is not
        within ``timeout`` seconds (default: ``handshake_timeout``), :class:`WorkerClosed` if
        this worker closes meanwhile."""
        status: PeerStatus = self._blocking(
            "wait_for_peer", self._worker.wait_for_peer, worker_id, timeout
        )
        return status

    @property
    def peers(self) -> dict[int, PeerStatus]:
        """What this worker knows of each peer (a snapshot taken on the loop thread)."""
        worker = self._worker
        return self._runtime.read(lambda: worker.peers)

    def is_connected(self, peer_id: int) -> bool:
        """Whether ``peer_id`` is a live peer now (alive or draining)."""
        # One dict lookup and one attribute read: atomic, so safe from any thread.
        return self._worker.is_connected(peer_id)

    def on_peer_lost(self, callback: PeerLostCallback) -> Callable[[], None]:
        """Call ``callback(worker_id, reason)`` whenever a peer is lost, closes or restarts.
        It runs on the worker's loop thread: keep it short and do not block there (no
        blocking method of this SyncWorker). Returns a function that unsubscribes."""
        runtime = self._runtime
        unsubscribe = runtime.read(self._worker.on_peer_lost, callback)
        return lambda: runtime.read(unsubscribe)

    # -- handlers ---------------------------------------------------------------------------

    def register_handler(
        self, name: str, fn: Handler, *, ordered: bool = False, replace: bool = False
    ) -> None:
        """Serve ``name`` with ``fn(payload, ctx)``, sync or async; it runs on the worker's
        loop thread, where the blocking methods raise ``RuntimeError``: an ``async def``
        handler awaits ``sync_worker.worker``'s methods instead. A taken name raises
        ``ValueError`` unless ``replace=True``; names starting with ``_`` are reserved. With
        ``ordered=True``, each sender's messages run one at a time, in order."""
        register = functools.partial(
            self._worker.register_handler, name, fn, ordered=ordered, replace=replace
        )
        self._runtime.read(register)

    def handler(
        self, name: str, *, ordered: bool = False, replace: bool = False
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`register_handler`."""

        def decorate(fn: F) -> F:
            self.register_handler(name, fn, ordered=ordered, replace=replace)
            return fn

        return decorate

    # -- messages ---------------------------------------------------------------------------

    def call(
        self, peer_id: int, name: str, payload: Any = None, timeout: float | None = None
    ) -> Any:
        """Run handler ``name`` on the peer and return its result; ``timeout`` defaults to
        the ``call_timeout`` option. Raises :class:`RemoteError` (the handler raised),
        :class:`HandlerNotFound`, :class:`CallTimeout`, :class:`PeerUnreachable`,
        :class:`PeerLost` (died, went silent, closed or restarted meanwhile),
        :class:`PeerDraining`, :class:`WorkerClosed` (this worker closed), ``TypeError`` /
        ``ValueError`` for a payload msgpack cannot encode or over ``max_message_size``."""
        return self._blocking("call", self._worker.call, peer_id, name, payload, timeout)

    def send(self, peer_id: int, name: str, payload: Any = None) -> None:
        """Fire-and-forget: returns once the message is handed to the transport. Raises
        :class:`PeerUnreachable`, :class:`PeerDraining`, :class:`WorkerClosed`, or for the
        payload ``TypeError`` / ``ValueError`` as :meth:`call`."""
        self._blocking("send", self._worker.send, peer_id, name, payload)

    # -- introspection ----------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters and gauges (taken on the loop thread)."""
        return self._runtime.read(self._worker.stats)

    def handler_stats(self, *, internal: bool = False) -> dict[str, HandlerStats]:
        """Per handler: runs, failures and a latency histogram (runtime ``_`` handlers too
        with ``internal=True``); a snapshot taken on the loop thread."""
        return self._runtime.read(functools.partial(self._worker.handler_stats, internal=internal))

    def __repr__(self) -> str:
        runtime = self._runtime
        return f"<SyncWorker {runtime.worker_id:#x} {runtime.state} at {self.address or '-'}>"

    # -- plumbing ---------------------------------------------------------------------------

    def _blocking(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        runtime = self._runtime
        if runtime.on_loop_thread():
            raise _loop_thread_error(name)
        return runtime.run(fn, *args)


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

    def __init__(self, sync_worker: SyncWorker) -> None:
        self._sync_worker = sync_worker  # kept alive while its events are in use
        self._runtime = sync_worker._runtime
        self._events: DistributedEvents = sync_worker.worker.events

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

    def awaiter(self, handle: EventHandle) -> EventAwaiter:
        """For asyncio code on another loop (any thread): ``await events.awaiter(handle)``."""
        return self._events.awaiter(handle)

    def force_shutdown(self, reason: str) -> None:
        """Poison every pending event of this worker with ``reason`` and refuse new ones."""
        self._events.force_shutdown(reason)

    def poison_from_finalizer(self, handle: EventHandle, reason: str) -> None:
        """For a garbage-collected guard: never raises, never blocks."""
        self._events.poison_from_finalizer(handle, reason)

    # -- blocking operations ----------------------------------------------------------------

    def wait(self, handle: EventHandle, timeout: float | None = None) -> None:
        """Block the calling thread until the handle's generation completes. Raises
        :class:`~velo_event.EventPoison` with the first poison reason (for another worker's
        handle also when its owner is lost, closes or cannot be reached, or this worker
        closes meanwhile), ``TimeoutError`` after ``timeout`` seconds (the event is left
        pending), :class:`WorkerClosed` for another worker's handle once this worker is
        closed, and ``RuntimeError`` (an ``EventError`` too) on a thread running an event
        loop, such as the worker's own (in a handler)."""
        if asyncio.events._get_running_loop() is not None:
            where = "the worker's own loop" if self._runtime.on_loop_thread() else "a running loop"
            raise _WouldBlockLoop(
                f"wait() would block {where}; there, `await events.awaiter(handle)` instead"
            )
        events = self._events
        runtime = self._runtime
        remote = events._owner(handle) is not None
        waiter = BlockedThread()
        if remote:
            self._check_routable([handle])
            with runtime.lock:
                if runtime.state == "closed":
                    raise WorkerClosed(runtime.closed_text())
                runtime.blocked.add(waiter)  # woken when the loop ends, whatever happened
        try:
            outcome = self._routed(events._add_waiter, handle, waiter, waiter.wake)
            if outcome is PENDING:
                try:
                    woken = waiter.block(timeout)
                finally:
                    if waiter.outcome is PENDING:  # timed out, or interrupted
                        events._remove_waiter(handle, waiter)
                if woken:
                    outcome = waiter.outcome
                else:
                    # Completed meanwhile, its wake-up maybe not delivered yet: it stands.
                    outcome = waiter.outcome
                    if outcome is PENDING:
                        outcome = events._status(handle)
                    if outcome is PENDING:
                        raise TimeoutError(f"event {handle} still pending after {timeout} s")
        finally:
            if remote:
                with runtime.lock:
                    runtime.blocked.discard(waiter)
        if outcome is not None:
            assert isinstance(outcome, str)
            raise EventPoison(handle, outcome)

    def trigger_confirmed(self, handle: EventHandle, timeout: float | None = None) -> None:
        """Trigger and wait for the owner's verdict: raises the owner's ``EventError``
        (``InvalidGenerationError`` if not pending, ``UnknownEventError``), or
        :class:`PeerLost` / :class:`PeerUnreachable` / :class:`CallTimeout` when the owner
        cannot answer, :class:`WorkerClosed` once this worker is closed."""
        self._sync_worker._blocking(
            "events.trigger_confirmed", self._events.trigger_confirmed, handle, timeout
        )

    def poison_confirmed(
        self, handle: EventHandle, reason: str, timeout: float | None = None
    ) -> None:
        """Poison and wait for the owner's verdict (errors as :meth:`trigger_confirmed`,
        ``AlreadyTriggeredError`` if it was triggered)."""
        self._sync_worker._blocking(
            "events.poison_confirmed", self._events.poison_confirmed, handle, reason, timeout
        )

    def poll_remote(self, handle: EventHandle, timeout: float | None = None) -> EventStatus:
        """Ask the owner (:meth:`poll` answers from what this worker knows). Raises
        :class:`PeerLost` / :class:`PeerUnreachable` / :class:`CallTimeout` when the owner
        cannot answer, :class:`WorkerClosed` once this worker is closed."""
        status: EventStatus = self._sync_worker._blocking(
            "events.poll_remote", self._events.poll_remote, handle, timeout
        )
        return status

    def new_event_on(
        self, owner: int, label: str | None = None, timeout: float | None = None
    ) -> EventHandle:
        """Have worker ``owner`` create (and own) a new event; returns its handle. Raises
        :class:`PeerUnreachable` / :class:`PeerLost` / :class:`CallTimeout` when the owner
        cannot answer, :class:`WorkerClosed` once this worker is closed."""
        handle: EventHandle = self._sync_worker._blocking(
            "events.new_event_on", self._events.new_event_on, owner, label, timeout
        )
        return handle

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
        handle: EventHandle = self._sync_worker._blocking("events.merge_events_on", merge)
        return handle

    def stats(self) -> dict[str, int]:
        """Subscriptions and updates sent and received, remote handles awaited, cache size,
        subscriptions served (a snapshot taken on the loop thread)."""
        return self._runtime.read(self._events.stats)

    def __repr__(self) -> str:
        return f"<SyncEvents of {self._sync_worker!r}>"

    # -- plumbing ---------------------------------------------------------------------------

    def _check_routable(self, handles: list[EventHandle]) -> None:
        """Remote handles need a started worker: refuse before anything is registered."""
        if self._runtime.state == "new" and any(
            self._events._owner(handle) is not None for handle in handles
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
