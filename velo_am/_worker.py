"""`Worker`: one process's endpoint in a mesh — peers, handlers, calls, liveness, shutdown.

Everything runs on the event loop that started the worker: the transport hands inbound frames
to :meth:`Worker._on_frames`, which decodes and dispatches without awaiting; handlers run
through :class:`~velo_am._execution.HandlerExecution`; a heartbeat task watches liveness.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

from . import _protocol as p
from ._codec import pack, unpack
from ._config import resolve
from ._discovery import DirectoryDiscovery, DiscoveryEntry, parse_discovery
from ._errors import (
    AMError,
    CallTimeout,
    HandlerNotFound,
    PeerDraining,
    PeerLost,
    PeerUnreachable,
    RemoteError,
    WorkerClosed,
)
from ._events import DistributedEvents
from ._execution import HandlerExecution
from ._handlers import (
    CallContext,
    Handler,
    HandlerRegistry,
    HandlerStats,
)
from ._inspect import DEFAULT_LIMIT, snapshot
from ._metrics import MetricsServer, start_metrics_server
from ._peers import Dial, Peer, PeerStatus
from ._transport import LinkFull, Transport, ZmqTransport

__all__ = ["PeerLostCallback", "Worker"]

logger = logging.getLogger(__name__)

_U64: Final = (1 << 64) - 1
F = TypeVar("F", bound=Handler)
# Gossip may name many members at once: dial at most this many concurrently.
_MAX_CONCURRENT_DIALS: Final = 64
# Room left for the header frame when bounding a payload by max_message_size.
_HEADER_ALLOWANCE: Final = 512
PeerLostCallback = Callable[[int, str], None]
#: Seconds a closed or lost peer stays listed in ``peers`` (at least 10 heartbeat timeouts).
_FORGET_PEERS_AFTER: Final = 60.0


class _RateLimitedLog:
    """At most one warning per category per second, saying how many were suppressed. Records
    carry the structured field ``worker`` (and ``peer`` when given)."""

    def __init__(self, worker_id: int) -> None:
        self._worker = f"{worker_id:#x}"
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, category: str, message: str, *args: object, peer: int = 0) -> None:
        now = time.monotonic()
        if now - self._last.get(category, -1e9) < 1.0:
            self._suppressed[category] = self._suppressed.get(category, 0) + 1
            return
        self._last[category] = now
        suppressed = self._suppressed.pop(category, 0)
        suffix = f" ({suppressed} similar suppressed)" if suppressed else ""
        extra = {"worker": self._worker, "category": category}
        if peer:
            extra["peer"] = f"{peer:#x}"
        logger.warning(message + suffix, *args, extra=extra)


class _CallExpired(Exception):
    """Set on a call's future by its timer; turned into CallTimeout by the caller."""


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_CallExpired())


class Worker:
    """A worker of a velo mesh: binds one ROUTER, reaches peers by worker id, serves handlers.

    Use as ``async with Worker(...) as w:`` (or ``await w.start()`` / ``await w.close()``).

    Every option is keyword-only, and one left out (``None``) is read from its environment
    variable, else takes its default (see :data:`velo_am._config.OPTIONS` and the README's
    configuration table): ``worker_id`` (``VELO_WORKER_ID``, random), ``bind``
    (``VELO_BIND``, ``tcp://127.0.0.1:0``), ``peers`` (``VELO_PEERS``, comma-separated seeds),
    ``discovery`` (``VELO_DISCOVERY``, ``dir:PATH``), ``heartbeat_interval`` (1.0 s),
    ``heartbeat_timeout`` (5.0 s: a peer silent that long is lost), ``call_timeout``
    (30.0 s), ``handshake_timeout`` (5.0 s), ``close_grace`` (5.0 s), ``max_message_size``
    (64 MiB), ``metrics_port`` (off; Prometheus exposition, needs ``velo[metrics]``),
    ``metrics_host`` (127.0.0.1). ``transport`` replaces the ZeroMQ transport (tests).
    Invalid values raise ``ValueError`` (naming the variable when it came from one).

    A ``Worker`` belongs to the event loop that started it: use it from that loop's thread
    (``w.events`` is the exception: its operations are thread-safe). From plain threads, use
    :class:`~velo_am.SyncWorker`.
    """

    def __init__(
        self,
        worker_id: int | None = None,
        *,
        bind: str | None = None,
        peers: Iterable[str] | None = None,
        discovery: str | DirectoryDiscovery | None = None,
        heartbeat_interval: float | None = None,
        heartbeat_timeout: float | None = None,
        call_timeout: float | None = None,
        handshake_timeout: float | None = None,
        close_grace: float | None = None,
        max_message_size: int | None = None,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
        transport: Transport | None = None,
    ) -> None:
        worker_id = resolve("worker_id", worker_id)
        if worker_id is None:
            worker_id = secrets.randbits(64) or 1
        if isinstance(worker_id, bool) or not isinstance(worker_id, int):
            raise TypeError(f"worker_id must be an int, got {type(worker_id).__name__}")
        if not 0 < worker_id <= _U64:
            raise ValueError(f"worker_id must be a non-zero 64-bit integer, got {worker_id}")
        heartbeat_interval = resolve("heartbeat_interval", heartbeat_interval)
        heartbeat_timeout = resolve("heartbeat_timeout", heartbeat_timeout)
        if not 0 < heartbeat_interval < heartbeat_timeout:
            raise ValueError("need 0 < heartbeat_interval < heartbeat_timeout")
        self.worker_id: Final = worker_id
        #: Random per start of a process: tells a restarted worker from its predecessor.
        self.incarnation: Final = secrets.randbits(64) or 1
        self._seeds = tuple(peers) if peers else resolve("peers", None)
        discovery = resolve("discovery", discovery)
        self._discovery = parse_discovery(discovery) if isinstance(discovery, str) else discovery
        self.heartbeat_interval: float = heartbeat_interval
        self.heartbeat_timeout: float = heartbeat_timeout
        self.call_timeout: float = resolve("call_timeout", call_timeout)
        self.handshake_timeout: float = resolve("handshake_timeout", handshake_timeout)
        self.close_grace: float = resolve("close_grace", close_grace)
        self.max_message_size: int = resolve("max_message_size", max_message_size)
        self.metrics_port: int | None = resolve("metrics_port", metrics_port)
        self.metrics_host: str = resolve("metrics_host", metrics_host)
        #: The Prometheus endpoint while running with ``metrics_port`` (``.url``, ``.port``).
        self.metrics: MetricsServer | None = None
        bind = resolve("bind", bind)
        self._transport = transport or ZmqTransport(bind, max_message_size=self.max_message_size)
        self._address = ""
        self._state = "new"
        #: ``time.monotonic()`` at :meth:`start`.
        self.started_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._peers: dict[int, Peer] = {}
        self._dials: dict[int, Dial] = {}
        self._dialing: dict[str, asyncio.Task[int]] = {}
        self._calls: dict[int, tuple[asyncio.Future[Any], Peer]] = {}
        self._message_ids = itertools.count(1)
        self._handlers = HandlerRegistry()
        self._execution = HandlerExecution(self)
        self._background: set[asyncio.Task[Any]] = set()
        self._peer_lost_callbacks: list[PeerLostCallback] = []
        self._goodbye_acks: set[int] = set()
        self._all_acked = asyncio.Event()
        self._membership_changed = asyncio.Event()
        self._closed = asyncio.Event()
        self._log = _RateLimitedLog(worker_id)
        #: Structured fields of this worker's log records (``peer`` is added per record).
        self._extra = {"worker": f"{worker_id:#x}"}
        #: The mesh's events: this worker's own, and any other worker's by routing.
        self.events = DistributedEvents(self)
        self.register_internal_handler("_inspect", self._on_inspect)
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "messages_in",
                "messages_out",
                "requests_handled",
                "requests_failed",
                "calls_sent",
                "dropped_malformed",
                "dropped_wrong_incarnation",
                "dropped_unknown_peer",
                "late_responses",
                "refused_draining",
                "peers_lost",
            ),
            0,
        )

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``new``, ``running``, ``draining`` (closing: refusing requests, handlers finishing),
        ``closing`` or ``closed``."""
        return self._state

    @property
    def address(self) -> str:
        """The endpoint actually bound (port 0 resolved); empty before :meth:`start`."""
        return self._address

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind, start the heartbeat, register in discovery and connect to the seeds.
        Raises :class:`PeerUnreachable` if a seed does not answer the handshake."""
        if self._state != "new":
            raise AMError(f"worker {self.worker_id:#x} was already started")
        self._loop = asyncio.get_running_loop()
        self._address = self._transport.start(self._loop, self._on_frames)
        self._state = "running"
        self.started_at = time.monotonic()
        self._register_in_discovery()
        self._spawn_background(self._heartbeat_loop())
        try:
            if self.metrics_port is not None:
                self.metrics = start_metrics_server(self, self.metrics_port, self.metrics_host)
            for seed in self._seeds:
                await self.connect(seed)
        except BaseException:
            await self.close(grace=0)
            raise
        logger.info("worker %#x listening on %s", self.worker_id, self._address, extra=self._extra)

    async def close(self, grace: float | None = None) -> None:
        """Stop accepting requests (callers get :class:`PeerDraining`), let in-flight handlers
        finish within ``grace`` seconds, say goodbye to peers and close the sockets.
        Closing twice is harmless."""
        if self._state != "running":
            if self._state == "new":
                self._state = "closed"
                self._closed.set()
            await self._closed.wait()
            return
        grace = self.close_grace if grace is None else grace
        # Draining: inbound requests are refused, but in-flight handlers may still call out.
        self._state = "draining"
        self._membership_changed.set()  # wake wait_for_peers(), which then raises
        try:
            # Remote waiters on our events learn the shutdown reason before the goodbye.
            self.events.close(f"worker {self.worker_id:#x} shutting down")
            self._broadcast(lambda peer: p.Draining(*self._envelope(peer)))
            in_flight = self._execution.tasks - {asyncio.current_task()}  # a handler closing us
            if in_flight:
                await asyncio.wait(in_flight, timeout=grace)
            self._state = "closing"
            for task in in_flight:
                task.cancel()
            for future, _ in list(self._calls.values()):
                if not future.done():
                    future.set_exception(WorkerClosed(f"worker {self.worker_id:#x} closed"))
            alive = [peer for peer in self._peers.values() if peer.state in ("alive", "draining")]
            self._goodbye_acks = {peer.worker_id for peer in alive}
            self._broadcast(lambda peer: p.Goodbye(*self._envelope(peer)))
            # On ipc:// a DEALER closed right after a burst loses its tail: wait (briefly) for
            # each peer to acknowledge the goodbye before closing the sockets.
            if self._goodbye_acks:
                self._all_acked.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(1.0, max(grace, 0.1))):
                        await self._all_acked.wait()
        finally:
            for task in list(self._background):
                task.cancel()
            for peer in self._peers.values():
                if peer.link is not None:
                    peer.link.close(0)
                    peer.link = None
            for dial in self._dials.values():
                dial.link.close(0)
                if not dial.future.done():
                    dial.future.set_exception(WorkerClosed("worker closed during handshake"))
            self._dials.clear()
            if self._discovery is not None:
                with contextlib.suppress(OSError):
                    self._discovery.unregister(self.worker_id, self.incarnation)
            if self.metrics is not None:
                self.metrics.close()
            try:
                await self._transport.close()
            finally:
                self._state = "closed"
                self._closed.set()
                logger.info("worker %#x closed", self.worker_id, extra=self._extra)

    async def serve_forever(self, ready: Callable[[], object] | None = None) -> None:
        """Run until SIGINT or SIGTERM (then return, so ``async with`` closes gracefully) or
        until the worker is closed. ``ready()`` is called once the signal handlers are in
        place: a script that prints "ready" there can be stopped by a signal right after."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            if ready is not None:
                ready()
            closed = asyncio.ensure_future(self._closed.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
            stopped.cancel()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

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

    def register_internal_handler(self, name: str, fn: Handler, *, ordered: bool = False) -> None:
        """For runtime layers (events): a ``_``-prefixed name."""
        self._handlers.register(name, fn, ordered=ordered, replace=False, internal=True)

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
    def peers(self) -> dict[int, PeerStatus]:
        """Every peer this worker knows, by id (closed and lost ones for a while). Like every
        method of ``Worker``, read it on the worker's loop; other threads use ``SyncWorker``."""
        now = time.monotonic()
        return {
            peer.worker_id: PeerStatus(
                peer.worker_id, peer.address, peer.incarnation, peer.state, now - peer.last_seen
            )
            for peer in self._peers.values()
        }

    async def wait_for_peers(self, count: int, timeout: float | None = None) -> None:
        """Wait until at least ``count`` peers are alive (a mesh join completes in the
        background). Raises ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while self._alive_peer_count() < count:
                self._check_running()
                self._membership_changed.clear()
                await self._membership_changed.wait()

    async def wait_for_peer(self, worker_id: int, timeout: float | None = None) -> PeerStatus:
        """Wait until worker ``worker_id`` is a live peer (joined through the mesh, or found
        in discovery) and return its status. Raises :class:`PeerUnreachable` if it is not
        within ``timeout`` seconds (default: ``handshake_timeout``), :class:`WorkerClosed`
        if this worker closes meanwhile."""
        timeout = self.handshake_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        looked_up = False
        while True:
            self._check_running()
            peer = self._peers.get(worker_id)
            if peer is not None and peer.state == "alive":
                return self.peers[worker_id]
            if not looked_up and self._discovery is not None:
                looked_up = True
                entry = self._discovery.lookup(worker_id)
                if entry is not None:
                    self._spawn_background(self._dial_quietly(entry.address))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state = "not known" if peer is None else peer.state
                raise PeerUnreachable(
                    f"worker {worker_id:#x} is not a live peer after {timeout} s ({state})"
                )
            self._membership_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._membership_changed.wait()

    def _alive_peer_count(self) -> int:
        return sum(1 for peer in self._peers.values() if peer.state in ("alive", "draining"))

    def on_peer_lost(self, callback: PeerLostCallback) -> Callable[[], None]:
        """Call ``callback(worker_id, reason)`` whenever a peer is lost, closes or restarts;
        returns a function that unsubscribes."""
        self._peer_lost_callbacks.append(callback)
        return lambda: self._peer_lost_callbacks.remove(callback)

    async def connect(self, address: str) -> int:
        """Handshake with the worker at ``address``; returns its worker id. Afterwards both
        sides know each other. Raises :class:`PeerUnreachable` if it does not answer within
        ``handshake_timeout``."""
        self._check_running()
        task = self._dialing.get(address)
        if task is None:
            task = asyncio.ensure_future(self._dial(address))
            self._dialing[address] = task
            task.add_done_callback(self._dial_done)
        return await asyncio.shield(task)

    def _dial_done(self, task: asyncio.Task[int]) -> None:
        for address, dialing in list(self._dialing.items()):
            if dialing is task:
                del self._dialing[address]
        if not task.cancelled():
            task.exception()  # retrieved here: a caller may have stopped waiting (closed)

    async def _dial(self, address: str) -> int:
        assert self._loop is not None
        token = secrets.randbits(64) or 1
        try:
            link = self._transport.open_link(address)
        except LinkFull as error:
            raise PeerUnreachable(f"cannot connect to {address}: {error}") from None
        dial = Dial(address, link, self._loop.create_future())
        self._dials[token] = dial
        hello = p.Hello(
            self.worker_id, self.incarnation, 0, token, self._address, self._known_peers()
        )
        try:
            link.send(p.encode(hello))
            async with asyncio.timeout(self.handshake_timeout):
                return await dial.future
        except TimeoutError:
            raise PeerUnreachable(
                f"no handshake answer from {address} within {self.handshake_timeout} s"
            ) from None
        except LinkFull as error:
            raise PeerUnreachable(f"cannot send to {address}: {error}") from None
        finally:
            if self._dials.pop(token, None) is not None:  # no answer: the link is ours to close
                dial.link.close(0)

    def _known_peers(self) -> tuple[p.PeerInfo, ...]:
        return tuple(
            p.PeerInfo(peer.worker_id, peer.incarnation, peer.address)
            for peer in self._peers.values()
            if peer.state in ("alive", "draining")
        )

    async def _route(self, worker_id: int) -> Peer:
        """The live peer for ``worker_id``, connecting through discovery if needed."""
        self._check_running()
        peer = self._peers.get(worker_id)
        deadline = time.monotonic() + self.handshake_timeout
        while peer is None and self._dialing and time.monotonic() < deadline:
            # A mesh join may be in progress: wait for handshakes until this one is known.
            await asyncio.wait(
                set(self._dialing.values()),
                timeout=deadline - time.monotonic(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            peer = self._peers.get(worker_id)
        if peer is not None and peer.state == "lost":
            with contextlib.suppress(PeerUnreachable):  # maybe it is back: one handshake
                await self.connect(peer.address)
            peer = self._peers.get(worker_id, peer)
        if (peer is None or peer.state in ("lost", "closed")) and self._discovery is not None:
            entry = self._discovery.lookup(worker_id)
            if entry is not None:
                with contextlib.suppress(PeerUnreachable):
                    await self.connect(entry.address)
                peer = self._peers.get(worker_id)
        if peer is None:
            raise PeerUnreachable(f"unknown worker {worker_id:#x}: no route, no discovery entry")
        if peer.state == "lost":
            raise PeerUnreachable(f"{peer.describe()} was lost (no message within the window)")
        if peer.state == "closed":
            raise PeerUnreachable(f"{peer.describe()} has closed")
        return peer

    # -- calls ----------------------------------------------------------------------------

    async def _live_peer(self, peer_id: int) -> Peer:
        peer = self._peers.get(peer_id)
        if peer is None or peer.state != "alive" or self._state not in ("running", "draining"):
            peer = await self._route(peer_id)  # the slow path: discovery, errors, draining
            if peer.state == "draining":
                raise PeerDraining(f"{peer.describe()} is shutting down")
        return peer

    async def send(self, peer_id: int, name: str, payload: Any = None) -> None:
        """Fire-and-forget: returns once the message is handed to the transport. Raises
        :class:`PeerUnreachable` (unknown or unreachable peer) or :class:`PeerDraining`."""
        peer = await self._live_peer(peer_id)
        body = self._pack_bounded(payload, "payload")
        msg_id = next(self._message_ids)
        frames = p.encode_request(
            self.worker_id, self.incarnation, peer.incarnation, msg_id, name, False, body
        )
        self._send_frames(peer, frames)

    async def call(
        self,
        peer_id: int,
        name: str,
        payload: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """Run handler ``name`` on the peer and return its result. ``timeout`` defaults to the
        worker's ``call_timeout``. Raises :class:`RemoteError` (the handler raised),
        :class:`HandlerNotFound`, :class:`CallTimeout`, :class:`PeerUnreachable`,
        :class:`PeerLost` (died, went silent, closed or restarted meanwhile) or
        :class:`PeerDraining`."""
        peer = await self._live_peer(peer_id)
        loop = self._loop
        assert loop is not None
        body = self._pack_bounded(payload, "payload")
        msg_id = next(self._message_ids)
        frames = p.encode_request(
            self.worker_id, self.incarnation, peer.incarnation, msg_id, name, True, body
        )
        future: asyncio.Future[Any] = loop.create_future()
        self._calls[msg_id] = (future, peer)
        peer.calls.add(msg_id)
        timeout = self.call_timeout if timeout is None else timeout
        # A plain timer, cheaper than asyncio.timeout() on this path.
        timer = loop.call_later(timeout, _expire, future)
        try:
            self._send_frames(peer, frames)
            self.counters["calls_sent"] += 1
            return await future
        except _CallExpired:
            raise CallTimeout(
                f"no answer from {peer.describe()} to {name!r} within {timeout} s"
            ) from None
        finally:
            timer.cancel()
            del self._calls[msg_id]
            peer.calls.discard(msg_id)

    def is_connected(self, peer_id: int) -> bool:
        """Whether ``peer_id`` is a live peer now (alive or draining)."""
        peer = self._peers.get(peer_id)
        return peer is not None and peer.state in ("alive", "draining")

    def send_nowait(self, peer_id: int, name: str, payload: Any = None) -> None:
        """:meth:`send` to a connected peer, without awaiting (for runtime layers and loop
        callbacks, on the worker's loop: its sockets are not thread-safe). Raises
        :class:`PeerUnreachable` if the peer is not connected now."""
        self._check_running()
        if not self.is_connected(peer_id):
            raise PeerUnreachable(f"worker {peer_id:#x} is not connected")
        peer = self._peers[peer_id]
        body = self._pack_bounded(payload, "payload")
        msg_id = next(self._message_ids)
        frames = p.encode_request(
            self.worker_id, self.incarnation, peer.incarnation, msg_id, name, False, body
        )
        self._send_frames(peer, frames)

    def _pack_bounded(self, value: Any, what: str) -> bytes:
        """msgpack ``value``; a message a receiver would drop fails here, loudly, instead."""
        body = pack(value)
        if len(body) + _HEADER_ALLOWANCE > self.max_message_size:
            raise ValueError(
                f"{what} of {len(body)} bytes exceeds max_message_size ({self.max_message_size})"
            )
        return body

    def _peer_extra(self, peer_id: int) -> dict[str, str]:
        return {**self._extra, "peer": f"{peer_id:#x}"}

    def _envelope(self, peer: Peer) -> tuple[int, int, int]:
        return (self.worker_id, self.incarnation, peer.incarnation)

    def _send(self, peer: Peer, msg: p.Message) -> None:
        self._send_frames(peer, p.encode(msg))

    def _send_frames(self, peer: Peer, frames: list[bytes]) -> None:
        if peer.link is None:
            raise PeerUnreachable(f"{peer.describe()} is not connected")
        try:
            peer.link.send(frames)
        except LinkFull as error:
            raise PeerUnreachable(f"cannot send to {peer.describe()}: {error}") from None
        self.counters["messages_out"] += 1

    def _send_quietly(self, peer: Peer, msg: p.Message) -> None:
        try:
            self._send(peer, msg)
        except (PeerUnreachable, p.ProtocolError) as error:
            self._log.warning("send", "dropping %s: %s", type(msg).__name__, error)

    def _broadcast(self, make: Callable[[Peer], p.Message]) -> None:
        for peer in list(self._peers.values()):
            if peer.state in ("alive", "draining") and peer.link is not None:
                self._send_quietly(peer, make(peer))

    def _check_running(self) -> None:
        """Outgoing traffic is allowed while running and while draining (in-flight handlers
        may need to call out to finish)."""
        if self._state not in ("running", "draining"):
            raise WorkerClosed(f"worker {self.worker_id:#x} is {self._state}")

    # -- inbound --------------------------------------------------------------------------

    def _on_frames(self, frames: list[bytes]) -> None:
        self.counters["messages_in"] += 1
        try:
            msg = p.decode(frames, max_size=self.max_message_size)
        except p.ProtocolError as error:
            self.counters["dropped_malformed"] += 1
            self._log.warning("malformed", "dropping malformed message: %s", error)
            return
        if isinstance(msg, p.Hello | p.HelloAck):  # a handshake may name any incarnation
            self._on_hello(msg)
            return
        if msg.dst_incarnation not in (0, self.incarnation):
            self.counters["dropped_wrong_incarnation"] += 1
            self._log.warning(
                "incarnation", "dropping %s meant for an earlier incarnation", type(msg).__name__
            )
            self._refuse_stale(msg)
            return
        peer = self._peers.get(msg.src)
        if peer is None or peer.incarnation != msg.src_incarnation:
            self.counters["dropped_unknown_peer"] += 1
            self._log.warning(
                "unknown", "dropping %s from unknown %#x", type(msg).__name__, msg.src, peer=msg.src
            )
            return
        if peer.state == "lost":
            # It was silent too long but is alive after all: shake hands again (its calls
            # in flight were failed already; what it sends now waits for the new link).
            self.counters["dropped_unknown_peer"] += 1
            if self._state == "running" and peer.address not in self._dialing:
                self._spawn_background(self._dial_quietly(peer.address))
            return
        peer.last_seen = time.monotonic()
        if self._goodbye_acks:
            self._goodbye_acks.discard(peer.worker_id)
            if not self._goodbye_acks:
                self._all_acked.set()
        if isinstance(msg, p.Request):
            self._on_request(peer, msg)
        elif isinstance(msg, p.Response):
            self._on_response(peer, msg.msg_id, msg.payload, None)
        elif isinstance(msg, p.ErrorResponse):
            self._on_response(peer, msg.msg_id, b"", msg)
        elif isinstance(msg, p.Peers):
            self._learn(msg.peers)
        elif isinstance(msg, p.Draining):
            if peer.state == "alive":
                peer.state = "draining"
        elif isinstance(msg, p.Goodbye):
            self._send_quietly(peer, p.Heartbeat(*self._envelope(peer)))  # the goodbye's ack
            # After the sync handlers already queued for this peer's earlier messages (its
            # last event updates among them): they arrived first, so they land first.
            self._loop.call_soon(self._lose, peer, "closed", "closed")  # type: ignore[union-attr]
        elif isinstance(msg, p.EventMessage):
            self._log.warning("event", "no events layer for %s", msg)

    def _refuse_stale(self, msg: p.Message) -> None:
        peer = self._peers.get(msg.src)
        if isinstance(msg, p.Request) and msg.reply and peer is not None:
            # Sent in the predecessor's name (the incarnation the caller addressed), so the
            # caller matches it to its call and fails it at once instead of at its timeout.
            self._send_quietly(
                peer,
                p.ErrorResponse(
                    self.worker_id,
                    msg.dst_incarnation,
                    peer.incarnation,
                    msg.msg_id,
                    p.ErrorCode.WRONG_INCARNATION,
                    "PeerLost",
                    f"worker {self.worker_id:#x} restarted; the request was for its predecessor",
                    "",
                ),
            )

    def _on_hello(self, msg: p.Hello | p.HelloAck) -> None:
        dial = self._dials.pop(msg.token, None) if isinstance(msg, p.HelloAck) else None
        if msg.src == self.worker_id:
            if msg.src_incarnation != self.incarnation:
                logger.error(
                    "another live worker uses this worker's id %#x", msg.src, extra=self._extra
                )
            elif dial is None:
                dial = self._dials.pop(msg.token, None)  # our own Hello came back to us
            if dial is not None:
                dial.link.close(0)
                if not dial.future.done():
                    dial.future.set_exception(
                        PeerUnreachable(f"{dial.address} is this worker ({msg.src:#x}) itself")
                    )
            return
        peer = self._peers.get(msg.src)
        joined = peer is None or peer.incarnation != msg.src_incarnation or peer.link is None
        if joined:
            if peer is not None and peer.state in ("alive", "draining"):
                self._lose(peer, "restarted as a new incarnation", state="lost")
            try:
                link = dial.link if dial is not None else self._transport.open_link(msg.address)
            except LinkFull as error:
                self._log.warning("hello", "cannot answer %#x: %s", msg.src, error, peer=msg.src)
                return
            peer = Peer(msg.src, msg.src_incarnation, msg.address, link)
            self._peers[msg.src] = peer
        else:
            assert peer is not None
            peer.last_seen = time.monotonic()
            if dial is not None:
                dial.link.close(0)  # crossing handshakes: keep the link we already have
        assert peer is not None
        if isinstance(msg, p.Hello) and self._state == "running":
            self._send_quietly(
                peer,
                p.HelloAck(*self._envelope(peer), msg.token, self._address, self._known_peers()),
            )
        if dial is not None and not dial.future.done():
            dial.future.set_result(msg.src)
        self._learn(msg.peers)
        if joined:
            self._membership_changed.set()
            logger.info("peer %s joined", peer.describe(), extra=self._peer_extra(peer.worker_id))
            others = [other for other in self._peers.values() if other is not peer]
            if others:
                known = self._known_peers()
                for other in others:
                    if other.state in ("alive", "draining") and other.link is not None:
                        self._send_quietly(other, p.Peers(*self._envelope(other), known))

    def _learn(self, peers: Iterable[p.PeerInfo]) -> None:
        """Mesh join: dial every member we do not know yet (or only as a dead incarnation)."""
        if self._state != "running":
            return
        for info in peers:
            if info.worker_id == self.worker_id:
                continue
            known = self._peers.get(info.worker_id)
            if known is not None and (
                known.state in ("alive", "draining")
                or (known.state == "closed" and known.incarnation == info.incarnation)
            ):
                continue
            if len(self._dialing) >= _MAX_CONCURRENT_DIALS:
                self._log.warning("dials", "too many handshakes in progress; not dialing more")
                return
            if info.address not in self._dialing:
                self._spawn_background(self._dial_quietly(info.address))

    async def _dial_quietly(self, address: str) -> None:
        with contextlib.suppress(AMError):
            await self.connect(address)

    def _on_request(self, peer: Peer, msg: p.Request) -> None:
        # Runtime traffic (names starting with "_") still flows while draining.
        if self._state != "running" and not (
            self._state == "draining" and msg.handler.startswith("_")
        ):
            self.counters["refused_draining"] += 1
            if msg.reply:
                self._send_error(peer, msg.msg_id, p.ErrorCode.DRAINING, "PeerDraining", "draining")
            return
        spec = self._handlers.get(msg.handler)
        if spec is None:
            if msg.reply:
                text = f"no handler named {msg.handler!r} on worker {self.worker_id:#x}"
                self._send_error(peer, msg.msg_id, p.ErrorCode.HANDLER_NOT_FOUND, "", text)
            else:
                self._log.warning("handler", "no handler named %r for a send", msg.handler)
            return
        self._execution.submit(spec, peer, msg)

    def _send_error(
        self,
        peer: Peer,
        msg_id: int,
        code: p.ErrorCode,
        error_type: str,
        message: str,
        remote_traceback: str = "",
    ) -> None:
        # Exception texts may hold lone surrogates (undecodable file names), which UTF-8
        # cannot carry: escape them rather than lose the reply.
        texts = [
            text.encode("utf-8", "backslashreplace").decode("utf-8")
            for text in (error_type, message, remote_traceback)
        ]
        self._send_quietly(peer, p.ErrorResponse(*self._envelope(peer), msg_id, code, *texts))

    def _on_response(
        self, peer: Peer, msg_id: int, payload: bytes, error: p.ErrorResponse | None
    ) -> None:
        entry = self._calls.get(msg_id)
        if entry is None or entry[1] is not peer or entry[0].done():
            self.counters["late_responses"] += 1
            return
        future = entry[0]
        if error is None:
            try:
                future.set_result(unpack(payload))
            except Exception as unpack_error:
                future.set_exception(RemoteError("BadResponse", str(unpack_error)))
            return
        code = error.code
        if code == p.ErrorCode.HANDLER_NOT_FOUND:
            future.set_exception(HandlerNotFound(error.message))
        elif code == p.ErrorCode.DRAINING:
            future.set_exception(PeerDraining(f"{peer.describe()} is shutting down"))
        elif code == p.ErrorCode.WRONG_INCARNATION:
            future.set_exception(PeerLost(f"{peer.describe()} restarted: {error.message}"))
        else:
            future.set_exception(RemoteError(error.error_type, error.message, error.traceback))

    # -- liveness -------------------------------------------------------------------------

    def _lose(self, peer: Peer, reason: str, state: str) -> None:
        if peer.state in ("lost", "closed"):
            return
        peer.state = state
        self._membership_changed.set()
        self.counters["peers_lost"] += 1
        text = f"{peer.describe()} {reason}"
        log = logger.info if state == "closed" else logger.warning
        log("peer %s", text, extra=self._peer_extra(peer.worker_id))
        for msg_id in list(peer.calls):
            future = self._calls[msg_id][0]
            if not future.done():
                future.set_exception(PeerLost(text))
        if peer.link is not None:
            peer.link.close(0)
            peer.link = None
        for callback in list(self._peer_lost_callbacks):
            try:
                callback(peer.worker_id, text)
            except Exception:
                logger.exception(
                    "peer-lost callback %r failed", callback, extra=self._peer_extra(peer.worker_id)
                )

    async def _heartbeat_loop(self) -> None:
        tick = min(self.heartbeat_interval, self.heartbeat_timeout / 4)
        forget_after = max(_FORGET_PEERS_AFTER, 10 * self.heartbeat_timeout)
        last_refresh = time.monotonic()
        while self._state in ("running", "draining", "closing"):
            await asyncio.sleep(tick)
            now = time.monotonic()
            for peer in list(self._peers.values()):
                if peer.state not in ("alive", "draining"):
                    if now - peer.last_seen > forget_after:  # short-lived members (the CLI)
                        del self._peers[peer.worker_id]
                    continue
                if now - peer.last_seen > self.heartbeat_timeout:
                    self._lose(peer, f"lost: silent for {self.heartbeat_timeout} s", state="lost")
                else:
                    self._send_quietly(peer, p.Heartbeat(*self._envelope(peer)))
            if self._discovery is not None and now - last_refresh > 5.0:
                last_refresh = now
                self._register_in_discovery()

    def _register_in_discovery(self) -> None:
        if self._discovery is None:
            return
        entry = DiscoveryEntry(
            self.worker_id, self._address, os.getpid(), self.incarnation, time.time()
        )
        try:
            self._discovery.register(entry)
        except OSError as error:
            self._log.warning("discovery", "cannot register in discovery: %s", error)

    def _spawn_background(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- introspection --------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """A snapshot of this worker's counters (monotonic: messages, requests, drops, peers
        lost, event subscriptions and updates) and gauges (peers alive, calls in flight,
        handlers running, pending events, remote subscriptions); every name is described in
        ``velo_am._metrics.STAT_METRICS``. Call it on the worker's loop."""
        snapshot = dict(self.counters)
        snapshot["peers_alive"] = self._alive_peer_count()
        snapshot["calls_in_flight"] = len(self._calls)
        snapshot["handlers_running"] = len(self._execution.tasks)
        for name, value in self.events.stats().items():
            snapshot[f"events_{name}"] = value
        return snapshot

    def handler_stats(self, *, internal: bool = False) -> dict[str, HandlerStats]:
        """Per handler: runs, failures and a latency histogram (runtime ``_`` handlers too
        with ``internal=True``)."""
        return self._handlers.stats(internal=internal)

    def _on_inspect(self, payload: dict[str, Any] | None, ctx: CallContext) -> dict[str, Any]:
        """``velo-am inspect``: this worker's state as plain data (see ``_inspect.snapshot``)."""
        limit = (payload or {}).get("limit", DEFAULT_LIMIT)
        return snapshot(self, limit=limit)

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id:#x} {self._state} at {self._address or '-'}>"
