"""One process owns an event, another awaits it by its handle: distributed events in brief.

    python examples/events_two_workers.py owner --bind tcp://127.0.0.1:5700 --delay 2
    python examples/events_two_workers.py waiter --peer tcp://127.0.0.1:5700 --handle ev:...

``owner`` prints ``READY <worker id> <address>`` and ``HANDLE <handle>``, completes its events
when called on ``go`` (or after ``--delay`` seconds): triggered, or poisoned with ``--fail
REASON``. It serves until SIGINT or SIGTERM. ``--count N`` makes N events, all returned by
the ``handles`` handler (handles travel in payloads as themselves). ``waiter`` awaits the
handle given as text and prints
``READY-EVENT <handle>``, ``POISONED <reason>``, or ``OUTCOME-UNKNOWN <reason>`` when the
owner was lost or unreachable before it answered, or restarted since it minted the handle.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from velo_am import CallContext, Worker
from velo_event import EventHandle, EventPoison, OutcomeUnknown


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--heartbeat-timeout", type=float, default=5.0, help="liveness (s)")
    sub = parser.add_subparsers(dest="mode", required=True)
    owner = sub.add_parser("owner", parents=[common], help="own events, complete them on 'go'")
    owner.add_argument("--bind", default="tcp://127.0.0.1:0")
    owner.add_argument("--id", type=lambda text: int(text, 0), default=None)
    owner.add_argument("--count", type=int, default=1, help="how many events to own")
    owner.add_argument("--delay", type=float, default=None, help="complete after S seconds")
    owner.add_argument("--fail", metavar="REASON", help="poison with REASON instead")
    waiter = sub.add_parser("waiter", parents=[common], help="await another worker's handle")
    waiter.add_argument("--peer", required=True, help="the owner's address")
    waiter.add_argument("--handle", required=True, type=EventHandle.parse)
    return parser.parse_args()


def make_worker(args: argparse.Namespace, **options: Any) -> Worker:
    timeout = args.heartbeat_timeout
    return Worker(heartbeat_interval=min(1.0, timeout / 5), heartbeat_timeout=timeout, **options)


async def owner(args: argparse.Namespace) -> None:
    async with make_worker(args, worker_id=args.id, bind=args.bind) as worker:
        events = [worker.events.new_event() for _ in range(args.count)]

        def complete() -> None:
            for event in events:
                if args.fail is None:
                    event.trigger()
                else:
                    event.poison(args.fail)

        @worker.handler("go")
        def go(payload: Any, ctx: CallContext) -> None:
            complete()

        @worker.handler("handles")
        def handles(payload: Any, ctx: CallContext) -> list[EventHandle]:
            return [event.handle for event in events]

        @worker.handler("stats")
        def stats(payload: Any, ctx: CallContext) -> dict[str, int]:
            return worker.events.stats()

        def ready() -> None:  # once SIGINT/SIGTERM are handled
            print(f"READY {worker.worker_id:#x} {worker.address}", flush=True)
            print(f"HANDLE {events[0].handle}", flush=True)

        if args.delay is not None:
            asyncio.get_running_loop().call_later(args.delay, complete)
        await worker.serve_forever(ready=ready)
    print("CLOSED", flush=True)


async def waiter(args: argparse.Namespace) -> None:
    async with make_worker(args) as worker:
        await worker.connect(args.peer)
        try:
            await worker.events.awaiter(args.handle)
        except EventPoison as poison:
            print(f"POISONED {poison.reason}", flush=True)
        except OutcomeUnknown as unknown:
            print(f"OUTCOME-UNKNOWN {unknown.reason}", flush=True)
        else:
            print(f"READY-EVENT {args.handle}", flush=True)


if __name__ == "__main__":
    arguments = parse_args()
    asyncio.run(owner(arguments) if arguments.mode == "owner" else waiter(arguments))
