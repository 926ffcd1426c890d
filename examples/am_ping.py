"""One script serves, another calls: the smallest velo_am program.

    python examples/am_ping.py serve --bind tcp://127.0.0.1:5555
    python examples/am_ping.py call --peer tcp://127.0.0.1:5555 --count 5

``serve`` prints ``READY <worker id> <address>`` once it listens and runs until SIGINT or
SIGTERM, which close it gracefully. ``call`` connects, pings, prints round trips and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from velo_am import CallContext, Worker


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    serve = sub.add_parser("serve", help="serve the ping handlers until SIGINT/SIGTERM")
    serve.add_argument("--bind", default="tcp://127.0.0.1:0")
    serve.add_argument("--id", type=lambda text: int(text, 0), default=None)
    serve.add_argument("--grace", type=float, default=5.0, help="close grace period (s)")
    call = sub.add_parser("call", help="ping a server and exit")
    call.add_argument("--peer", required=True, help="the server's address")
    call.add_argument("--count", type=int, default=3)
    return parser.parse_args()


async def serve(args: argparse.Namespace) -> None:
    async with Worker(args.id, bind=args.bind, close_grace=args.grace) as worker:
        received: list[Any] = []

        @worker.handler("ping")
        def ping(payload: Any, ctx: CallContext) -> Any:
            return payload

        @worker.handler("sleep")
        async def sleep(seconds: float, ctx: CallContext) -> str:
            await asyncio.sleep(seconds)
            return f"slept {seconds} s"

        @worker.handler("record")
        def record(payload: Any, ctx: CallContext) -> None:
            received.append(payload)

        @worker.handler("records")
        def records(payload: Any, ctx: CallContext) -> list[Any]:
            return received

        @worker.handler("stats")
        def stats(payload: Any, ctx: CallContext) -> dict[str, int]:
            return {**worker.stats(), "pid": os.getpid(), "incarnation": worker.incarnation}

        # READY once SIGINT/SIGTERM are handled: a signal right after it closes gracefully.
        await worker.serve_forever(
            ready=lambda: print(f"READY {worker.worker_id:#x} {worker.address}", flush=True)
        )
    print("CLOSED", flush=True)


async def call(args: argparse.Namespace) -> None:
    async with Worker() as worker:
        server = await worker.connect(args.peer)
        for i in range(args.count):
            started = time.perf_counter()
            answer = await worker.call(server, "ping", {"seq": i})
            elapsed = (time.perf_counter() - started) * 1e6
            print(f"ping {i} -> {answer} from {server:#x} in {elapsed:.0f} µs", flush=True)


if __name__ == "__main__":
    arguments = parse_args()
    asyncio.run(serve(arguments) if arguments.mode == "serve" else call(arguments))
