"""The mesh at scale: real processes on this machine, and a simulation of thousands of workers.

Run: ``PYTHONPATH=. python benchmarks/bench_scale.py [--sizes 16,64,128,256]
[--code before=/path/to/old/checkout --code after=.] [--deadline 180] [--idle 10]
[--heartbeat-timeout S] [--sim-sizes 1024,4096] [--no-processes | --no-simulation]``

Method
------
*Real processes* (``benchmarks/_scale_peer.py``, one per member, all on ``tcp://127.0.0.1``).
For each version of the code (``--code LABEL=PATH``, put first on the members' ``PYTHONPATH``;
default: this checkout) and each size N: worker 1 starts; once it listens, the N - 1 others
start at once, each with worker 1 as its seed (a launcher starting a job). Then:

* **reach, s**: seconds from the moment the last member's ``start()`` returned until every
  member lists every other as alive (each member polls its ``peers`` every 50 ms).
* **msgs/join**: ``messages_out`` summed over the members at that moment, divided by N.
* **idle msg/s**, **idle CPU %**: per member, over ``--idle`` seconds (10) with nothing to
  do: messages sent per second and CPU time (``time.process_time``) as a share of one core;
  the median over members (the max in brackets).
* **barrier p50 / p99, ms**: an all-to-all barrier. Each member creates one event and merges
  the events of all the others (one merge of N - 1 remote handles; subscriptions are set up
  before the clock starts); then the benchmark tells every member to trigger its own event
  and measures, per member, from that broadcast to the completion of its merge. The
  baseline runs in the same processes: a raw pyzmq barrier, one DEALER per other member
  (connected before the clock starts) sending one message to each other member's ROUTER,
  until each ROUTER has one from every other member. **ratio** = velo p50 / raw p50.
* **RSS, MiB**: peak resident set per member (``ru_maxrss``), median (max).
* **note**: merges that completed poisoned (with the most common reason), or the phase that
  missed its deadline and how many members had answered. ``--heartbeat-timeout`` sets
  ``VELO_HEARTBEAT_TIMEOUT`` for the members (default: the library's, 5 s): with hundreds of
  members on two cores, a link can take longer than that to connect, and the peer counts as
  lost.

Each phase has a deadline (``--deadline`` s, 180); a version that misses it is reported as such
and its remaining phases are skipped. Every member exits when told, on SIGTERM, or after 900 s.
On a 2-core machine, hundreds of processes share two cores: absolute times are those of an
overloaded host; compare versions and sizes within one run.

*Simulation*: the same code on the in-process fake network (``FakeNetwork``), N workers in
this one process and event loop, joining through worker 1 in batches of 128:

* **msgs/join**: ``messages_out`` summed over all workers once every worker lists every other
  as alive, divided by N.
* **idle msg/s/worker**: over ``--idle`` seconds with nothing to do.
* **owner death, s**: 16 workers await an event of one owner; the owner's transport is shut
  without a goodbye (a crash); seconds until the last waiter is poisoned (heartbeat timeout
  5 s).
* **barrier, s**: an all-to-all barrier as above, at sizes up to 1,024 (wall time until every
  merge completed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import zmq
import zmq.asyncio

_HERE = Path(__file__).resolve().parent
_PEER = _HERE / "_scale_peer.py"


@dataclass
class Row:
    code: str
    size: int
    reach: float | None = None
    per_join: float | None = None
    idle_msgs: tuple[float, float] | None = None
    idle_cpu: tuple[float, float] | None = None
    barrier: tuple[float, float] | None = None
    raw_barrier: tuple[float, float] | None = None
    barrier_failures: int = 0
    rss: tuple[float, float] | None = None
    note: str = ""


class Control:
    """The benchmark's side of the control sockets: one ROUTER, members' DEALERs."""

    def __init__(self, context: zmq.asyncio.Context, address: str) -> None:
        self.router = context.socket(zmq.ROUTER)
        self.router.linger = 0
        self.router.bind(address)
        self.routes: dict[int, bytes] = {}
        self.pending: list[list[Any]] = []  # received while collecting something else

    async def receive(self, deadline: float) -> list[Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        async with asyncio.timeout(remaining):
            routing, body = await self.router.recv_multipart()
        message: list[Any] = msgpack.unpackb(body)
        if message[0] == "ready":
            self.routes[message[1]] = routing
        return message

    async def send(self, member: int, *message: Any) -> None:
        await self.router.send_multipart([self.routes[member], msgpack.packb(list(message))])

    async def broadcast(self, *message: Any) -> None:
        for member in self.routes:
            await self.send(member, *message)

    async def collect(self, kind: str, count: int, deadline: float) -> dict[int, list[Any]]:
        """``count`` messages of ``kind``, by member (others are kept for later)."""
        got: dict[int, list[Any]] = {}
        while len(got) < count:
            try:
                message = await self.receive(deadline)
            except TimeoutError:
                raise TimeoutError(f"{len(got)} of {count} {kind!r} answers") from None
            if message[0] == kind:
                got[message[1]] = message
            else:
                self.pending.append(message)
        return got


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_processes(code: str, path: Path, size: int, args: argparse.Namespace) -> Row:
    row = Row(code, size)
    directory = tempfile.mkdtemp(prefix="velo-scale-")
    context = zmq.asyncio.Context()
    control = Control(context, f"ipc://{directory}/control")
    env = {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if args.heartbeat_timeout is not None:
        env["VELO_HEARTBEAT_TIMEOUT"] = str(args.heartbeat_timeout)
    processes: list[subprocess.Popen[bytes]] = []

    def launch(member: int, seed: str | None) -> None:
        command = [sys.executable, str(_PEER), "--id", str(member), "--size", str(size)]
        command += ["--control", f"ipc://{directory}/control"]
        if seed:
            command += ["--seed", seed]
        processes.append(
            subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    try:
        deadline = time.monotonic() + args.deadline
        launch(1, None)
        first = await control.collect("ready", 1, deadline)
        seed = first[1][2]
        for member in range(2, size + 1):
            launch(member, seed)
        ready = {**first, **await control.collect("ready", size - 1, deadline)}
        last_start = max(message[4] for message in ready.values())
        fulls = {m[1]: m for m in control.pending if m[0] == "full"}
        control.pending = [m for m in control.pending if m[0] != "full"]
        try:
            if len(fulls) < size:
                fulls.update(await control.collect("full", size - len(fulls), deadline))
        except TimeoutError as error:
            row.note = (
                f"not every member reached every other within {args.deadline:.0f} s ({error})"
            )
            return row
        row.reach = max(0.0, max(message[2] for message in fulls.values()) - last_start)
        await control.broadcast("stats")
        stats = await control.collect("stats", size, time.monotonic() + args.deadline)
        row.per_join = sum(message[2] for message in stats.values()) / size

        await asyncio.sleep(args.idle)  # a span measured, nothing awaited
        await control.broadcast("stats")
        later = await control.collect("stats", size, time.monotonic() + args.deadline)
        msgs = [(later[m][2] - stats[m][2]) / args.idle for m in stats]
        cpu = [100 * (later[m][3] - stats[m][3]) / args.idle for m in stats]
        row.idle_msgs = (statistics.median(msgs), max(msgs))
        row.idle_cpu = (statistics.median(cpu), max(cpu))

        phase = time.monotonic() + args.deadline
        try:
            await control.broadcast("event")
            events = await control.collect("event", size, phase)
            await control.broadcast("merge", [message[2] for message in events.values()])
            await control.collect("merged", size, phase)
            await asyncio.sleep(1.0)  # let the subscriptions reach their owners
            go = time.time()
            await control.broadcast("go")
            done = await control.collect("done", size, phase)
            # Reasons differ by handle, port and id: count them with those blanked out.
            reasons = Counter(
                re.sub(r"0x[0-9a-f]+|[0-9a-f]{32}|\d+", "#", message[3].splitlines()[0])
                for message in done.values()
                if message[3]
            )
            row.barrier_failures = sum(reasons.values())
            if reasons:
                row.note = f"mostly: ...{reasons.most_common(1)[0][0][-90:]}"
            latencies = [1000 * (message[2] - go) for message in done.values()]
            row.barrier = (percentile(latencies, 0.5), percentile(latencies, 0.99))
            addresses = {member: message[3] for member, message in ready.items()}
            for member in ready:
                others = [a for m, a in addresses.items() if m != member]
                await control.send(member, "rawconnect", others)
            await control.collect("rawready", size, phase)
            await asyncio.sleep(1.0)  # let the raw connections complete
            go = time.time()
            await control.broadcast("rawgo")
            raw_done = await control.collect("rawdone", size, phase)
            raw = [1000 * (message[2] - go) for message in raw_done.values()]
            row.raw_barrier = (percentile(raw, 0.5), percentile(raw, 0.99))
        except TimeoutError as error:
            row.note = f"barrier did not complete within {args.deadline:.0f} s ({error})"
        await control.broadcast("rss")
        rss = await control.collect("rss", size, time.monotonic() + 60)
        kib = [message[2] / 1024 for message in rss.values()]
        row.rss = (statistics.median(kib), max(kib))
        return row
    except TimeoutError as error:
        row.note = row.note or f"a phase missed its {args.deadline:.0f} s deadline ({error})"
        return row
    finally:
        with contextlib.suppress(Exception):
            await control.broadcast("quit")
        stop = time.monotonic() + 30
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, stop - time.monotonic()))
            if process.poll() is None:
                process.kill()
                process.wait()
        control.router.close(linger=0)
        context.term()
        shutil.rmtree(directory, ignore_errors=True)


# -- simulation -------------------------------------------------------------------------------


@dataclass
class SimRow:
    size: int
    join_seconds: float = 0.0
    per_join: float = 0.0
    idle: float = 0.0
    death: float | None = None
    barrier: float | None = None
    note: str = ""


async def run_simulation(size: int, args: argparse.Namespace) -> SimRow:
    from velo_am import Worker
    from velo_am.transport import FakeNetwork

    row = SimRow(size)
    network = FakeNetwork()
    transports = [network.transport() for _ in range(size)]
    workers: list[Worker] = [Worker(1, transport=transports[0])]
    await workers[0].start()
    started = time.monotonic()
    try:
        for start in range(2, size + 1, 128):
            batch = [
                Worker(n, transport=transports[n - 1], peers=[workers[0].address])
                for n in range(start, min(start + 128, size + 1))
            ]
            await asyncio.gather(*(worker.start() for worker in batch))
            workers.extend(batch)
        deadline = time.monotonic() + args.deadline * 4
        while not all(worker.stats()["peers_alive"] >= size - 1 for worker in workers):
            if time.monotonic() > deadline:
                row.note = "did not converge"
                return row
            await asyncio.sleep(0.5)
        row.join_seconds = time.monotonic() - started
        row.per_join = sum(worker.stats()["messages_out"] for worker in workers) / size
        before = sum(worker.stats()["messages_out"] for worker in workers)
        await asyncio.sleep(args.idle)  # a span measured
        after = sum(worker.stats()["messages_out"] for worker in workers)
        row.idle = (after - before) / size / args.idle

        if size <= 1024:
            events = [worker.events.new_event() for worker in workers]
            handles = [event.handle for event in events]
            merges = [
                worker.events.merge_events([h for h in handles if h != own.handle])
                for worker, own in zip(workers, events, strict=True)
            ]
            waits = [
                asyncio.ensure_future(worker.events.awaiter(merged))
                for worker, merged in zip(workers, merges, strict=True)
            ]
            await asyncio.sleep(1.0)  # subscriptions out
            go = time.monotonic()
            for event in events:
                event.trigger()
            await asyncio.wait_for(asyncio.gather(*waits), args.deadline * 4)
            row.barrier = time.monotonic() - go

        owner = workers[-1]
        victims = random.Random(1).sample(workers[1:-1], 16)
        doomed = owner.events.new_event()
        waiters = [asyncio.ensure_future(v.events.awaiter(doomed.handle)) for v in victims]
        await asyncio.sleep(1.5)  # subscribed, and watched
        crashed = time.monotonic()
        await transports[-1].close()  # a crash: its sockets vanish, no goodbye
        results = await asyncio.gather(*waiters, return_exceptions=True)
        row.death = time.monotonic() - crashed
        if not all(isinstance(result, Exception) for result in results):
            row.note = "a waiter was not poisoned"
        return row
    finally:
        await asyncio.gather(*(worker.close(grace=0) for worker in workers), return_exceptions=True)


# -- output -----------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def pair(value: tuple[float, float] | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value[0]:.{digits}f} ({value[1]:.{digits}f})"


def print_process_table(rows: list[Row]) -> None:
    print()
    print("Real processes (loopback). Median over members (max in brackets).")
    header = (
        "| code | N | reach, s | msgs/join | idle msg/s | idle CPU % | barrier p50 / p99, ms "
        "| raw p50 / p99, ms | ratio | RSS, MiB | note |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        barrier = "—" if row.barrier is None else f"{row.barrier[0]:.0f} / {row.barrier[1]:.0f}"
        raw = (
            "—"
            if row.raw_barrier is None
            else f"{row.raw_barrier[0]:.0f} / {row.raw_barrier[1]:.0f}"
        )
        ratio = (
            "—"
            if row.barrier is None or row.raw_barrier is None or row.raw_barrier[0] <= 0
            else f"{row.barrier[0] / row.raw_barrier[0]:.1f}"
        )
        failures = f"{row.barrier_failures} merges failed, " if row.barrier_failures else ""
        print(
            f"| {row.code} | {row.size} | {fmt(row.reach)} | {fmt(row.per_join, 0)} "
            f"| {pair(row.idle_msgs)} | {pair(row.idle_cpu, 2)} | {barrier} | {raw} | {ratio} "
            f"| {pair(row.rss, 0)} | {failures}{row.note} |"
        )


def print_simulation_table(rows: list[SimRow]) -> None:
    print()
    print("Simulation (in-process fake network, one event loop).")
    print("| N | joined, s | msgs/join | idle msg/s/worker | owner death, s | barrier, s | note |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print(
            f"| {row.size} | {row.join_seconds:.1f} | {row.per_join:.0f} | {row.idle:.2f} "
            f"| {fmt(row.death, 2)} | {fmt(row.barrier, 2)} | {row.note} |"
        )


def parse_code(text: str) -> tuple[str, Path]:
    label, _, path = text.partition("=")
    if not path:
        raise argparse.ArgumentTypeError("--code wants LABEL=PATH")
    return label, Path(path).resolve()


async def main(args: argparse.Namespace) -> None:
    print(
        f"velo_am scale benchmark | {datetime.datetime.now():%Y-%m-%d %H:%M} | Python "
        f"{platform.python_version()} | pyzmq {zmq.pyzmq_version()} / libzmq "
        f"{zmq.zmq_version()} | {os.cpu_count()} cores"
    )
    codes = args.code or [("after", _HERE.parent)]
    if args.processes:
        rows: list[Row] = []
        for size in args.sizes:
            for label, path in codes:
                row = await run_processes(label, path, size, args)
                print(f"  {label} N={size}: {row}", file=sys.stderr, flush=True)
                rows.append(row)
        print_process_table(rows)
    if args.simulation:
        sim_rows = []
        for size in args.sim_sizes:
            sim_row = await run_simulation(size, args)
            print(f"  simulation N={size}: {sim_row}", file=sys.stderr, flush=True)
            sim_rows.append(sim_row)
        print_simulation_table(sim_rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=lambda t: [int(n) for n in t.split(",")], default=[16, 64, 128, 256]
    )
    parser.add_argument(
        "--sim-sizes", type=lambda t: [int(n) for n in t.split(",")], default=[1024, 4096]
    )
    parser.add_argument("--code", action="append", type=parse_code)
    parser.add_argument("--deadline", type=float, default=180.0)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--heartbeat-timeout", type=float, default=None)
    parser.add_argument("--no-processes", dest="processes", action="store_false")
    parser.add_argument("--no-simulation", dest="simulation", action="store_false")
    asyncio.run(main(parser.parse_args()))
