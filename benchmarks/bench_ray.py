"""Velo's distributed events against Ray doing the same send/wait handshakes, in one run, on
one machine, over loopback.

Run: ``pip install ray`` (in its own virtualenv if you like, with ``pip install -e .`` for
velo), then ``python benchmarks/bench_ray.py [--repeat N] [--quick] [--startup-repeat K]``.
Without Ray it prints why and exits with status 2. Ray is not a dependency of the project.

Ray has no event that user code triggers across processes. Its own docs and tests use a
"SignalActor": an async actor holding an ``asyncio.Event``, with a ``send()`` method that
sets it and a ``wait()`` method that awaits it; a producer calls ``signal.send.remote()``, a
consumer awaits ``signal.wait.remote()``. Here each party is such an actor holding *its own*
events, keyed by an int (``EventPeer``: a dict of ``asyncio.Event``, methods ``send(key)``
and ``wait(key)``), so that an event lives with the party that sets it, as a velo event lives
with the worker that owns it: setting it is a local ``Event.set()``, and a remote wait is one
actor call to the owner (request, then the reply when the event is set), as velo's remote
await is one subscription and one done update. One actor per event (the literal SignalActor)
would be one process per event; a separate signal actor between the two parties would add a
hop per direction that velo does not have. Both would only make Ray slower.

Method
------
* velo: this process is A (a Worker), B is ``benchmarks/_events_peer.py``, on
  ``tcp://127.0.0.1``. The velo cases are those of ``bench_events.py``, imported from it.
  Ray: ``ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)`` with
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which makes the node IP 127.0.0.1 so that every
  Ray server binds to loopback (``_node_ip_address="127.0.0.1"`` is turned into the host's
  routable address by Ray itself); usage stats off. A and B are two ``EventPeer`` actors
  (two worker processes); this process only starts the runs and collects the results.
* Cases run interleaved: one run of every case per repetition (``--repeat``, default 5), the
  order reversed every other repetition, after one shortened unrecorded run of every case.
  The table gives the median over repetitions of each side and the median (min-max) of the
  per-repetition ratios, as velo's advantage (Ray/velo for times, velo/Ray for rates; > 1
  means velo is better).
* 1. Ping-pong (``--rounds``, 1,000, after 100 warm-up rounds, each timed with
  ``perf_counter_ns`` by A; per run p50 and p99). Round i: A sets its event a_i and awaits
  B's b_i; B, awaiting a_i, sets b_i when it wakes. velo: ``trigger()`` then ``await
  w.events.awaiter(handle)`` ("await after own trigger" in ``bench_events.py``). Ray, in
  actor A: ``self.event(i).set()`` then ``await b.wait.remote(i)``; actor B: ``await
  a.wait.remote(i)`` then ``self.event(i).set()``. Each side sends two messages a round on
  both: velo a done update and the next subscription, Ray a reply and the next call.
* 2. Completions per second (``--events``, 20,000, ``--window`` 64 in flight; and
  ``--inorder``, 1,000, with 1 in flight). B creates the events before the clock starts.
  A runs ``window`` tasks, each awaiting the next event in order until none is left; once
  they have started, A tells B to go and B sets all events in order as fast as it can,
  yielding to its loop once per 64. velo: ``await w.events.awaiter(handle)`` per event;
  Ray: ``await b.wait.remote(key)`` per event in actor A, ``b.trigger_all`` setting them in
  actor B. An event set before its wait arrives answers it at once; each completion is one
  request and one answer on both. Timed by A from starting its tasks until all completed.
* 3. Start-up (``--startup-repeat``, 3, before the rest, interleaved): from nothing to the
  first remote event completed between the two parties, then torn down. velo: spawn the
  peer process (until it prints READY), start A's Worker, connect, B creates an event and
  triggers it, A awaits it. Ray: ``ray.init()``, create the two actors, A awaits an event of
  B's that B sets (``import ray`` itself is done before, as velo's imports are).

Every loop has a fixed count, every wait a deadline (``asyncio.timeout`` in the actors and
here); Ray is shut down (``ray.shutdown()``) and the velo peer stopped and reaped on the way
out, also after an error or Ctrl-C.
"""

# ruff: noqa: E402  (the repository root goes on sys.path before the project's imports)

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE.parent) not in sys.path:  # velo_am and velo_event without PYTHONPATH=.
    sys.path.insert(1, str(_HERE.parent))

import argparse
import asyncio
import contextlib
import datetime
import importlib
import logging
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import zmq
from bench_am import LatencyRun, Server, ThroughputRun, _latency, print_aligned, stop_servers
from bench_events import (
    BIND,
    RUN_TIMEOUT,
    TRIGGER_YIELD_EVERY,
    WARMUP_ROUNDS,
    Clients,
    peer_finished,
    pingpong_velo,
    remote_events,
    start_events_peer,
    window_velo,
)

from velo_am import Worker

_now = time.perf_counter_ns

# Set before ``import ray`` (read at import, inherited by every Ray process): with it Ray takes
# 127.0.0.1 as the node's IP and binds its servers there, not on all interfaces.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
INIT_OPTIONS: dict[str, Any] = {
    "num_cpus": 2,
    "include_dashboard": False,
    "log_to_driver": False,
    "logging_level": logging.WARNING,
}
STARTUP_TIMEOUT = 60.0  # seconds for one start-up (ray.init, actors, first event)


# -- the Ray side --------------------------------------------------------------------------------
# EventPeer is defined here and turned into an actor class after ``import ray``
# (``ray.remote(num_cpus=0)(EventPeer)``, as Ray's SignalActor); cloudpickle ships it by value
# to the actor processes, so it uses nothing but the standard library.


class EventPeer:
    """A SignalActor keyed by int: ``send(key)`` sets this actor's event ``key``,
    ``wait(key)`` returns once it is set. The other methods are the benchmark's loops."""

    def __init__(self) -> None:
        self.events: dict[int, asyncio.Event] = {}

    def _event(self, key: int) -> asyncio.Event:
        event = self.events.get(key)
        if event is None:
            event = self.events[key] = asyncio.Event()
        return event

    async def send(self, key: int) -> None:
        self._event(key).set()

    async def wait(self, key: int) -> None:
        await self._event(key).wait()

    async def new(self, count: int) -> None:
        """Forget the last run's events; create ``count`` unset ones (keys 0..count-1)."""
        self.events = {key: asyncio.Event() for key in range(count)}

    async def initiator(self, other: Any, total: int, timeout: float) -> list[int]:
        samples: list[int] = []
        async with asyncio.timeout(timeout):
            for key in range(total):
                start = time.perf_counter_ns()
                self._event(key).set()
                await other.wait.remote(key)
                samples.append(time.perf_counter_ns() - start)
        return samples

    async def responder(self, other: Any, total: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            for key in range(total):
                await other.wait.remote(key)
                self._event(key).set()

    async def trigger_all(self, count: int, yield_every: int) -> None:
        for key in range(count):
            self._event(key).set()
            if (key + 1) % yield_every == 0:
                await asyncio.sleep(0)

    async def window(
        self, other: Any, count: int, window: int, yield_every: int, timeout: float
    ) -> int:
        """Await ``other``'s events 0..count-1 with ``window`` in flight while ``other`` sets
        them; returns the nanoseconds from the first wait until all completed."""
        keys = iter(range(count))  # shared by the tasks: each takes the next key

        async def waiter() -> None:
            for key in keys:
                await other.wait.remote(key)

        tasks: list[asyncio.Task[None]] = []
        try:
            async with asyncio.timeout(timeout):
                start = time.perf_counter_ns()
                tasks = [asyncio.ensure_future(waiter()) for _ in range(min(window, count))]
                await asyncio.sleep(0)  # every task has sent its first wait
                go = other.trigger_all.remote(count, yield_every)
                await asyncio.gather(*tasks)
                elapsed = time.perf_counter_ns() - start
                await go
        finally:
            for task in tasks:
                task.cancel()
        return elapsed

    async def first_event(self, other: Any, timeout: float) -> None:
        """The start-up probe: await ``other``'s event 0, which ``other`` is told to set."""
        async with asyncio.timeout(timeout):
            waiting = other.wait.remote(0)
            await other.send.remote(0)
            await waiting


@dataclass
class RayPeers:
    a: Any  # the two EventPeer actors' handles
    b: Any


def import_ray() -> Any:
    """``import ray`` with RAY_ENV in the environment; exit 2 with a message without Ray."""
    os.environ.update(RAY_ENV)
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        print(
            f"bench_ray: cannot import ray ({exc}).\n"
            "Install it first, e.g. in a virtualenv of its own: pip install ray  "
            "(and pip install -e . for velo), then run python benchmarks/bench_ray.py",
            file=sys.stderr,
        )
        sys.exit(2)


def ray_init(ray: Any) -> None:
    ray.init(**INIT_OPTIONS)
    node_ip = ray.util.get_node_ip_address()
    if node_ip != "127.0.0.1":
        raise RuntimeError(f"Ray's node IP is {node_ip}, not 127.0.0.1: refusing to go on")


async def _ray_result(ref: Any, timeout: float = RUN_TIMEOUT) -> Any:
    async with asyncio.timeout(timeout):
        return await ref


async def new_ray_peers(ray: Any) -> RayPeers:
    actor = ray.remote(num_cpus=0)(EventPeer)
    a, b = actor.remote(), actor.remote()
    await _ray_result(a.first_event.remote(b, STARTUP_TIMEOUT), STARTUP_TIMEOUT)
    return RayPeers(a, b)


async def pingpong_ray(r: RayPeers, rounds: int) -> LatencyRun:
    total = WARMUP_ROUNDS + rounds
    await asyncio.gather(_ray_result(r.a.new.remote(total)), _ray_result(r.b.new.remote(total)))
    responder = r.b.responder.remote(r.a, total, RUN_TIMEOUT)
    samples: list[int] = await _ray_result(r.a.initiator.remote(r.b, total, RUN_TIMEOUT))
    await _ray_result(responder)
    return _latency(samples[WARMUP_ROUNDS:])


async def window_ray(r: RayPeers, n: int, window: int) -> ThroughputRun:
    await _ray_result(r.b.new.remote(n))
    elapsed: int = await _ray_result(
        r.a.window.remote(r.b, n, window, TRIGGER_YIELD_EVERY, RUN_TIMEOUT)
    )
    return ThroughputRun(n / (elapsed / 1e9), 0)


# -- the velo side -------------------------------------------------------------------------------


@dataclass
class VeloPeer:
    """What ``bench_events``' velo cases use of its ``Clients``."""

    worker: Worker
    peer: int


@contextlib.asynccontextmanager
async def velo_peers() -> AsyncIterator[Clients]:
    """A Worker here connected to a fresh ``_events_peer.py``; yields a ``Clients`` (velo
    part only)."""
    servers: list[Server] = []
    worker: Worker | None = None
    try:
        servers.append(start_events_peer(BIND))
        worker = Worker(bind=BIND, close_grace=0.5)
        await worker.start()
        peer = await worker.connect(servers[0].address)
        yield cast(Clients, VeloPeer(worker, peer))
    finally:
        if worker is not None:
            await worker.close()
        stop_servers(servers)


async def velo_first_event(c: Clients) -> None:
    """The start-up probe: B creates an event and triggers it, A awaits it."""
    (handle,) = await remote_events(c, 1)
    await c.worker.send(c.peer, "trigger_go", 1)
    await c.worker.events.awaiter(handle)
    await peer_finished(c)


# -- start-up ------------------------------------------------------------------------------------


async def startup_velo() -> float:
    start = _now()
    async with velo_peers() as c:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            await velo_first_event(c)
        elapsed = _now() - start
    return elapsed / 1e9


async def startup_ray(ray: Any) -> float:
    start = _now()
    try:
        ray_init(ray)
        await new_ray_peers(ray)
        elapsed = _now() - start
    finally:
        ray.shutdown()
    return elapsed / 1e9


# -- cases ---------------------------------------------------------------------------------------

Run = LatencyRun | ThroughputRun


@dataclass
class Case:
    key: str
    label: str
    fn: Callable[[Clients, RayPeers, argparse.Namespace], Awaitable[Run]]
    runs: list[Run] = field(default_factory=list)


def make_cases() -> list[Case]:
    return [
        Case("velo_pp", "velo ping-pong", lambda c, r, a: pingpong_velo(c, a.rounds, False)),
        Case("ray_pp", "Ray ping-pong", lambda c, r, a: pingpong_ray(r, a.rounds)),
        Case(
            "velo_win",
            "velo completions, window",
            lambda c, r, a: window_velo(c, a.events, a.window),
        ),
        Case(
            "ray_win", "Ray completions, window", lambda c, r, a: window_ray(r, a.events, a.window)
        ),
        Case("velo_seq", "velo in order", lambda c, r, a: window_velo(c, a.inorder, 1)),
        Case("ray_seq", "Ray in order", lambda c, r, a: window_ray(r, a.inorder, 1)),
    ]


def _shortened(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(
        **{
            **vars(args),
            "rounds": max(1, args.rounds // 10),
            "events": max(1, args.events // 10),
            "inorder": max(1, args.inorder // 10),
        }
    )


async def benchmark(
    ray: Any, args: argparse.Namespace
) -> tuple[list[Case], list[float], list[float]]:
    startup_v: list[float] = []
    startup_r: list[float] = []
    for repetition in range(args.startup_repeat):
        if repetition % 2 == 0:
            startup_v.append(await startup_velo())
            startup_r.append(await startup_ray(ray))
        else:
            startup_r.append(await startup_ray(ray))
            startup_v.append(await startup_velo())
        print(f"  start-up {repetition + 1}/{args.startup_repeat} done", file=sys.stderr)

    cases = make_cases()
    try:
        ray_init(ray)
        ray_peers = await new_ray_peers(ray)
        async with velo_peers() as clients:
            for case in cases:  # warm-up, not recorded
                await case.fn(clients, ray_peers, _shortened(args))
            for repetition in range(args.repeat):
                order = cases if repetition % 2 == 0 else cases[::-1]
                for case in order:
                    async with asyncio.timeout(RUN_TIMEOUT):
                        case.runs.append(await case.fn(clients, ray_peers, args))
                print(f"  repetition {repetition + 1}/{args.repeat} done", file=sys.stderr)
    finally:
        ray.shutdown()
    return cases, startup_v, startup_r


# -- report --------------------------------------------------------------------------------------


def _fmt(value: float, attr: str) -> str:
    if attr == "rate":
        return f"{value:,.0f}/s"
    if attr == "seconds":
        return f"{value:.2f} s"
    return f"{value / 1000:,.2f} ms" if value >= 10_000 else f"{value:,.0f} µs"


def _row(metric: str, velo: list[float], ray: list[float], attr: str) -> tuple[str, ...]:
    if attr == "rate":
        ratios = [v / r for v, r in zip(velo, ray, strict=True)]
    else:
        ratios = [r / v for v, r in zip(velo, ray, strict=True)]
    ratio = statistics.median(ratios)
    return (
        metric,
        _fmt(statistics.median(velo), attr),
        _fmt(statistics.median(ray), attr),
        f"{ratio:.1f}x ({min(ratios):.1f}-{max(ratios):.1f})",
    )


def print_table(
    cases: list[Case], startup_v: list[float], startup_r: list[float], args: argparse.Namespace
) -> None:
    by_key = {case.key: case for case in cases}

    def values(key: str, attr: str) -> list[float]:
        return [float(getattr(run, attr)) for run in by_key[key].runs]

    rows = [
        _row("ping-pong RTT p50 (A sets a_i, awaits B's b_i)", values("velo_pp", "p50"),
             values("ray_pp", "p50"), "p50"),
        _row("ping-pong RTT p99", values("velo_pp", "p99"), values("ray_pp", "p99"), "p99"),
        _row(f"remote completions/s, {args.window} in flight", values("velo_win", "rate"),
             values("ray_win", "rate"), "rate"),
        _row("remote completions/s, 1 in flight (in order)", values("velo_seq", "rate"),
             values("ray_seq", "rate"), "rate"),
    ]  # fmt: skip
    if startup_v:
        rows.append(_row("start-up to the first remote event", startup_v, startup_r, "seconds"))
    header = ("metric", "velo", "Ray", "velo advantage (min-max)")
    print_aligned([header, *rows])


def print_runs(cases: list[Case], startup_v: list[float], startup_r: list[float]) -> None:
    print("\nper-run values (in run order):")
    width = max(len(case.label) for case in cases)
    for case in cases:
        parts = []
        for run in case.runs:
            if isinstance(run, LatencyRun):
                parts.append(f"{run.p50:.0f}/{run.p99:.0f}")
            elif isinstance(run, ThroughputRun):
                parts.append(f"{run.rate / 1000:.1f}k")
        unit = "p50/p99 µs" if isinstance(case.runs[0], LatencyRun) else "per s"
        print(f"  {case.label.ljust(width)}  {unit} {' '.join(parts)}")
    if startup_v:
        print(f"  {'velo start-up'.ljust(width)}  s {' '.join(f'{s:.2f}' for s in startup_v)}")
        print(f"  {'Ray start-up'.ljust(width)}  s {' '.join(f'{s:.2f}' for s in startup_r)}")


def print_header(ray: Any, args: argparse.Namespace) -> None:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(
        f"velo vs Ray events benchmark | Python {platform.python_version()} | "
        f"ray {ray.__version__} | pyzmq {zmq.pyzmq_version()} libzmq {zmq.zmq_version()} | "
        f"127.0.0.1 | {os.cpu_count()} CPUs | {now}"
    )
    print(
        f"repeat {args.repeat}; ping-pong {args.rounds:,} rounds (+{WARMUP_ROUNDS} warm-up); "
        f"{args.events:,} completions with {args.window} in flight; {args.inorder:,} in order; "
        f"start-up x{args.startup_repeat}; medians over runs; advantage = median of per-run "
        "ratios (Ray/velo for times, velo/Ray for rates)\n"
    )


# -- main ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--rounds", type=int, default=1000, help="ping-pong rounds per run")
    parser.add_argument("--events", type=int, default=20_000, help="completions per window run")
    parser.add_argument("--window", type=int, default=64, help="awaits in flight (default 64)")
    parser.add_argument("--inorder", type=int, default=1000, help="events of the in-order case")
    parser.add_argument(
        "--startup-repeat", type=int, default=3, help="start-up measurements (0: none)"
    )
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.rounds, args.events, args.inorder, args.startup_repeat = (
            2,
            200,
            2000,
            200,
            1,
        )
    for name in ("repeat", "rounds", "events", "inorder"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive")
    if not 1 <= args.window <= 10_000:
        parser.error("--window must be in 1..10000")
    if args.startup_repeat < 0:
        parser.error("--startup-repeat must be >= 0")
    return args


def main() -> None:
    args = parse_args()
    ray = import_ray()
    try:
        print_header(ray, args)
        cases, startup_v, startup_r = asyncio.run(benchmark(ray, args))
        print()
        print_table(cases, startup_v, startup_r, args)
        print_runs(cases, startup_v, startup_r)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        ray.shutdown()  # a no-op when it is down already


if __name__ == "__main__":
    main()
