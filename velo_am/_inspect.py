"""Inspection: a live worker's state as a plain snapshot, and its views (text, DOT, Mermaid).

:func:`snapshot` runs on the worker's loop (the runtime handler ``_inspect`` serves it to
``velo-am inspect``); it holds only msgpack-able values, handles as their strings. The views
are pure functions of snapshots: :func:`build_graph` unites the precondition graphs of one or
more workers (each worker's view of its own events wins), and :func:`render_dot` /
:func:`render_mermaid` / :func:`render_text` print them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from velo_event import EventHandle, EventStatus
from velo_event.lowlevel import MergeView, merge_view

from ._messenger import Subscription

if TYPE_CHECKING:
    from ._events import DistributedEvents
    from ._handlers import HandlerStats
    from ._peers import PeerStatus

__all__ = [
    "Graph",
    "GraphNode",
    "blocking_leaves",
    "build_graph",
    "render_dot",
    "render_mermaid",
    "render_text",
    "serve_inspect",
    "snapshot",
]

SNAPSHOT_VERSION: Final = 1
#: Entries per list in a snapshot; the rest are counted in ``truncated``.
DEFAULT_LIMIT: Final = 1000
_REASON_SHOWN: Final = 300


# -- the snapshot (on the worker's loop) ------------------------------------------------------


class Inspected(Protocol):
    """What a snapshot reads of a worker: its public face (a :class:`~velo_am.Worker` is one)."""

    @property
    def worker_id(self) -> int: ...

    @property
    def incarnation(self) -> int: ...
    @property
    def started_at(self) -> float: ...

    @property
    def events(self) -> DistributedEvents: ...

    @property
    def address(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def peers(self) -> Mapping[int, PeerStatus]: ...

    def stats(self) -> dict[str, int]: ...

    def handler_stats(self, *, internal: bool = False) -> dict[str, HandlerStats]: ...


@dataclass
class _Waiters:
    tasks: int = 0
    threads: int = 0
    merges: list[str] = field(default_factory=list)
    subscribers: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "threads": self.threads,
            "merges": self.merges,
            "subscribers": self.subscribers,
        }


def _classify(keys: Iterable[Hashable], graph: _GraphBuilder, handle: EventHandle) -> _Waiters:
    """Who the waiter keys of one event are: asyncio waits (their key is the future), merges,
    other workers subscribed (``(worker id, handle)``) or blocked threads (anything else)."""
    waiters = _Waiters()
    for key in keys:
        if isinstance(key, asyncio.Future):
            waiters.tasks += 1
            continue
        merge = merge_view(key)
        if merge is not None:
            view, _ = merge
            waiters.merges.append(str(view.handle))
            graph.add_merge(view)
            continue
        if isinstance(key, Subscription):
            waiters.subscribers.append(key.subscriber)
            graph.edge(handle, f"worker {key.subscriber:#x}")
            continue
        waiters.threads += 1
    return waiters


class _GraphBuilder:
    def __init__(self, worker: Inspected) -> None:
        self.events = worker.events
        self.me = worker.worker_id
        self.labels = worker.events.labels()
        self.nodes: dict[str, dict[str, Any]] = {}
        self.edges: set[tuple[str, str]] = set()
        self.merges: dict[str, MergeView] = {}

    def node(self, handle: EventHandle, status: str, reason: str | None = None) -> None:
        name = str(handle)
        if name not in self.nodes:
            self.nodes[name] = {
                "handle": name,
                "owner": handle.worker_id,
                "status": status,
                "reason": None if reason is None else reason[:_REASON_SHOWN],
                "label": self.labels.get(handle),
                "kind": "event",
            }

    def edge(self, source: EventHandle, target: str) -> None:
        self.edges.add((str(source), target))

    def add_merge(self, view: MergeView) -> None:
        self.merges[str(view.handle)] = view

    def finish(self) -> dict[str, Any]:
        for name, view in self.merges.items():
            self.node(view.handle, "pending")
            self.nodes[name]["kind"] = "merge"
            self.nodes[name]["inputs"] = len(view.inputs)
            for position, source in enumerate(view.inputs):
                if position in view.pending:
                    status = "pending"
                elif position not in view.failed:
                    status = "ready"
                elif self.events.poll(source) is EventStatus.POISONED:  # a verdict known here
                    status = "poisoned"
                else:  # failed without an outcome: its owner lost, or restarted since
                    status = "unknown"
                reason = None
                if status == "poisoned" and source.worker_id == self.me:
                    reason = self.events.poison_reason(source)
                self.node(source, status, reason)
                self.edge(source, name)
        return {"nodes": list(self.nodes.values()), "edges": sorted(self.edges)}


def snapshot(worker: Inspected, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Everything ``velo-am inspect`` shows of ``worker``, as plain data. Call on its loop."""
    events = worker.events
    graph = _GraphBuilder(worker)
    truncated: dict[str, int] = {}

    pending = []
    for handle, keys in events.pending_waiters():
        graph.node(handle, "pending")
        entry: dict[str, Any] = {"handle": str(handle), "label": graph.labels.get(handle)}
        entry.update(_classify(keys, graph, handle).as_dict())
        pending.append(entry)
    awaited = []
    for handle, keys in events.remote_waiters():
        graph.node(handle, "pending")
        entry = {"handle": str(handle), "owner": handle.worker_id}
        entry.update(_classify(keys, graph, handle).as_dict())
        awaited.append(entry)
    served = [
        {"subscriber": subscriber, "handles": sorted(str(handle) for handle in handles)}
        for subscriber, handles in events.served().items()
    ]
    handlers = [
        {
            "name": name,
            "calls": stats.calls,
            "errors": stats.errors,
            "mean": stats.mean_seconds,
            "p50": stats.quantile(0.5),
            "p99": stats.quantile(0.99),
            "max": stats.max_seconds,
        }
        for name, stats in worker.handler_stats(internal=True).items()
        if stats.calls or not name.startswith("_")
    ]
    peers = [
        {
            "worker": status.worker_id,
            "address": status.address,
            "state": str(status.state),
            "silent_for": round(status.silent_for, 3),
        }
        for status in worker.peers.values()
    ]
    graph_data = graph.finish()

    def cap(name: str, items: list[Any]) -> list[Any]:
        if len(items) > limit:
            truncated[name] = len(items) - limit
            return items[:limit]
        return items

    return {
        "version": SNAPSHOT_VERSION,
        "worker": worker.worker_id,
        "incarnation": worker.incarnation,
        "address": worker.address,
        "state": str(worker.state),
        "pid": os.getpid(),
        "uptime": round(time.monotonic() - worker.started_at, 3),
        "peers": cap("peers", peers),
        "stats": worker.stats(),
        "handlers": cap("handlers", handlers),
        "pending": cap("pending", pending),
        "awaited": cap("awaited", awaited),
        "served": cap("served", served),
        "graph": {
            "nodes": cap("nodes", graph_data["nodes"]),
            "edges": cap("edges", graph_data["edges"]),
        },
        "truncated": truncated,
    }


def serve_inspect(worker: Inspected) -> Callable[[dict[str, Any] | None, object], dict[str, Any]]:
    """The runtime handler ``_inspect`` of ``worker``: its :func:`snapshot` (payload
    ``{limit: int}``, optional)."""

    def on_inspect(payload: dict[str, Any] | None, ctx: object) -> dict[str, Any]:
        return snapshot(worker, limit=(payload or {}).get("limit", DEFAULT_LIMIT))

    return on_inspect


# -- graph views (pure) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One event of a precondition graph, as seen by its owner when it reported it."""

    name: str
    owner: int
    status: str  # pending, ready, poisoned, unknown (a merge's input: no outcome), subscriber
    kind: str  # event, merge, or worker
    label: str | None = None
    reason: str | None = None
    inputs: int = 0


@dataclass
class Graph:
    nodes: dict[str, GraphNode] = field(default_factory=dict)
    edges: set[tuple[str, str]] = field(default_factory=set)


def build_graph(snapshots: Iterable[dict[str, Any]]) -> Graph:
    """Unite the graphs of one or more workers' snapshots. Where several describe one event,
    its owner's description wins (a subscriber's may lag behind an update in flight)."""
    graph = Graph()
    snapshots = list(snapshots)
    for snap in snapshots:
        reporter = snap["worker"]
        for data in snap["graph"]["nodes"]:
            node = GraphNode(
                data["handle"],
                data["owner"],
                data["status"],
                data["kind"],
                data.get("label"),
                data.get("reason"),
                data.get("inputs", 0),
            )
            known = graph.nodes.get(node.name)
            if known is None or (data["owner"] == reporter and known.owner != reporter):
                if known is not None and node.label is None:
                    node = dataclasses.replace(node, label=known.label)
                graph.nodes[node.name] = node
            elif known.label is None and node.label is not None:
                graph.nodes[node.name] = dataclasses.replace(known, label=node.label)
        for source, target in snap["graph"]["edges"]:
            graph.edges.add((source, target))
    # "worker X awaits this" stands for a worker whose own view is missing; with it, the
    # edges from the awaited event into X's merges say more.
    reporters = {f"worker {snap['worker']:#x}" for snap in snapshots}
    graph.edges = {edge for edge in graph.edges if edge[1] not in reporters}
    for _, target in list(graph.edges):
        if target.startswith("worker ") and target not in graph.nodes:
            owner = int(target.split()[1], 16)
            graph.nodes[target] = GraphNode(target, owner, "subscriber", "worker")
    return graph


def blocking_leaves(graph: Graph) -> list[tuple[GraphNode, int]]:
    """The pending events that hold the graph up: pending, with no pending input of their own
    (nothing else to wait for: someone must trigger them). Each with how many events wait on
    it, directly or not, most-blocking first."""
    pending_inputs: dict[str, int] = {}
    downstream: dict[str, set[str]] = {}
    for source, target in graph.edges:
        if graph.nodes.get(source, None) and graph.nodes[source].status == "pending":
            pending_inputs[target] = pending_inputs.get(target, 0) + 1
        downstream.setdefault(source, set()).add(target)
    leaves = []
    for name, node in graph.nodes.items():
        if node.status != "pending" or pending_inputs.get(name):
            continue
        seen: set[str] = set()
        stack = [name]
        while stack:
            for target in downstream.get(stack.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        events = [target for target in seen if graph.nodes.get(target, node).kind != "worker"]
        leaves.append((node, len(events)))
    leaves.sort(key=lambda item: (-item[1], item[0].name))
    return leaves


def _title(node: GraphNode) -> str:
    return f"{node.label} ({node.name})" if node.label else node.name


def _describe(node: GraphNode) -> list[str]:
    """The lines of a node's box: label, handle, kind and owner, status (and reason)."""
    if node.kind == "worker":
        return [f"worker {node.owner:#x}", "awaits this"]
    lines = [node.label] if node.label else []
    lines.append(node.name)
    kind = f"merge of {node.inputs}" if node.kind == "merge" else "event"
    lines.append(f"{kind} · owner {node.owner:#x}")
    status = node.status
    if node.reason:
        reason = node.reason if len(node.reason) <= 60 else node.reason[:57] + "…"
        status = f"{status}: {reason}"
    lines.append(status)
    return lines


_COLOURS: Final = {
    "pending": "#fff3b0",
    "ready": "#c7f0c2",
    "poisoned": "#f7b6b2",
    "unknown": "#d9d9d9",
    "subscriber": "#dde6f5",
}


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_dot(graph: Graph) -> str:
    """Graphviz DOT: one box per event, coloured by status, an arrow from each input to what
    waits on it. Comments at the top name the events that hold the graph up."""
    lines = ["// velo precondition graph: an arrow goes from an input to what waits on it"]
    for node, blocked in blocking_leaves(graph):
        lines.append(
            f"// waiting on {_title(node)}, owner {node.owner:#x}: pending, "
            f"{blocked} event(s) downstream"
        )
    lines.append("digraph velo {")
    lines.append("  rankdir=LR;")
    lines.append('  node [shape=box, style="rounded,filled", fontname="Helvetica"];')
    for name in sorted(graph.nodes):
        node = graph.nodes[name]
        label = "\n".join(_describe(node))
        colour = _COLOURS.get(node.status, "#ffffff")
        shape = ", shape=ellipse" if node.kind == "worker" else ""
        lines.append(
            f"  {_dot_quote(name)} [label={_dot_quote(label)}, fillcolor={_dot_quote(colour)}"
            f"{shape}];"
        )
    for source, target in sorted(graph.edges):
        lines.append(f"  {_dot_quote(source)} -> {_dot_quote(target)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    return (
        text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    )


def render_mermaid(graph: Graph) -> str:
    """The same graph as a Mermaid flowchart (renders in GitHub and GitLab markdown)."""
    ids = {name: f"n{index}" for index, name in enumerate(sorted(graph.nodes))}
    lines = ["flowchart LR"]
    for name in sorted(graph.nodes):
        node = graph.nodes[name]
        label = "<br/>".join(_mermaid_text(line) for line in _describe(node))
        lines.append(f'  {ids[name]}["{label}"]:::{node.status}')
    for source, target in sorted(graph.edges):
        if source in ids and target in ids:
            lines.append(f"  {ids[source]} --> {ids[target]}")
    for status, colour in _COLOURS.items():
        lines.append(f"  classDef {status} fill:{colour},stroke:#555")
    return "\n".join(lines) + "\n"


# -- text view ----------------------------------------------------------------------------


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def _waited_by(entry: dict[str, Any]) -> str:
    parts = []
    if entry["tasks"]:
        parts.append(f"{entry['tasks']} task(s)")
    if entry["threads"]:
        parts.append(f"{entry['threads']} thread(s)")
    parts.extend(f"merge {merge}" for merge in entry["merges"])
    parts.extend(f"worker {worker:#x}" for worker in entry["subscribers"])
    return ", ".join(parts) if parts else "nobody"


def render_text(snap: dict[str, Any]) -> str:
    """A human-readable report of one worker's snapshot."""
    out = [
        f"worker {snap['worker']:#x}  {snap['state']}  at {snap['address']}  "
        f"(pid {snap['pid']}, up {_seconds(snap['uptime'])}, "
        f"incarnation {snap['incarnation']:#x})",
        "",
    ]
    closed = sum(1 for peer in snap["peers"] if peer["state"] == "closed")
    listed = [peer for peer in snap["peers"] if peer["state"] != "closed"]
    out.append(f"peers ({len(listed)})" + (f", and {closed} closed recently" if closed else ""))
    for peer in sorted(listed, key=lambda item: item["worker"]):
        out.append(
            f"  {peer['worker']:#x}  {peer['state']:<9} {peer['address']}  "
            f"last heard {_seconds(peer['silent_for'])} ago"
        )
    graph = build_graph([snap])
    leaves = blocking_leaves(graph)
    out += ["", f"pending events owned here ({len(snap['pending'])})"]
    for entry in snap["pending"]:
        label = f" {entry['label']!r}" if entry["label"] else ""
        node = graph.nodes.get(entry["handle"])
        kind = f" merge of {node.inputs}" if node is not None and node.kind == "merge" else ""
        out.append(f"  {entry['handle']}{label}{kind}: waited on by {_waited_by(entry)}")
    out += ["", f"other workers' events awaited here ({len(snap['awaited'])})"]
    for entry in snap["awaited"]:
        out.append(
            f"  {entry['handle']} owner {entry['owner']:#x}: waited on by {_waited_by(entry)}"
        )
    served = sum(len(entry["handles"]) for entry in snap["served"])
    out += ["", f"subscriptions served to other workers ({served})"]
    for entry in snap["served"]:
        out.append(f"  worker {entry['subscriber']:#x}: {', '.join(entry['handles'])}")
    if leaves:
        out += ["", "the graph waits on"]
        for node, blocked in leaves:
            out.append(
                f"  {_title(node)}, owner {node.owner:#x}: still pending, "
                f"{blocked} event(s) downstream"
            )
    out += ["", "counters and gauges"]
    stats = snap["stats"]
    names = sorted(stats)
    width = max((len(name) for name in names), default=0)
    out.extend(f"  {name:<{width}}  {stats[name]:>12,}" for name in names)
    out += ["", "handlers"]
    if snap["handlers"]:
        out.append(f"  {'name':<24} {'calls':>9} {'errors':>7} {'mean':>9} {'p50':>9} "
                   f"{'p99':>9} {'max':>9}")  # fmt: skip
        for entry in snap["handlers"]:
            out.append(
                f"  {entry['name']:<24} {entry['calls']:>9,} {entry['errors']:>7,} "
                f"{_seconds(entry['mean']):>9} {'≤' + _seconds(entry['p50']):>9} "
                f"{'≤' + _seconds(entry['p99']):>9} {_seconds(entry['max']):>9}"
            )
    else:
        out.append("  none registered")
    for name, count in snap["truncated"].items():
        out.append(f"(… {count} more {name} not shown)")
    return "\n".join(out) + "\n"
