"""Prometheus exposition (velo_am._metrics): scraped over real HTTP and parsed back."""

from __future__ import annotations

import asyncio
import importlib
import re
import socket
import sys
import threading
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import velo_am
from velo_am import CallContext, RemoteError, Worker
from velo_am._handlers import LATENCY_BUCKETS
from velo_am._metrics import (
    STAT_METRICS,
    MetricsServer,
    render_metrics,
    start_metrics_server,
)
from velo_am.transport import FakeNetwork

#: No heartbeat traffic during a test, so counters hold still between a scrape and stats().
QUIET = {"heartbeat_interval": 10.0, "heartbeat_timeout": 30.0}
# No proxy from the environment may stand between a test and 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scrape:
    """One exposition, parsed: sample values by (name, labels) and family types by name."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: Samples = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
                self.types[sample.name] = family.type

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def buckets(self, histogram: str, **labels: str) -> list[tuple[float, float]]:
        """A histogram's (upper bound, cumulative count) pairs, by bound."""
        return sorted(
            (float(dict(key)["le"]), value)
            for (name, key), value in self.samples.items()
            if name == f"{histogram}_bucket" and {**dict(key), **labels} == dict(key)
        )

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def _get(url: str) -> Scrape:
    with _OPENER.open(url, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return Scrape(response.read().decode())


async def scrape(server: MetricsServer) -> Scrape:
    """Over HTTP from another thread: this loop keeps running, to hand over the snapshot."""
    return await asyncio.to_thread(_get, server.url)


async def test_scrape_matches_stats_handler_stats_and_peers(make_worker: Any) -> None:
    a, b = await make_worker(1, **QUIET), await make_worker(2, **QUIET)

    @b.handler("double")
    def double(payload: Any, ctx: CallContext) -> int:
        return int(payload) * 2

    @b.handler("boom")
    def boom(payload: Any, ctx: CallContext) -> None:
        raise KeyError("missing shard")

    await a.connect(b.address)
    assert [await a.call(2, "double", n) for n in range(3)] == [0, 2, 4]
    with pytest.raises(RemoteError):
        await a.call(2, "boom")

    with start_metrics_server(b, 0) as server:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        got = await scrape(server)
        stats = b.stats()
        handlers = b.handler_stats()

    assert got.value("velo_up") == 1
    assert (
        got.value(
            "velo_worker_info", worker="0x2", incarnation=f"{b.incarnation:#x}", address=b.address
        )
        == 1
    )
    # Every stats() key, under its table name (or the fallback name), with its value and type.
    for key, value in stats.items():
        name, kind, _ = STAT_METRICS.get(key, (f"velo_{key}", "gauge", ""))
        assert got.value(name) == value, key
        assert got.types[name] == kind, key
    assert got.value("velo_requests_handled_total") == 3
    assert got.value("velo_requests_failed_total") == 1
    assert got.types["velo_requests_failed_total"] == "counter"

    # The histogram: cumulative buckets on LATENCY_BUCKETS, +Inf == _count == calls.
    for handler, calls, errors in (("double", 3, 0), ("boom", 1, 1)):
        assert got.value("velo_handler_duration_seconds_count", handler=handler) == calls
        assert got.value("velo_handler_duration_seconds_bucket", handler=handler, le="+Inf") == (
            calls
        )
        assert got.value("velo_handler_duration_seconds_sum", handler=handler) == pytest.approx(
            handlers[handler].total_seconds
        )
        assert got.value("velo_handler_errors_total", handler=handler) == errors
        buckets = got.buckets("velo_handler_duration_seconds", handler=handler)
        assert [le for le, _ in buckets] == pytest.approx([*LATENCY_BUCKETS, float("inf")])
        cumulative = [count for _, count in buckets]
        per_bucket = handlers[handler].bucket_counts
        assert cumulative == [sum(per_bucket[: i + 1]) for i in range(len(per_bucket))]
    assert got.types["velo_handler_duration_seconds_bucket"] == "histogram"
    assert got.types["velo_handler_errors_total"] == "counter"

    assert got.value("velo_peers", state="alive") == 1
    assert got.value("velo_peers", state="lost") == 0
    assert 0 <= got.value("velo_peer_silent_seconds", peer="0x1") < 30

    # The calling side counts its calls.
    caller = Scrape(render_metrics(a).decode())
    assert caller.value("velo_calls_sent_total") == 4 == a.stats()["calls_sent"]
    assert ("velo_handler_duration_seconds_count", frozenset({("handler", "double")})) not in (
        caller.samples
    )


async def test_unknown_stats_keys_are_exported_as_gauges(
    make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = await make_worker(1, **QUIET)
    stats = worker.stats
    monkeypatch.setattr(worker, "stats", lambda: {**stats(), "brand_new": 7, "peers": 3})

    got = Scrape(render_metrics(worker).decode())

    assert got.value("velo_brand_new") == 7
    assert got.types["velo_brand_new"] == "gauge"
    assert got.value("velo_stat_peers") == 3  # velo_peers is taken by the per-state gauge
    assert got.value("velo_peers", state="alive") == 0


async def test_scrape_of_a_blocked_loop_answers_down_within_the_bound(make_worker: Any) -> None:
    worker = await make_worker(1, **QUIET)
    results: list[Scrape | BaseException] = []
    done = threading.Event()

    with start_metrics_server(worker, 0, timeout=0.2) as server:

        def scrape_while_blocked() -> None:
            try:
                results.append(_get(server.url))
            except BaseException as error:
                results.append(error)
            finally:
                done.set()

        thread = threading.Thread(target=scrape_while_blocked)
        started = time.monotonic()
        thread.start()
        # Block this (the worker's) loop until the scrape has its answer.
        assert done.wait(30), "the scrape hung while the loop was blocked"
        elapsed = time.monotonic() - started
        thread.join(30)

        [got] = results
        assert isinstance(got, Scrape), got
        assert got.value("velo_up") == 0
        assert (
            got.value(
                "velo_worker_info",
                worker="0x1",
                incarnation=f"{worker.incarnation:#x}",
                address=worker.address,
            )
            == 1
        )
        assert "velo_messages_in_total" not in got.names()
        assert elapsed < 10

        # Unblocked, the loop runs the stale snapshot request harmlessly and answers again.
        again = await scrape(server)
        assert again.value("velo_up") == 1
        assert again.value("velo_messages_in_total") == worker.stats()["messages_in"]


async def test_closed_worker_is_down(make_worker: Any) -> None:
    worker = await make_worker(1, **QUIET)
    with start_metrics_server(worker, 0) as server:
        assert (await scrape(server)).value("velo_up") == 1
        await worker.close()
        got = await scrape(server)
    assert got.value("velo_up") == 0
    assert "velo_handler_errors_total" not in got.names()
    assert Scrape(render_metrics(worker).decode()).value("velo_up") == 0


def test_stopped_or_closed_loop_is_down_without_hanging() -> None:
    worker = Worker(1, transport=FakeNetwork().transport(), **QUIET)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(worker.start())
        with start_metrics_server(worker, 0, timeout=0.2) as server:
            # The loop exists but nobody runs it: the scrape gives up after its timeout.
            started = time.monotonic()
            assert _get(server.url).value("velo_up") == 0
            assert time.monotonic() - started < 10
            loop.run_until_complete(worker.close())
            loop.close()
            # A closed loop cannot be asked at all: down at once.
            assert _get(server.url).value("velo_up") == 0
            assert render_metrics(worker, timeout=30).count(b"velo_up 0.0") == 1
    finally:
        if not loop.is_closed():
            loop.run_until_complete(worker.close())
            loop.close()


async def test_close_is_idempotent_and_frees_the_port(make_worker: Any) -> None:
    worker = await make_worker(1, **QUIET)
    server = start_metrics_server(worker, 0)
    port = server.port
    assert (await scrape(server)).value("velo_up") == 1
    assert not server.closed

    server.close()
    server.close()
    assert server.closed
    assert "closed" in repr(server)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()

    with start_metrics_server(worker, port) as again:  # the same port binds again
        assert again.port == port
        assert (await scrape(again)).value("velo_up") == 1
    assert again.closed


async def test_bad_timeout_and_address_in_use(make_worker: Any) -> None:
    worker = await make_worker(1, **QUIET)
    with pytest.raises(ValueError, match="timeout"):
        start_metrics_server(worker, 0, timeout=0)
    with start_metrics_server(worker, 0) as server, pytest.raises(OSError):
        start_metrics_server(worker, server.port)


async def test_without_prometheus_client_import_works_and_start_explains(
    make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = await make_worker(1, **QUIET)
    for name in [name for name in sys.modules if name.split(".")[0] == "prometheus_client"]:
        monkeypatch.setitem(sys.modules, name, None)
    # Restored afterwards: the module as imported, in sys.modules and on the package.
    monkeypatch.setattr(velo_am, "_metrics", sys.modules["velo_am._metrics"])
    monkeypatch.delitem(sys.modules, "velo_am._metrics")

    fresh = importlib.import_module("velo_am._metrics")

    message = "Worker(metrics_port=...) needs prometheus_client: pip install 'velo[metrics]'"
    with pytest.raises(ImportError, match=re.escape(message)):
        fresh.start_metrics_server(worker, 0)
    with pytest.raises(ImportError, match=re.escape(message)):
        fresh.render_metrics(worker)


async def test_worker_metrics_port_serves_while_running_and_stops_on_close(
    network: FakeNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker(metrics_port=...) — here from $VELO_METRICS_PORT — serves until close()."""
    monkeypatch.setenv("VELO_METRICS_PORT", "0")
    worker = Worker(0x71, transport=network.transport(), **QUIET)
    assert worker.metrics_port == 0 and worker.metrics is None
    await worker.start()
    try:
        assert worker.metrics is not None
        scraped = await scrape(worker.metrics)
        assert scraped.value("velo_up") == 1
    finally:
        await worker.close()
    assert worker.metrics.closed
    with socket.create_server(("127.0.0.1", worker.metrics.port)):
        pass  # the port is free again
