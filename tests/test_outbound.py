"""The one outbound path (velo_am._outbound) and the table of calls in flight
(velo_am._calls), alone: recording links, no sockets, no workers."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import pytest
from test_membership import admit, table

from velo_am import (
    CallTimeout,
    HandlerNotFound,
    PeerDraining,
    PeerLost,
    PeerUnreachable,
    RemoteError,
    WorkerClosed,
    _outbound,
)
from velo_am import _protocol as p
from velo_am._calls import CallTable
from velo_am._codec import pack
from velo_am._log import RateLimitedLog
from velo_am._outbound import Outbound
from velo_am._stats import new_counters
from velo_am._update_chunks import chunks
from velo_am.transport import LinkClosed, LinkFull
from velo_event import EventHandle

ME, MY_INC = 1, 0x11


@dataclass
class Peer:
    worker_id: int
    incarnation: int


class RecordingTransport:
    """The transport seam, recording what is sent on which link."""

    def __init__(self) -> None:
        self.sent: dict[bytes, list[list[bytes]]] = {}
        self.connected: dict[bytes, str] = {}
        self.full: set[bytes] = set()
        self.gone: set[bytes] = set()
        self._next = 0

    def start(self, *args: Any, **kwargs: Any) -> str:
        return "test://me"

    def connect(self, address: str, peer_id: int | None = None) -> bytes:
        for link, known in self.connected.items():
            if known == address:
                return link
        self._next += 1
        link = b"o%d" % self._next
        self.connected[link] = address
        return link

    def send(self, link: bytes, frames: list[bytes]) -> None:
        if link in self.full:
            raise LinkFull("the peer's queue is full")
        if link in self.gone:
            raise LinkClosed("no such connection")
        self.sent.setdefault(link, []).append(frames)

    def disconnect(self, link: bytes) -> None:
        self.connected.pop(link, None)

    async def close(self) -> None:
        pass

    def messages(self, link: bytes) -> list[p.Message]:
        return [p.decode(frames) for frames in self.sent.get(link, [])]


ADDRESSES = {2: "test://2", 3: "test://3", 4: "test://4"}
INTRO = p.Hello(ME, MY_INC, 0, 0, "test://me", 0, 1, ())


def outbound(
    max_message_size: int = 1 << 20, **options: Any
) -> tuple[Outbound, RecordingTransport, dict[str, int]]:
    counters = new_counters()
    log = RateLimitedLog(logging.getLogger("test"), ME)
    transport = RecordingTransport()
    out = Outbound(
        ME,
        MY_INC,
        max_message_size,
        transport=transport,
        locate=ADDRESSES.get,
        introduction=lambda: p.encode(INTRO),
        counters=counters,
        log=log,
        **options,
    )
    return out, transport, counters


def test_a_link_opens_on_first_business_and_is_introduced() -> None:
    out, transport, counters = outbound()
    peer = Peer(2, 0x22)
    out.request(peer, 7, "echo", {"x": 1}, reply=True)
    out.send_quietly(2, p.Heartbeat(ME, MY_INC, 0x22))
    (link,) = transport.connected
    assert transport.connected[link] == "test://2"
    hello, request, heartbeat = transport.messages(link)
    assert hello == INTRO, "a new link starts with who we are"
    assert request == p.Request(ME, MY_INC, 0x22, 7, "echo", True, pack({"x": 1}))
    assert isinstance(heartbeat, p.Heartbeat)
    assert counters["messages_out"] == 3
    assert out.own_links() == 1 and out.linked() == {2}


def test_an_answer_goes_back_on_the_link_its_request_came_on() -> None:
    out, transport, _ = outbound()
    out.heard(3, b"their-link", now=1.0)  # worker 3 opened a link to us
    out.reply(Peer(3, 0x33), b"their-link", 5, pack("done"))
    assert transport.messages(b"their-link") == [p.Response(ME, MY_INC, 0x33, 5, pack("done"))]
    assert not transport.connected, "answering opened no link of ours"
    out.send_quietly(3, p.Heartbeat(ME, MY_INC, 0x33))
    assert len(transport.sent[b"their-link"]) == 2, "with no link of ours, theirs carries sends"
    transport.gone.add(b"their-link")
    out.reply(Peer(3, 0x33), b"their-link", 6, pack("late"))
    (link,) = transport.connected
    assert transport.messages(link)[-1] == p.Response(ME, MY_INC, 0x33, 6, pack("late"))


def request_ids(transport: RecordingTransport, link: bytes) -> list[int]:
    return [m.msg_id for m in transport.messages(link) if isinstance(m, p.Request)]


def test_business_goes_on_a_link_of_ours_never_on_the_one_the_peer_opened() -> None:
    """Measured: under load, 55 of 1,100 clients' calls to a server with ``max_links=64``
    timed out (CallTimeout after 30 s). Each went on the link the server had opened to its
    client, and the server, past its cap, closed that link with the call in flight. What a
    worker needs answered or confirmed goes on a link of its own, which its business keeps
    open; answers still go back on the peer's."""
    out, transport, _ = outbound()
    peer = Peer(3, 0x33)
    out.heard(3, b"their-link", now=1.0)  # worker 3 opened a link to us
    out.event_updates(peer, [], [p.EventDone(EventHandle.from_parts(ME, 1, 1), None)])
    out.send_quietly(3, p.Heartbeat(ME, MY_INC, 0x33))
    assert not transport.connected, "answers and membership news take the peer's link"
    out.request(peer, 1, "note", None, reply=False)
    (own,) = transport.connected
    out.request(peer, 2, "echo", None, reply=True)
    out.request(peer, 3, "note", None, reply=False)
    out.event_updates(peer, [EventHandle.from_parts(3, 1, 1)], [])
    assert request_ids(transport, own) == [1, 2, 3], "all on one link: sends stay in order"
    assert isinstance(transport.messages(own)[-1], p.EventUpdates), "a subscription too"
    assert request_ids(transport, b"their-link") == []
    assert len(transport.sent[b"their-link"]) == 2


def test_a_handshake_link_a_call_just_went_on_stays_open() -> None:
    """Seen in 1 of ~15 stressed runs: a client's call went on its join link, the answer to a
    second handshake on that link arrived, and the link was closed as having no business
    (as of the last clock tick), losing the call's answer: CallTimeout after 30 s."""
    out, transport, _ = outbound()
    link = out.dial(ADDRESSES[2], 2, now=1.0, handshake=True)
    out.tick(now=1.5, interest=set())
    out.request(Peer(2, 0x22), 7, "whoami", None, reply=True)  # on the handshake's link
    out.dial_ended(link, release=True)
    assert link in transport.connected, "a call is in flight on it"
    link3 = out.dial(ADDRESSES[3], 3, now=2.0, handshake=True)
    out.dial_ended(link3, release=True)
    assert link3 not in transport.connected, "it carried nothing, and no business: closed"


def test_payload_bound_and_unreachable_peers_fail_loudly() -> None:
    out, transport, counters = outbound(max_message_size=2048)
    with pytest.raises(ValueError, match="exceeds max_message_size"):
        out.request(Peer(2, 0x22), 1, "h", b"x" * 4096, reply=False)
    with pytest.raises(TypeError, match="msgpack"):
        out.request(Peer(2, 0x22), 1, "h", object(), reply=False)
    with pytest.raises(PeerUnreachable, match="not connected"):
        out.request(Peer(9, 0x99), 1, "h", None, reply=False)  # nowhere to reach it
    with pytest.raises(PeerUnreachable, match="not connected"):
        out.send(2, p.Heartbeat(ME, MY_INC, 0x22), dial=False)  # no link, and none opened
    out.request(Peer(4, 0x44), 1, "h", None, reply=False)
    transport.full.update(transport.connected)
    with pytest.raises(PeerUnreachable, match="queue is full"):
        out.request(Peer(4, 0x44), 2, "h", None, reply=False)
    assert counters["messages_out"] == 2


def test_error_replies_escape_what_utf8_cannot_carry_and_can_speak_for_a_predecessor() -> None:
    out, transport, _ = outbound()
    peer = Peer(2, 0x22)
    out.reply_error(peer, b"l", 5, p.ErrorCode.HANDLER_ERROR, "ValueError", "bad \udcff")
    out.reply_error(
        peer, b"l", 6, p.ErrorCode.WRONG_INCARNATION, "PeerLost", "old", as_incarnation=0x10
    )
    first, second = transport.messages(b"l")
    assert isinstance(first, p.ErrorResponse) and first.message == "bad \\udcff"
    assert isinstance(second, p.ErrorResponse) and second.src_incarnation == 0x10


def test_idle_links_close_unless_business_pins_them_and_the_cap_holds() -> None:
    out, transport, _ = outbound(link_idle=10.0, max_links=2)
    for peer_id in (2, 3):
        out.heard(peer_id, out.dial(ADDRESSES[peer_id], peer_id, now=0.0), now=0.0)
    out.tick(now=5.0, interest=set())
    assert out.own_links() == 2, "not idle long enough"
    out.tick(now=11.0, interest={2})
    assert out.linked() == {2}, "3 was idle and nobody had business with it"
    out.tick(now=12.0, interest={2})
    out.dial(ADDRESSES[3], 3, now=12.0)
    out.dial(ADDRESSES[4], 4, now=12.5)
    assert out.own_links() == 2, "the cap closes the least recently used link"
    assert 4 in out.linked()
    out.forget(4)
    out.close()
    assert out.own_links() == 0 and not transport.connected


def test_event_updates_split_by_item_limit_and_by_size() -> None:
    out, transport, _ = outbound(max_message_size=64 * 1024)
    handles = [EventHandle.from_parts(2, i, 1) for i in range(p.MAX_EVENT_ITEMS + 10)]
    done = [p.EventDone(EventHandle.from_parts(ME, i, 1), "x" * 100) for i in range(500)]
    out.event_updates(Peer(2, 0x22), handles, done)
    (link,) = transport.connected
    messages = [m for m in transport.messages(link) if isinstance(m, p.EventUpdates)]
    assert len(messages) > 2
    assert [h for m in messages for h in m.subscribe] == handles, "all, in order"
    assert [d for m in messages for d in m.done] == done
    assert all(sum(map(len, frames)) <= 64 * 1024 for frames in transport.sent[link])
    before = len(transport.sent[link])
    out.event_updates(Peer(2, 0x22), handles[:3], done[:3])
    assert len(transport.sent[link]) == before + 1, "the common case is one message"


def test_the_common_case_of_event_updates_is_one_part_returned_whole() -> None:
    """A few small items come back from ``chunks`` as their one part in a list, with no
    generator to step through."""
    mine, theirs = EventHandle.from_parts(ME, 0, 1), EventHandle.from_parts(2, 0, 1)
    done = p.EventDone(mine, "why")
    assert chunks([theirs], [done], 64 * 1024) == [((theirs,), (done,))]
    assert chunks((), (), 64 * 1024) == [((), ())]


def test_event_updates_that_fit_one_message_are_sent_without_cutting_them_into_parts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every remote await and completion sends event updates: items that fit one message
    (nearly all) are encoded as they are, without ``chunks`` and its tuples; only items
    past the item limit or the size bound are cut into parts."""
    out, transport, _ = outbound(max_message_size=4096)
    parts: list[int] = []

    def counted_chunks(*args: Any) -> Any:
        parts.append(1)
        return chunks(*args)

    monkeypatch.setattr(_outbound, "chunks", counted_chunks)
    mine, theirs = EventHandle.from_parts(ME, 0, 1), EventHandle.from_parts(2, 0, 1)
    done = p.EventDone(mine, "why")
    out.event_updates(Peer(2, 0x22), [theirs], [done])
    (link,) = transport.connected
    (sent,) = [m for m in transport.messages(link) if isinstance(m, p.EventUpdates)]
    assert (sent.subscribe, sent.done, sent.dst_incarnation) == ((theirs,), (done,), 0x22)
    assert parts == []
    out.event_updates(Peer(2, 0x22), [], [p.EventDone(mine, "x" * 1000)])  # 4 kB as UTF-8
    assert parts == [1]


def test_a_reason_larger_than_a_message_is_cut_to_fit() -> None:
    out, transport, _ = outbound(max_message_size=4096)
    handle = EventHandle.from_parts(ME, 0, 1)
    out.event_updates(Peer(2, 0x22), (), [p.EventDone(handle, "é" * 16_000)])
    (link,) = transport.connected
    _, message = transport.messages(link)
    assert isinstance(message, p.EventUpdates)
    (item,) = message.done
    assert item.reason is not None and item.reason.endswith("[cut to fit max_message_size]")
    assert sum(map(len, transport.sent[link][-1])) <= 4096


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


def test_a_handshakes_answer_on_a_full_or_closed_link_is_dropped_not_raised() -> None:
    """Review finding 17: send_on (a Reply effect, a proof) must not let a full link's
    LinkFull out into Shell.apply or the transport."""
    out, transport, counters = outbound()
    transport.full.add(b"full")
    transport.gone.add(b"gone")
    out.send_on(b"full", INTRO)
    out.send_on(b"gone", INTRO)
    out.send_on(b"fine", INTRO)
    assert transport.messages(b"fine") == [INTRO] and counters["messages_out"] == 1


def test_an_ids_link_to_a_replaced_incarnations_address_is_closed() -> None:
    """Another incarnation of worker 2, elsewhere, took its place: the link opened to the old
    address (a probe, say) reaches another process, or none; one to the new address stays."""
    out, transport, _ = outbound()
    old = out.dial("test://2-old", 2, now=1.0)
    assert out.own_link(2) == old and out.address_of(old) == "test://2-old"
    out.heard(2, b"their-link", now=1.0)  # the old one's link to us
    out.replaced(2, "test://2")
    assert out.own_link(2) is None and old not in transport.connected
    assert out.linked() == set(), "nor is the old one's link to us kept for the id"
    new = out.dial("test://2", 2, now=2.0)
    out.replaced(2, "test://2")
    assert out.own_link(2) == new and new in transport.connected


def test_a_replaced_incarnations_superseded_links_are_closed_too() -> None:
    """The id's link to the old address, superseded by another of ours on its way out, also
    reaches another process (or none): it is closed as well; the one to the new address stays."""
    out, transport, _ = outbound()
    old = out.dial("test://2-old", 2, now=1.0)
    new = out.dial("test://2", 2, now=1.0)  # adopted: ``old`` is superseded
    assert out.own_link(2) == new and old in transport.connected
    out.replaced(2, "test://2")
    assert old not in transport.connected and not out.is_own(old)
    assert out.own_link(2) == new and new in transport.connected


def test_a_seed_link_dialed_by_another_spelling_leads_to_the_members_advertised_address() -> None:
    """A seed dialed as ``localhost`` answers as worker 2 advertising ``127.0.0.1``: once
    the handshake's answer proved who is there, the link leads to the advertised address,
    so membership watches the member through it and a rejoin's replacement (the new
    incarnation answering on this very link) keeps it open."""
    out, transport, _ = outbound()
    seed = out.dial("test://localhost:2", None, now=1.0)
    out.heard(2, seed, now=1.0)  # the HelloAck named worker 2: adopted as its link
    out.reached(seed, "test://127.0.0.1:2")
    assert out.address_of(seed) == "test://127.0.0.1:2"
    peers = table()
    admit(peers, 2, at="test://127.0.0.1:2")
    peers.on_link_up(2, address=out.address_of(seed))
    assert 2 in peers.watched
    out.replaced(2, "test://127.0.0.1:2")
    assert out.own_link(2) == seed and seed in transport.connected
