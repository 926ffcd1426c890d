"""N scripts join a mesh through one seed address and call each other by worker id.

    python examples/mesh_join.py --bind tcp://127.0.0.1:5600              # the seed
    python examples/mesh_join.py --seed tcp://127.0.0.1:5600 --expect 4   # three more of these

Each worker waits until it knows ``--expect`` members (itself included), calls ``whoami`` on
every other member and serves until SIGINT/SIGTERM, printing ``JOINED <id> called <n> peers``
once either signal would close it gracefully (so it is safe to stop the script on reading it).
Handler ``relay`` forwards along a list of worker ids, so a call chain crosses the mesh.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from velo_am import CallContext, Worker


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="tcp://127.0.0.1:0")
    parser.add_argument("--seed", action="append", default=[], help="a member's address")
    parser.add_argument("--id", type=lambda text: int(text, 0), default=None)
    parser.add_argument("--expect", type=int, default=1, help="mesh size to wait for")
    parser.add_argument("--timeout", type=float, default=20.0)
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    worker = Worker(args.id, bind=args.bind, peers=args.seed)

    # Handlers first: once the worker joins the mesh, any member may call them.
    @worker.handler("whoami")
    def whoami(payload: Any, ctx: CallContext) -> int:
        return worker.worker_id

    @worker.handler("relay")
    async def relay(path: list[int], ctx: CallContext) -> list[int]:
        """Call the next worker of ``path`` with the rest; return the ids visited."""
        if not path:
            return [worker.worker_id]
        rest: list[int] = await worker.call(path[0], "relay", path[1:])
        return [worker.worker_id, *rest]

    async with worker:
        print(f"READY {worker.worker_id:#x} {worker.address}", flush=True)
        await worker.wait_for_peers(args.expect - 1, timeout=args.timeout)
        others = [peer for peer in worker.peers if peer != worker.worker_id]
        for peer in others:
            assert await worker.call(peer, "whoami") == peer
        joined = f"JOINED {worker.worker_id:#x} called {len(others)} peers"
        # Said once SIGTERM is handled: whoever stops the mesh on reading it gets a clean exit.
        await worker.serve_forever(ready=lambda: print(joined, flush=True))


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
