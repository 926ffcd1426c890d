"""Real sockets between real OS processes: the example scripts, launched as a user would."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import FAST, Script, wait_until

from velo_am import PeerDraining, PeerLost, PeerUnreachable, Worker

pytestmark = pytest.mark.timeout(90)

# An example script run as a user runs it, but standing still right after it prints its
# JOINED line (as a process the scheduler preempted there would) until the file argv[1] exists.
PAUSED_AFTER_JOINED = """
import builtins, os, runpy, sys, time

release, real_print = sys.argv[1], builtins.print

def paused_print(*args, **kwargs):
    real_print(*args, **kwargs)
    if args and str(args[0]).startswith("JOINED"):
        deadline = time.monotonic() + 20
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)

builtins.print = paused_print
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_ping_scripts_serve_and_call(launch: Callable[..., Script]) -> None:
    server = launch("examples/am_ping.py", "serve")
    _, address = server.ready()
    client = launch("examples/am_ping.py", "call", "--peer", address, "--count", "3")
    assert await asyncio.to_thread(client.wait) == 0
    client.expect("ping 2")
    pings = [line for line in client.lines if line.startswith("ping")]
    assert len(pings) == 3 and "{'seq': 2}" in pings[-1]
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait) == 0
    assert server.expect("CLOSED") == "CLOSED"


async def test_mesh_of_scripts_joins_through_one_seed_and_relays(
    launch: Callable[..., Script], worker: Worker
) -> None:
    seed = launch("examples/mesh_join.py", "--expect", "5")
    seed_id, seed_address = seed.ready()
    members = [
        launch("examples/mesh_join.py", "--seed", seed_address, "--expect", "5") for _ in range(3)
    ]
    ids = [member.ready()[0] for member in members]
    worker.register_handler("whoami", lambda payload, ctx: worker.worker_id)
    await worker.connect(seed_address)  # this test process is the fifth member
    for script in (seed, *members):
        line = await asyncio.to_thread(script.expect, "JOINED")
        assert line.endswith("called 4 peers"), line
    # A call chain across three script workers, started from a fourth process.
    path = await worker.call(seed_id, "relay", [ids[0], ids[1]])
    assert path == [seed_id, ids[0], ids[1]]
    for script in (seed, *members):
        script.signal(signal.SIGTERM)
    for script in (seed, *members):
        assert await asyncio.to_thread(script.wait) == 0


async def test_mesh_script_stopped_as_soon_as_it_says_joined_exits_cleanly(
    launch: Callable[..., Script], tmp_path: Path
) -> None:
    """JOINED is the cue to stop the mesh (the test above signals right after the relay): by
    the time a script says it, SIGTERM must drain and close it, however late it runs next."""
    release = tmp_path / "release"
    script = launch(
        "-c", PAUSED_AFTER_JOINED, str(release), "examples/mesh_join.py", "--expect", "1"
    )
    line = await asyncio.to_thread(script.expect, "JOINED")
    assert line.endswith("called 0 peers"), line
    script.signal(signal.SIGTERM)
    release.touch()
    assert await asyncio.to_thread(script.wait) == 0, script.stderr()


async def test_sigkill_mid_call_fails_the_call_with_peer_lost(
    launch: Callable[..., Script], worker: Worker
) -> None:
    server = launch("examples/am_ping.py", "serve")
    _, address = server.ready()
    peer = await worker.connect(address)
    call = asyncio.ensure_future(worker.call(peer, "sleep", 60))
    await wait_until(lambda: worker.stats()["calls_in_flight"] == 1)
    killed_at = time.monotonic()
    server.signal(signal.SIGKILL)
    with pytest.raises(PeerLost, match="silent"):
        async with asyncio.timeout(10 * FAST["heartbeat_timeout"]):
            await call
    # Lost within the liveness window (plus one heartbeat tick), not the 30 s call timeout.
    assert time.monotonic() - killed_at < FAST["heartbeat_timeout"] + 3.0
    assert worker.peers[peer].state == "lost"


async def test_sigterm_drains_refuses_new_work_and_says_goodbye(
    launch: Callable[..., Script], worker: Worker
) -> None:
    server = launch("examples/am_ping.py", "serve", "--grace", "10")
    _, address = server.ready()
    peer = await worker.connect(address)
    in_flight = asyncio.ensure_future(worker.call(peer, "sleep", 0.5))
    await wait_until(lambda: worker.stats()["calls_in_flight"] == 1)
    server.signal(signal.SIGTERM)
    await wait_until(lambda: worker.peers[peer].state == "draining", within=10)
    with pytest.raises(PeerDraining):
        await worker.call(peer, "ping", 1)
    assert await in_flight == "slept 0.5 s"
    await wait_until(lambda: worker.peers[peer].state == "closed", within=10)
    assert await asyncio.to_thread(server.wait) == 0


async def test_restarted_worker_is_reachable_and_never_gets_predecessor_messages(
    launch: Callable[..., Script], tmp_path: Path
) -> None:
    address = f"ipc://{tmp_path}/worker.sock"
    # A long liveness window keeps the old link (and its queued message) across the restart.
    async with Worker(heartbeat_interval=1.0, heartbeat_timeout=60.0) as local:
        first = launch("examples/am_ping.py", "serve", "--id", "0x77", "--bind", address)
        first.ready()
        assert await local.connect(address) == 0x77
        before = await local.call(0x77, "stats")
        first.signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait)
        # Its link reports the kill (the socket monitor's disconnect, long before the 60 s
        # window; it can reach the loop after the wait above returns, hence the bounded wait),
        # and then a message is refused, not queued for it.
        await wait_until(lambda: local.peers[0x77].state == "lost", within=10)
        with pytest.raises(PeerUnreachable, match="lost"):
            await local.send(0x77, "record", "for the dead predecessor")
        second = launch("examples/am_ping.py", "serve", "--id", "0x77", "--bind", address)
        second.ready()
        assert await local.connect(address) == 0x77
        after = await local.call(0x77, "stats")
        assert after["incarnation"] != before["incarnation"]
        assert await local.call(0x77, "records") == []
        await local.send(0x77, "record", "for the new one")
        assert await local.call(0x77, "records") == ["for the new one"]
        second.signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait) == 0


async def test_workers_leave_no_socket_behind() -> None:
    async def cycle() -> None:
        async with Worker() as a, Worker() as b:
            await a.connect(b.address)
            b.register_handler("ping", lambda payload, ctx: payload)
            assert await a.call(b.worker_id, "ping", 1) == 1

    await cycle()  # first use loads libraries and may open lasting descriptors
    baseline = open_fds()
    for _ in range(3):
        await cycle()
    assert open_fds() == baseline
