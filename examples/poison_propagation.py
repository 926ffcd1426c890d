"""A poison reason crossing workers through merges, there and back, over real sockets.

Run: python examples/poison_propagation.py

Two workers (0xa, "storage", and 0xb, "compute") run in this one process and talk over TCP on
loopback exactly as two processes would. The graph, each merge owned by the other worker than
its inputs::

    shard (on a) ──┐
                   ├─ stage (merge on b) ── gate (merge on a) ── awaited on b
    cache (on b) ──┘

``b`` poisons ``shard`` — an event of ``a`` — with ``disk full``; the reason travels to ``a``,
back to ``b`` inside ``stage``'s reason, to ``a`` again inside ``gate``'s, and reaches the
waiter on ``b`` with every hop named. Each line printed says where the reason arrived.
"""

from __future__ import annotations

import asyncio

from velo_am import Worker
from velo_event import EventPoison


async def main() -> None:
    async with Worker(0xA) as storage, Worker(0xB) as compute:
        await compute.connect(storage.address)  # both now know each other

        shard = storage.events.new_event()
        cache = compute.events.new_event()
        stage = compute.events.merge_events([shard.handle, cache.handle])  # remote + local
        gate = storage.events.merge_events([stage])  # a merge of b's merge, on a
        print(f"shard {shard.handle} on a, cache {cache.handle} on b")
        print(f"stage {stage} on b merges both; gate {gate} on a merges stage")

        cache.trigger()
        # The poison of another worker's event, confirmed by its owner.
        await compute.events.poison_confirmed(shard.handle, "disk full")
        print(f"b poisoned a's shard; a says: {storage.events.poison_reason(shard.handle)!r}")

        try:
            await compute.events.awaiter(gate)  # b awaits a's gate
        except EventPoison as poison:
            print(f"b awaited a's gate and got EventPoison for {poison.handle}:")
            print(f"  {poison.reason}")
            assert poison.reason.endswith("poisoned: disk full")

        # Completed generations keep their reason: asked later, the owner still knows it.
        status = await compute.events.poll_remote(gate)
        print(f"b asks a for the gate's status later: {status.name}")
        print(f"a's own record of its gate: {storage.events.poison_reason(gate)!r}")


if __name__ == "__main__":
    asyncio.run(main())
