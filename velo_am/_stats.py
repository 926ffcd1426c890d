"""The one table of a worker's statistics: every counter and gauge, its Prometheus name and
its meaning. ``Worker.stats()``, the metrics endpoint and ``velo-am inspect`` all read it.

Counters are monotonic since the worker started and live in one dict (:func:`new_counters`)
shared by the layers that count (the worker, the outbound path, the handler executor, the
events layer); gauges are computed when a snapshot is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["COUNTERS", "GAUGES", "STATS", "Stat", "new_counters"]


@dataclass(frozen=True, slots=True)
class Stat:
    """One key of ``Worker.stats()``: its Prometheus name, type and help text."""

    key: str
    metric: str
    kind: Literal["counter", "gauge"]
    help: str


def _counter(key: str, help: str) -> Stat:
    return Stat(key, f"velo_{key}_total", "counter", help)


def _gauge(key: str, help: str) -> Stat:
    return Stat(key, f"velo_{key}", "gauge", help)


STATS: Final = (
    _counter("messages_in", "Messages received from peers (every frame set, before decoding)."),
    _counter("messages_out", "Messages handed to the transport for peers."),
    _counter("requests_handled", "Inbound requests (calls and sends) whose handler succeeded."),
    _counter(
        "requests_failed",
        "Inbound requests whose handler raised or whose result could not be encoded.",
    ),
    _counter("calls_sent", "Calls (requests awaiting a result) sent to peers."),
    _counter(
        "sends_waited",
        "Sends that waited for room: the peer had send_window of this worker's sends unfinished.",
    ),
    _counter(
        "sends_lost",
        "Sends accepted for a peer that was lost or closed before confirming it had handled "
        "them (they may not have run).",
    ),
    _counter(
        "sends_refused",
        "Sends of this worker a peer refused unrun: this worker's unfinished requests held "
        "that peer's per-peer budget.",
    ),
    _counter("dropped_malformed", "Inbound messages dropped because they could not be decoded."),
    _counter(
        "dropped_held",
        "Inbound messages other than requests dropped because their link's claim to be a "
        "member, while proven, held its sender's receive budget (requests are answered "
        "PeerBusy and counted in refused_busy).",
    ),
    _counter(
        "dropped_oversized",
        "Inbound messages dropped unread: over max_message_size, or of more frames than the "
        "protocol's two.",
    ),
    _counter(
        "connections_cut",
        "Inbound connections cut for holding an unfinished message larger than "
        "max_message_size (a multipart message that never ends).",
    ),
    _counter(
        "connections_ended",
        "Inbound connections that ended: closed by their peer, or dropped by libzmq for a "
        "frame over max_message_size (it does not say which).",
    ),
    _counter(
        "refused_busy",
        "Inbound requests refused because their sender's unfinished requests held this "
        "worker's per-peer budget (calls answered PeerBusy, sends dropped).",
    ),
    _counter(
        "dropped_wrong_incarnation",
        "Inbound messages dropped because they were meant for an earlier incarnation.",
    ),
    _counter(
        "dropped_unknown_peer",
        "Inbound messages dropped because their sender was unknown or lost.",
    ),
    _counter(
        "messages_spoofed",
        "Inbound messages dropped because their link does not speak for the sender they name "
        "(another worker's link, no handshake on it, a claim to be a member it could not "
        "prove, or with CURVE a key bound to another worker).",
    ),
    _counter(
        "late_responses",
        "Responses that arrived after their call had ended (timed out or abandoned).",
    ),
    _counter("refused_draining", "Inbound requests refused because this worker was shutting down."),
    _counter("peers_lost", "Peers that went silent, closed or were otherwise lost."),
    _counter(
        "events_subscriptions_sent", "Subscriptions sent to other workers for events they own."
    ),
    _counter(
        "events_updates_received",
        "Completions received from other workers for events awaited here.",
    ),
    _counter(
        "events_updates_sent", "Completions of this worker's events sent to subscribed workers."
    ),
    _gauge("peers_alive", "Peers alive or draining."),
    _gauge("links_open", "Links this worker opened to peers and keeps open."),
    _gauge("calls_in_flight", "Calls sent by this worker still awaiting their result."),
    _gauge("handlers_running", "Handlers running on this worker."),
    _gauge(
        "sends_unconfirmed",
        "Sends of this worker its peers have not confirmed handled (send_window per peer at most).",
    ),
    _gauge(
        "sends_unfinished",
        "Sends from peers received here whose handler has not finished (each sender's "
        "send_window at most).",
    ),
    _gauge("events_pending", "This worker's events not yet completed."),
    _gauge("events_remote_awaited", "Other workers' events awaited on this worker."),
    _gauge("events_cached", "Outcomes of other workers' events kept in this worker's cache."),
    _gauge("events_served", "Subscriptions other workers hold on this worker's events."),
    _gauge("events_leases", "Leases kept on this worker's events (renewed, or held by a member)."),
)

COUNTERS: Final = tuple(stat.key for stat in STATS if stat.kind == "counter")
GAUGES: Final = tuple(stat.key for stat in STATS if stat.kind == "gauge")


def new_counters() -> dict[str, int]:
    """A worker's counters, all zero: one dict that every layer increments by key."""
    return dict.fromkeys(COUNTERS, 0)
