"""One member of ``benchmarks/bench_scale.py``'s mesh: a velo Worker plus a raw pyzmq ROUTER
(the baseline barrier), driven by the benchmark over a control socket.

    python benchmarks/_scale_peer.py --id N --control ADDR [--seed ADDR] [--max-seconds S]

Uses only the public API that every version of velo_am being compared has (``Worker``,
``w.peers``, ``w.stats()``, ``w.events``), so the same script measures the code before and
after a change (the benchmark picks the version with ``PYTHONPATH``).

Control messages are msgpack arrays on a DEALER (this side) / ROUTER (the benchmark) pair,
separate from the mesh's sockets, so they are not counted in the worker's statistics:

* sent unasked: ``["ready", id, velo_address, raw_address, wall]`` once ``start()`` returned;
  ``["full", id, wall]`` once every other member (``--size`` in all) is alive in ``w.peers``.
* answered: ``["stats"]`` -> ``["stats", id, messages_out, cpu_seconds]``; ``["event"]`` ->
  ``["event", id, handle]`` (a new event of this worker); ``["merge", handles]`` -> awaits
  the merge of every handle but its own, ``["merged", id]``; ``["go"]`` triggers its own
  event, then ``["done", id, wall, error]`` once its merge completed; ``["rawconnect",
  addresses]`` -> a DEALER to every other raw ROUTER, ``["rawready", id]``; ``["rawgo"]`` ->
  one message to each, then ``["rawdone", id, wall]`` once it received one from each;
  ``["rss"]`` -> ``["rss", id, peak_rss_kib]``; ``["quit"]`` closes the worker and exits.

Exits on ``quit``, SIGTERM, or after ``--max-seconds``, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import time
from typing import Any

import msgpack  # type: ignore[import-untyped]
import zmq
import zmq.asyncio

from velo_am import Worker
from velo_event import EventHandle


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.context = zmq.asyncio.Context()
        self.control = self.context.socket(zmq.DEALER)
        self.control.linger = 1000
        self.control.connect(args.control)
        self.raw = self.context.socket(zmq.ROUTER)
        self.raw.linger = 0
        self.raw.setsockopt(zmq.BACKLOG, 4096)  # as velo's own listener: a fair baseline
        self.raw_port = self.raw.bind_to_random_port("tcp://127.0.0.1")
        self.dealers: list[Any] = []
        self.worker = Worker(args.id, bind="tcp://127.0.0.1:0", peers=args.seed or [])
        self.own: Any = None
        self.merge_task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def send(self, *message: Any) -> None:
        await self.control.send(msgpack.packb(list(message)))

    async def run(self) -> None:
        await self.worker.start()
        me = self.args.id
        raw_address = f"tcp://127.0.0.1:{self.raw_port}"
        await self.send("ready", me, self.worker.address, raw_address, time.time())
        watch = asyncio.ensure_future(self.watch_full())
        try:
            await self.serve()
        finally:
            watch.cancel()
            for dealer in self.dealers:
                dealer.close(linger=0)
            self.raw.close(linger=0)
            await self.worker.close(grace=0)
            self.control.close()
            self.context.term()

    async def watch_full(self) -> None:
        others = self.args.size - 1
        while True:
            alive = sum(1 for status in self.worker.peers.values() if status.state == "alive")
            if alive >= others:
                await self.send("full", self.args.id, time.time())
                return
            await asyncio.sleep(0.05)

    async def serve(self) -> None:
        me = self.args.id
        while True:
            command = msgpack.unpackb(await self.control.recv())
            kind = command[0]
            if kind == "quit":
                return
            if kind == "stats":
                stats = self.worker.stats()
                cpu = time.process_time()
                await self.send("stats", me, stats["messages_out"], cpu)
            elif kind == "event":
                self.own = self.worker.events.new_event()
                await self.send("event", me, self.own.handle.to_bytes())
            elif kind == "merge":
                handles = [EventHandle.from_bytes(raw) for raw in command[1]]
                mine = self.own.handle
                merged = self.worker.events.merge_events([h for h in handles if h != mine])
                self.merge_task = asyncio.ensure_future(self.await_merge(merged))
                await self.send("merged", me)
            elif kind == "go":
                self.own.trigger()
            elif kind == "rawconnect":
                for address in command[1]:
                    dealer = self.context.socket(zmq.DEALER)
                    dealer.linger = 0
                    dealer.connect(address)
                    self.dealers.append(dealer)
                await self.send("rawready", me)
            elif kind == "rawgo":
                self.tasks.add(asyncio.ensure_future(self.raw_barrier()))
            elif kind == "rss":
                await self.send("rss", me, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    async def await_merge(self, merged: Any) -> None:
        error = ""
        try:
            await self.worker.events.awaiter(merged)
        except Exception as failure:  # reported, not raised: the benchmark counts failures
            error = f"{type(failure).__name__}: {failure}"
        await self.send("done", self.args.id, time.time(), error)

    async def raw_barrier(self) -> None:
        for dealer in self.dealers:
            await dealer.send(b"x")
        for _ in self.dealers:
            await self.raw.recv_multipart()
        await self.send("rawdone", self.args.id, time.time())


async def main(args: argparse.Namespace) -> None:
    peer = Peer(args)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(peer.run())
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        async with asyncio.timeout(args.max_seconds):
            await task


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--seed", action="append")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    asyncio.run(main(parser.parse_args()))
