"""The events layer on the wire: EventUpdates batches that exceed a message, and poison
reasons that UTF-8 cannot carry, still reach every waiter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from support import wait_until

from velo_am import Worker
from velo_am import _protocol as p
from velo_am.transport import FakeNetwork
from velo_event import EventPoison


async def pair(make_worker: Callable[..., Any], **options: Any) -> tuple[Worker, Worker]:
    owner = await make_worker(1, **options)
    waiter = await make_worker(2, **options)
    await waiter.connect(owner.address)
    return owner, waiter


async def test_completions_larger_than_a_message_arrive_in_several(
    make_worker: Callable[..., Any], network: FakeNetwork
) -> None:
    owner, waiter = await pair(make_worker, max_message_size=64 * 1024)
    sizes: list[int] = []
    watched = network.filter

    def measure(address: str, frames: list[bytes]) -> bool:
        sizes.append(sum(map(len, frames)))
        return watched is None or watched(address, frames)

    network.filter = measure
    events = [owner.events.new_event() for _ in range(5_000)]
    waits = [asyncio.ensure_future(waiter.events.awaiter(e.handle)) for e in events]
    await wait_until(lambda: owner.events.stats()["served"] == 5_000, 20)
    sizes.clear()
    for event in events:  # all complete in one loop iteration: one batch of 5,000 items
        event.poison("checksum mismatch in shard")
    results = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 20)
    assert all(isinstance(result, EventPoison) for result in results)
    assert {result.reason for result in results} == {"checksum mismatch in shard"}  # type: ignore[union-attr]
    assert max(sizes) <= 64 * 1024, "each message within the receiver's limit"
    assert owner.stats()["events_updates_sent"] == 5_000
    assert waiter.stats()["dropped_malformed"] == 0


async def test_a_reason_with_lone_surrogates_still_poisons_the_remote_waiter(
    make_worker: Callable[..., Any],
) -> None:
    owner, waiter = await pair(make_worker)
    event = owner.events.new_event()
    wait = asyncio.ensure_future(waiter.events.awaiter(event.handle))
    await wait_until(lambda: owner.events.stats()["served"] == 1)
    event.poison("cannot read /data/\udcff.bin")  # an undecodable file name
    with pytest.raises(EventPoison) as caught:
        await asyncio.wait_for(wait, 5)
    assert caught.value.reason == "cannot read /data/\\udcff.bin"


async def test_a_forged_completion_from_a_non_owner_is_ignored(
    make_worker: Callable[..., Any], network: FakeNetwork
) -> None:
    owner, waiter = await pair(make_worker)
    third = await make_worker(3)
    await third.connect(waiter.address)
    event = owner.events.new_event()
    wait = asyncio.ensure_future(waiter.events.awaiter(event.handle))
    await wait_until(lambda: owner.events.stats()["served"] == 1)
    forged = p.EventUpdates(
        3, third.incarnation, waiter.incarnation, (), (p.EventDone(event.handle, None),)
    )
    network.deliver(waiter.address, p.encode(forged))
    await third.events.trigger_confirmed(third.events.new_event().handle)  # a round of traffic
    assert not wait.done(), "only the owner speaks for its events"
    event.trigger()
    await asyncio.wait_for(wait, 5)
