"""A start-up modelled with local events: shards load concurrently, a merge gates serving.

Run: python examples/local_events.py
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from velo_event import EventHandle, EventManager, EventPoison, LocalEventSystem


async def load_shard(events: EventManager, name: str, seconds: float, handle: EventHandle) -> None:
    """Simulated work that completes its event."""
    await asyncio.sleep(seconds)
    print(f"  {name:<12} loaded in {seconds * 1000:.0f} ms")
    events.trigger(handle)


async def main() -> None:
    events = LocalEventSystem()
    started = time.perf_counter()

    shards = {f"shard-{i}": events.new_event() for i in range(4)}
    tokenizer = events.new_event()
    weights = events.merge_events(e.handle for e in shards.values())
    ready = events.merge_events([weights, tokenizer.handle])
    print(f"serving gated on {ready} (merge of {len(shards)} shards + tokenizer)")

    async with asyncio.TaskGroup() as group:
        for i, (name, event) in enumerate(shards.items()):
            group.create_task(load_shard(events, name, 0.02 * (i + 1), event.handle))
        group.create_task(load_shard(events, "tokenizer", 0.01, tokenizer.handle))
        await events.awaiter(ready)
    print(f"ready to serve after {(time.perf_counter() - started) * 1000:.0f} ms")

    # A failure poisons the graph: every waiter learns why.
    download = events.new_event()
    cache = events.new_event()
    gate = events.merge_events([download.handle, cache.handle])
    cache.trigger()
    with contextlib.suppress(ConnectionError), download.into_guard("download failed"):
        raise ConnectionError("mirror unreachable")  # the guard poisons the event on the way out
    try:
        await events.awaiter(gate)
    except EventPoison as poison:
        print(f"gate poisoned as expected:\n  {poison.reason}")


if __name__ == "__main__":
    asyncio.run(main())
