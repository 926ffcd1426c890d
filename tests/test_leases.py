"""Leases: an event made on another worker's behalf (``new_event_on(owner, lease=S)``) is
poisoned, naming its lease, when nobody renews it in time or its holder is gone. The pure
table first, then the rules on the in-process fake network, then the blocking mirror."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from support import FAKE_FAST, wait_until

from velo_am import AMError, RemoteError, SyncWorker, Worker
from velo_am._leases import Broken, LeaseTable, check_lease_seconds
from velo_am.transport import FakeNetwork
from velo_event import (
    EventError,
    EventHandle,
    EventPoison,
    EventStatus,
    InvalidGenerationError,
)

H1, H2, H3 = (EventHandle.from_parts(0x1, index, 7) for index in (1, 2, 3))


# -- the table, alone ---------------------------------------------------------------------------


def test_a_lease_not_renewed_breaks_at_its_term_and_not_before() -> None:
    table = LeaseTable()
    table.grant(H1, 0x7, 30, now=100.0, watch_holder=False, label="nightly export")
    table.grant(H2, 0x7, 10, now=100.0, watch_holder=False)
    pending = {H1, H2}.__contains__
    assert table.due(109.9, pending) == []
    assert table.due(110.0, pending) == [
        Broken(H2, f"lease of worker 0x7 on {H2} expired: not renewed within 10 s")
    ]
    assert table.due(129.9, pending) == []
    assert table.due(130.0, pending) == [
        Broken(H1, "lease of worker 0x7 on 'nightly export' expired: not renewed within 30 s")
    ]
    assert len(table) == 0, "a broken lease ends"


def test_renewal_extends_by_its_own_length_or_the_one_given() -> None:
    table = LeaseTable()
    table.grant(H1, 0x7, 30, now=0.0, watch_holder=False)
    assert table.renew(H1, now=20.0).expires == 50.0
    assert table.due(49.0, lambda h: True) == []
    longer = table.renew(H1, now=49.0, seconds=600)
    assert (longer.expires, longer.term, longer.seconds) == (649.0, 600.0, 30.0)
    assert table.renew(H1, now=100.0).expires == 130.0, "a later renewal is back to 30 s"
    (broken,) = table.due(130.0, lambda h: True)
    assert broken.reason.endswith("not renewed within 30 s")
    with pytest.raises(KeyError):
        table.renew(H1, now=131.0)


def test_completed_events_end_their_leases_without_breaking() -> None:
    table = LeaseTable()
    table.grant(H1, 0x7, 5, now=0.0, watch_holder=True)
    table.grant(H2, 0x7, 5, now=0.0, watch_holder=True)
    assert table.due(1.0, {H2}.__contains__) == [], "H1 completed: no poison, no lease"
    assert table.get(H1) is None and table.get(H2) is not None
    table.end(H2)
    assert table.due(10.0, lambda h: True) == [] and len(table) == 0


def test_a_lost_holder_breaks_only_the_leases_that_watch_it() -> None:
    table = LeaseTable()
    table.grant(H1, 0x7, 60, now=0.0, watch_holder=True, label="job")
    table.grant(H2, 0x7, 60, now=0.0, watch_holder=False)  # an observer's: time alone
    table.grant(H3, 0x8, 60, now=0.0, watch_holder=True)
    assert table.holders() == {0x7, 0x8}
    assert table.holder_lost(0x7, "worker 0x7 at tcp://h:1 lost: disconnected") == [
        Broken(H1, "lease of worker 0x7 on 'job' ended with its holder: "
               "worker 0x7 at tcp://h:1 lost: disconnected")
    ]  # fmt: skip
    assert table.holders() == {0x8}
    assert table.get(H2) is not None, "an observer leaves at once: only time ends its lease"
    assert table.holder_lost(0x7, "again") == []


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1.0, ValueError), (math.inf, ValueError), (math.nan, ValueError),
     ("30", TypeError), (True, TypeError), (None, TypeError)],
)  # fmt: skip
def test_lease_lengths_are_checked(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="lease"):
        check_lease_seconds(value)
    assert check_lease_seconds(2) == 2.0


# -- the rules, on the fake network ---------------------------------------------------------


async def poisoned(awaitable: Any, within: float = 5.0) -> str:
    with pytest.raises(EventPoison) as caught:
        await asyncio.wait_for(awaitable, within)
    return caught.value.reason


async def test_an_unrenewed_lease_poisons_the_event_naming_it(
    make_worker: Callable[..., Any],
) -> None:
    owner, waiter = await make_worker(1), await make_worker(3)
    creator = await make_worker(2, peers=[owner.address])
    await waiter.connect(owner.address)
    started = time.monotonic()
    handle = await creator.events.new_event_on(1, label="nightly export", lease=0.4)
    assert owner.events.stats()["leases"] == 1
    reason = await poisoned(waiter.events.awaiter(handle))
    assert time.monotonic() - started >= 0.4, "not before its term"
    assert reason == "lease of worker 0x2 on 'nightly export' expired: not renewed within 0.4 s"
    assert owner.events.stats()["leases"] == 0
    with pytest.raises(InvalidGenerationError, match=r"already completed.*expired"):
        await creator.events.renew_lease(handle)


async def test_renewals_keep_it_alive_and_a_trigger_ends_the_lease(
    make_worker: Callable[..., Any],
) -> None:
    owner = await make_worker(1)
    creator = await make_worker(2, peers=[owner.address])
    handle = await creator.events.new_event_on(1, lease=0.3)
    waiter = asyncio.ensure_future(owner.events.awaiter(handle))
    renewed_until = time.monotonic() + 1.5  # five terms
    while time.monotonic() < renewed_until:
        assert await creator.events.renew_lease(handle) == 0.3
        await asyncio.sleep(0.05)  # the renewal rhythm being tested, not a synchronisation
    assert not waiter.done()
    await creator.events.trigger_confirmed(handle)
    await asyncio.wait_for(waiter, 5)
    with pytest.raises(InvalidGenerationError, match="already completed \\(ready\\)"):
        await creator.events.renew_lease(handle)
    await wait_until(lambda: owner.events.stats()["leases"] == 0)


async def test_one_long_renewal_then_back_to_the_granted_length(
    make_worker: Callable[..., Any],
) -> None:
    owner = await make_worker(1)
    creator = await make_worker(2, peers=[owner.address])
    handle = await creator.events.new_event_on(1, lease=0.2)
    assert await creator.events.renew_lease(handle, seconds=30) == 30.0
    await asyncio.sleep(0.5)  # well past the granted 0.2 s: the long term holds
    assert owner.events.poll(handle) is EventStatus.PENDING
    assert await creator.events.renew_lease(handle) == 0.2
    assert (await poisoned(owner.events.awaiter(handle))).endswith("within 0.2 s")


async def test_a_lost_holder_breaks_its_lease_at_once(network: FakeNetwork) -> None:
    """Long lease, holder crashes: the owner, watching it, poisons within the liveness
    window, not the lease's term."""
    owner = Worker(1, transport=network.transport(), **FAKE_FAST)
    holder_transport = network.transport()
    holder = Worker(2, transport=holder_transport, **FAKE_FAST)
    await owner.start()
    await holder.start()
    try:
        await holder.connect(owner.address)
        handle = await holder.events.new_event_on(1, label="job", lease=60)
        assert owner.events.lease_holders() == {2}
        await wait_until(lambda: owner.stats()["links_open"] > 0)  # the owner watches it
        await holder_transport.close()  # a crash: no goodbye
        reason = await poisoned(owner.events.awaiter(handle))
        assert reason.startswith("lease of worker 0x2 on 'job' ended with its holder: worker 0x2")
        assert "lost" in reason
        assert owner.events.lease_holders() == set()
    finally:
        await holder.close(grace=0)
        await owner.close(grace=0)


async def test_a_holder_closing_without_completing_breaks_its_lease(
    make_worker: Callable[..., Any],
) -> None:
    owner = await make_worker(1)
    holder = await make_worker(2, peers=[owner.address])
    kept, done = [await holder.events.new_event_on(1, lease=60) for _ in range(2)]
    await holder.events.trigger_confirmed(done)
    await holder.close()
    reason = await poisoned(owner.events.awaiter(kept))
    assert reason.startswith(f"lease of worker 0x2 on {kept} ended with its holder: worker 0x2")
    assert reason.endswith("closed")
    assert owner.events.poll(done) is EventStatus.READY


async def test_an_observer_leaving_leaves_its_lease_to_time(
    make_worker: Callable[..., Any], network: FakeNetwork
) -> None:
    """The command line creates and leaves at once (or is killed): only the term counts."""
    owner = await make_worker(1)
    leaving = await make_worker(8, peers=[owner.address], observer=True)
    crashing_transport = network.transport()
    crashing = Worker(9, transport=crashing_transport, observer=True, peers=[owner.address],
                      **FAKE_FAST)  # fmt: skip
    await crashing.start()
    try:
        left = await leaving.events.new_event_on(1, label="export", lease=0.5)
        killed = await crashing.events.new_event_on(1, label="backup", lease=0.5)
        assert owner.events.lease_holders() == set(), "observers are not watched"
        await leaving.close()  # its goodbye is acknowledged: the owner has seen it leave
        await crashing_transport.close()  # no goodbye
        assert owner.events.poll(left) is EventStatus.PENDING
        assert await poisoned(owner.events.awaiter(left)) == (
            "lease of worker 0x8 on 'export' expired: not renewed within 0.5 s"
        )
        assert await poisoned(owner.events.awaiter(killed)) == (
            "lease of worker 0x9 on 'backup' expired: not renewed within 0.5 s"
        )
    finally:
        await crashing.close(grace=0)


async def test_anyone_may_renew_and_errors_are_clear(make_worker: Callable[..., Any]) -> None:
    owner = await make_worker(1)
    creator = await make_worker(2, peers=[owner.address])
    other = await make_worker(3, peers=[owner.address])
    leased = await creator.events.new_event_on(1, lease=0.3)
    plain = await creator.events.new_event_on(1)
    assert await other.events.renew_lease(leased, 20) == 20.0
    with pytest.raises(EventError, match="has no lease"):
        await other.events.renew_lease(plain)
    with pytest.raises(ValueError, match="finite number of seconds > 0"):
        await other.events.renew_lease(leased, 0)
    with pytest.raises(ValueError, match="lease"):
        await creator.events.new_event_on(1, lease=-1)
    with pytest.raises(InvalidGenerationError, match=r"^handle minted by an earlier incarnation"):
        await other.events.renew_lease(EventHandle.from_parts(1, 999, 1))
    # Another implementation's bad payload is refused by the owner, nothing created.
    pending = owner.events.stats()["pending"]
    with pytest.raises(RemoteError, match="TypeError: a lease is a number"):
        await creator.call(1, "_ev.new", {"label": "x", "lease": "soon"})
    with pytest.raises(RemoteError, match="ValueError"):
        await creator.call(1, "_ev.renew", [leased.to_bytes(), -5])
    assert owner.events.stats()["pending"] == pending


async def test_a_leased_event_of_ones_own(make_worker: Callable[..., Any]) -> None:
    (owner,) = [await make_worker(1)]
    handle = await owner.events.new_event_on(1, label="self", lease=0.3)
    assert owner.events.lease_holders() == set(), "a worker outlives its own events"
    assert await owner.events.renew_lease(handle) == 0.3
    assert (await poisoned(owner.events.awaiter(handle))).startswith("lease of worker 0x1 on")


async def test_an_old_peers_new_event_payload_still_means_no_lease(
    make_worker: Callable[..., Any],
) -> None:
    owner = await make_worker(1)
    creator = await make_worker(2, peers=[owner.address])
    handle = EventHandle.from_bytes(await creator.call(1, "_ev.new", {"label": None}))
    assert owner.events.poll(handle) is EventStatus.PENDING
    assert owner.events.stats()["leases"] == 0


async def test_an_owner_that_predates_leases_is_a_clear_error(
    make_worker: Callable[..., Any],
) -> None:
    """Its ``_ev.new`` ignores the lease and answers a bare handle: no silent lease-less event."""
    owner = await make_worker(1)
    creator = await make_worker(2, peers=[owner.address])

    def old_new(payload: dict[str, Any], ctx: Any) -> bytes:
        return owner.events.new_event(payload.get("label")).handle.to_bytes()

    owner._handlers.register("_ev.new", old_new, ordered=False, replace=True, internal=True)
    with pytest.raises(AMError, match="worker 0x1 predates leases: it cannot keep one on ev:1:"):
        await creator.events.new_event_on(1, label="job", lease=30)
    await wait_until(lambda: owner.events.stats()["pending"] == 0)  # its event is poisoned


# -- the blocking mirror ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_sync_worker_leases_and_renews() -> None:
    options: dict[str, Any] = {"heartbeat_interval": 0.1, "heartbeat_timeout": 3.0}
    with SyncWorker(**options) as owner, SyncWorker(peers=[owner.address], **options) as creator:
        handle = creator.events.new_event_on(owner.worker_id, label="sync job", lease=0.3)
        assert creator.events.renew_lease(handle, 30) == 30.0
        assert creator.events.renew_lease(handle, 0.3) == 0.3
        with pytest.raises(EventPoison, match=r"lease of worker .* on 'sync job' expired"):
            creator.events.wait(handle, timeout=10)
        with pytest.raises(InvalidGenerationError, match="already completed"):
            creator.events.renew_lease(handle)
        with pytest.raises(ValueError, match="lease"):
            creator.events.new_event_on(owner.worker_id, lease=math.nan)
