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

import functools
import logging
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, ParamSpec, TypeVar

from ._errors import AMError, WorkerClosed
from ._handlers import Handler, HandlerStats
from ._launchers import Placement, options_from_env
from ._peers import PeerStatus
from ._sync_events import SyncEvents
from ._sync_runtime import CLOSE_MARGIN, Runtime, loop_thread_error, track
from ._worker import PeerLostCallback, Worker

__all__ = ["SyncWorker"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Handler)

# -- the public face --------------------------------------------------------------------------


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
        self.events = SyncEvents(runtime, worker.events, self)
        # Closes the worker if this object is collected while open (not at exit: the hook).
        self._finalizer = weakref.finalize(self, runtime.abandon)
        self._finalizer.atexit = False
        if start:
            self.start()

    @classmethod
    def from_env(
        cls, *, wait_for_world: bool = False, start: bool = True, **overrides: Any
    ) -> SyncWorker:
        """:meth:`Worker.from_env <velo_am.Worker.from_env>`, blocking: a worker placed by its
        launcher (the README's table), keywords given winning. ``ValueError`` names a missing
        or malformed variable. With ``wait_for_world``, :meth:`start` returns once every
        rank is a member (``PeerUnreachable`` if they are not within ``join_timeout``)."""
        placement, options = options_from_env(overrides)
        sync = cls(start=False, **options)
        sync.worker.placement, sync.worker.waits_for_world = placement, wait_for_world
        if start:
            sync.start()
        return sync

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Bind, start the heartbeat and connect to the seeds (``peers`` / ``$VELO_PEERS``).
        Raises :class:`PeerUnreachable` if a seed does not answer the handshake, or (made by
        :meth:`from_env` with ``wait_for_world``) not every rank joined within
        ``join_timeout`` (the worker is then closed); :class:`AuthenticationRefused` (with
        CURVE) when every seed refused this worker's key or does not hold the key dialled
        (closed too); :class:`AMError` if already started,
        :class:`WorkerClosed` once closed."""
        runtime = self._runtime
        if runtime.on_loop_thread():
            raise loop_thread_error("start")
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
        get :class:`WorkerClosed`; in ``events.wait``, :class:`~velo_event.EventPoison` (this
        worker's events) or :class:`~velo_event.OutcomeUnknown` (another worker's)."""
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
            raise loop_thread_error("serve_forever")
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
    def placement(self) -> Placement | None:
        """Where its launcher put this worker, if :meth:`from_env` made it (else ``None``)."""
        return self._worker.placement

    @property
    def address(self) -> str:
        """The address other workers reach this one at (see :attr:`Worker.address`)."""
        return self._worker.address

    # -- peers ------------------------------------------------------------------------------

    def connect(self, address: str) -> int:
        """Handshake with the worker at ``address``; returns its worker id. Raises
        :class:`PeerUnreachable` if it does not answer within ``handshake_timeout``,
        :class:`AuthenticationRefused` (with CURVE) if it refused this worker's key or does
        not hold the key dialled."""
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
        :class:`HandlerNotFound`, :class:`CallTimeout`, :class:`PeerBusy` (refused unrun:
        safe to retry), :class:`PeerUnreachable`, :class:`PeerLost` (died, went silent,
        closed or restarted meanwhile), :class:`PeerDraining`, :class:`WorkerClosed` (this
        worker closed), ``TypeError`` /
        ``ValueError`` for a payload msgpack cannot encode or over ``max_message_size``."""
        return self._blocking("call", self._worker.call, peer_id, name, payload, timeout)

    def send(
        self, peer_id: int, name: str, payload: Any = None, timeout: float | None = None
    ) -> None:
        """Fire-and-forget: returns once the message is queued for the peer within its window
        of ``send_window`` unfinished sends (a full one blocks, up to ``timeout``, default
        ``call_timeout``). Raises :class:`PeerBusy` / :class:`PeerLost` (still full / peer
        lost meanwhile: not sent), :class:`PeerUnreachable`, :class:`PeerDraining`,
        :class:`WorkerClosed`, or for the payload ``TypeError`` / ``ValueError``."""
        self._blocking("send", self._worker.send, peer_id, name, payload, timeout)

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
        return self._runtime.blocking(name, fn, *args)
