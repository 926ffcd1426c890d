"""Distributed events between real OS processes: the event example scripts, launched as a user
would, with this test process as one more member of the mesh."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import FAST, Script, velo, wait_until

from velo_am import Worker
from velo_event import EventHandle, EventPoison, EventStatus, OutcomeUnknown

pytestmark = pytest.mark.timeout(90)
TWO = "examples/events_two_workers.py"
GRAPH = "examples/precondition_graph.py"


def start_owner(launch: Callable[..., Script], *args: str) -> tuple[Script, int, str, str]:
    """An ``owner`` script: (script, worker id, address, its first handle as text)."""
    owner = launch(TWO, "owner", *args)
    owner_id, address = owner.ready()
    handle = owner.expect("HANDLE").split()[1]
    return owner, owner_id, address, handle


async def owner_stats(worker: Worker, owner: int) -> dict[str, int]:
    stats: dict[str, int] = await worker.call(owner, "stats")
    return stats


async def wait_served(worker: Worker, owner: int, count: int, within: float = 10.0) -> None:
    """Until the owner holds ``count`` subscriptions: every waiter is parked on it."""
    async with asyncio.timeout(within):
        while (await owner_stats(worker, owner))["served"] < count:  # noqa: ASYNC110 - remote
            await asyncio.sleep(0.01)  # state, no event to wait on: poll with a deadline


async def ended(script: Script, prefix: str) -> str:
    """The script's line starting with ``prefix``, then its exit status, which must be 0."""
    line = await asyncio.to_thread(script.expect, prefix)
    assert await asyncio.to_thread(script.wait) == 0, script.stderr()
    return line


async def terminate(*scripts: Script) -> None:
    """SIGTERM: each closes gracefully and exits 0."""
    for script in scripts:
        script.signal(signal.SIGTERM)
    for script in scripts:
        assert await asyncio.to_thread(script.wait) == 0, script.stderr()


def expect_poison(awaiting: asyncio.Future[Any]) -> str:
    error = awaiting.exception()
    assert isinstance(error, EventPoison), repr(error)
    return error.reason


def expect_unknown(awaiting: asyncio.Future[Any]) -> str:
    """The reason an await ended without an outcome (its owner lost)."""
    error = awaiting.exception()
    assert isinstance(error, OutcomeUnknown), repr(error)
    return error.reason


# -- trigger, poison, late subscriptions ----------------------------------------------------


@pytest.mark.parametrize("fail", [None, "disk full: /data/shard-3"])
async def test_await_across_processes_then_trigger_or_poison(
    launch: Callable[..., Script], worker: Worker, fail: str | None
) -> None:
    owner, owner_id, address, text = start_owner(launch, *(["--fail", fail] if fail else []))
    waiter = launch(TWO, "waiter", "--peer", address, "--handle", text)
    assert await worker.connect(address) == owner_id
    handle = EventHandle.parse(text)
    here = asyncio.ensure_future(worker.events.awaiter(handle))
    await wait_served(worker, owner_id, 2)  # the script and this process are both waiting
    assert not here.done() and worker.events.poll(handle) is EventStatus.PENDING
    await worker.call(owner_id, "go")
    if fail is None:
        assert await here is None
        assert await ended(waiter, "READY-EVENT") == f"READY-EVENT {text}"
    else:
        await asyncio.wait([here])
        assert expect_poison(here) == fail  # the owner's reason, exactly
        assert await ended(waiter, "POISONED") == f"POISONED {fail}"
    # One subscription each on the wire, one update each back; nothing left on the owner.
    assert worker.events.stats()["subscriptions_sent"] == 1
    stats = await owner_stats(worker, owner_id)
    assert (stats["updates_sent"], stats["served"]) == (2, 0)
    await terminate(owner)


@pytest.mark.parametrize("fail", [None, "tokenizer.json: checksum mismatch"])
async def test_late_subscription_after_completion_gets_the_outcome(
    launch: Callable[..., Script], worker: Worker, fail: str | None
) -> None:
    owner, owner_id, address, text = start_owner(launch, *(["--fail", fail] if fail else []))
    await worker.connect(address)
    await worker.call(owner_id, "go")
    expected = EventStatus.READY if fail is None else EventStatus.POISONED
    assert await worker.events.poll_remote(EventHandle.parse(text)) is expected
    # The owner completed before anyone subscribed: a waiter arriving now still learns it.
    waiter = launch(TWO, "waiter", "--peer", address, "--handle", text)
    if fail is None:
        assert await ended(waiter, "READY-EVENT") == f"READY-EVENT {text}"
    else:
        assert await ended(waiter, "POISONED") == f"POISONED {fail}"
    stats = await owner_stats(worker, owner_id)
    assert (stats["updates_sent"], stats["served"]) == (1, 0)  # answered at once, not parked
    await terminate(owner)


# -- the precondition graph ------------------------------------------------------------------


@pytest.mark.parametrize("fail", [None, "weights.safetensors: checksum mismatch"])
async def test_precondition_graph_over_four_processes(
    launch: Callable[..., Script], fail: str | None
) -> None:
    weights = launch(GRAPH, "--role", "weights", *(["--fail", fail] if fail else []))
    _, seed = weights.ready()
    tokenizer = launch(GRAPH, "--role", "tokenizer", "--seed", seed)
    merge = launch(GRAPH, "--role", "merge", "--seed", seed)
    serve = launch(GRAPH, "--role", "serve", "--seed", seed)
    weights_handle = weights.expect("HANDLE").split()[1]
    tokenizer_handle = tokenizer.expect("HANDLE").split()[1]
    _, merged, origin, *inputs = merge.expect("MERGED").split()
    assert origin == "from" and inputs == [weights_handle, tokenizer_handle]
    assert EventHandle.parse(merged).worker_id == 0xC  # the merge belongs to its own worker
    if fail is None:
        assert (await ended(serve, "SERVING")).startswith("SERVING after")
        weights.expect("LOADED weights")
    else:
        line = await ended(serve, "POISONED")
        assert line == f"POISONED Merge dependency {weights_handle} poisoned: {fail}"
        weights.expect("FAILED weights")
    tokenizer.expect("LOADED tokenizer")
    await terminate(weights, tokenizer, merge)


def test_poison_propagation_example_reports_every_hop(launch: Callable[..., Script]) -> None:
    demo = launch("examples/poison_propagation.py")
    assert demo.wait() == 0, demo.stderr()
    line = demo.expect("  Merge dependency")
    # The reason went a -> b (stage) -> a (gate) -> awaited on b, naming both merges' inputs.
    assert line.count("Merge dependency") == 2 and line.endswith("poisoned: disk full"), line
    assert demo.expect("b asks a for the gate's status later").endswith("POISONED")


# -- failures of the owner ----------------------------------------------------------------------


async def test_sigkill_of_the_owner_fails_waiters_with_owner_lost(
    launch: Callable[..., Script], worker: Worker
) -> None:
    owner, owner_id, address, text = start_owner(launch)
    waiter = launch(
        TWO, "waiter", "--heartbeat-timeout", "1.0", "--peer", address, "--handle", text
    )
    await worker.connect(address)
    here = asyncio.ensure_future(worker.events.awaiter(EventHandle.parse(text)))
    await wait_served(worker, owner_id, 2)
    killed_at = time.monotonic()
    owner.signal(signal.SIGKILL)
    async with asyncio.timeout(10 * FAST["heartbeat_timeout"]):
        await asyncio.wait([here])
    # Within the liveness window (plus heartbeat ticks), not never.
    assert time.monotonic() - killed_at < FAST["heartbeat_timeout"] + 3.0
    assert expect_unknown(here).startswith(f"owner lost: worker {owner_id:#x}")
    assert (await ended(waiter, "OUTCOME-UNKNOWN")).startswith(
        f"OUTCOME-UNKNOWN owner lost: worker {owner_id:#x}"
    )
    assert worker.events.stats()["remote_awaited"] == 0


async def test_an_owner_frozen_past_the_window_then_thawed_gives_one_outcome(
    launch: Callable[..., Script], worker: Worker, figures: dict[str, str]
) -> None:
    """Measured: waiters whose owner was frozen (SIGSTOP) past the liveness window were
    poisoned "owner lost"; thawed, the owner triggered the same handle and a new await said
    READY. Now they get ``OutcomeUnknown``, which records nothing, and everyone who asks
    afterwards, here, on the owner, in another subscriber, hears the owner's one verdict."""
    # The owner's window (its ZMTP TTL) is long, so the other subscriber keeps its link
    # through the freeze; this process's window is one second (FAST).
    owner, owner_id, address, text = start_owner(launch, "--heartbeat-timeout", "30")
    handle = EventHandle.parse(text)
    patient = launch(
        TWO, "waiter", "--heartbeat-timeout", "30", "--peer", address, "--handle", text
    )
    assert await worker.connect(address) == owner_id
    here = asyncio.ensure_future(worker.events.awaiter(handle))
    merged = worker.events.merge_events([handle])  # this worker's own event, over the owner's
    await wait_served(worker, owner_id, 2)
    os.kill(owner.process.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        async with asyncio.timeout(10 * FAST["heartbeat_timeout"]):
            await asyncio.wait([here])
        figures["frozen owner: OutcomeUnknown after, s"] = f"{time.monotonic() - stopped:.1f}"
        assert expect_unknown(here).startswith(f"owner lost: worker {owner_id:#x}")
        assert worker.events.poll(handle) is EventStatus.PENDING
        reason = worker.events.poison_reason(merged)  # the merge's own verdict: final
        assert reason is not None and reason.startswith(f"Merge dependency {handle} failed")
    finally:
        os.kill(owner.process.pid, signal.SIGCONT)
    await worker.wait_for_peer(owner_id, timeout=20)
    await worker.call(owner_id, "go", timeout=10)
    thawed = time.monotonic()
    assert await asyncio.wait_for(worker.events.awaiter(handle), 10) is None
    figures["thawed owner's verdict (READY) after, s"] = f"{time.monotonic() - thawed:.2f}"
    assert worker.events.poll(handle) is EventStatus.READY
    assert await worker.events.poll_remote(handle, timeout=10) is EventStatus.READY
    assert await ended(patient, "READY-EVENT") == f"READY-EVENT {text}"
    assert worker.events.poll(merged) is EventStatus.POISONED
    await terminate(owner)


async def test_sigterm_of_the_owner_poisons_waiters_with_its_shutdown_reason(
    launch: Callable[..., Script],
) -> None:
    owner, owner_id, address, text = start_owner(launch)
    # A 30 s liveness window on the waiting side: only the owner's own word can be this prompt.
    waiter = launch(TWO, "waiter", "--heartbeat-timeout", "30", "--peer", address, "--handle", text)
    async with Worker(heartbeat_interval=1.0, heartbeat_timeout=30.0) as worker:
        await worker.connect(address)
        here = asyncio.ensure_future(worker.events.awaiter(EventHandle.parse(text)))
        await wait_served(worker, owner_id, 2)
        stopped_at = time.monotonic()
        owner.signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await asyncio.wait([here])
        assert time.monotonic() - stopped_at < 10.0
        assert expect_poison(here) == f"worker {owner_id:#x} shutting down"
        line = await ended(waiter, "POISONED")
        assert line == f"POISONED worker {owner_id:#x} shutting down"
        assert await asyncio.to_thread(owner.wait) == 0


async def outcomes_after_restart(
    launch: Callable[..., Script], worker: Worker, tmp_path: Path
) -> list[str]:
    """Kill an owner with two events, restart its id at the same ipc:// address with one event
    (completed successfully), then await the predecessor's handles from this process and from a
    waiter script: what each got (``OUTCOME-UNKNOWN <reason>``, ``POISONED <reason>`` or
    ``READY``)."""
    address = f"ipc://{tmp_path}/owner.sock"
    first, _, _, old = start_owner(launch, "--id", "0x77", "--bind", address, "--count", "2")
    assert await worker.connect(address) == 0x77
    minted = await worker.call(0x77, "handles")
    first.signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait)
    second, _, _, new = start_owner(launch, "--id", "0x77", "--bind", address)
    assert new != old
    assert await worker.connect(address) == 0x77
    await worker.call(0x77, "go")
    assert await worker.events.awaiter(EventHandle.parse(new)) is None  # the successor works
    outcomes = []
    for handle in minted:  # slot 0 (reused by the successor) and slot 1 (not)
        awaiting = asyncio.ensure_future(worker.events.awaiter(handle))
        async with asyncio.timeout(10):
            await asyncio.wait([awaiting])
        error = awaiting.exception()
        if isinstance(error, OutcomeUnknown):
            outcomes.append(f"OUTCOME-UNKNOWN {error.reason}")
        else:
            outcomes.append(
                f"POISONED {error.reason}" if isinstance(error, EventPoison) else "READY"
            )
    waiter = launch(TWO, "waiter", "--peer", address, "--handle", old)
    outcomes.append(await asyncio.to_thread(waiter.expect, ""))  # its one line, either kind
    assert await asyncio.to_thread(waiter.wait) == 0
    await terminate(second)
    return outcomes


async def test_handle_of_a_previous_incarnation_reads_as_unknown(
    launch: Callable[..., Script], worker: Worker, tmp_path: Path
) -> None:
    outcomes = await outcomes_after_restart(launch, worker, tmp_path)
    assert (
        outcomes == ["OUTCOME-UNKNOWN handle minted by an earlier incarnation of worker 0x77"] * 3
    )


async def test_an_observer_and_first_askers_after_the_owners_restart_never_disagree(
    launch: Callable[..., Script], worker: Worker, tmp_path: Path
) -> None:
    """Soak finding 4: processes that heard READY before the owner was killed and restarted
    under its id kept READY, while a process asking only afterwards was told POISONED
    ("minted by an earlier incarnation"): two answers for one handle. A first asker now gets
    no outcome (a waiter script: ``OutcomeUnknown``; ``velo-am status``: ``unknown: …``), and
    the observers keep READY, even after asking the new incarnation themselves."""
    address = f"ipc://{tmp_path}/owner.sock"
    first, _, _, text = start_owner(launch, "--id", "0x77", "--bind", address)
    handle = EventHandle.parse(text)
    assert await worker.connect(address) == 0x77
    observer = launch(TWO, "waiter", "--peer", address, "--handle", text)
    here = asyncio.ensure_future(worker.events.awaiter(handle))
    await wait_served(worker, 0x77, 2)  # both observers are subscribed
    await worker.call(0x77, "go")
    assert await asyncio.wait_for(here, 10) is None
    assert await ended(observer, "READY-EVENT") == f"READY-EVENT {text}"
    first.signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait)
    second, _, _, _ = start_owner(launch, "--id", "0x77", "--bind", address)
    stale = "handle minted by an earlier incarnation of worker 0x77"
    asker = launch(TWO, "waiter", "--peer", address, "--handle", text)
    assert await ended(asker, "") == f"OUTCOME-UNKNOWN {stale}"
    status = await asyncio.to_thread(velo, "status", text, "--seed", address)
    assert (status.returncode, status.stdout) == (0, f"unknown: {stale}\n"), status.stderr
    assert await worker.connect(address) == 0x77  # the new incarnation
    assert await worker.events.poll_remote(handle, timeout=5) is EventStatus.UNKNOWN
    assert worker.events.poll(handle) is EventStatus.READY  # what it heard stands
    assert await asyncio.wait_for(worker.events.awaiter(handle), 5) is None
    await terminate(second)


# -- scale ------------------------------------------------------------------------------------


async def test_ten_thousand_remote_events_awaited_at_once(
    launch: Callable[..., Script], worker: Worker
) -> None:
    count = 10_000
    owner, owner_id, address, _ = start_owner(launch, "--count", str(count))
    await worker.connect(address)
    handles = await worker.call(owner_id, "handles")
    assert len(set(handles)) == count
    everything = asyncio.gather(*(worker.events.awaiter(h) for h in handles))
    await wait_until(lambda: worker.events.stats()["remote_awaited"] == count, within=20)
    await wait_served(worker, owner_id, count, within=20)
    assert not everything.done()
    await worker.call(owner_id, "go")
    async with asyncio.timeout(30):
        results = await everything
    assert results == [None] * count
    stats = worker.events.stats()
    assert stats["subscriptions_sent"] == count  # one subscription each on the wire
    assert (stats["updates_received"], stats["remote_awaited"]) == (count, 0)
    assert all(worker.events.poll(h) is EventStatus.READY for h in handles)
    await terminate(owner)
