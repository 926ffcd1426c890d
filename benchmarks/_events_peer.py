"""Process B of ``benchmarks/bench_events.py``: a velo Worker whose events the benchmark awaits
remotely, and which awaits the benchmark's events remotely.

    python benchmarks/_events_peer.py --bind ADDRESS [--max-seconds S] [--profile FILE]

Handlers (all sync: they run on the worker's loop, no task each). A handle list travels as
one ``bytes`` value, the 16-byte encodings (``EventHandle.to_bytes``) back to back:

* ``pp_batch(handles)``: the benchmark's events for a ping-pong run; B creates one event of
  its own per handle, remembers the pairs and returns its handles (same order).
* ``pp_go([timeout, ahead])``: start the responder task over the remembered pairs: for each
  pair in order, ``await w.events.awaiter(a)`` (a remote wait) then trigger ``b``. With
  ``ahead`` B starts awaiting every ``a`` at once (a task each, so every subscription is sent
  up front), and the responder awaits those tasks in order instead.
* ``new(count)``: create ``count`` events, remember them, return their handles.
* ``trigger_go(yield_every)``: start the trigger task: trigger the remembered events in order
  as fast as possible, yielding to the loop once per ``yield_every`` triggers (so that
  subscriptions arriving meanwhile are served).
* ``status()``: ``[running, error]`` of the last task (``error`` is ``None`` or a text).

A failing task poisons every event it has not completed, so nobody waits for them forever.
Prints ``READY <address>`` once bound; exits on SIGTERM, on EOF of stdin (the benchmark
died) or after ``--max-seconds`` (see ``_am_peer.stop_event``). With ``--profile FILE`` it
runs under cProfile and dumps the stats there on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from _am_peer import _QuietGracefulClose, ready, run_profiled, stop_event

from velo_am import CallContext, Worker
from velo_event import Event, EventError, EventHandle

HANDLE_BYTES = 16


def split_handles(blob: bytes) -> list[EventHandle]:
    if len(blob) % HANDLE_BYTES:
        raise ValueError(f"a handle list is a multiple of {HANDLE_BYTES} bytes, got {len(blob)}")
    return [
        EventHandle.from_bytes(blob[i : i + HANDLE_BYTES])
        for i in range(0, len(blob), HANDLE_BYTES)
    ]


async def serve(bind: str, max_seconds: float) -> None:
    logging.basicConfig(format="[velo events peer] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("velo_am._shell").addFilter(_QuietGracefulClose())
    stop = stop_event(max_seconds)
    pairs: list[tuple[EventHandle, Event]] = []
    created: list[Event] = []
    task: asyncio.Task[None] | None = None
    error: str | None = None

    async with Worker(bind=bind, close_grace=0.5) as worker:
        events = worker.events

        def poison_all(pending: list[Event], reason: str) -> None:
            for event in pending:
                with contextlib.suppress(EventError):  # completed already
                    event.poison(reason)

        def start(coroutine: Coroutine[Any, Any, None]) -> None:
            nonlocal task, error
            if task is not None and not task.done():
                coroutine.close()
                raise RuntimeError("the previous task is still running")
            error = None
            task = asyncio.ensure_future(coroutine)

        async def wait_for(handle: EventHandle) -> None:
            await events.awaiter(handle)

        async def respond(
            todo: list[tuple[EventHandle, Event]], timeout: float, ahead: bool
        ) -> None:
            nonlocal error
            done = 0
            waits: list[asyncio.Future[None]] = []
            try:
                async with asyncio.timeout(timeout):
                    if ahead:
                        waits = [asyncio.ensure_future(wait_for(theirs)) for theirs, _ in todo]
                        for wait, (_, mine) in zip(waits, todo, strict=True):
                            await wait
                            mine.trigger()
                            done += 1
                    else:
                        for theirs, mine in todo:
                            await events.awaiter(theirs)
                            mine.trigger()
                            done += 1
            except Exception as exc:
                error = f"responder failed after {done} rounds: {type(exc).__name__}: {exc}"
            finally:
                for wait in waits:
                    wait.cancel()
                poison_all([mine for _, mine in todo[done:]], error or "responder cancelled")

        async def trigger_all(todo: list[Event], yield_every: int) -> None:
            nonlocal error
            done = 0
            try:
                for event in todo:
                    event.trigger()
                    done += 1
                    if done % yield_every == 0:
                        await asyncio.sleep(0)
            except Exception as exc:
                error = f"trigger task failed after {done}: {type(exc).__name__}: {exc}"
            finally:
                poison_all(todo[done:], error or "trigger task cancelled")

        def pp_batch(payload: bytes, ctx: CallContext) -> bytes:
            theirs = split_handles(payload)
            mine = [events.new_event() for _ in theirs]
            pairs.extend(zip(theirs, mine, strict=True))
            return b"".join(event.handle.to_bytes() for event in mine)

        def pp_go(payload: list[Any], ctx: CallContext) -> None:
            timeout, ahead = payload
            todo = pairs[:]
            pairs.clear()
            start(respond(todo, float(timeout), bool(ahead)))

        def new(payload: int, ctx: CallContext) -> bytes:
            batch = [events.new_event() for _ in range(int(payload))]
            created.extend(batch)
            return b"".join(event.handle.to_bytes() for event in batch)

        def trigger_go(payload: int, ctx: CallContext) -> None:
            todo = created[:]
            created.clear()
            start(trigger_all(todo, max(1, int(payload))))

        def status(payload: Any, ctx: CallContext) -> list[Any]:
            return [task is not None and not task.done(), error]

        for name, handler in (
            ("pp_batch", pp_batch),
            ("pp_go", pp_go),
            ("new", new),
            ("trigger_go", trigger_go),
            ("status", status),
        ):
            worker.register_handler(name, handler)
        ready(worker.address)
        try:
            await stop.wait()
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="tcp://127.0.0.1:0")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--profile", default=None, help="cProfile output file")
    args = parser.parse_args()
    run_profiled(serve(args.bind, args.max_seconds), args.profile)


if __name__ == "__main__":
    main()
