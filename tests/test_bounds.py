"""Bounded memory per message and per peer (issue 11, item 2).

The pure parts alone (the per-peer budget, the inbound connections' ledger), two workers on
the fake network (a sender that ignores its window, a flood of calls), then a real worker
process attacked by a hostile client speaking ZMTP over a raw TCP socket (pyzmq's own sockets
never put an unfinished multipart message on the wire), its memory read through psutil."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest
from support import FAST, Script, wait_until

from velo_am import CallContext, PeerBusy, Worker
from velo_am._budget import REQUEST_COST, ReceiveBudget
from velo_am.transport._inbound import CHATTER, InboundLedger

MIB = 1024 * 1024

# -- the pure parts -------------------------------------------------------------------------------


def test_a_budget_admits_until_its_limit_and_always_admits_a_sender_holding_nothing() -> None:
    budget = ReceiveBudget(lambda: 20_000)
    assert budget.admit(7, 50_000), "a sender holding nothing gets one message of any size"
    assert not budget.admit(7, 0), "nothing more while it holds past the limit"
    assert budget.admit(8, 1000), "each sender has a budget of its own"
    budget.release(7, 50_000)
    assert budget.held(7) == 0
    assert budget.admit(7, 1000) and budget.admit(7, 1000)
    room = 20_000 - 2 * (1000 + REQUEST_COST) - REQUEST_COST
    assert not budget.admit(7, room + 1)
    assert budget.admit(7, room)
    assert budget.held(7) == 20_000
    assert budget.admit(7, 0, always=True), "the runtime's own requests are never refused"
    budget.release(7, 0)
    assert budget.held() == 20_000 + 1000 + REQUEST_COST


def test_a_budget_reads_its_limit_only_past_its_floor_and_still_refuses_past_the_limit() -> None:
    """Below the floor (a bound the limit never falls below) an admission does not read the
    limit, a call of the worker's own code on every request of a burst; past it, it does,
    and a limit that moved since (``max_message_size`` changed) is the one applied."""
    reads = []
    limit = 30_000

    def read_limit() -> int:
        reads.append(limit)
        return limit

    budget = ReceiveBudget(read_limit, floor=3 * REQUEST_COST)
    for _ in range(3):  # 3 requests of 0 bytes: exactly the floor, never past it
        assert budget.admit(7, 0)
    assert reads == [], "the limit was read below the floor"
    assert budget.admit(7, 1000), "past the floor, within the limit"
    assert reads == [30_000]
    held = budget.held(7)
    assert held == 4 * REQUEST_COST + 1000
    # max_message_size changed since: a request of 0 bytes (REQUEST_COST) one byte past the
    # limit is refused, and admitted with the limit exactly at what it would hold.
    limit = held + REQUEST_COST - 1
    assert not budget.admit(7, 0), "refused one byte past the moved limit"
    assert budget.held(7) == held, "a refusal charges nothing"
    limit = held + REQUEST_COST
    assert budget.admit(7, 0), "admitted exactly at the moved limit"
    assert reads == [30_000, held + REQUEST_COST - 1, held + REQUEST_COST]
    assert budget.admit(7, 0, always=True), "the runtime's own requests are never refused"
    assert budget.held(7) == held + 2 * REQUEST_COST


def test_the_ledger_cuts_a_connection_that_holds_more_than_a_message_and_delivers_nothing() -> None:
    ledger = InboundLedger(limit=1000)
    ledger.accepted(5, "10.0.0.1:4000", "10.0.0.2:5000")
    ledger.accepted(6, "10.0.0.3:4000", "10.0.0.2:5000")
    assert ledger.look({5: 300, 6: 300}) == []  # handshakes: the baseline
    quiet = ledger.by_fd[6]
    for step in range(1, 50):  # 6 only chatters (heartbeats): never cut, however long
        assert ledger.look({5: 300, 6: 300 + step * CHATTER}) == []
    busy = ledger.by_fd[5]
    ledger.delivered(5, 5000, 1)  # 5 delivered a message: all it held is explained
    ledger.delivered(9, 100, 1)  # one that ended meanwhile: ignored
    assert ledger.look({5: 5300, 6: 300 + 50 * CHATTER}) == []
    assert ledger.look({5: 6000, 6: 300 + 51 * CHATTER}) == []  # a message in flight
    assert ledger.look({5: 6400, 6: 300 + 52 * CHATTER}) == [busy]  # past the limit, undelivered
    assert ledger.closed(5) is busy and ledger.closed(5) is None
    assert quiet.fd == 6


# -- two workers on the fake network ------------------------------------------------------------


async def test_a_sender_ignoring_its_window_and_a_flood_of_calls_are_refused_past_the_budget(
    make_worker: Any,
) -> None:
    b = await make_worker(2, send_window=16, max_message_size=64 * 1024)
    a = await make_worker(1, send_window=100_000)  # far past b's: it ignores b's window
    assert await a.connect(b.address) == 2
    gate = asyncio.Event()
    running = 0

    @b.handler("slow")
    async def slow(payload: bytes, ctx: CallContext) -> int:
        nonlocal running
        running += 1
        await gate.wait()
        return len(payload)

    budget = 2 * 64 * 1024 + 16 * REQUEST_COST
    for _ in range(100):
        await a.send(2, "slow", b"x" * 8192)
    await wait_until(lambda: b.stats()["refused_busy"] > 0 and running > 0)
    await wait_until(lambda: running + b.stats()["refused_busy"] == 100)
    assert running * (8192 + REQUEST_COST) <= budget + 8192 + REQUEST_COST
    assert b.stats()["sends_unfinished"] == running  # the refused ones finished at once
    await wait_until(lambda: a.stats()["sends_refused"] == b.stats()["refused_busy"])
    assert a.stats()["late_responses"] == 0
    with pytest.raises(PeerBusy, match="per-peer budget"):
        await a.call(2, "slow", b"y" * 16384, timeout=5)
    gate.set()
    await wait_until(lambda: b.stats()["sends_unfinished"] == 0)
    assert await a.call(2, "slow", b"z" * 10, timeout=5) == 10, "served again once finished"


# -- a real worker process, a hostile client ------------------------------------------------------


def zmtp_frame(body: bytes, more: bool) -> bytes:
    flags = 1 if more else 0
    if len(body) > 255:
        return bytes([flags | 2]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def zmtp_connect(address: str) -> socket.socket:
    """A raw TCP connection that completes ZMTP 3.1's NULL handshake as a DEALER."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"\xff" + b"\0" * 8 + b"\x7f\x03\x01" + b"NULL".ljust(20, b"\0") + b"\0" * 32)
    ready = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    ready += b"\x08Identity" + struct.pack(">I", 0)
    sock.sendall(bytes([4, len(ready)]) + ready)
    got = b""
    while len(got) < 66 or len(got) < 66 + got[65]:  # its greeting, then its READY
        more = sock.recv(4096)
        assert more, "the worker closed the connection during the handshake"
        got += more
    return sock


def serve(launch: Callable[..., Script], monkeypatch: pytest.MonkeyPatch, size: int) -> Script:
    monkeypatch.setenv("VELO_MAX_MESSAGE_SIZE", str(size))
    return launch("examples/am_ping.py", "serve")


def rss(process: psutil.Process) -> int:
    return int(process.memory_info().rss)


@pytest.mark.timeout(60)
async def test_a_multipart_message_that_never_ends_is_cut_and_the_worker_keeps_serving(
    launch: Callable[..., Script], monkeypatch: pytest.MonkeyPatch, figures: dict[str, str]
) -> None:
    server = serve(launch, monkeypatch, MIB)
    worker_id, address = server.ready()
    process = psutil.Process(server.process.pid)
    before = peak = rss(process)
    hostile = zmtp_connect(address)
    chunk = zmtp_frame(b"x" * 65536, more=True) * 16  # 1 MiB of frames, none the last
    sent, cut = 0, False
    try:
        while sent < 400 * MIB:  # the most this test sends, whatever happens
            hostile.sendall(chunk)
            sent += len(chunk)
            peak = max(peak, rss(process))
    except OSError:
        cut = True
    finally:
        hostile.close()
    grown = (max(peak, rss(process)) - before) / MIB
    figures["endless multipart message: sent before the cut, MiB"] = f"{sent / MIB:.0f}"
    figures["endless multipart message: RSS growth, MiB"] = f"{grown:.0f}"
    assert cut, f"the worker took {sent / MIB:.0f} MiB of one unfinished message"
    assert grown < 250, f"the worker grew by {grown:.0f} MiB"
    async with Worker(**FAST) as member:  # type: ignore[arg-type]
        assert await member.connect(address) == worker_id
        assert await member.call(worker_id, "ping", 1) == 1
        stats = await member.call(worker_id, "stats")
    assert stats["connections_cut"] == 1
    assert "cut the connection from 127.0.0.1:" in server.stderr()


@pytest.mark.timeout(60)
async def test_a_message_of_too_many_frames_is_dropped_uncopied_and_counted(
    launch: Callable[..., Script], monkeypatch: pytest.MonkeyPatch, figures: dict[str, str]
) -> None:
    server = serve(launch, monkeypatch, 64 * MIB)
    worker_id, address = server.ready()
    pid = server.process.pid
    before = status_kib(pid, "VmHWM")
    hostile = zmtp_connect(address)
    try:
        for i in range(3):  # 60 MiB: under the limit in all, but 3 frames
            hostile.sendall(zmtp_frame(b"x" * (20 * MIB), more=i < 2))
        async with Worker(**FAST) as member:  # type: ignore[arg-type]
            assert await member.connect(address) == worker_id
            stats: dict[str, int] = {}

            async def dropped() -> bool:
                stats.update(await member.call(worker_id, "stats"))
                return stats["dropped_oversized"] == 1

            deadline = time.monotonic() + 20
            while not await dropped():
                assert time.monotonic() < deadline, f"never dropped: {stats}"
    finally:
        hostile.close()
    grown = (status_kib(pid, "VmHWM") - before) / 1024
    figures["3 frames of 20 MiB: peak RSS growth, MiB"] = f"{grown:.0f}"
    assert stats["dropped_malformed"] == 0 and stats["connections_cut"] == 0
    assert grown < 72, f"peak RSS grew by {grown:.0f} MiB: frames were copied"
    assert "dropping a message of 3 frames, 62914560 bytes" in server.stderr()


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


@pytest.mark.timeout(60)
async def test_a_flood_of_calls_gets_peer_busy_past_the_budget_and_others_are_served(
    launch: Callable[..., Script], monkeypatch: pytest.MonkeyPatch, figures: dict[str, str]
) -> None:
    monkeypatch.setenv("VELO_SEND_WINDOW", "64")  # the budget: 2 MiB + 64 * 4 KiB
    server = serve(launch, monkeypatch, MIB)
    worker_id, address = server.ready()
    monkeypatch.delenv("VELO_SEND_WINDOW")
    async with Worker(**FAST) as flooder, Worker(**FAST) as other:  # type: ignore[arg-type]
        assert await flooder.connect(address) == worker_id
        assert await other.connect(address) == worker_id
        calls = [flooder.call(worker_id, "sleep", 1.0, timeout=20) for _ in range(2000)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        busy = [r for r in results if isinstance(r, PeerBusy)]
        done = [r for r in results if r == "slept 1.0 s"]
        figures["2,000 calls at once: ran"] = str(len(done))
        figures["2,000 calls at once: refused with PeerBusy"] = str(len(busy))
        assert len(busy) + len(done) == 2000, {type(r).__name__ for r in results}
        limit = 2 * MIB + 64 * REQUEST_COST
        assert 0 < len(done) <= limit // REQUEST_COST + 1
        assert await other.call(worker_id, "ping", 2) == 2, "another peer has a budget of its own"
        stats = await other.call(worker_id, "stats")
    assert stats["refused_busy"] == len(busy)
