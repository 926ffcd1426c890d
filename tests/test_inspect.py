"""Inspection on the fake network: snapshots of live workers, and the graph views."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pydot
import pytest
from support import wait_until

from velo_am import PeerUnreachable, Worker
from velo_am._handlers import LATENCY_BUCKETS, HandlerTimer
from velo_am._inspect import (
    Graph,
    GraphNode,
    blocking_leaves,
    build_graph,
    render_dot,
    render_mermaid,
    render_text,
    snapshot,
)
from velo_event import EventError, EventPoison, EventStatus

MakeWorker = Callable[..., Any]


async def pair(make_worker: MakeWorker) -> tuple[Worker, Worker]:
    a = await make_worker(0xA)
    b = await make_worker(0xB)
    await b.connect(a.address)
    return a, b


def by_handle(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["handle"]: entry for entry in entries}


async def test_snapshot_shows_who_waits_on_what(make_worker: MakeWorker) -> None:
    a, b = await pair(make_worker)
    weights = a.events.new_event(label="weights")
    tokenizer = b.events.new_event(label="tokenizer")
    done = b.events.new_event()
    done.trigger()
    merged = b.events.merge_events(
        [weights.handle, tokenizer.handle, done.handle], label="serve ready"
    )
    task = asyncio.ensure_future(b.events.awaiter(merged))
    thread = threading.Thread(target=lambda: b.events.wait(tokenizer.handle, timeout=10))
    thread.start()
    await wait_until(lambda: a.events.stats()["served"] == 1)
    await wait_until(lambda: by_handle(snapshot(b)["pending"])[str(tokenizer.handle)]["threads"])

    snap_b = snapshot(b)
    pending = by_handle(snap_b["pending"])
    assert pending[str(tokenizer.handle)] == {
        "handle": str(tokenizer.handle),
        "label": "tokenizer",
        "tasks": 0,
        "threads": 1,
        "merges": [str(merged)],
        "subscribers": [],
    }
    assert pending[str(merged)]["tasks"] == 1
    assert pending[str(merged)]["label"] == "serve ready"
    awaited = by_handle(snap_b["awaited"])
    assert awaited[str(weights.handle)]["owner"] == 0xA
    assert awaited[str(weights.handle)]["merges"] == [str(merged)]

    nodes = {node["handle"]: node for node in snap_b["graph"]["nodes"]}
    assert nodes[str(merged)]["kind"] == "merge"
    assert nodes[str(merged)]["inputs"] == 3
    assert nodes[str(done.handle)]["status"] == "ready", "complete inputs are shown too"
    assert nodes[str(weights.handle)]["owner"] == 0xA
    edges = {tuple(edge) for edge in snap_b["graph"]["edges"]}
    assert {(str(h), str(merged)) for h in (weights.handle, tokenizer.handle, done.handle)} <= edges

    snap_a = snapshot(a)
    assert by_handle(snap_a["pending"])[str(weights.handle)]["subscribers"] == [0xB]
    assert snap_a["served"] == [{"subscriber": 0xB, "handles": [str(weights.handle)]}]
    assert snap_a["stats"]["events_served"] == 1

    text = render_text(snap_b)
    assert f"{tokenizer.handle} 'tokenizer': waited on by 1 thread(s), merge {merged}" in text
    assert "the graph waits on" in text

    weights.trigger()
    tokenizer.trigger()
    await asyncio.wait_for(task, 5)
    thread.join(5)
    assert snapshot(b)["pending"] == []
    assert b.events.labels() == {}, "labels go with their events"


async def test_united_graph_prefers_the_owner_and_names_the_blockers(
    make_worker: MakeWorker,
) -> None:
    a, b = await pair(make_worker)
    shard = a.events.new_event(label="shard 0")
    merged = b.events.merge_events([shard.handle], label="all shards")
    outer = b.events.merge_events([merged], label="serve")
    await wait_until(lambda: a.events.stats()["served"] == 1)

    alone = build_graph([snapshot(b)])
    assert alone.nodes[str(shard.handle)].label is None, "b does not know a's label"
    graph = build_graph([snapshot(b), snapshot(a)])
    assert graph.nodes[str(shard.handle)].label == "shard 0"
    assert "worker 0xb" not in graph.nodes, "b's own view replaces the subscriber box"
    leaves = blocking_leaves(graph)
    assert [(node.name, downstream) for node, downstream in leaves] == [(str(shard.handle), 2)]
    shard.poison("disk full")
    with pytest.raises(EventPoison, match="disk full"):
        await asyncio.wait_for(b.events.awaiter(outer), 5)


async def test_snapshot_limit_truncates_lists(make_worker: MakeWorker) -> None:
    worker = await make_worker(0xC)
    for _ in range(5):
        worker.events.new_event()
    snap = snapshot(worker, limit=2)
    assert len(snap["pending"]) == 2
    assert snap["truncated"]["pending"] == 3
    assert "(… 3 more pending not shown)" in render_text(snap)


async def test_inspect_handler_answers_a_remote_call(make_worker: MakeWorker) -> None:
    a, b = await pair(make_worker)
    a.events.new_event(label="from afar")
    snap = await b.call(0xA, "_inspect", {"limit": 10})
    assert snap["worker"] == 0xA
    assert [entry["label"] for entry in snap["pending"]] == ["from afar"]
    assert snap["peers"][0]["worker"] == 0xB


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pydot.dot_parser")
def test_dot_and_mermaid_escape_what_labels_hold() -> None:
    tricky = 'say "hi"\\n <b>&'
    graph = Graph(
        nodes={
            "ev:1:0:1": GraphNode("ev:1:0:1", 1, "poisoned", "event", tricky, "reason\nline 2"),
            "ev:2:0:1": GraphNode("ev:2:0:1", 2, "pending", "merge", None, None, 1),
            "worker 0x3": GraphNode("worker 0x3", 3, "subscriber", "worker"),
        },
        edges={("ev:1:0:1", "ev:2:0:1"), ("ev:2:0:1", "worker 0x3")},
    )
    dot = render_dot(graph)
    parsed = pydot.graph_from_dot_data(dot)
    assert parsed is not None and len(parsed) == 1
    names = {node.get_name().strip('"') for node in parsed[0].get_nodes()} - {"node"}
    assert names == {"ev:1:0:1", "ev:2:0:1", "worker 0x3"}
    assert len(parsed[0].get_edges()) == 2
    mermaid = render_mermaid(graph)
    assert "#quot;hi#quot;" in mermaid and "#lt;b#gt;#amp;" in mermaid
    assert '"' not in mermaid.split('["', 1)[1].split('"]', 1)[0]


async def test_remote_creation_and_wait_for_peer(make_worker: MakeWorker) -> None:
    a = await make_worker(0xA)
    c = await make_worker(0xC)
    b = await make_worker(0xB, peers=[a.address])
    with pytest.raises(PeerUnreachable, match="0xc"):
        await b.wait_for_peer(0xC, timeout=0.2)
    joining = asyncio.ensure_future(b.wait_for_peer(0xC, timeout=5))
    await c.connect(a.address)  # gossip brings b and c together
    status = await joining
    assert (status.worker_id, status.state) == (0xC, "alive")

    handle = await b.events.new_event_on(0xA, label="made for b")
    assert handle.worker_id == 0xA
    assert a.events.label_of(handle) == "made for b"
    merged = await b.events.merge_events_on(0xC, [handle], fail_fast=True, label="gate")
    assert merged.worker_id == 0xC
    with pytest.raises(EventError, match="empty"):
        await b.events.merge_events_on(0xC, [])
    a.events.trigger(handle)
    await asyncio.wait_for(b.events.awaiter(merged), 5)
    assert c.events.poll(merged) is EventStatus.READY


async def test_handler_stats_count_runs_failures_and_latency(make_worker: MakeWorker) -> None:
    a, b = await pair(make_worker)

    def fail(payload: Any, ctx: Any) -> None:
        raise ValueError("nope")

    a.register_handler("echo", lambda payload, ctx: payload)
    a.register_handler("fail", fail)
    for value in range(3):
        assert await b.call(0xA, "echo", value) == value
    with pytest.raises(Exception, match="nope"):
        await b.call(0xA, "fail")
    stats = a.handler_stats()
    assert set(stats) == {"echo", "fail"}, "runtime handlers only with internal=True"
    assert (stats["echo"].calls, stats["echo"].errors) == (3, 0)
    assert (stats["fail"].calls, stats["fail"].errors) == (1, 1)
    assert 0 < stats["echo"].quantile(0.5) <= stats["echo"].max_seconds
    assert "_ev.status" in a.handler_stats(internal=True)
    assert a.stats()["requests_failed"] == 1


def test_histogram_quantiles() -> None:
    timer = HandlerTimer()
    for seconds in (0.00002, 0.00002, 0.003, 20.0):
        timer.record(seconds, failed=False)
    stats = timer.snapshot("x")
    assert sum(stats.bucket_counts) == 4
    assert stats.bucket_counts[-1] == 1, "slower than the last bound"
    assert stats.quantile(0.5) == LATENCY_BUCKETS[1]  # 25 µs bucket
    assert stats.quantile(0.75) == 0.005
    assert stats.quantile(1.0) == 20.0
    assert stats.mean_seconds == pytest.approx((0.00004 + 0.003 + 20.0) / 4)
    with pytest.raises(ValueError):
        stats.quantile(0)
