"""Restarts and stalls between real processes (``velo-am worker``): a worker restarted with
the same id while the mesh still thinks its old incarnation alive rejoins within bounded
time; a worker frozen (SIGSTOP) and resumed says, in the reasons of what its freeze broke,
that it was stalled itself, not the healthy peer it lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from support import FAST, Script, stop, wait_until

from velo_am import Worker
from velo_event import EventPoison

QUICK = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.0")


def worker(worker_id: int, seed: str) -> Script:
    return Script(
        "-m", "velo_am", "worker", "--id", hex(worker_id), "--seed", seed,
        "--bind", "tcp://127.0.0.1:0", *QUICK,
    )  # fmt: skip


@pytest.mark.timeout(60)
async def test_a_worker_restarted_while_its_old_incarnation_seems_alive_rejoins(
    figures: dict[str, str],
) -> None:
    """Measured (soak): a worker killed and restarted on a new port before the mesh noticed
    was refused (``another live worker uses id``) until its join timed out: the newcomer's
    verification link passed for the old incarnation's, so the old one was never lost. Now
    the old one is checked at its own address, and the new one is let in."""
    async with Worker(
        bind="tcp://127.0.0.1:0", heartbeat_interval=0.2, heartbeat_timeout=3.0
    ) as seed:
        old = worker(0x31, seed.address)
        new: Script | None = None
        try:
            await asyncio.to_thread(old.expect, "READY", 30.0)
            await seed.wait_for_peer(0x31, timeout=20)
            before = seed.peers[0x31].incarnation
            os.kill(old.process.pid, signal.SIGSTOP)  # alive to the mesh for a second more
            started = time.monotonic()
            new = worker(0x31, seed.address)
            await asyncio.to_thread(new.expect, "READY", 30.0)
            joined = time.monotonic() - started
            status = seed.peers[0x31]
            assert status.incarnation != before and status.state == "alive"
            assert seed.is_connected(0x31)
            await seed.events.new_event_on(0x31, timeout=5)  # calls reach the new one
            figures["restarted worker rejoined after, s"] = f"{joined:.1f}"
        finally:
            os.kill(old.process.pid, signal.SIGKILL)
            old.reap()
            stop(new)


@pytest.mark.timeout(60)
async def test_a_worker_frozen_and_resumed_says_it_was_stalled_itself(
    figures: dict[str, str],
) -> None:
    """Measured (soak): a worker frozen past the window, once resumed, poisoned its merges
    with ``owner lost: worker 0x… silent for 1.0 s``, naming the healthy owner of an input,
    when its own freeze was the cause. Now the reason says this worker was stalled, for how
    long, and is the suspect."""
    async with Worker(bind="tcp://127.0.0.1:0", **FAST) as healthy:  # type: ignore[arg-type]
        frozen = worker(0x32, healthy.address)
        try:
            await asyncio.to_thread(frozen.expect, "READY", 30.0)
            await healthy.wait_for_peer(0x32, timeout=20)
            source = healthy.events.new_event()  # owned by the healthy worker
            merge = await healthy.events.merge_events_on(0x32, [source.handle], timeout=5)
            os.kill(frozen.process.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            await wait_until(lambda: not healthy.is_connected(0x32), within=10)
            await asyncio.sleep(1.5)  # the freeze lasts: a stall of 2.5 s or more, not a wait
            os.kill(frozen.process.pid, signal.SIGCONT)
            stall = time.monotonic() - stopped
            await healthy.wait_for_peer(0x32, timeout=20)
            with pytest.raises(EventPoison) as poisoned:
                await healthy.events.awaiter(merge, timeout=20)
            reason = poisoned.value.reason
            assert f"worker {healthy.worker_id:#x}" in reason, reason  # whom it lost
            assert "suspect this worker, not the peer: worker 0x32 was itself stalled" in reason
            said = float(reason.split("stalled for ")[1].split(" s")[0])
            assert said > 1.0, reason
            figures["freeze, s"] = f"{stall:.1f}"
            figures["stall the frozen worker reported, s"] = f"{said:.1f}"
        finally:
            stop(frozen)
