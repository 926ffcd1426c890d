"""Prometheus exposition of a worker's statistics (``pip install 'velo[metrics]'``).

:func:`start_metrics_server` serves ``/metrics`` over HTTP on a thread of its own, from a
:class:`prometheus_client.CollectorRegistry` owned by that worker, and returns a
:class:`MetricsServer` to ``close()``. :func:`render_metrics` returns the same text exposition
for whoever serves it themselves.

Thread safety. A worker's state belongs to its event loop, but scrapes arrive on the HTTP
server's threads. Each scrape therefore takes its snapshot ON THE LOOP (``call_soon_threadsafe``
and a :class:`concurrent.futures.Future`) and waits for it at most ``timeout`` seconds (2 s by
default). If the loop does not answer in time (it is blocked, stopped or closed) or the worker
is not running, the scrape still answers, with ``velo_up 0`` and ``velo_worker_info`` only:
a stuck worker shows up as down, it never hangs its scraper.

Metric names. Everything is prefixed ``velo_``, counters end in ``_total``, durations are in
seconds. Each key of ``Worker.stats()`` maps to one series through :data:`STAT_METRICS`
(key -> (Prometheus name, type, help)); a key missing from that table (one added to
``stats()`` later) is still exported, as a gauge named ``velo_<key>`` (``velo_stat_<key>`` if
that name is taken), so nothing silently disappears; add it to the table to give it its type
and help. Besides those: ``velo_up``, ``velo_worker_info``, ``velo_peers{state}``,
``velo_peer_silent_seconds{peer}``, ``velo_handler_duration_seconds{handler}`` (a histogram on
the bounds of :data:`~velo_am._handlers.LATENCY_BUCKETS`) and
``velo_handler_errors_total{handler}``; handler series cover user handlers only (not the
runtime's ``_`` handlers).

Labels. Only ``velo_worker_info`` names the worker (``worker="0x<id>"``, ``incarnation``,
``address``). Each worker serves its own port, so each is its own scrape target, and
Prometheus already attaches target labels (``job``, ``instance``) to every series it scrapes:
a worker label on every series would repeat them, and every series would be renamed whenever a
worker comes back under another id. Join when the id is wanted, e.g.
``velo_requests_failed_total * on(instance) group_left(worker) velo_worker_info``.
``velo_peer_silent_seconds`` has one series per live peer: mind the cardinality in large meshes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from ._handlers import LATENCY_BUCKETS, HandlerStats
from ._peers import PeerState, PeerStatus
from ._stats import STATS

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "DEFAULT_SCRAPE_TIMEOUT",
    "MetricsServer",
    "STAT_METRICS",
    "render_metrics",
    "start_metrics_server",
]

logger = logging.getLogger(__name__)

#: How long a scrape waits for the worker's loop to hand over a snapshot (seconds).
DEFAULT_SCRAPE_TIMEOUT: Final = 2.0

_MISSING: Final = "Worker(metrics_port=...) needs prometheus_client: pip install 'velo[metrics]'"

#: ``Worker.stats()`` key -> (Prometheus name, type, help), from the one table of statistics
#: (:data:`velo_am._stats.STATS`). Counters are monotonic since the worker started; gauges are
#: the value at the scrape.
STAT_METRICS: Final[dict[str, tuple[str, str, str]]] = {
    stat.key: (stat.metric, stat.kind, stat.help) for stat in STATS
}

_PEER_STATES: Final = tuple(str(state) for state in PeerState)
_FIXED_NAMES: Final = frozenset(
    {
        "velo_up",
        "velo_worker_info",
        "velo_peers",
        "velo_peer_silent_seconds",
        "velo_handler_duration_seconds",
        "velo_handler_duration_seconds_bucket",
        "velo_handler_duration_seconds_count",
        "velo_handler_duration_seconds_sum",
        "velo_handler_errors_total",
    }
)
_INVALID_NAME_CHARS: Final = re.compile(r"[^a-zA-Z0-9_]")
_POLL_INTERVAL: Final = 0.05  # how often the server thread checks for shutdown (seconds)
_JOIN_TIMEOUT: Final = 5.0  # bound on close() waiting for the server thread
_REQUEST_TIMEOUT: Final = 10.0  # a client that stalls its request is dropped after this


@dataclass(frozen=True, slots=True)
class _Snapshot:
    stats: dict[str, int]
    handlers: dict[str, HandlerStats]
    peers: dict[int, PeerStatus]


class Worker(Protocol):
    """What the exposition reads of a worker: its public face (a :class:`~velo_am.Worker`)."""

    @property
    def worker_id(self) -> int: ...

    @property
    def incarnation(self) -> int: ...

    @property
    def address(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...

    @property
    def peers(self) -> dict[int, PeerStatus]: ...

    def stats(self) -> dict[str, int]: ...

    def handler_stats(self, *, internal: bool = False) -> dict[str, HandlerStats]: ...


def _require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401, PLC0415 - optional; costly to import
    except ImportError as error:
        raise ImportError(_MISSING) from error


def _take_snapshot(worker: Worker) -> _Snapshot | None:
    """On the worker's loop: its statistics now, or None if it is not running."""
    if worker.state in ("new", "closed"):
        return None
    return _Snapshot(worker.stats(), worker.handler_stats(internal=False), worker.peers)


def _snapshot_from_loop(worker: Worker, timeout: float) -> _Snapshot | None:
    """The worker's snapshot, taken on its loop: None if the loop does not answer within
    ``timeout`` seconds (blocked, stopped, closed) or the worker is not running."""
    loop = worker.loop
    if loop is None or loop.is_closed():
        return None
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:  # called on the loop itself (render_metrics): waiting would deadlock
        return _take_snapshot(worker)
    future: concurrent.futures.Future[_Snapshot | None] = concurrent.futures.Future()

    def take() -> None:
        if not future.set_running_or_notify_cancel():
            return  # the scrape gave up waiting
        try:
            future.set_result(_take_snapshot(worker))
        except Exception as error:
            future.set_exception(error)

    try:
        loop.call_soon_threadsafe(take)
    except RuntimeError:  # closed meanwhile
        return None
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        logger.warning(
            "metrics: worker %#x's loop did not answer within %s s", worker.worker_id, timeout
        )
        return None
    except Exception:
        logger.exception("metrics: cannot take worker %#x's snapshot", worker.worker_id)
        return None


def _metric_name(key: str, taken: set[str]) -> str:
    """``velo_<key>`` made a valid name, or ``velo_stat_<key>`` (then numbered) if taken."""
    safe = _INVALID_NAME_CHARS.sub("_", key)
    name = f"velo_{safe}"
    number = 1
    while name in taken:
        name = f"velo_stat_{safe}" + (f"_{number}" if number > 1 else "")
        number += 1
    return name


def _bound_label(bound: float) -> str:
    """A bucket's ``le`` label as prometheus_client writes it (``1e-05``, ``0.25``, ``1.0``),
    without the float noise of the computed bounds."""
    return repr(float(f"{bound:.12g}"))


def _families(worker: Worker, snapshot: _Snapshot | None) -> Iterator[Metric]:
    """The metric families of one snapshot (pure: runs on any thread)."""
    from prometheus_client.metrics_core import (  # noqa: PLC0415 - optional dependency
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        InfoMetricFamily,
    )

    yield GaugeMetricFamily(
        "velo_up",
        "1 if the worker is running and its event loop answered this scrape, else 0 "
        "(then only velo_up and velo_worker_info are exported).",
        value=0 if snapshot is None else 1,
    )
    yield InfoMetricFamily(
        "velo_worker",
        "This worker: id, incarnation (random per start) and bound address.",
        value={
            "worker": f"{worker.worker_id:#x}",
            "incarnation": f"{worker.incarnation:#x}",
            "address": worker.address,
        },
    )
    if snapshot is None:
        return

    taken = set(_FIXED_NAMES) | {name for name, _, _ in STAT_METRICS.values()}
    for key, value in snapshot.stats.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            logger.debug("metrics: stats()[%r] is not a number: %r", key, value)
            continue
        known = STAT_METRICS.get(key)
        if known is None:
            name = _metric_name(key, taken)
            taken.add(name)
            yield GaugeMetricFamily(
                name, f"Worker.stats()[{key!r}] (not in velo's metrics table).", value=value
            )
        elif known[1] == "counter":
            yield CounterMetricFamily(known[0], known[2], value=value)
        else:
            yield GaugeMetricFamily(known[0], known[2], value=value)

    by_state = dict.fromkeys(_PEER_STATES, 0)
    for status in snapshot.peers.values():
        state = str(status.state)
        by_state[state] = by_state.get(state, 0) + 1
    peers = GaugeMetricFamily("velo_peers", "Known peers by state.", labels=["state"])
    for state, count in by_state.items():
        peers.add_metric([state], count)
    yield peers
    silent = GaugeMetricFamily(
        "velo_peer_silent_seconds",
        "Seconds since the last message from each peer alive or draining.",
        labels=["peer"],
    )
    for peer_id, status in sorted(snapshot.peers.items()):
        if status.state in ("alive", "draining"):
            silent.add_metric([f"{peer_id:#x}"], status.silent_for)
    yield silent

    durations = HistogramMetricFamily(
        "velo_handler_duration_seconds",
        "Run time of each handler on this worker, from its start to its reply (or end).",
        labels=["handler"],
    )
    errors = CounterMetricFamily(
        "velo_handler_errors_total",
        "Runs of each handler on this worker that failed.",
        labels=["handler"],
    )
    for name, stats in snapshot.handlers.items():
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(LATENCY_BUCKETS, stats.bucket_counts, strict=False):
            cumulative += count
            buckets.append((_bound_label(bound), cumulative))
        buckets.append(("+Inf", stats.calls))
        durations.add_metric([name], buckets, stats.total_seconds)
        errors.add_metric([name], stats.errors)
    yield durations
    yield errors


class _WorkerCollector:
    """A prometheus_client collector: one worker's families, from a snapshot taken on its
    loop at each collect()."""

    def __init__(self, worker: Worker, timeout: float) -> None:
        self._worker = worker
        self._timeout = timeout

    def collect(self) -> Iterable[Metric]:
        snapshot = _snapshot_from_loop(self._worker, self._timeout)
        return list(_families(self._worker, snapshot))


def _registry(worker: Worker, timeout: float) -> CollectorRegistry:
    _require_prometheus()
    from prometheus_client.registry import CollectorRegistry  # noqa: PLC0415

    if timeout <= 0:
        raise ValueError("timeout must be positive")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WorkerCollector(worker, timeout))
    return registry


def render_metrics(worker: Worker, *, timeout: float = DEFAULT_SCRAPE_TIMEOUT) -> bytes:
    """The worker's metrics in the Prometheus text format (``text/plain; version=0.0.4``).

    Meant to be called on the worker's loop (the snapshot is then taken directly); from
    another thread it waits for the loop as a scrape does (at most ``timeout`` seconds, then
    ``velo_up 0``). Raises ``ImportError`` without prometheus_client."""
    registry = _registry(worker, timeout)
    from prometheus_client.exposition import generate_latest  # noqa: PLC0415

    return generate_latest(registry)


class MetricsServer:
    """An HTTP server of one worker's ``/metrics``, on a daemon thread of its own; made by
    :func:`start_metrics_server`. ``close()`` it (or use it as a context manager)."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._httpd = httpd
        self._thread = thread
        self._host = host
        self._lock = threading.Lock()
        self._closed = False

    @property
    def port(self) -> int:
        """The port actually bound (resolved when 0 was asked)."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Where to scrape, e.g. ``http://127.0.0.1:9464/metrics``."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self._host, self._host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop serving, release the port and join the server thread (within a few seconds at
        most). Scrapes in progress finish on their own threads. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._httpd.shutdown()  # returns once serve_forever has stopped (one poll interval)
        finally:
            self._httpd.server_close()
            self._thread.join(_JOIN_TIMEOUT)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"<MetricsServer {state} at {self.url}>"


def _make_server(host: str, port: int, app: Any) -> WSGIServer:
    from socketserver import ThreadingMixIn  # noqa: PLC0415 - costly; only with metrics
    from wsgiref.simple_server import (  # noqa: PLC0415
        WSGIRequestHandler,
        WSGIServer,
        make_server,
    )

    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family = infos[0][0]

    class Server(ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True  # a scrape waits at most its timeout: never joined

        def handle_error(self, request: Any, client_address: Any) -> None:
            logger.debug("metrics: error serving %s", client_address, exc_info=True)

    class Handler(WSGIRequestHandler):
        timeout = _REQUEST_TIMEOUT

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no access log on stderr

    return make_server(host, port, app, Server, Handler)


def start_metrics_server(
    worker: Worker,
    port: int,
    host: str = "127.0.0.1",
    *,
    timeout: float = DEFAULT_SCRAPE_TIMEOUT,
) -> MetricsServer:
    """Serve ``worker``'s metrics at ``http://host:port/metrics`` (``port=0``: any free port,
    see :attr:`MetricsServer.port`) until ``close()``. Each scrape waits at most ``timeout``
    seconds for the worker's loop. Raises ``ImportError`` without prometheus_client and
    ``OSError`` if the address cannot be bound."""
    registry = _registry(worker, timeout)
    from prometheus_client.exposition import make_wsgi_app  # noqa: PLC0415

    httpd = _make_server(host, port, make_wsgi_app(registry))
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": _POLL_INTERVAL},
        name=f"velo-metrics-{worker.worker_id:#x}",
        daemon=True,
    )
    try:
        thread.start()
    except BaseException:
        httpd.server_close()
        raise
    server = MetricsServer(httpd, thread, host)
    logger.info("worker %#x serves metrics at %s", worker.worker_id, server.url)
    return server
