"""Flow control of sends between real OS processes: the example server (``am_ping.py serve``)
as the receiver, this test process as the sender. The window is set through its environment
variable, which the server inherits."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import FAST, Script, wait_until

from velo_am import PeerBusy, PeerLost, Worker

pytestmark = pytest.mark.timeout(60)

WINDOW = 256
SENDS = 100_000
MIB = 1024


def status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (``VmRSS``: resident now; ``VmHWM``: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def process_state(pid: int) -> str:
    """``T`` once a SIGSTOP has taken effect."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


@pytest.fixture
def window(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("VELO_SEND_WINDOW", str(WINDOW))
    return WINDOW


async def test_a_slow_handler_keeps_its_senders_waiting_not_its_memory_growing(
    launch: Callable[..., Script], window: int, figures: dict[str, str]
) -> None:
    server = launch("examples/am_ping.py", "serve")
    _, address = server.ready()
    pid = server.process.pid
    async with Worker(**FAST) as sender:  # type: ignore[arg-type]
        peer = await sender.connect(address)
        assert await sender.call(peer, "ping", 0) == 0
        before = status_kib(pid, "VmHWM")
        started = time.monotonic()
        for _ in range(SENDS):  # each send's handler sleeps 5 ms on the server
            await sender.send(peer, "sleep", 0.005)
        sending = time.monotonic() - started
        stats = await sender.call(peer, "stats")  # behind every send, on the same link
        grown = status_kib(pid, "VmHWM") - before
        figures["sends to a 5 ms handler"] = f"{SENDS:,} in {sending:.1f} s"
        figures["receiver's peak RSS growth, MiB"] = f"{grown / MIB:.1f}"
        figures["sender waited for room, times"] = f"{waits(sender):,}"
        assert grown < 16 * MIB, f"the receiver grew by {grown / MIB:.0f} MiB"
        assert stats["sends_unfinished"] <= window
        await wait_until(lambda: sender.stats()["sends_unconfirmed"] == 0, within=15)
        assert sender.stats()["sends_waited"] > 0
        assert sender.stats()["sends_lost"] == 0


def waits(worker: Worker) -> int:
    return worker.stats().get("sends_waited", 0)


async def test_a_frozen_peer_holds_one_window_of_sends_and_its_loss_counts_them(
    launch: Callable[..., Script], window: int, figures: dict[str, str]
) -> None:
    server = launch("examples/am_ping.py", "serve")
    _, address = server.ready()
    pid = server.process.pid
    async with Worker(**FAST) as sender:  # type: ignore[arg-type]
        peer = await sender.connect(address)
        for i in range(1000):
            await sender.send(peer, "record", i)
        # The call's answer follows the credit for the sends before it, on the same link.
        assert await sender.call(peer, "records") == list(range(1000))
        assert sender.stats().get("sends_unconfirmed", 0) == 0
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        await wait_until(lambda: process_state(pid) == "T")
        before = status_kib(os.getpid(), "VmRSS")
        accepted = 0
        payload = b"x" * 1024

        async def flood() -> None:
            nonlocal accepted
            for _ in range(SENDS):
                await sender.send(peer, "record", payload)
                accepted += 1

        waited = waits(sender)
        flooding = asyncio.ensure_future(flood())
        try:
            await wait_until(lambda: flooding.done() or waits(sender) > waited, within=10)
            grown = status_kib(os.getpid(), "VmRSS") - before
            assert accepted == window, f"{accepted:,} sends accepted by a frozen peer"
            with pytest.raises(PeerBusy, match=f"has not finished {window} sends"):
                await sender.send(peer, "record", payload, timeout=0.2)
            with pytest.raises(PeerLost, match="the send was not made"):
                async with asyncio.timeout(10 * FAST["heartbeat_timeout"]):
                    await flooding
        finally:
            flooding.cancel()
        lost_after = time.monotonic() - stopped_at
        figures["sends to a frozen peer accepted"] = f"{accepted:,} of {SENDS:,}"
        figures["sender's RSS growth, KiB"] = str(grown)
        figures["peer lost after, s"] = f"{lost_after:.1f}"
        figures["sends lost (counted)"] = str(sender.stats()["sends_lost"])
        assert sender.stats()["sends_lost"] == window
        assert grown < 32 * MIB
        assert lost_after < FAST["heartbeat_timeout"] + 3.0
    os.kill(pid, signal.SIGCONT)
