"""A start-up gated on a precondition graph that spans four processes.

    python examples/precondition_graph.py --role weights --bind tcp://127.0.0.1:5800
    python examples/precondition_graph.py --role tokenizer --seed tcp://127.0.0.1:5800
    python examples/precondition_graph.py --role merge --seed tcp://127.0.0.1:5800
    python examples/precondition_graph.py --role serve --seed tcp://127.0.0.1:5800

The ``weights`` (worker 0xa) and ``tokenizer`` (0xb) loaders each own an event, completed when
their loading ends (``--delay S``) — or poisoned with ``--fail REASON``. ``merge`` (0xc) asks
both loaders for their handles, merges them into an event of its own and prints ``MERGED
<handle>``. ``serve`` (0xd) asks ``merge`` for the merged handle, awaits it and prints
``SERVING after <seconds>``, ``POISONED <reason>`` or ``OUTCOME-UNKNOWN <reason>`` (the merge's
owner lost), then exits. Handles travel in call results as themselves; every other role prints
``READY <id> <address>`` and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from velo_am import CallContext, PeerUnreachable, Worker
from velo_event import Event, EventHandle, EventPoison, OutcomeUnknown

WORKER_IDS = {"weights": 0xA, "tokenizer": 0xB, "merge": 0xC, "serve": 0xD}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", required=True, choices=WORKER_IDS)
    parser.add_argument("--bind", default="tcp://127.0.0.1:0")
    parser.add_argument("--seed", action="append", default=[], help="a member's address")
    parser.add_argument("--delay", type=float, default=0.5, help="loading time (s)")
    parser.add_argument("--fail", metavar="REASON", help="a loader fails with REASON")
    parser.add_argument("--heartbeat-timeout", type=float, default=5.0, help="liveness (s)")
    parser.add_argument("--timeout", type=float, default=20.0, help="to find the other roles")
    return parser.parse_args()


async def call_member(worker: Worker, member: int, name: str, timeout: float) -> Any:
    """Call a member by id once the mesh join has reached it (members may start in any order)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await worker.call(member, name)
            except PeerUnreachable:
                await asyncio.sleep(0.1)


def load(worker: Worker, args: argparse.Namespace) -> Event:
    """A loader: its event is ready once loading ends (after ``--delay``), poisoned if it fails."""
    event = worker.events.new_event()

    @worker.handler("handle")
    def handle(payload: Any, ctx: CallContext) -> EventHandle:
        return event.handle

    def loaded() -> None:
        if args.fail is None:
            event.trigger()
            print(f"LOADED {args.role}", flush=True)
        else:
            event.poison(args.fail)
            print(f"FAILED {args.role}: {args.fail}", flush=True)

    asyncio.get_running_loop().call_later(args.delay, loaded)  # loading, simulated
    return event


def serve_merged(worker: Worker) -> asyncio.Future[EventHandle]:
    """The merge's handler, answering once the merged event exists."""
    merged: asyncio.Future[EventHandle] = asyncio.get_running_loop().create_future()

    @worker.handler("merged")
    async def merged_handle(payload: Any, ctx: CallContext) -> EventHandle:
        return await merged

    return merged


async def merge(
    worker: Worker, args: argparse.Namespace, merged: asyncio.Future[EventHandle]
) -> str:
    """The merge: one event of this worker over the loaders' events on two other workers.
    Returns the line that reports it."""
    inputs = [
        await call_member(worker, WORKER_IDS[role], "handle", args.timeout)
        for role in ("weights", "tokenizer")
    ]
    merged.set_result(worker.events.merge_events(inputs))
    return f"MERGED {merged.result()} from {' '.join(map(str, inputs))}"


async def serve(worker: Worker, args: argparse.Namespace) -> None:
    """The server: waits on the merged event, wherever its inputs live."""
    started = time.perf_counter()
    gate = await call_member(worker, WORKER_IDS["merge"], "merged", args.timeout)
    try:
        await worker.events.awaiter(gate)
    except EventPoison as poison:
        print(f"POISONED {poison.reason}", flush=True)
    except OutcomeUnknown as unknown:  # the merge's owner was lost before it answered
        print(f"OUTCOME-UNKNOWN {unknown.reason}", flush=True)
    else:
        print(f"SERVING after {time.perf_counter() - started:.2f} s", flush=True)


async def main(args: argparse.Namespace) -> None:
    timeout = args.heartbeat_timeout
    worker = Worker(
        WORKER_IDS[args.role],
        bind=args.bind,
        peers=args.seed,
        heartbeat_interval=min(1.0, timeout / 5),
        heartbeat_timeout=timeout,
    )
    # Handlers first: once the worker joins the mesh, any member may call them.
    loading = load(worker, args) if args.role in ("weights", "tokenizer") else None
    merged = serve_merged(worker) if args.role == "merge" else None
    async with worker:
        print(f"READY {worker.worker_id:#x} {worker.address}", flush=True)
        if args.role == "serve":
            await serve(worker, args)
            return
        # The line that says what this worker holds is printed once SIGTERM closes it
        # gracefully: whoever reads it may stop it at once.
        if loading is not None:
            report = f"HANDLE {loading.handle}"
        else:
            assert merged is not None
            report = await merge(worker, args, merged)
        # The others may still need this worker's events.
        await worker.serve_forever(ready=lambda: print(report, flush=True))
    print("CLOSED", flush=True)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
