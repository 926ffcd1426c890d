"""One worker of ``benchmarks/soak.py``'s mesh: a velo Worker with the soak's handlers.

    python benchmarks/_soak_peer.py --id N --seed ADDR [--max-seconds S]

Prints ``READY <id> <address>`` once it serves; SIGINT/SIGTERM close it gracefully (its
pending events are poisoned with ``worker 0x… shutting down``). The liveness window comes
from the environment (``VELO_HEARTBEAT_INTERVAL``, ``VELO_HEARTBEAT_TIMEOUT``), set by the
soak. Handlers (called by the soak's coordinator):

* ``soak.complete`` ``[handle, delay, reason]``: after ``delay`` seconds, triggers the
  handle (``reason`` None) or poisons it with ``reason``, and waits for the owner's verdict:
  returns ``"done"``, or ``"already"`` if it had completed; the owner's loss raises.
* ``soak.observe`` ``[handle, timeout]``: awaits the handle here; returns ``["ready"]``,
  ``["poisoned", reason]``, ``["unknown", reason]`` (``OutcomeUnknown``) or ``["timeout"]``.
* ``soak.ping``: ``None``. ``soak.stats``: ``[messages_out, messages_in]``.

Exits once the soak that started it is gone (its parent changed), or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from typing import Any

from velo_am import CallContext, Worker
from velo_event import AlreadyTriggeredError, EventHandle, EventPoison, OutcomeUnknown


def install(worker: Worker) -> None:
    @worker.handler("soak.complete")
    async def complete(payload: list[Any], ctx: CallContext) -> str:
        handle, delay, reason = payload
        assert isinstance(handle, EventHandle)
        await asyncio.sleep(delay)  # the plan's delay: the leaf completes at a random moment
        try:
            if reason is None:
                await worker.events.trigger_confirmed(handle, timeout=5.0)
            else:
                await worker.events.poison_confirmed(handle, reason, timeout=5.0)
        except AlreadyTriggeredError:
            return "already"
        return "done"

    @worker.handler("soak.observe")
    async def observe(payload: list[Any], ctx: CallContext) -> list[str]:
        handle, timeout = payload
        try:
            await worker.events.awaiter(handle, timeout=timeout)
        except EventPoison as poison:
            return ["poisoned", poison.reason]
        except OutcomeUnknown as unknown:
            return ["unknown", unknown.reason]
        except TimeoutError:
            return ["timeout"]
        return ["ready"]

    @worker.handler("soak.ping")
    def ping(payload: Any, ctx: CallContext) -> None:
        return None

    @worker.handler("soak.stats")
    def stats(payload: Any, ctx: CallContext) -> list[int]:
        counters = worker.stats()
        return [counters["messages_out"], counters["messages_in"]]


async def main(args: argparse.Namespace) -> None:
    async with Worker(args.id, bind="tcp://127.0.0.1:0", peers=[args.seed]) as worker:
        install(worker)

        def ready() -> None:
            print(f"READY {worker.worker_id:#x} {worker.address}", flush=True)

        serving = asyncio.ensure_future(worker.serve_forever(ready=ready))
        watching = asyncio.ensure_future(watch_parent(os.getppid()))
        try:
            await asyncio.wait(
                [serving, watching], timeout=args.max_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (serving, watching):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def watch_parent(parent: int) -> None:
    """Returns once the soak that started this process is gone (it crashed: nobody reaps)."""
    while os.getppid() == parent:  # noqa: ASYNC110 - no notification of a parent's death
        await asyncio.sleep(1.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--id", type=lambda text: int(text, 0), required=True)
    parser.add_argument("--seed", required=True, help="the coordinator's address")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    # Wall-clock stamps with the process id: the logs of one soak's workers (and each worker's
    # incarnations, which share a file) can be put in order against each other and against the
    # soak's own fault lines, which carry the same stamps.
    logging.basicConfig(
        format="%(asctime)s.%(msecs)03d pid %(process)d %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.WARNING,
    )
    asyncio.run(main(parser.parse_args()))
