"""Count what one remote event ping-pong round trip costs, beside the raw drain floor: zmq
messages each way, event-loop iterations, context switches, CPU and (with ``--strace``, when
``strace`` is installed) system calls per thread, each side.

Run: ``python benchmarks/hop_counts.py [--rounds N] [--strace] [MODE ...]``, MODE one of
``own`` (velo, await after own trigger), ``ahead`` (velo, waiters subscribed ahead) and
``floor`` (``bench_events``' raw drain ping-pong); all three by default.

A is this process (its loop counts the iterations: a selector of its own, handed to
``asyncio.SelectorEventLoop``), B the peer that ``bench_events.py`` uses for the same case.
Context switches (every thread's, from /proc) and CPU (psutil) of each process are read before
and after ``--rounds`` round trips (after warm-up); CPU includes libzmq's I/O thread, and is
also given for the loop's thread alone (the main thread's). With
``--strace``, ``strace -f`` is attached to both processes for the timed rounds only (it
slows them down: its counts are exact, its timings are not) and its calls are listed per
thread (libzmq's I/O thread is the one calling sendto and recvfrom, the other the loop's).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import os
import re
import selectors
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import zmq
from bench_am import PlainReader, Server, _dealer, start_server, stop_servers
from bench_events import (
    BIND,
    RUN_TIMEOUT,
    exchange,
    open_velo,
    peer_finished,
    raw_frames,
    start_events_peer,
    subscribed,
    update_sizes,
)

from velo_event import Event, EventHandle

MODES = ("own", "ahead", "floor")
WARMUP = 200
STRACE_ATTACH = 10.0  # seconds for strace to attach to every thread before the timed rounds
_SYSCALL = re.compile(r"^(\d+)\s+(\w+)\(")


class CountingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The loop's selector, counting ``select`` calls: one per loop iteration."""

    calls = 0

    def select(self, timeout: float | None = None) -> list[Any]:
        self.calls += 1
        return super().select(timeout)  # type: ignore[no-any-return]


def usage(pid: int) -> tuple[int, int, float, float]:
    """Voluntary and involuntary context switches of all ``pid``'s threads (from /proc: the
    process's own counts are its first thread's), its CPU seconds, and those of its main
    thread (the event loop's, in A and in every peer), apart from libzmq's I/O thread."""
    voluntary = involuntary = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{thread}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name == "voluntary_ctxt_switches":
                    voluntary += int(value)
                elif name == "nonvoluntary_ctxt_switches":
                    involuntary += int(value)
    process = psutil.Process(pid)
    cpu = process.cpu_times()
    main = next(thread for thread in process.threads() if thread.id == pid)
    return voluntary, involuntary, cpu.user + cpu.system, main.user_time + main.system_time


def syscalls_per_thread(trace: str) -> dict[str, collections.Counter[str]]:
    calls: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    with open(trace) as lines:
        for line in lines:
            match = _SYSCALL.match(line)
            if match:
                calls[match.group(1)][match.group(2)] += 1
    return calls


def all_traced(pids: list[int]) -> bool:
    """Whether every thread of every process has a tracer (``TracerPid`` in /proc)."""
    for pid in pids:
        for thread in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{thread}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
            if not int(fields["TracerPid"]):
                return False
    return True


async def traced(pids: list[int]) -> None:
    """Wait (bounded) until strace follows every thread of ``pids``."""
    deadline = time.monotonic() + STRACE_ATTACH
    while not all_traced(pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"strace did not attach within {STRACE_ATTACH} s")
        await asyncio.sleep(0.01)


Rounds = Callable[[int], Awaitable[None]]


async def velo_rounds(
    peer: Server, stack: contextlib.AsyncExitStack, count: int, ahead: bool
) -> tuple[Rounds, Callable[[], tuple[int, int]], Callable[[], Awaitable[None]]]:
    v = await open_velo(peer, stack)
    events = v.worker.events
    mine: list[Event] = [events.new_event() for _ in range(count)]
    theirs: list[EventHandle] = await exchange(v, mine)
    waits = [asyncio.ensure_future(events.awaiter(handle)) for handle in theirs] if ahead else []
    await v.worker.call(v.peer, "pp_go", [RUN_TIMEOUT, ahead])
    if ahead:
        await subscribed(v, count)
    done = 0

    async def rounds(n: int) -> None:
        nonlocal done
        for i in range(done, done + n):
            mine[i].trigger()
            await (waits[i] if ahead else events.awaiter(theirs[i]))
        done += n

    def messages() -> tuple[int, int]:
        stats = v.worker.stats()
        return stats["messages_out"], stats["messages_in"]

    async def finish() -> None:
        await peer_finished(v)

    print(f"  update message: {sum(update_sizes(v))} B")
    return rounds, messages, finish


async def floor_rounds(peer: Server) -> tuple[Rounds, Callable[[], tuple[int, int]]]:
    loop = asyncio.get_running_loop()
    reader = PlainReader(_dealer(zmq.Context.instance(), peer.address), loop)
    frames = raw_frames(48, 22)  # as large as velo's update message
    done = 0

    async def rounds(n: int) -> None:
        nonlocal done
        for _ in range(n):
            reader.sock.send_multipart(frames, zmq.NOBLOCK)
            await reader.recv()
            done += 1

    return rounds, lambda: (done, done)


async def count(mode: str, args: argparse.Namespace, selector: CountingSelector) -> None:
    n = args.rounds
    servers: list[Server] = []
    traces: list[tuple[str, asyncio.subprocess.Process, str]] = []
    async with contextlib.AsyncExitStack() as stack:
        try:
            if mode == "floor":
                servers.append(start_server("drain", BIND))
                rounds, messages = await floor_rounds(servers[0])
                finish = None
            else:
                servers.append(start_events_peer(BIND))
                rounds, messages, finish = await velo_rounds(
                    servers[0], stack, WARMUP + n, mode == "ahead"
                )
            await rounds(WARMUP)
            pids = {"A": os.getpid(), "B": servers[0].process.pid}
            directory = stack.enter_context(tempfile.TemporaryDirectory())
            if args.strace:
                # B's first: an strace started after A's would be a child A's follows (-f).
                for side, pid in reversed(pids.items()):
                    trace = os.path.join(directory, f"{side}.trace")
                    command = ["strace", "-f", "-qq", "-o", trace, "-p", str(pid)]
                    traces.append((side, await asyncio.create_subprocess_exec(*command), trace))
                await traced(list(pids.values()))
            before = {side: usage(pid) for side, pid in pids.items()}
            sent, received, iterations = *messages(), selector.calls
            samples = []
            for _ in range(n):  # one at a time, for the median
                start = time.perf_counter()
                await rounds(1)
                samples.append(time.perf_counter() - start)
            p50 = statistics.median(samples)
            after = {side: usage(pid) for side, pid in pids.items()}
            sent, received = (x - y for x, y in zip(messages(), (sent, received), strict=True))
            iterations = selector.calls - iterations
            for _, process, _ in traces:
                process.send_signal(signal.SIGINT)
                await asyncio.wait_for(process.wait(), 10)
            if finish is not None:
                await finish()
        finally:
            for _, process, _ in traces:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            stop_servers(servers)
        how = " (traced)" if traces else ""
        print(
            f"{mode}: round trip p50 {p50 * 1e6:.1f} µs{how}; per "
            f"round trip: A sent {sent / n:.2f} and received {received / n:.2f} messages, A's loop "
            f"{iterations / n:.2f} iterations"
        )
        for side in pids:
            (v0, i0, c0, l0), (v1, i1, c1, l1) = before[side], after[side]
            print(
                f"  {side}: context switches {(v1 - v0) / n:.2f} voluntary, "
                f"{(i1 - i0) / n:.2f} involuntary; CPU {(c1 - c0) / n * 1e6:.1f} µs, "
                f"of which the loop's thread {(l1 - l0) / n * 1e6:.1f} µs"
            )
        for side, _, trace in sorted(traces):
            for thread, calls in sorted(
                syscalls_per_thread(trace).items(), key=lambda item: -item[1].total()
            ):
                if calls.total() >= n // 2:
                    listed = ", ".join(f"{name} {k / n:.2f}" for name, k in calls.most_common())
                    print(f"  {side} thread {thread}: {calls.total() / n:.2f} calls: {listed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modes", nargs="*", help="own, ahead, floor (default: all three)")
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--strace", action="store_true", help="count system calls (strace)")
    args = parser.parse_args()
    if set(args.modes) - set(MODES):
        parser.error(f"modes are {', '.join(MODES)}")
    if args.strace and shutil.which("strace") is None:
        parser.error("--strace needs strace on PATH")
    for mode in args.modes or MODES:
        selector = CountingSelector()
        factory = functools.partial(asyncio.SelectorEventLoop, selector)
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(count(mode, args, selector), RUN_TIMEOUT))


if __name__ == "__main__":
    main()
