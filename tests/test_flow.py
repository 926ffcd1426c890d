"""Flow control of fire-and-forget sends (velo_am._flow): the window's bookkeeping alone, then
two workers on the in-process fake network. The window is set through its environment
variable, as a deployment would."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from support import wait_until

from velo_am import CallContext, PeerBusy, PeerDraining, PeerLost, Worker
from velo_am import _protocol as p
from velo_am._flow import SendWindow, SendWindows
from velo_am._receipts import ReceiveWindows
from velo_am._stats import new_counters
from velo_am.transport import FakeNetwork

WINDOW = 16

# -- the bookkeeping, alone ---------------------------------------------------------------------


def test_a_credit_covers_the_sends_up_to_last_received_and_adds_the_unfinished() -> None:
    window = SendWindow(incarnation=7)
    window.sent.extend([3, 5, 8, 9])
    assert window.unconfirmed == 4
    window.credit(last_received=5, unfinished=2)  # 3 and 5 arrived; both still run
    assert list(window.sent) == [8, 9]
    assert window.unconfirmed == 4
    window.credit(last_received=5, unfinished=0)  # nothing new arrived; both finished
    assert window.unconfirmed == 2
    window.credit(last_received=9, unfinished=1)
    assert window.unconfirmed == 1


def test_a_stale_or_repeated_credit_changes_nothing() -> None:
    window = SendWindow(incarnation=7)
    window.sent.extend([10, 11, 12])
    window.credit(last_received=11, unfinished=1)
    window.credit(last_received=10, unfinished=5)  # overtaken by the one above
    window.credit(last_received=11, unfinished=3)  # a repeat of an earlier state
    assert (list(window.sent), window.unfinished) == ([12], 1)


def test_a_send_lost_on_its_way_stops_counting_once_a_later_one_arrives() -> None:
    window = SendWindow(incarnation=7)
    window.sent.extend([1, 2, 3])
    window.credit(last_received=3, unfinished=0)  # 2 never arrived: it ran nowhere
    assert window.unconfirmed == 0


@dataclass
class Sender:
    worker_id: int
    incarnation: int


class StubOutbound:
    """What ReceiveWindows needs of the outbound path: records the credits it sends."""

    worker_id, incarnation = 3, 0x33

    def __init__(self) -> None:
        self.linked: set[int] = {2}
        self.credits: list[tuple[int, p.Credit]] = []

    def has_link(self, peer_id: int) -> bool:
        return peer_id in self.linked

    def send_quietly(self, peer_id: int, msg: p.Credit) -> None:
        self.credits.append((peer_id, msg))


def test_the_receiver_credits_every_batch_and_when_it_has_nothing_left() -> None:
    out = StubOutbound()
    receipts = ReceiveWindows(8, out)  # type: ignore[arg-type]  # credits every 2 finished
    sender = Sender(2, 0x22)
    for msg_id in (4, 2, 6, 7, 8):  # two links: arrivals need not be in msg_id order
        receipts.received(sender, msg_id)
    for _ in range(5):
        receipts.finished(sender)
    assert [credit for _, credit in out.credits] == [
        p.Credit(3, 0x33, 0x22, 8, 3),
        p.Credit(3, 0x33, 0x22, 8, 1),
        p.Credit(3, 0x33, 0x22, 8, 0),  # one finished since the last, and none left
    ]


def test_sends_settled_in_rows_that_end_where_a_credit_is_due_credit_as_one_by_one() -> None:
    """A burst's sends are settled per row (``finished(sender, n)``), each row ending where
    ``due`` says a credit falls due: the credits are those of settling them one by one."""
    credits = []
    for rows in (False, True):
        out = StubOutbound()
        receipts = ReceiveWindows(12, out)  # type: ignore[arg-type]  # credits every 3 finished
        sender = Sender(2, 0x22)
        for msg_id in range(1, 9):
            receipts.received(sender, msg_id)
        receipts.finished(sender)  # one settled alone first: the next row is shorter
        left = 7
        while left:
            n = receipts.due(sender) if rows else 1
            assert 1 <= n <= left
            receipts.finished(sender, n)
            left -= n
        assert receipts.due(sender) == 1 and receipts.unfinished() == 0
        credits.append(out.credits)
    assert (
        credits[0]
        == credits[1]
        == [
            (2, p.Credit(3, 0x33, 0x22, 8, 5)),
            (2, p.Credit(3, 0x33, 0x22, 8, 2)),
            (2, p.Credit(3, 0x33, 0x22, 8, 0)),
        ]
    )


def test_the_receiver_repeats_a_credit_at_the_tick_and_to_a_sender_back_from_a_loss() -> None:
    out = StubOutbound()
    receipts = ReceiveWindows(8, out)  # type: ignore[arg-type]  # credits every 2 finished
    sender = Sender(2, 0x22)
    for msg_id in (10, 11, 12, 13, 14):
        receipts.received(sender, msg_id)
    receipts.finished(sender)
    assert out.credits == [] and receipts.unfinished() == 4
    receipts.tick()
    assert out.credits == [(2, p.Credit(3, 0x33, 0x22, 14, 4))]
    receipts.tick()
    assert len(out.credits) == 1, "nothing changed since the last tick"
    out.linked.clear()  # the sender was lost: no link to it
    receipts.finished(sender)
    receipts.finished(sender)  # a credit is due, and cannot go
    receipts.tick()
    assert len(out.credits) == 1
    out.linked.add(2)
    receipts.on_joined(2)
    assert out.credits[-1] == (2, p.Credit(3, 0x33, 0x22, 14, 2))
    receipts.received(Sender(2, 0x23), 1)  # a new incarnation of the sender starts afresh
    assert receipts.unfinished() == 1
    receipts.finished(sender)  # its predecessor's send: not counted any more
    assert receipts.unfinished() == 1
    receipts.forget(2)
    assert receipts.unfinished() == 0


class RecordingOutbound:
    """What SendWindows needs of the outbound path: records the requests it sends."""

    worker_id = 1

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def request(self, peer: Any, msg_id: int, name: str, payload: Any, *, reply: bool) -> None:
        self.sent.append(payload)


async def test_waiting_sends_go_first_come_first_served_and_a_cancelled_one_passes_its_turn() -> (
    None
):
    out, counters = RecordingOutbound(), new_counters()
    ids = iter(range(1, 100))
    sends = SendWindows(2, out, ids.__next__, counters)  # type: ignore[arg-type]
    peer = Sender(2, 0x22)
    await sends.send(peer, "x", "a", timeout=5, default=30)
    await sends.send(peer, "x", "b", timeout=5, default=30)  # the window (2) is full
    waiting = [
        asyncio.ensure_future(sends.send(peer, "x", name, timeout=5, default=30)) for name in "cde"
    ]
    await wait_until(lambda: counters["sends_waited"] == 3)
    sends.on_credit(peer, p.Credit(2, 0x22, 1, last_received=2, unfinished=0))  # room for 2
    waiting[0].cancel()  # c was given room, then cancelled: its room goes to e
    late = asyncio.ensure_future(sends.send(peer, "x", "f", timeout=0.1, default=30))  # behind e
    async with asyncio.timeout(5):
        await asyncio.gather(*waiting[1:])
    assert waiting[0].cancelled()
    assert out.sent == ["a", "b", "d", "e"]
    with pytest.raises(PeerBusy, match=r"has not finished 2 sends of this worker within 0\.1 s"):
        await late
    assert sends.unconfirmed() == 2 and sends.peers() == {2}


# -- two workers ----------------------------------------------------------------------------------


async def pair(make_worker: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Worker, Worker]:
    monkeypatch.setenv("VELO_SEND_WINDOW", str(WINDOW))
    a, b = await make_worker(1), await make_worker(2)
    assert await a.connect(b.address) == 2
    return a, b


async def test_a_slow_handler_makes_its_sender_wait_then_everything_runs_in_order(
    make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await pair(make_worker, monkeypatch)
    gate = asyncio.Event()
    started: list[int] = []
    running = most = 0

    @b.handler("slow")
    async def slow(payload: int, ctx: CallContext) -> None:
        nonlocal running, most
        started.append(payload)
        running += 1
        most = max(most, running)
        try:
            await gate.wait()
        finally:
            running -= 1

    accepted = 0

    async def flood() -> None:
        nonlocal accepted
        for i in range(200):
            await a.send(2, "slow", i)
            accepted += 1

    sender = asyncio.ensure_future(flood())
    await wait_until(lambda: len(started) >= WINDOW)
    assert accepted <= WINDOW, f"{accepted} sends accepted by a peer that finished none"
    assert not sender.done()
    await wait_until(lambda: a.stats()["sends_waited"] == 1)  # the next one waits for room
    assert a.stats()["sends_unconfirmed"] == WINDOW
    assert b.stats()["sends_unfinished"] == WINDOW == len(started)

    gate.set()
    async with asyncio.timeout(10):
        await sender
    await wait_until(lambda: len(started) == 200 and running == 0)
    assert started == list(range(200)), "sends start in the order they were made"
    assert most <= WINDOW, f"the receiver ran {most} of one sender's sends at once"
    await wait_until(lambda: a.stats()["sends_unconfirmed"] == 0)
    assert b.stats()["sends_unfinished"] == 0
    assert a.stats()["sends_lost"] == 0


async def test_sends_to_a_frozen_peer_time_out_and_the_unfinished_ones_are_counted_lost(
    make_worker: Any, network: FakeNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await pair(make_worker, monkeypatch)
    quick: list[int] = []
    b.register_handler("quick", lambda payload, ctx: quick.append(payload))
    started: list[int] = []

    @b.handler("work")
    async def work(payload: int, ctx: CallContext) -> None:
        started.append(payload)
        await asyncio.Event().wait()  # never finishes

    accepted = 0

    async def flood() -> None:
        nonlocal accepted
        for i in range(100):
            await a.send(2, "quick" if i < 6 else "work", i)
            accepted += 1

    sender = asyncio.ensure_future(flood())
    # 6 sends finish at once, the next 16 never: those fill the window.
    await wait_until(lambda: accepted >= 6 + WINDOW)
    assert accepted == 6 + WINDOW, f"{accepted} sends accepted, {len(quick)} of them handled"
    await wait_until(lambda: len(started) == WINDOW and a.stats()["sends_unconfirmed"] == WINDOW)
    assert b.stats()["sends_unfinished"] == WINDOW
    with pytest.raises(PeerBusy, match=f"has not finished {WINDOW} sends .* within 0.05 s"):
        await a.send(2, "quick", "one more", timeout=0.05)

    network.filter = lambda address, frames: False  # b freezes: nothing in, nothing out
    with pytest.raises(PeerLost, match="the send was not made"):
        async with asyncio.timeout(10):
            await sender
    assert a.peers[2].state == "lost"
    assert a.stats()["sends_lost"] == WINDOW, "the accepted sends b never finished"
    assert quick == list(range(6)) and accepted == 6 + WINDOW


async def test_a_credit_lost_on_its_way_is_repeated_at_the_receivers_next_tick(
    make_worker: Any, network: FakeNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await pair(make_worker, monkeypatch)
    handled: list[int] = []
    b.register_handler("note", lambda payload, ctx: handled.append(payload))
    dropped = 0

    def drop_the_first_credits(address: str, frames: list[bytes]) -> bool:
        nonlocal dropped
        try:
            credit = isinstance(p.decode(frames), p.Credit)
        except p.ProtocolError:  # a heartbeat
            return True
        if credit and address == a.address and dropped < 4:
            dropped += 1
            return False
        return True

    network.filter = drop_the_first_credits
    async with asyncio.timeout(5):
        for i in range(WINDOW + 1):  # b finishes 16 in one go: 4 credits, all lost
            await a.send(2, "note", i)
    assert dropped == 4 and a.stats()["sends_waited"] == 1
    await wait_until(lambda: len(handled) == WINDOW + 1)


async def test_send_nowait_refuses_a_full_window_but_runtime_sends_go(
    make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await pair(make_worker, monkeypatch)
    gate = asyncio.Event()

    @b.handler("slow")
    async def slow(payload: Any, ctx: CallContext) -> None:
        await gate.wait()

    for i in range(WINDOW):
        a.send_nowait(2, "slow", i)
    with pytest.raises(PeerBusy, match="send_window is 16"):
        a.send_nowait(2, "slow", "over")
    # The events layer's fire-and-forget trigger is a runtime send: it is not held back.
    event = b.events.new_event()
    a.events.trigger(event.handle)
    async with asyncio.timeout(5):
        await b.events.awaiter(event.handle)
    gate.set()
    await wait_until(lambda: a.stats()["sends_unconfirmed"] == 0)


async def test_a_closing_peer_confirms_what_it_ran_and_only_the_rest_is_lost(
    make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VELO_SEND_WINDOW", str(WINDOW))
    a = await make_worker(1)
    # b's clock ticks every 5 s: no credit of the tick's comes before its goodbye.
    b = await make_worker(2, heartbeat_interval=5.0, heartbeat_timeout=20.0)
    await a.connect(b.address)
    handled: list[int] = []
    b.register_handler("note", lambda payload, ctx: handled.append(payload))
    stuck: list[int] = []

    @b.handler("stuck")
    async def never(payload: int, ctx: CallContext) -> None:
        stuck.append(payload)
        await asyncio.Event().wait()

    for i in range(2):
        await a.send(2, "stuck", i)
    for i in range(3):  # fewer than a batch (16 / 4), and 2 sends unfinished: no credit yet
        await a.send(2, "note", i)
    await wait_until(lambda: len(handled) == 3 and len(stuck) == 2)
    assert a.stats()["sends_unconfirmed"] == 5
    await b.close(grace=0)  # the stuck handlers are cancelled: they never finished
    await wait_until(lambda: a.peers[2].state == "closed")
    assert a.stats()["sends_lost"] == 2, "b's credit before its goodbye confirmed the rest"
    assert a.stats()["sends_unconfirmed"] == 0


async def test_a_send_waiting_for_room_fails_when_its_peer_begins_closing(
    make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await pair(make_worker, monkeypatch)
    gate = asyncio.Event()

    @b.handler("slow")
    async def slow(payload: Any, ctx: CallContext) -> None:
        await gate.wait()

    for i in range(WINDOW):
        await a.send(2, "slow", i)
    waiting = asyncio.ensure_future(a.send(2, "slow", "one more"))
    await wait_until(lambda: a.stats()["sends_waited"] == 1)
    closing = asyncio.ensure_future(b.close(grace=10))
    with pytest.raises(PeerDraining, match="shutting down; the send was not made"):
        async with asyncio.timeout(5):
            await waiting
    gate.set()  # b finishes what it holds, then says goodbye
    await closing
    await wait_until(lambda: a.peers[2].state == "closed")
    assert a.stats()["sends_lost"] == 0


async def test_a_sender_with_a_smaller_window_than_its_peer_is_not_held_up(
    make_worker: Any,
) -> None:
    a = await make_worker(1, send_window=4)
    # b's window is the default, its credit batch far above 4; its clock ticks every 5 s.
    b = await make_worker(2, heartbeat_interval=5.0, heartbeat_timeout=20.0)
    await a.connect(b.address)
    handled: list[int] = []
    b.register_handler("note", lambda payload, ctx: handled.append(payload))
    async with asyncio.timeout(2):  # b credits a whenever it has finished all of a's sends
        for i in range(100):
            await a.send(2, "note", i)
    await wait_until(lambda: len(handled) == 100)
    assert handled == list(range(100))


async def test_send_window_must_be_a_positive_integer() -> None:
    with pytest.raises(ValueError, match="send_window must be a positive integer"):
        Worker(transport=FakeNetwork().transport(), send_window=0)
