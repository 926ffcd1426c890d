"""Server side of ``benchmarks/bench_am.py``: one process per mode, launched by the benchmark.

    python benchmarks/_am_peer.py MODE --bind ADDRESS [--max-seconds S] [--profile FILE]

Modes (the raw modes speak a minimal two-frame protocol: a 40-byte header frame whose first
byte is the kind, then the payload frame):

* ``asyncio``: ``zmq.asyncio`` ROUTER, one ``await recv_multipart()`` per message
  (baselines A and C);
* ``sync``: blocking pyzmq ROUTER, one blocking ``recv_multipart()`` per message (baseline B);
* ``drain``: plain pyzmq ROUTER read from ``loop.add_reader(FD)``, drained with
  ``recv_multipart(NOBLOCK)`` until ``zmq.Again`` (baseline D, and a latency reference);
* ``bare``: the peer of ``bench_events.py``'s bare event pattern (``_bare_events.py``): a
  task that, round after round, awaits the driver's next event and then triggers its own;
* ``velo``: a velo Worker serving ``ping`` (echo), ``count``, ``count_value`` and
  ``count_reset``.

Raw kinds: ``E`` echo the message back; ``M`` count it; ``F`` reply ``[F, count]`` and reset
the count. Sockets get the same queue sizes as velo's (SNDHWM/RCVHWM 100,000).

Prints ``READY <address>`` once bound. Exits on SIGTERM, when its stdin reaches EOF (the
benchmark died) or after ``--max-seconds``, whichever comes first; every loop is bounded by
those. With ``--profile FILE`` (velo mode) it runs under cProfile and dumps the stats there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

import zmq
import zmq.asyncio
from _bare_events import DRIVER_EVENTS, PEER_EVENTS, BareEvents

KIND_ECHO = ord("E")
KIND_MESSAGE = ord("M")
KIND_FIN = ord("F")
HWM = 100_000
#: Messages handled per drain callback before yielding (as in velo's transport).
DRAIN_BATCH = 512


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("asyncio", "sync", "drain", "bare", "velo"))
    parser.add_argument("--bind", default="tcp://127.0.0.1:0")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--profile", default=None, help="cProfile output file (velo mode)")
    return parser.parse_args()


def ready(address: str) -> None:
    print(f"READY {address}", flush=True)


def router(context: zmq.Context[Any], bind: str) -> tuple[Any, str]:
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.bind(bind)
    endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(endpoint, bytes)
    return sock, endpoint.decode()


def stdin_at_eof() -> bool:
    """Non-blocking: True once the benchmark's end of our stdin pipe is closed."""
    fd = sys.stdin.fileno()
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable) and not os.read(fd, 4096)


def stop_event(max_seconds: float) -> asyncio.Event:
    """Set on SIGTERM/SIGINT, on EOF of stdin, or after ``max_seconds``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    fd = sys.stdin.fileno()

    def on_stdin() -> None:
        if not os.read(fd, 4096):
            loop.remove_reader(fd)
            stop.set()

    loop.add_reader(fd, on_stdin)
    loop.call_later(max_seconds, stop.set)
    return stop


async def run_until_stopped(
    work: Coroutine[Any, Any, None], address: str, stop: asyncio.Event
) -> None:
    """Run ``work`` as a task, say READY, and cancel it (and wait for it) once ``stop`` is set."""
    task = asyncio.ensure_future(work)
    ready(address)
    try:
        await stop.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- raw modes ---------------------------------------------------------------------------------


async def serve_asyncio(bind: str, max_seconds: float) -> None:
    stop = stop_event(max_seconds)
    context = zmq.asyncio.Context()
    sock, address = router(context, bind)

    async def serve() -> None:
        count = 0
        while True:  # ends when cancelled (stop)
            frames = await sock.recv_multipart()
            kind = frames[1][0]
            if kind == KIND_MESSAGE:
                count += 1
            elif kind == KIND_ECHO:
                await sock.send_multipart(frames)
            elif kind == KIND_FIN:
                await sock.send_multipart([frames[0], b"F", str(count).encode()])
                count = 0

    try:
        await run_until_stopped(serve(), address, stop)
    finally:
        sock.close(linger=0)
        context.term()


def serve_sync(bind: str, max_seconds: float) -> None:
    context: zmq.Context[Any] = zmq.Context()
    sock, address = router(context, bind)
    sock.setsockopt(zmq.RCVTIMEO, 500)  # wake twice a second to check stdin and the deadline
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ready(address)
    deadline = time.monotonic() + max_seconds
    count = 0
    try:
        while time.monotonic() < deadline:
            try:
                frames = sock.recv_multipart()
            except zmq.Again:
                if stdin_at_eof():
                    break
                continue
            kind = frames[1][0]
            if kind == KIND_MESSAGE:
                count += 1
            elif kind == KIND_ECHO:
                sock.send_multipart(frames)
            elif kind == KIND_FIN:
                sock.send_multipart([frames[0], b"F", str(count).encode()])
                count = 0
    finally:
        sock.close(linger=0)
        context.term()


async def serve_drain(bind: str, max_seconds: float) -> None:
    stop = stop_event(max_seconds)
    loop = asyncio.get_running_loop()
    context: zmq.Context[Any] = zmq.Context()
    sock, address = router(context, bind)
    count = 0
    scheduled = False

    def schedule() -> None:
        nonlocal scheduled
        if not scheduled:
            scheduled = True
            loop.call_soon(drain)

    def drain() -> None:
        # Parks only after recv returned Again, which re-arms the edge-triggered ZMQ_FD even
        # when one of our own sends consumed the previous edge.
        nonlocal scheduled, count
        scheduled = False
        if sock.closed:  # a drain still scheduled when the socket closed
            return
        for _ in range(DRAIN_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = frames[1][0]
            if kind == KIND_MESSAGE:
                count += 1
            elif kind == KIND_ECHO:
                sock.send_multipart(frames, zmq.NOBLOCK)
            elif kind == KIND_FIN:
                sock.send_multipart([frames[0], b"F", str(count).encode()], zmq.NOBLOCK)
                count = 0
        schedule()  # more may be queued; let the loop breathe first

    loop.add_reader(sock.FD, schedule)
    schedule()
    ready(address)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(sock.FD)
        sock.close(linger=0)
        context.term()


async def serve_bare(bind: str, max_seconds: float) -> None:
    stop = stop_event(max_seconds)
    context: zmq.Context[Any] = zmq.Context()
    sock, address = router(context, bind)
    bare = BareEvents(sock, 2, router=True, loop=asyncio.get_running_loop())

    async def respond() -> None:
        index = 0
        waiter = bare.wait(DRIVER_EVENTS + index)
        while True:  # ends when cancelled (stop)
            await waiter
            bare.trigger(PEER_EVENTS + index)
            index += 1
            waiter = bare.wait(DRIVER_EVENTS + index)
            bare.flush()

    try:
        await run_until_stopped(respond(), address, stop)
    finally:
        bare.close()
        context.term()


# -- velo --------------------------------------------------------------------------------------


class _QuietGracefulClose(logging.Filter):
    """Hide the expected "peer ... closed" notice when the benchmark's worker says goodbye;
    every other velo warning still reaches stderr (prefixed with ``[velo server]``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "peer %s" and str(record.args).endswith(" closed',)"))


async def serve_velo(bind: str, max_seconds: float) -> None:
    from velo_am import CallContext, Worker

    logging.basicConfig(format="[velo server] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("velo_am._shell").addFilter(_QuietGracefulClose())
    stop = stop_event(max_seconds)
    count = 0

    def ping(payload: Any, ctx: CallContext) -> Any:
        return payload

    def count_one(payload: Any, ctx: CallContext) -> None:
        nonlocal count
        count += 1

    def count_value(payload: Any, ctx: CallContext) -> int:
        return count

    def count_reset(payload: Any, ctx: CallContext) -> int:
        nonlocal count
        previous, count = count, 0
        return previous

    async with Worker(bind=bind, close_grace=0.5) as worker:
        worker.register_handler("ping", ping)
        worker.register_handler("count", count_one)
        worker.register_handler("count_value", count_value)
        worker.register_handler("count_reset", count_reset)
        ready(worker.address)
        await stop.wait()


def main() -> None:
    args = parse_args()
    if args.mode == "sync":
        serve_sync(args.bind, args.max_seconds)
        return
    modes = {"asyncio": serve_asyncio, "drain": serve_drain, "bare": serve_bare, "velo": serve_velo}
    serve = modes[args.mode]
    run_profiled(serve(args.bind, args.max_seconds), args.profile)


def run_profiled(main: Coroutine[Any, Any, None], profile: str | None) -> None:
    """``asyncio.run(main)``, under cProfile when ``profile`` names an output file."""
    if profile is None:
        asyncio.run(main)
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(main)
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


if __name__ == "__main__":
    main()
