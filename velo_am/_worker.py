"""`Worker`: one process's endpoint in a mesh — its public API and its lifecycle.

A worker is assembled from layers that each get only what they need: the pure membership
rules (:mod:`~velo_am._membership`) and the I/O shell that feeds them
(:mod:`~velo_am._shell`), the one outbound path (:mod:`~velo_am._outbound`), the calls in
flight (:mod:`~velo_am._calls`), the handler executor (:mod:`~velo_am._execution`), the
routes to peers (:mod:`~velo_am._routes`) and the events layer (:mod:`~velo_am._events`).
docs/architecture.md draws the map.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

from . import _peers as ms
from . import _protocol as p
from ._calls import CallTable
from ._config import OPTION_NAMES, CurveSpec, WorkerOptions, security_of
from ._errors import AMError, PeerUnreachable, WorkerClosed
from ._event_handlers import runtime_handlers
from ._events import DistributedEvents, event_core
from ._flow import FlowControl
from ._handlers import Handler, HandlerRegistry, HandlerStats
from ._inspect import serve_inspect
from ._launchers import FromEnv, wait_for_world
from ._layers import HandlerExecution, RemoteEvents, Serving
from ._log import RateLimitedLog, fields
from ._membership import PeerTable
from ._messenger import Messenger
from ._metrics import MetricsServer, start_metrics_server
from ._outbound import Outbound
from ._routes import Routes
from ._shell import PeerLostCallback, Shell
from ._signals import run_until_signalled
from ._stats import new_counters
from .discovery import REFRESH_EVERY, Discovery, open_discovery
from .transport import Liveness, Transport, ZmqSecurity, ZmqTransport

__all__ = ["PeerLostCallback", "Worker", "WorkerState"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Handler)


class WorkerState(enum.StrEnum):
    """A worker's lifecycle: ``new``, ``running``, ``draining`` (closing: requests refused,
    handlers finishing), ``closing`` (goodbyes), ``closed``."""

    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSING = "closing"
    CLOSED = "closed"


#: The states in which calls and sends go out (while draining, handlers may call out).
_OUTGOING: Final = (WorkerState.RUNNING, WorkerState.DRAINING)


class Worker(FromEnv):
    """A worker of a velo mesh: binds one endpoint, reaches peers by worker id, serves handlers.

    Use as ``async with Worker(...) as w:`` (or ``await w.start()`` / ``await w.close()``);
    :meth:`from_env` makes one placed by its launcher (torchrun, Slurm, MPI, Kubernetes).

    Every option is keyword-only; one left out (``None``) is read from its environment
    variable, else takes its default: the README's configuration table (generated from
    :data:`velo_am._config.OPTIONS`) lists them all. Invalid values raise ``ValueError``
    (naming the variable when it came from one). ``security`` configures the ZeroMQ
    transport's sockets (a :class:`~velo_am.transport.ZmqSecurity`; default: plaintext, or
    CURVE: ``curve=(secret_certificate, allowed_dir)``, see the README); ``transport``
    replaces that transport (e.g. a :class:`~velo_am.transport.FakeNetwork`'s in tests).
    ``observer=True``: a short-lived member (the command line's), never gossiped nor dialed.

    A ``Worker`` belongs to the event loop that started it: use it from that loop's thread
    (``w.events`` is the exception: its operations are thread-safe). From plain threads, use
    :class:`~velo_am.SyncWorker`.
    """

    def __init__(
        self,
        worker_id: int | None = None,
        *,
        bind: str | None = None,
        advertise: str | None = None,
        interface: str | None = None,
        peers: Iterable[str] | None = None,
        discovery: str | Discovery | None = None,
        heartbeat_interval: float | None = None,
        heartbeat_timeout: float | None = None,
        call_timeout: float | None = None,
        handshake_timeout: float | None = None,
        join_timeout: float | None = None,
        forget_after: float | None = None,
        link_idle: float | None = None,
        max_links: int | None = None,
        gossip_fanout: int | None = None,
        close_grace: float | None = None,
        send_window: int | None = None,
        max_message_size: int | None = None,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
        security: ZmqSecurity | None = None,
        curve: CurveSpec | None = None,
        transport: Transport | None = None,
        observer: bool = False,
    ) -> None:
        # The parameters that are options of the table (velo_am._config), by name.
        given = {name: value for name, value in locals().items() if name in OPTION_NAMES}
        options = WorkerOptions.resolve(**given)
        self.worker_id: Final = options.worker_id
        #: Random per start of a process: tells a restarted worker from its predecessor.
        self.incarnation: Final = ms.new_incarnation()
        self.heartbeat_interval = options.heartbeat_interval
        #: A peer whose links have not answered this many seconds is lost.
        self.heartbeat_timeout = options.heartbeat_timeout
        self.call_timeout = options.call_timeout
        self.close_grace = options.close_grace
        self.metrics_port = options.metrics_port
        self.metrics_host = options.metrics_host
        #: The Prometheus endpoint while running with ``metrics_port`` (``.url``, ``.port``).
        self.metrics: MetricsServer | None = None
        #: ``time.monotonic()`` at :meth:`start`.
        self.started_at = 0.0
        self._seeds = options.peers
        chosen = options.discovery
        backend = open_discovery(chosen) if isinstance(chosen, str) else chosen
        size = options.max_message_size
        if transport is not None and (security or curve or advertise or interface):
            raise ValueError("give security and addresses to the transport you pass instead")
        self._transport = transport or ZmqTransport(
            options.bind,
            max_message_size=size,
            security=security_of(security, curve, options),
            advertise=options.advertise,
            interface=options.interface,
        )
        self._address = ""
        self._state = WorkerState.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._counters = new_counters()
        self._log = RateLimitedLog(logger, self.worker_id)
        self._extra = fields(self.worker_id)
        self.join_timeout = options.join_timeout
        self._membership = PeerTable(
            self.worker_id,
            self.incarnation,
            handshake_timeout=options.handshake_timeout,
            forget_after=options.forget_after,
            rng=random.Random(secrets.randbits(64)),
            seeds=options.peers,
            observer=observer,
            fanout=options.gossip_fanout,
        )
        self._outbound = Outbound(
            self.worker_id,
            self.incarnation,
            size,
            transport=self._transport,
            locate=self._membership.address_of,
            introduction=lambda: p.encode(self._membership.introduction()),
            counters=self._counters,
            log=self._log,
            link_idle=options.link_idle,
            max_links=options.max_links,
            connect_timeout=options.heartbeat_timeout,
        )
        self._calls = CallTable()
        self._handlers = HandlerRegistry()
        self._flow = FlowControl(options.send_window, self._outbound, self._calls, self._counters)
        self._execution = HandlerExecution(
            self._handlers, self._outbound, self._counters, self._log, self._flow.receipts
        )
        messenger = Messenger(
            loop=lambda: self._loop,
            is_connected=self._membership.is_connected,
            peer_state=self._membership.state_of,
            is_observer=self._membership.is_observer,
            post=lambda peer_id, subscribe, done: self._outbound.event_updates(
                self._connected(peer_id), subscribe, done
            ),
            send_now=self.send_nowait,
            route=lambda peer_id: self._routes.route(peer_id),  # noqa: PLW0108 - built later
            call=self.call,
            spawn=self._spawn_background,
        )
        core = event_core(self.worker_id, self.incarnation)
        remote = RemoteEvents(core, messenger, self._counters, options.heartbeat_timeout)
        self._remote_events = remote
        #: The mesh's events: this worker's own, and any other worker's by routing.
        self.events = DistributedEvents(core, self._remote_events, messenger)
        internal = {**runtime_handlers(self.events), "_inspect": serve_inspect(self)}
        for name, fn in internal.items():
            self._handlers.register(name, fn, ordered=False, replace=False, internal=True)
        self._shell = Shell(
            self._membership,
            self._outbound,
            self._calls,
            self._execution,
            self._remote_events,
            self._flow,
            self._counters,
            self._log,
            lease_holders=self.events.lease_holders,
        )
        self.on_peer_lost(self.events.holder_lost)  # a lost holder breaks its leases
        self._routes = Routes(
            self._membership,
            self._outbound,
            backend,
            options.handshake_timeout,
            self._check_running,
            self._shell.apply,
        )
        self._shell.routes = self._routes

    # -- options read at run time ---------------------------------------------------------

    @property
    def handshake_timeout(self) -> float:
        """Seconds to wait for a peer to answer a handshake."""
        return self._routes.handshake_timeout

    @property
    def max_message_size(self) -> int:
        """The largest message, in bytes, this worker sends or accepts."""
        return self._outbound.max_message_size

    @max_message_size.setter
    def max_message_size(self, size: int) -> None:
        self._outbound.max_message_size = size

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def state(self) -> WorkerState:
        """``new``, ``running``, ``draining`` (closing: refusing requests, handlers finishing),
        ``closing`` or ``closed`` (a :class:`WorkerState`, equal to those strings)."""
        return self._state

    @property
    def address(self) -> str:
        """The address other workers reach this one at (port 0 resolved): the bound endpoint,
        or what it advertises (a wildcard bind: the host's addresses, space-separated, see
        ``advertise``); empty before :meth:`start`."""
        return self._address

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the worker runs on; ``None`` before :meth:`start`."""
        return self._loop

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind, register in discovery and join the mesh through the seeds, else through
        those discovery lists (retried with back-off until one answers). Raises
        :class:`PeerUnreachable` if none has (or, for :meth:`from_env`'s ``wait_for_world``,
        not every rank has) within ``join_timeout`` (the message names them);
        :class:`AuthenticationRefused` (with CURVE) at once when every seed refused this
        worker's key or does not hold the key dialled."""
        if self._state is not WorkerState.NEW:
            raise AMError(f"worker {self.worker_id:#x} was already started")
        self._loop = asyncio.get_running_loop()
        identity = b"w" + self.worker_id.to_bytes(8, "big") + self.incarnation.to_bytes(8, "big")
        liveness = Liveness(self.heartbeat_interval, self.heartbeat_timeout)
        self._address = self._transport.start(
            self._loop, self._shell, identity=identity, liveness=liveness
        )
        self._membership.bind(self._address, time.monotonic())
        self._state = WorkerState.RUNNING
        self.started_at = time.monotonic()
        self._spawn_background(self._clock())
        try:
            await self._routes.publish(self._address)
            if self.metrics_port is not None:
                self.metrics = start_metrics_server(self, self.metrics_port, self.metrics_host)
            if self._seeds:
                await self._routes.join(self._seeds, self.join_timeout)
            else:
                await self._routes.join_through_discovery(self.join_timeout)
            await wait_for_world(self)  # with from_env(wait_for_world=True)
        except BaseException:
            await self.close(grace=0)
            raise
        logger.info("worker %#x listening on %s", self.worker_id, self._address, extra=self._extra)

    async def close(self, grace: float | None = None) -> None:
        """Stop accepting requests (callers get :class:`PeerDraining`), let in-flight handlers
        finish within ``grace`` seconds, say goodbye to peers and close the sockets.
        Closing twice is harmless."""
        if self._state is not WorkerState.RUNNING:
            if self._state is WorkerState.NEW:
                self._state = WorkerState.CLOSED
                self._closed.set()
            await self._closed.wait()
            return
        grace = self.close_grace if grace is None else grace
        # Draining: inbound requests are refused, but in-flight handlers may still call out.
        self._state = WorkerState.DRAINING
        self._execution.serving = Serving.RUNTIME
        self._routes.changed.set()  # wake wait_for_peers(), which then raises
        try:
            # Remote waiters on our events learn the shutdown reason before the goodbye.
            self.events.close(f"worker {self.worker_id:#x} shutting down")
            self._shell.begin_drain()
            in_flight = self._execution.tasks - {asyncio.current_task()}  # a handler closing us
            if in_flight:
                await asyncio.wait(in_flight, timeout=grace)
            self._state = WorkerState.CLOSING
            self._execution.serving = Serving.NONE
            for task in in_flight:
                task.cancel()
            self._shell.fail_waiting(WorkerClosed(f"worker {self.worker_id:#x} closed"))
            await self._shell.say_goodbye(min(1.0, max(grace, 0.1)))
        finally:
            await self._release()

    async def _release(self) -> None:
        for task in list(self._background):
            task.cancel()
        self._outbound.close()
        self._routes.close()
        await self._routes.withdraw()
        if self.metrics is not None:
            self.metrics.close()
        try:
            await self._transport.close()
        finally:
            self._state = WorkerState.CLOSED
            self._closed.set()
            logger.info("worker %#x closed", self.worker_id, extra=self._extra)

    async def serve_forever(self, ready: Callable[[], object] | None = None) -> None:
        """Run until SIGINT or SIGTERM (then return, so ``async with`` closes gracefully) or
        until the worker is closed. ``ready()`` is called once the signal handlers are in
        place: a script that prints "ready" there can be stopped by a signal right after."""
        await run_until_signalled(self._closed, ready)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- handlers -------------------------------------------------------------------------

    def register_handler(
        self, name: str, fn: Handler, *, ordered: bool = False, replace: bool = False
    ) -> None:
        """Serve ``name`` with ``fn(payload, ctx)`` (sync or async). Names starting with ``_``
        are reserved; a taken name raises ``ValueError`` unless ``replace=True``. With
        ``ordered=True`` each sender's messages run one at a time, in order."""
        self._handlers.register(name, fn, ordered=ordered, replace=replace)

    def handler(
        self, name: str, *, ordered: bool = False, replace: bool = False
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`register_handler`."""

        def decorate(fn: F) -> F:
            self.register_handler(name, fn, ordered=ordered, replace=replace)
            return fn

        return decorate

    # -- peers ----------------------------------------------------------------------------

    @property
    def peers(self) -> dict[int, ms.PeerStatus]:
        """Every peer this worker knows, by id (closed and lost ones for a while). Like every
        method of ``Worker``, read it on the worker's loop; other threads use ``SyncWorker``."""
        return self._membership.statuses(time.monotonic())

    async def wait_for_peers(self, count: int, timeout: float | None = None) -> None:
        """Wait until at least ``count`` peers are alive (a mesh join completes in the
        background). Raises ``TimeoutError`` after ``timeout`` seconds, :class:`WorkerClosed`
        if this worker closes meanwhile."""
        await self._routes.wait_for_peers(count, timeout)

    async def wait_for_peer(self, worker_id: int, timeout: float | None = None) -> ms.PeerStatus:
        """Wait until worker ``worker_id`` is a live peer (joined through the mesh, or found
        in discovery) and return its status. Raises :class:`PeerUnreachable` if it is not
        within ``timeout`` seconds (default: ``handshake_timeout``), :class:`WorkerClosed`
        if this worker closes meanwhile."""
        timeout = self.handshake_timeout if timeout is None else timeout
        return await self._routes.wait_for_peer(worker_id, timeout)

    def on_peer_lost(self, callback: PeerLostCallback) -> Callable[[], None]:
        """Call ``callback(worker_id, reason)`` whenever a peer is lost, closes or restarts;
        returns a function that unsubscribes."""
        callbacks = self._shell.peer_lost_callbacks
        callbacks.append(callback)
        return lambda: callbacks.remove(callback)

    async def connect(self, address: str) -> int:
        """Handshake with the worker at ``address``; returns its worker id. Afterwards both
        sides know each other. Raises :class:`PeerUnreachable` if it does not answer within
        ``handshake_timeout``, :class:`AuthenticationRefused` (with CURVE) if it refused this
        worker's key or does not hold the key dialled."""
        return await self._routes.connect(address)

    def is_connected(self, peer_id: int) -> bool:
        """Whether ``peer_id`` is a live peer now (alive or draining)."""
        return self._membership.is_connected(peer_id)

    # -- calls ----------------------------------------------------------------------------

    async def send(
        self, peer_id: int, name: str, payload: Any = None, timeout: float | None = None
    ) -> None:
        """Fire-and-forget, queued for the peer within its window of ``send_window`` unfinished
        sends (a full one waits up to ``timeout``, default ``call_timeout``; see the README).
        Raises :class:`PeerBusy`, :class:`PeerLost`, :class:`PeerDraining` (still full, lost,
        closing: not sent), :class:`PeerUnreachable`, :class:`WorkerClosed`, ``ValueError``."""
        peer = self._membership.alive(peer_id)  # the fast path inline: no coroutine for it
        if peer is None or self._state not in _OUTGOING:
            peer = await self._routes.live(peer_id)  # the slow path: discovery, errors
        await self._flow.sends.send(peer, name, payload, timeout, self.call_timeout)

    async def call(
        self, peer_id: int, name: str, payload: Any = None, timeout: float | None = None
    ) -> Any:
        """Run handler ``name`` on the peer and return its result. ``timeout`` defaults to the
        worker's ``call_timeout``. Raises :class:`RemoteError` (the handler raised),
        :class:`HandlerNotFound`, :class:`CallTimeout`, :class:`PeerBusy` (refused unrun:
        safe to retry), :class:`PeerUnreachable`, :class:`PeerLost` (died, went silent,
        closed or restarted meanwhile) or :class:`PeerDraining`."""
        peer = self._membership.alive(peer_id)
        if peer is None or self._state not in _OUTGOING:
            peer = await self._routes.live(peer_id)
        loop = self._loop
        assert loop is not None
        msg_id, future = self._calls.open(loop, peer_id)
        try:
            self._outbound.request(peer, msg_id, name, payload, reply=True)
        except BaseException:
            self._calls.close(msg_id)
            raise
        self._counters["calls_sent"] += 1
        timeout = self.call_timeout if timeout is None else timeout
        what = f"{peer.describe()} to {name!r}"
        return await self._calls.wait(loop, msg_id, future, timeout, what)

    def send_nowait(self, peer_id: int, name: str, payload: Any = None) -> None:
        """:meth:`send` to a connected peer, never waiting (runtime layers, loop callbacks: on the
        loop, whose sockets are not thread-safe). Raises :class:`PeerUnreachable` if it is not
        connected now, :class:`PeerBusy` if its window is full (runtime ``_`` sends go anyway)."""
        self._flow.sends.send_now(self._connected(peer_id), name, payload)

    def _connected(self, peer_id: int) -> ms.Member:
        peer = self._membership.connected(peer_id) if self._state in _OUTGOING else None
        if peer is None:  # (the state checked inline: every event update sent comes here)
            self._check_running()
            raise PeerUnreachable(f"worker {peer_id:#x} is not connected")
        return peer

    def _check_running(self) -> None:
        """Outgoing traffic is allowed while running and while draining (in-flight handlers
        may need to call out to finish)."""
        if self._state not in _OUTGOING:
            raise WorkerClosed(f"worker {self.worker_id:#x} is {self._state}")

    # -- time -------------------------------------------------------------------------------

    async def _clock(self) -> None:
        """Time passes (see :meth:`Shell.tick`); discovery is refreshed now and then."""
        tick = min(self.heartbeat_interval, self.heartbeat_timeout / 4)
        refreshed = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self._shell.tick(now)
            self.events.tick(now)  # leases not renewed in time break
            if now - refreshed > REFRESH_EVERY:
                refreshed = now
                alone = not self._seeds and not self._membership.connected_count()
                self._spawn_background(self._routes.refresh(self._address, rejoin=alone))

    def _spawn_background(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- introspection --------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """A snapshot of this worker's counters (monotonic: messages, requests, drops, peers
        lost, event subscriptions and updates) and gauges (peers alive, calls in flight,
        handlers running, pending events, remote subscriptions); every name is described in
        ``velo_am._stats.STATS``. Call it on the worker's loop."""
        snapshot = dict(self._counters)
        snapshot["peers_alive"] = self._membership.connected_count()
        snapshot["links_open"] = self._outbound.own_links()
        snapshot["calls_in_flight"] = len(self._calls)
        snapshot["handlers_running"] = len(self._execution.tasks)
        snapshot.update(self._flow.stats())
        for name, value in self.events.stats().items():
            snapshot[f"events_{name}"] = value
        return snapshot

    def handler_stats(self, *, internal: bool = False) -> dict[str, HandlerStats]:
        """Per handler: runs, failures and a latency histogram (runtime ``_`` handlers too
        with ``internal=True``)."""
        return self._handlers.stats(internal=internal)

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id:#x} {self._state} at {self._address or '-'}>"
