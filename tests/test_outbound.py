"""The one outbound path (velo_am._outbound) and the table of calls in flight
(velo_am._calls), alone: recording links, no sockets, no workers."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest

from velo_am import (
    CallTimeout,
    HandlerNotFound,
    PeerDraining,
    PeerLost,
    PeerUnreachable,
    RemoteError,
    WorkerClosed,
)
from velo_am import _protocol as p
from velo_am._calls import CallTable
from velo_am._codec import pack
from velo_am._log import RateLimitedLog
from velo_am._outbound import Outbound
from velo_am._stats import new_counters
from velo_am.transport import LinkFull
from velo_event import EventHandle

ME, MY_INC = 1, 0x11


@dataclass
class Peer:
    worker_id: int
    incarnation: int


class RecordingLink:
    def __init__(self, full: bool = False) -> None:
        self.sent: list[list[bytes]] = []
        self.closed: float | None = None
        self.full = full

    def send(self, frames: list[bytes]) -> None:
        if self.full:
            raise LinkFull("peer queue is full")
        self.sent.append(frames)

    def close(self, linger: float) -> None:
        self.closed = linger

    def messages(self) -> list[p.Message]:
        return [p.decode(frames) for frames in self.sent]


def outbound(max_message_size: int = 1 << 20) -> tuple[Outbound, dict[str, int]]:
    counters = new_counters()
    log = RateLimitedLog(logging.getLogger("test"), ME)
    return Outbound(ME, MY_INC, max_message_size, counters=counters, log=log), counters


def test_every_send_is_enveloped_encoded_and_counted() -> None:
    out, counters = outbound()
    link = RecordingLink()
    out.attach(2, link)
    peer = Peer(2, 0x22)
    out.request(peer, 7, "echo", {"x": 1}, reply=True)
    out.reply(peer, 8, pack("done"))
    out.send_quietly(2, p.Heartbeat(ME, MY_INC, 0x22))
    request, response, heartbeat = link.messages()
    assert request == p.Request(ME, MY_INC, 0x22, 7, "echo", True, pack({"x": 1}))
    assert response == p.Response(ME, MY_INC, 0x22, 8, pack("done"))
    assert isinstance(heartbeat, p.Heartbeat)
    assert counters["messages_out"] == 3


def test_payload_bound_and_unreachable_peers_fail_loudly() -> None:
    out, counters = outbound(max_message_size=2048)
    out.attach(2, RecordingLink())
    with pytest.raises(ValueError, match="exceeds max_message_size"):
        out.request(Peer(2, 0x22), 1, "h", b"x" * 4096, reply=False)
    with pytest.raises(TypeError, match="msgpack"):
        out.request(Peer(2, 0x22), 1, "h", object(), reply=False)
    with pytest.raises(PeerUnreachable, match="not connected"):
        out.request(Peer(3, 0x33), 1, "h", None, reply=False)
    out.attach(4, RecordingLink(full=True))
    with pytest.raises(PeerUnreachable, match="queue is full"):
        out.request(Peer(4, 0x44), 1, "h", None, reply=False)
    assert counters["messages_out"] == 0
    out.reply(Peer(4, 0x44), 9, b"\xc0")  # a reply that cannot go out is dropped, not raised


def test_error_replies_escape_what_utf8_cannot_carry_and_can_speak_for_a_predecessor() -> None:
    out, _ = outbound()
    link = RecordingLink()
    out.attach(2, link)
    out.reply_error(Peer(2, 0x22), 5, p.ErrorCode.HANDLER_ERROR, "ValueError", "bad \udcff")
    out.reply_error(
        Peer(2, 0x22), 6, p.ErrorCode.WRONG_INCARNATION, "PeerLost", "old", as_incarnation=0x10
    )
    first, second = link.messages()
    assert isinstance(first, p.ErrorResponse) and first.message == "bad \\udcff"
    assert isinstance(second, p.ErrorResponse) and second.src_incarnation == 0x10


def test_links_are_replaced_and_closed() -> None:
    out, _ = outbound()
    first, second = RecordingLink(), RecordingLink()
    out.attach(2, first)
    out.attach(2, second)
    assert first.closed == 0 and second.closed is None
    out.detach(2, closed=True)
    assert second.closed and second.closed > 0, "a goodbye's acknowledgement may still go out"
    out.attach(3, third := RecordingLink())
    out.close()
    assert third.closed == 0


def test_event_updates_split_by_item_limit_and_by_size() -> None:
    out, _ = outbound(max_message_size=64 * 1024)
    link = RecordingLink()
    out.attach(2, link)
    handles = [EventHandle.from_parts(2, i, 1) for i in range(p.MAX_EVENT_ITEMS + 10)]
    done = [p.EventDone(EventHandle.from_parts(ME, i, 1), "x" * 100) for i in range(500)]
    out.event_updates(Peer(2, 0x22), handles, done)
    messages = [m for m in link.messages() if isinstance(m, p.EventUpdates)]
    assert len(messages) > 2
    assert [h for m in messages for h in m.subscribe] == handles, "all, in order"
    assert [d for m in messages for d in m.done] == done
    assert all(sum(map(len, frames)) <= 64 * 1024 for frames in link.sent)
    link.sent.clear()
    out.event_updates(Peer(2, 0x22), handles[:3], done[:3])
    assert len(link.sent) == 1, "the common case is one message"


def test_a_reason_larger_than_a_message_is_cut_to_fit() -> None:
    out, _ = outbound(max_message_size=4096)
    link = RecordingLink()
    out.attach(2, link)
    handle = EventHandle.from_parts(ME, 0, 1)
    out.event_updates(Peer(2, 0x22), (), [p.EventDone(handle, "é" * 16_000)])
    (message,) = link.messages()
    assert isinstance(message, p.EventUpdates)
    (item,) = message.done
    assert item.reason is not None and item.reason.endswith("[cut to fit max_message_size]")
    assert sum(map(len, link.sent[0])) <= 4096


# -- calls in flight ------------------------------------------------------------------------------


def error(code: p.ErrorCode, msg_id: int, message: str = "m") -> p.ErrorResponse:
    return p.ErrorResponse(2, 0x22, MY_INC, msg_id, code, "KeyError", message, "tb")


async def test_answers_become_results_or_the_exceptions_their_codes_stand_for() -> None:
    loop = asyncio.get_running_loop()
    calls = CallTable()
    expected: list[type[Exception]] = [HandlerNotFound, PeerDraining, PeerLost, RemoteError]
    codes = [
        p.ErrorCode.HANDLER_NOT_FOUND,
        p.ErrorCode.DRAINING,
        p.ErrorCode.WRONG_INCARNATION,
        p.ErrorCode.HANDLER_ERROR,
    ]
    for code, exception in zip(codes, expected, strict=True):
        msg_id, future = calls.open(loop, 2)
        assert calls.on_error(2, error(code, msg_id), "worker 0x2 at x")
        with pytest.raises(exception):
            await calls.wait(loop, msg_id, future, 5.0, "worker 0x2")
    msg_id, future = calls.open(loop, 2)
    assert not calls.on_response(3, msg_id, pack(1)), "only the callee answers its call"
    assert calls.on_response(2, msg_id, pack({"ok": True}))
    assert not calls.on_response(2, msg_id, pack(2)), "a second answer is late"
    assert await calls.wait(loop, msg_id, future, 5.0, "worker 0x2") == {"ok": True}
    assert len(calls) == 0
    msg_id, future = calls.open(loop, 2)
    calls.on_response(2, msg_id, b"\xc1")
    with pytest.raises(RemoteError, match="BadResponse"):
        await calls.wait(loop, msg_id, future, 5.0, "worker 0x2")


async def test_a_call_ends_by_timeout_by_its_peers_loss_or_by_close() -> None:
    loop = asyncio.get_running_loop()
    calls = CallTable()
    msg_id, future = calls.open(loop, 2)
    with pytest.raises(CallTimeout, match=r"no answer from worker 0x2 to 'h' within 0\.01 s"):
        await calls.wait(loop, msg_id, future, 0.01, "worker 0x2 to 'h'")
    assert not calls.on_response(2, msg_id, pack(1)), "a timed-out call's answer is late"
    waits = []
    for peer in (2, 2, 3):
        msg_id, future = calls.open(loop, peer)
        waits.append(asyncio.ensure_future(calls.wait(loop, msg_id, future, 5.0, "w")))
    calls.fail_peer(2, PeerLost("worker 0x2 lost"))
    calls.fail_all(WorkerClosed("closing"))
    results = await asyncio.gather(*waits, return_exceptions=True)
    assert [type(result) for result in results] == [PeerLost, PeerLost, WorkerClosed]
    assert results[0] is not results[1], "each caller gets its own exception"
    assert len(calls) == 0
