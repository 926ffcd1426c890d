"""The mesh between real processes: start in any order, busy is not dead (but frozen is),
short-lived commands leave no trace, and a partition longer than the forget window heals
(two network namespaces). Each launches what a user would: ``velo-am`` and its commands."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from support import FAST, Hosts, Script, stop, velo

from velo_am import PeerUnreachable, Worker
from velo_event import EventHandle, OutcomeUnknown

#: Windows of a worker process here: a silent peer is lost within a second.
QUICK = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.0")


def inspect_peers(target: str, *mesh: str, launcher: Sequence[str] = ()) -> dict[int, str] | None:
    """A worker's peers and their states, as ``velo-am inspect`` shows them (``None`` if it
    cannot be asked)."""
    shown = velo("inspect", target, "--json", *mesh, "--connect-timeout", "2", launcher=launcher)
    if shown.returncode != 0:
        return None
    return {peer["worker"]: peer["state"] for peer in json.loads(shown.stdout)["peers"]}


def until(predicate: Any, within: float, what: str) -> None:
    """Poll ``predicate`` (which may take a while itself) until true, for ``within`` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.05)


def test_workers_start_in_any_order(tmp_path: Path) -> None:
    """Measured: start() greeted each seed once and failed after the handshake timeout, so
    a seed coming up late failed everyone else. Now joining retries, logging whom it waits
    for, until join_timeout."""
    seed = f"ipc://{tmp_path}/seed"
    early = Script(
        "-m", "velo_am", "worker", "--id", "0xe1", "--seed", seed, "--handshake-timeout", "0.5"
    )
    late: Script | None = None
    try:
        until(lambda: "waiting for its seeds" in early.stderr(), 20, "the early one waits")
        assert early.process.poll() is None, early.stderr()
        late = Script("-m", "velo_am", "worker", "--id", "0xe0", "--bind", seed)
        assert late.ready()[0] == 0xE0
        assert early.ready()[0] == 0xE1, "it joined once the seed came up"
        until(lambda: inspect_peers(seed) == {0xE1: "alive"}, 20, "the seed knows it")
    finally:
        stop(early, late)


async def test_a_busy_worker_is_not_dead_but_a_frozen_one_is() -> None:
    """Measured: a handler blocking past the heartbeat timeout stopped heartbeats, and every
    peer poisoned all of that worker's events. Now liveness is ZeroMQ's heartbeats, answered
    by libzmq's thread: 10 s of a blocked loop (ten timeouts) lose nothing, while 10 s of a
    frozen process (SIGSTOP) poison its remote waiters within the window."""
    owner = Script(
        "-m", "velo_am", "worker", "--id", "0xb1", *QUICK,
        "--load", "examples.blocking_handler:register",
    )  # fmt: skip
    try:
        _, address = owner.ready()
        async with Worker(peers=[address], **FAST) as watcher:  # type: ignore[arg-type]
            losses: list[str] = []
            watcher.on_peer_lost(lambda peer, why: losses.append(why))
            handle = await watcher.events.new_event_on(0xB1)
            waiter = asyncio.ensure_future(watcher.events.awaiter(handle))
            assert await watcher.call(0xB1, "block", 10.0, timeout=30) == 10.0
            assert losses == [] and not waiter.done(), "busy for 10 s, and not dead"
            assert watcher.is_connected(0xB1)
            await watcher.events.trigger_confirmed(handle, timeout=5)
            await asyncio.wait_for(waiter, 5)

            frozen = await watcher.events.new_event_on(0xB1)
            waiter = asyncio.ensure_future(watcher.events.awaiter(frozen))
            await asyncio.wait_for(watcher.call(0xB1, "whoami"), 5)  # subscribed by now
            os.kill(owner.process.pid, signal.SIGSTOP)
            try:
                stopped = time.monotonic()
                with pytest.raises(OutcomeUnknown, match="owner lost: worker 0xb1"):
                    await asyncio.wait_for(waiter, 1.0 + 3.0)  # the window, and some slack
                detected = time.monotonic() - stopped
                assert losses, "the frozen owner was lost"
            finally:
                os.kill(owner.process.pid, signal.SIGCONT)
            # Thawed, it is found again (the lost member is redialed with back-off).
            await watcher.wait_for_peer(0xB1, timeout=20)
            assert detected < 5.0
    finally:
        owner.signal(signal.SIGTERM)
        assert owner.wait() == 0, owner.stderr()
        owner.reap()


def test_short_lived_commands_leave_no_trace_and_inspect_takes_an_id() -> None:
    """Measured: every command was gossiped like a worker, made each member dial it, and
    left a closed entry for 60 s ("peers (0), and 8 closed recently"). Commands are now
    observers: answered, never gossiped or remembered; inspect finds a worker by its id."""
    first = Script("-m", "velo_am", "worker", "--id", "0xc1")
    second: Script | None = None
    try:
        _, address = first.ready()
        second = Script("-m", "velo_am", "worker", "--id", "0xc2", "--seed", address)
        second.ready()
        seed = ("--seed", address)
        made = velo("new-event", "--on", "0xc2", *seed)
        assert made.returncode == 0, made.stderr
        handle = EventHandle.parse(made.stdout.strip())
        for command in (("status", str(handle)), ("trigger", str(handle)), ("wait", str(handle))):
            done = velo(*command, *seed)
            assert done.returncode == 0, done.stderr
        assert inspect_peers(address) == {0xC2: "alive"}, "no command is remembered"
        assert inspect_peers("0xc2", *seed) == {0xC1: "alive"}, "found by id, through the seed"
    finally:
        stop(first, second)


@pytest.mark.timeout(180)
def test_a_partition_longer_than_the_forget_window_heals(hosts: Hosts) -> None:
    """Measured: after a 70 s link cut, two workers dropped each other for good (lost peers
    were never redialed, seeds only at start); after 25 s nothing reconnected until a call
    did. Now seeds and lost members are redialed with back-off: with the windows shortened
    (lost within 1 s, forgotten after 2 s), a cut that outlasts both heals by itself, and a
    graph across the two hosts completes."""
    windows = (*QUICK, "--forget-after", "2")
    worker_a = Script(
        "-m", "velo_am", "worker", "--id", "0xa1", "--bind", f"tcp://{hosts.address_a}:0",
        *windows, launcher=hosts.launcher(hosts.a),
    )  # fmt: skip
    worker_b: Script | None = None
    try:
        _, address_a = worker_a.ready()
        worker_b = Script(
            "-m", "velo_am", "worker", "--id", "0xb1", "--bind", f"tcp://{hosts.address_b}:0",
            "--seed", address_a, *windows, launcher=hosts.launcher(hosts.b),
        )  # fmt: skip
        worker_b.ready()
        on_a = hosts.launcher(hosts.a)
        until(lambda: inspect_peers(address_a, launcher=on_a) == {0xB1: "alive"}, 20, "joined")

        hosts.cut()
        until(lambda: inspect_peers(address_a, launcher=on_a) == {}, 30, "a forgot b")
        hosts.mend()
        until(lambda: inspect_peers(address_a, launcher=on_a) == {0xB1: "alive"}, 60, "healed")

        seed = ("--seed", address_a)
        on_b = hosts.launcher(hosts.b)
        remote = velo("new-event", "--on", "0xa1", *seed, launcher=on_b).stdout.strip()
        local = velo("new-event", "--on", "0xb1", *seed, launcher=on_b).stdout.strip()
        merged = velo("merge", remote, local, "--on", "0xb1", *seed, launcher=on_b)
        assert merged.returncode == 0, merged.stderr
        for handle in (remote, local):
            assert velo("trigger", handle, *seed, launcher=on_b).returncode == 0
        waited = velo("wait", merged.stdout.strip(), "--timeout", "10", *seed, launcher=on_a)
        assert waited.returncode == 0, waited.stderr
    finally:
        stop(worker_a, worker_b)


def test_a_join_that_never_finds_its_seed_says_so() -> None:
    """join_timeout bounds the retries; the error names the seed."""
    with tempfile.TemporaryDirectory() as directory:
        nobody = f"ipc://{directory}/nobody"
        started = velo(
            "worker", "--seed", nobody, "--handshake-timeout", "0.2", "--join-timeout", "1"
        )
    assert started.returncode != 0
    assert f"no seed answered within 1.0 s ({nobody})" in started.stderr


async def test_wait_for_peers_names_the_missing(tmp_path: Path) -> None:
    async with Worker(bind=f"ipc://{tmp_path}/w", **FAST) as alone:  # type: ignore[arg-type]
        with pytest.raises(TimeoutError, match="reachable: none"):
            await alone.wait_for_peers(1, timeout=0.3)
        with pytest.raises(PeerUnreachable, match="0x77"):
            await alone.wait_for_peer(0x77, timeout=0.3)
