"""Two-process benchmark of velo's distributed events (``w.events``) on loopback, against raw
pyzmq doing the same message pattern and against dask ``distributed.Event``.

Run: ``python benchmarks/bench_events.py [--repeat N] [--quick] [--no-dask]``
(``--profile`` instead runs only the velo cases, under cProfile in both processes, with the
build ``VELO_PURE`` selects, and prints where the time goes). The dask part needs
``distributed`` (``pip install -e '.[bench]'``); it is skipped, with a message, when that is
not installed.

Method
------
* A is this process for the raw baselines and a driver process per build (below) for the
  velo cases. B is a separate process: ``benchmarks/_events_peer.py`` (a velo Worker) for
  the velo cases, ``benchmarks/_am_peer.py`` in its ``asyncio`` and ``drain`` modes for the
  raw baselines. All of them are started up front and idle while another case runs;
  everything is on ``tcp://127.0.0.1``, with the default asyncio loop and the GC on.
* Both builds of velo_event, side by side: the velo cases run once per build, each build's
  in a driver process of its own (this script with ``--driver BUILD``, see ``_builds.py``)
  with its own ``_events_peer.py``, both running that build (``VELO_PURE=1`` for the pure
  one); the compiled build is left out, with a note, where the install has none. The drivers
  run one case run at a time when asked, so builds and baselines stay interleaved. The
  table gives each build's median and ratios; target and "met?" are the compiled build's.
* Velo and raw cases run interleaved: one run of every case per repetition (``--repeat``,
  default 5), the order reversed every other repetition. The table gives the median over
  repetitions of each side and the median (min-max) of the per-repetition ratios velo /
  baseline. Before the recorded repetitions every case runs once, shortened, unrecorded.
* 1. Event ping-pong (``--rounds``, 1,000, after 100 warm-up rounds, each timed with
  ``perf_counter_ns``; per run p50 and p99). A creates its events a_i, B creates its events
  b_i; the handles are exchanged up front, 1,024 per call (``pp_batch``). Round i: A triggers
  a_i and awaits b_i; B, awaiting a_i, triggers b_i when it wakes. Both awaits are remote
  (the other side owns the event), so each round is a real remote trigger -> await wake in
  each direction, in two variants:

  - "await after own trigger": the loop a user writes (``trigger(mine); await
    awaiter(theirs)``). The await subscribes only then, so each side sends two messages per
    round (its done update and its next subscription, both ``_ev.updates``), and the other
    side can only answer once that subscription has arrived: it is on the critical path.
  - "subscribed ahead": each side starts awaiting every event of the run up front (a task
    each), and A starts once B's subscriptions have all arrived, so every trigger finds its
    remote waiter registered: one update message each way per round.

  Baseline: a ``zmq.asyncio`` DEALER -> ROUTER echo, one ``await recv_multipart()`` per
  message on both sides, with two-frame messages exactly as large as velo's update message
  (header and payload). The floor (what this machine allows in Python on libzmq): the same
  echo over plain sockets read through ``loop.add_reader(FD)`` and non-blocking receives on
  both sides. Targets (issue 13): p50 <= 1.2x the ``zmq.asyncio`` echo, <= 1.4x the floor.
  A reference without a target, the pattern's own floor: the "await after own trigger"
  rounds with nothing of velo (``_bare_events.py``, against ``_am_peer.py bare``): a task on
  each side, the same subscriptions and done items msgpack'd in one message each way, the
  socket drained in its reader callback while ``ZMQ_EVENTS`` says a message waits. It does
  the work the pattern needs and none of velo's checks, generations, timeouts or accounting.
* 2. Remote completions per second (``--events``, 20,000, ``--window`` 64 in flight). B
  creates the events and returns their handles (1,024 per call, before the clock starts). A
  runs ``--window`` tasks, each awaiting the next handle in order until none is left. Once
  every task has subscribed, A sends ``trigger_go`` and B triggers all the events in order
  as fast as it can, yielding to its loop once per 64 triggers. An event triggered before
  its subscription arrives is answered at once, so each completion costs one subscription
  and one done update: a request/ack pair. Timed from the first await until all completed.
  Baseline: the same number of raw request/ack pairs with ``--window`` in flight (A sends,
  then sends one more per ack) against the ``zmq.asyncio`` echo ROUTER; floor: the
  ``add_reader`` drain pair. Raw messages are sized like an update message.
* 3. dask (after the velo part, so its idle processes do not disturb it): a LocalCluster on
  127.0.0.1 with 2 worker processes x 1 thread and no dashboard; one task on each worker.
  Ping-pong: the initiator ``Event(a_i).set()`` then ``Event(b_i).wait()``, the responder
  ``Event(a_i).wait()`` then ``Event(b_i).set()``: round trip p50 of ``--dask-rounds`` (200,
  after 20 warm-up). In order: after a common start signal, one worker sets
  ``--inorder`` (1,000) events in order and the other waits for them in order; events/s from
  the waiter's start to its last wake-up. Velo runs the same in-order case (a window of 1:
  each await is a subscribe/answer round trip, as each dask ``wait`` is a scheduler RPC).
  Ratios against dask are ratios of medians, as dask/velo for latency and velo/dask for
  rates (so > 1 means velo is better); velo's ping-pong there is the "await after own
  trigger" variant, the one that matches dask's.

Every wait is bounded (``asyncio.timeout`` per run, timeouts on every dask wait), and every
child process is stopped and reaped on the way out, also after Ctrl-C.
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
import cProfile
import dataclasses
import datetime
import importlib
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack  # type: ignore[import-untyped]
import zmq
import zmq.asyncio
from _bare_events import DRIVER_EVENTS, PEER_EVENTS, BareEvents
from _builds import BUILDS, Driver, built, serve_driver, start_drivers, stop_drivers
from _events_peer import HANDLE_BYTES, split_handles
from bench_am import (
    LatencyRun,
    PlainReader,
    Server,
    ThroughputRun,
    _dealer,
    _latency,
    launch_server,
    print_aligned,
    print_profiles,
    start_server,
    stop_servers,
)

from velo_am import Worker
from velo_am import _protocol as protocol
from velo_event import Event, EventError, EventHandle

_now = time.perf_counter_ns
_EVENTS_PEER = _HERE / "_events_peer.py"

BIND = "tcp://127.0.0.1:0"
WARMUP_ROUNDS = 100
DASK_WARMUP_ROUNDS = 20
HANDLE_BATCH = 1024  # handles per exchange call
TRIGGER_YIELD_EVERY = 64  # B's trigger loop yields to its event loop this often
READY_TIMEOUT = 30.0  # seconds for a peer to print READY
RUN_TIMEOUT = 120.0  # seconds for any one run
STATUS_POLLS = 1000  # polls (1 ms apart) for B's task to finish after a run
SUBSCRIBE_POLLS = 10_000  # polls (1 ms apart) for B's subscriptions before a ping-pong run
MAX_WINDOW = 10_000  # well below the sockets' queue sizes (100,000)


# -- peer processes ----------------------------------------------------------------------------


def start_events_peer(bind: str, profile: str | None = None) -> Server:
    """Start ``_events_peer.py`` as bench_am starts its servers."""
    command = [str(_EVENTS_PEER), "--bind", bind]
    if profile is not None:
        command += ["--profile", profile]
    return launch_server("events", command)


# -- clients -----------------------------------------------------------------------------------


@dataclass
class Clients:
    """The raw baselines' sockets (the velo cases run in the builds' driver processes)."""

    async_sock: zmq.asyncio.Socket  # DEALER to the zmq.asyncio echo ROUTER
    drain: PlainReader  # DEALER to the add_reader/drain echo ROUTER
    frames: list[bytes]  # a raw echo message, as large as velo's update message
    bare: BareEvents  # DEALER to the bare event pattern's peer
    bare_rounds: int = 0  # rounds run so far with it (its handles go on from there)


@dataclass
class Velo:
    """A driver's velo side: its worker and the events peer's id."""

    worker: Worker
    peer: int


def update_sizes(v: Velo) -> tuple[int, int]:
    """Header and payload sizes of the update message ``v``'s worker sends its peer."""
    body = msgpack.packb([[1, bytes(HANDLE_BYTES), None]], use_bin_type=True)
    header = protocol.encode_request(
        v.worker.worker_id,
        v.worker.incarnation,
        v.worker.peers[v.peer].incarnation,
        1 << 20,
        "_ev.updates",
        False,
        body,
    )[0]
    return len(header), len(body)


def raw_frames(header: int, payload: int) -> list[bytes]:
    """Two frames of these sizes; the header's first byte asks ``_am_peer``'s ROUTER to echo."""
    return [b"E" + bytes(header - 1), bytes(i % 256 for i in range(payload))]


def _check_echo(reply: list[bytes], frames: list[bytes]) -> None:
    if reply != frames:
        raise RuntimeError(f"bad echo: {reply!r}")


async def exchange(v: Velo, mine: list[Event]) -> list[EventHandle]:
    """Give B our handles for a ping-pong run; get one handle of B's per handle of ours."""
    theirs: list[EventHandle] = []
    for start in range(0, len(mine), HANDLE_BATCH):
        blob = b"".join(event.handle.to_bytes() for event in mine[start : start + HANDLE_BATCH])
        theirs += split_handles(await v.worker.call(v.peer, "pp_batch", blob))
    if len(theirs) != len(mine):
        raise RuntimeError(f"asked for {len(mine)} handles, got {len(theirs)}")
    return theirs


async def remote_events(v: Velo, n: int) -> list[EventHandle]:
    """``n`` new events owned by B."""
    handles: list[EventHandle] = []
    while len(handles) < n:  # bounded: every call adds at least one handle or raises
        batch = split_handles(
            await v.worker.call(v.peer, "new", min(HANDLE_BATCH, n - len(handles)))
        )
        if not batch:
            raise RuntimeError("the events peer returned no handles")
        handles += batch
    return handles


async def peer_finished(v: Velo) -> None:
    """Wait (bounded) until B's responder or trigger task is over; raise what it reported."""
    for _ in range(STATUS_POLLS):
        running, error = await v.worker.call(v.peer, "status")
        if error:
            raise RuntimeError(f"events peer: {error}")
        if not running:
            return
        await asyncio.sleep(0.001)
    raise RuntimeError("the events peer's task is still running")


# -- 1. ping-pong ------------------------------------------------------------------------------


async def _wait_for(events: Any, handle: EventHandle) -> None:
    await events.awaiter(handle)


async def subscribed(v: Velo, count: int) -> None:
    """Wait (bounded) until B's subscriptions to ``count`` of our events have arrived."""
    for _ in range(SUBSCRIBE_POLLS):
        if v.worker.events.stats()["served"] >= count:
            return
        await asyncio.sleep(0.001)
    raise RuntimeError(f"the events peer did not subscribe to our {count} events")


async def pingpong_velo(
    v: Velo,
    rounds: int,
    ahead: bool,
    rounds_window: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> LatencyRun:
    """``ahead=False``: each side awaits the next event right after its own trigger, so its
    subscription races the other side's trigger. ``ahead=True``: both sides await every event
    of the run from the start (a task each), so each trigger finds its waiter subscribed.
    ``rounds_window`` is entered around the rounds alone (``bench_instructions.py`` counts
    there)."""
    events = v.worker.events
    total = WARMUP_ROUNDS + rounds
    mine = [events.new_event() for _ in range(total)]
    triggered = 0
    samples: list[int] = []
    waits: list[asyncio.Future[None]] = []
    try:
        theirs = await exchange(v, mine)
        if ahead:
            waits = [asyncio.ensure_future(_wait_for(events, handle)) for handle in theirs]
        await v.worker.call(v.peer, "pp_go", [RUN_TIMEOUT, ahead])
        if ahead:
            await subscribed(v, total)
        with rounds_window():
            for i in range(total):
                start = _now()
                mine[i].trigger()
                triggered = i + 1
                if ahead:
                    await waits[i]
                else:
                    await events.awaiter(theirs[i])
                samples.append(_now() - start)
    finally:  # a failed run: B's responder must not wait for the rest
        for wait in waits:
            wait.cancel()
        for event in mine[triggered:]:
            with contextlib.suppress(EventError):
                event.poison("benchmark run aborted")
    await peer_finished(v)
    return _latency(samples[WARMUP_ROUNDS:])


async def pingpong_asyncio(c: Clients, rounds: int) -> LatencyRun:
    sock, frames = c.async_sock, c.frames
    samples: list[int] = []
    reply: list[bytes] = []
    for _ in range(WARMUP_ROUNDS + rounds):
        start = _now()
        await sock.send_multipart(frames)
        reply = await sock.recv_multipart()
        samples.append(_now() - start)
    _check_echo(reply, frames)
    return _latency(samples[WARMUP_ROUNDS:])


async def pingpong_drain(c: Clients, rounds: int) -> LatencyRun:
    reader, frames = c.drain, c.frames
    sock = reader.sock
    samples: list[int] = []
    reply: list[bytes] = []
    for _ in range(WARMUP_ROUNDS + rounds):
        start = _now()
        sock.send_multipart(frames, zmq.NOBLOCK)
        reply = await reader.recv()
        samples.append(_now() - start)
    _check_echo(reply, frames)
    return _latency(samples[WARMUP_ROUNDS:])


async def pingpong_bare(c: Clients, rounds: int) -> LatencyRun:
    """The own-trigger ping-pong's pattern without velo (``_bare_events.py``)."""
    bare = c.bare
    first = c.bare_rounds
    c.bare_rounds += WARMUP_ROUNDS + rounds
    samples: list[int] = []
    for i in range(first, c.bare_rounds):
        start = _now()
        bare.trigger(DRIVER_EVENTS + i)
        waiter = bare.wait(PEER_EVENTS + i)
        bare.flush()
        await waiter
        samples.append(_now() - start)
    return _latency(samples[WARMUP_ROUNDS:])


# -- 2. completions with a window --------------------------------------------------------------


async def window_velo(v: Velo, n: int, window: int) -> ThroughputRun:
    events = v.worker.events
    handles = await remote_events(v, n)
    indices = iter(range(n))  # shared by the window's tasks: each takes the next handle

    async def waiter() -> None:
        for i in indices:
            await events.awaiter(handles[i])

    start = _now()
    tasks = [asyncio.ensure_future(waiter()) for _ in range(min(window, n))]
    try:
        await asyncio.sleep(0)  # every task sends its first subscription
        await v.worker.send(v.peer, "trigger_go", TRIGGER_YIELD_EVERY)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    elapsed = _now() - start
    await peer_finished(v)
    return ThroughputRun(n / (elapsed / 1e9), 0)


async def window_asyncio(c: Clients, n: int, window: int) -> ThroughputRun:
    sock, frames = c.async_sock, c.frames
    reply: list[bytes] = []
    start = _now()
    sent = 0
    for _ in range(min(window, n)):
        await sock.send_multipart(frames)
        sent += 1
    for _ in range(n):
        reply = await sock.recv_multipart()
        if sent < n:
            await sock.send_multipart(frames)
            sent += 1
    elapsed = _now() - start
    _check_echo(reply, frames)
    return ThroughputRun(n / (elapsed / 1e9), 0)


async def window_drain(c: Clients, n: int, window: int) -> ThroughputRun:
    reader, frames = c.drain, c.frames
    sock = reader.sock
    reply: list[bytes] = []
    start = _now()
    sent = 0
    for _ in range(min(window, n)):  # a window <= MAX_WINDOW never fills the queue (NOBLOCK)
        sock.send_multipart(frames, zmq.NOBLOCK)
        sent += 1
    for _ in range(n):
        reply = await reader.recv()
        if sent < n:
            sock.send_multipart(frames, zmq.NOBLOCK)
            sent += 1
    elapsed = _now() - start
    _check_echo(reply, frames)
    return ThroughputRun(n / (elapsed / 1e9), 0)


# -- cases -------------------------------------------------------------------------------------

Run = LatencyRun | ThroughputRun
CaseFn = Callable[[Clients, argparse.Namespace], Awaitable[Run]]
VeloFn = Callable[[Velo, int, argparse.Namespace], Awaitable[Run]]

#: The velo cases, run in each build's driver: key -> (label, throughput?, its size's option,
#: the run given the size).
VELO_CASES: dict[str, tuple[str, bool, str, VeloFn]] = {
    "velo_pp": (
        "velo ping-pong, await after own trigger",
        False,
        "rounds",
        lambda v, n, a: pingpong_velo(v, n, ahead=False),
    ),
    "velo_pp_ahead": (
        "velo ping-pong, waiters subscribed ahead",
        False,
        "rounds",
        lambda v, n, a: pingpong_velo(v, n, ahead=True),
    ),
    "velo_win": (
        "velo completions, {window} in flight",
        True,
        "events",
        lambda v, n, a: window_velo(v, n, a.window),
    ),
    "velo_seq": (
        "velo {inorder:,} in order (1 in flight)",
        True,
        "inorder",
        lambda v, n, a: window_velo(v, n, 1),
    ),
}


@dataclass
class Case:
    key: str  # a raw or dask case's key, or a velo case's key and its build: "velo_pp:pure"
    label: str
    fn: CaseFn | None  # None: a dask case (run separately) or a velo case (run by ``driver``)
    throughput: bool
    driver: Driver | None = None
    runs: list[Run] = field(default_factory=list)


def velo_cases(key: str, args: argparse.Namespace, drivers: list[Driver]) -> list[Case]:
    label, throughput, _, _ = VELO_CASES[key]
    text = label.format(**vars(args))
    return [Case(f"{key}:{d.build}", f"{text} [{d.build}]", None, throughput, d) for d in drivers]


def make_cases(args: argparse.Namespace, drivers: list[Driver]) -> list[Case]:
    w = args.window
    return [
        *velo_cases("velo_pp", args, drivers),
        *velo_cases("velo_pp_ahead", args, drivers),
        Case(
            "A_pp", "raw zmq.asyncio ping-pong", lambda c, a: pingpong_asyncio(c, a.rounds), False
        ),
        Case("D_pp", "raw drain ping-pong", lambda c, a: pingpong_drain(c, a.rounds), False),
        Case(
            "bare_pp",
            "bare event pattern ping-pong, own trigger",
            lambda c, a: pingpong_bare(c, a.rounds),
            False,
        ),
        *velo_cases("velo_win", args, drivers),
        Case(
            "A_win",
            f"raw zmq.asyncio req/ack, {w} in flight",
            lambda c, a: window_asyncio(c, a.events, a.window),
            True,
        ),
        Case(
            "D_win",
            f"raw drain req/ack, {w} in flight",
            lambda c, a: window_drain(c, a.events, a.window),
            True,
        ),
        *velo_cases("velo_seq", args, drivers),
        Case("dask_pp", "dask Event ping-pong", None, False),
        Case("dask_seq", f"dask {args.inorder:,} in order", None, True),
    ]


# -- velo part ---------------------------------------------------------------------------------


async def open_clients(
    servers: dict[str, Server], stack: contextlib.AsyncExitStack, frames: list[bytes]
) -> Clients:
    loop = asyncio.get_running_loop()
    sync_context: zmq.Context[Any] = zmq.Context()
    async_context = zmq.asyncio.Context()
    stack.callback(sync_context.term)
    stack.callback(async_context.term)
    async_sock = _dealer(async_context, servers["asyncio"].address)
    stack.callback(async_sock.close, 0)
    reader = PlainReader(_dealer(sync_context, servers["drain"].address), loop)
    stack.callback(reader.close)
    bare = BareEvents(_dealer(sync_context, servers["bare"].address), 1, router=False, loop=loop)
    stack.callback(bare.close)
    return Clients(async_sock, reader, frames, bare)


async def open_velo(events_peer: Server, stack: contextlib.AsyncExitStack) -> Velo:
    worker = Worker(bind=BIND, close_grace=0.5)
    await worker.start()
    stack.push_async_callback(worker.close)
    return Velo(worker, await worker.connect(events_peer.address))


async def run_case(case: Case, clients: Clients, args: argparse.Namespace) -> Run:
    if case.driver is not None:
        key = case.key.partition(":")[0]
        size = getattr(args, VELO_CASES[key][2])
        values = await case.driver.run(key, size, RUN_TIMEOUT)
        return ThroughputRun(values[0], int(values[1])) if case.throughput else LatencyRun(*values)
    assert case.fn is not None
    async with asyncio.timeout(RUN_TIMEOUT):
        return await case.fn(clients, args)


def _shortened(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(
        **{
            **vars(args),
            "rounds": max(1, args.rounds // 10),
            "events": max(1, args.events // 10),
            "inorder": max(1, args.inorder // 10),
        }
    )


async def driver(args: argparse.Namespace) -> None:
    """``--driver BUILD``: the velo cases of one build (``_builds``), in this process and an
    events peer of its own, both with the build this process's environment selects."""
    servers: list[Server] = []
    try:
        servers.append(start_events_peer(BIND))
        async with contextlib.AsyncExitStack() as stack:
            v = await open_velo(servers[0], stack)
            header, payload = update_sizes(v)

            async def run(key: str, n: int) -> list[float]:
                async with asyncio.timeout(RUN_TIMEOUT):
                    result = await VELO_CASES[key][3](v, n, args)
                return [float(value) for value in dataclasses.astuple(result)]

            await serve_driver({"header": header, "payload": payload}, run)
    finally:
        stop_servers(servers)


async def velo_benchmark(args: argparse.Namespace) -> tuple[list[Case], list[str], list[str]]:
    """Run the velo and raw cases; returns the cases (the dask ones still to run), the builds
    and lines for the report (which builds; the raw messages)."""
    servers: list[Server] = []
    drivers: list[Driver] = []
    try:
        servers.append(start_server("asyncio", BIND))
        servers.append(start_server("drain", BIND))
        servers.append(start_server("bare", BIND))
        drivers, builds_note = await start_drivers(Path(__file__), ["--window", str(args.window)])
        header, payload = drivers[0].info["header"], drivers[0].info["payload"]
        async with contextlib.AsyncExitStack() as stack:
            clients = await open_clients(
                {s.mode: s for s in servers}, stack, raw_frames(header, payload)
            )
            cases = make_cases(args, drivers)
            ours = [case for case in cases if case.fn is not None or case.driver is not None]
            warm = _shortened(args)
            for case in ours:  # warm-up, not recorded
                await run_case(case, clients, warm)
            for repetition in range(args.repeat):
                order = ours if repetition % 2 == 0 else ours[::-1]
                for case in order:
                    case.runs.append(await run_case(case, clients, args))
                print(f"  velo/raw repetition {repetition + 1}/{args.repeat} done", file=sys.stderr)
            notes = [
                f"{builds_note}; each build's velo cases in a driver process of its own",
                f"raw messages: 2 frames, {header} B header + {payload} B payload (as _ev.updates)",
            ]
            return cases, [d.build for d in drivers], notes
    finally:
        await stop_drivers(drivers)
        stop_servers(servers)


# -- dask part ---------------------------------------------------------------------------------
# The task functions run in the dask workers (cloudpickle ships them by value from __main__).


def _dask_event_class() -> Any:
    """``distributed.Event``, typed ``Any`` (distributed's own functions are mostly untyped)."""
    return importlib.import_module("distributed").Event


def _dask_pingpong_initiator(prefix: str, total: int, timeout: float) -> list[int]:
    DaskEvent = _dask_event_class()

    pings = [DaskEvent(f"{prefix}-a{i}") for i in range(total)]
    pongs = [DaskEvent(f"{prefix}-b{i}") for i in range(total)]
    samples: list[int] = []
    for ping, pong in zip(pings, pongs, strict=True):
        start = time.perf_counter_ns()
        ping.set()
        if not pong.wait(timeout):
            raise TimeoutError(f"dask ping-pong: no answer within {timeout} s")
        samples.append(time.perf_counter_ns() - start)
    return samples


def _dask_pingpong_responder(prefix: str, total: int, timeout: float) -> None:
    DaskEvent = _dask_event_class()

    pings = [DaskEvent(f"{prefix}-a{i}") for i in range(total)]
    pongs = [DaskEvent(f"{prefix}-b{i}") for i in range(total)]
    for ping, pong in zip(pings, pongs, strict=True):
        if not ping.wait(timeout):
            raise TimeoutError(f"dask ping-pong: no ping within {timeout} s")
        pong.set()


def _dask_stream_setter(prefix: str, n: int, timeout: float) -> None:
    DaskEvent = _dask_event_class()

    events = [DaskEvent(f"{prefix}-e{i}") for i in range(n)]
    DaskEvent(f"{prefix}-ready-setter").set()
    if not DaskEvent(f"{prefix}-go").wait(timeout):
        raise TimeoutError("dask stream: no start signal")
    for event in events:
        event.set()


def _dask_stream_waiter(prefix: str, n: int, timeout: float) -> int:
    DaskEvent = _dask_event_class()

    events = [DaskEvent(f"{prefix}-e{i}") for i in range(n)]
    DaskEvent(f"{prefix}-ready-waiter").set()
    if not DaskEvent(f"{prefix}-go").wait(timeout):
        raise TimeoutError("dask stream: no start signal")
    start = time.perf_counter_ns()
    for event in events:
        if not event.wait(timeout):
            raise TimeoutError(f"dask stream: an event was not set within {timeout} s")
    return time.perf_counter_ns() - start


def dask_pingpong(client: Any, workers: list[str], rounds: int) -> LatencyRun:
    prefix = f"velo-bench-{uuid.uuid4().hex}"
    total = DASK_WARMUP_ROUNDS + rounds
    options = {"pure": False, "allow_other_workers": False}
    responder = client.submit(
        _dask_pingpong_responder, prefix, total, RUN_TIMEOUT, workers=[workers[1]], **options
    )
    initiator = client.submit(
        _dask_pingpong_initiator, prefix, total, RUN_TIMEOUT, workers=[workers[0]], **options
    )
    samples: list[int] = initiator.result(timeout=RUN_TIMEOUT)
    responder.result(timeout=RUN_TIMEOUT)
    return _latency(samples[DASK_WARMUP_ROUNDS:])


def dask_stream(client: Any, workers: list[str], n: int, event_cls: Any) -> ThroughputRun:
    prefix = f"velo-bench-{uuid.uuid4().hex}"
    options = {"pure": False, "allow_other_workers": False}
    setter = client.submit(
        _dask_stream_setter, prefix, n, RUN_TIMEOUT, workers=[workers[0]], **options
    )
    waiter = client.submit(
        _dask_stream_waiter, prefix, n, RUN_TIMEOUT, workers=[workers[1]], **options
    )
    for role in ("setter", "waiter"):
        if not event_cls(f"{prefix}-ready-{role}", client=client).wait(RUN_TIMEOUT):
            raise TimeoutError(f"dask stream: the {role} task did not start")
    event_cls(f"{prefix}-go", client=client).set()
    elapsed: int = waiter.result(timeout=RUN_TIMEOUT)
    setter.result(timeout=RUN_TIMEOUT)
    return ThroughputRun(n / (elapsed / 1e9), 0)


def dask_benchmark(args: argparse.Namespace, cases: list[Case]) -> str:
    """Run the dask cases (appending to their runs); returns a line for the report."""
    try:
        distributed: Any = importlib.import_module("distributed")
    except ImportError:
        return (
            "dask part SKIPPED: `distributed` is not installed "
            "(pip install 'distributed>=2024.1', or the project's `bench` extra)"
        )
    by_key = {case.key: case for case in cases}
    started = time.perf_counter()
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            protocol="tcp",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=READY_TIMEOUT)
        startup = time.perf_counter() - started
        workers = sorted(client.scheduler_info()["workers"])[:2]
        dask_pingpong(client, workers, max(1, args.dask_rounds // 10))  # warm-up
        dask_stream(client, workers, max(1, args.inorder // 10), distributed.Event)
        for repetition in range(args.repeat):
            by_key["dask_pp"].runs.append(dask_pingpong(client, workers, args.dask_rounds))
            by_key["dask_seq"].runs.append(
                dask_stream(client, workers, args.inorder, distributed.Event)
            )
            print(f"  dask repetition {repetition + 1}/{args.repeat} done", file=sys.stderr)
    return (
        f"dask: LocalCluster on 127.0.0.1, 2 processes x 1 thread, no dashboard "
        f"(started in {startup:.2f} s); workers {', '.join(workers)}"
    )


# -- table -------------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    velo: str
    base: str
    attr: str
    target: float | None  # None: a reference, no target
    at_most: bool  # the target is an upper bound on the ratio (latency vs raw)
    dask: bool = False  # ratio of medians, as the advantage of velo (> 1: velo better)


def _fmt(value: float, attr: str) -> str:
    if attr == "rate":
        return f"{value:,.0f}/s"
    return f"{value / 1000:,.2f} ms" if value >= 10_000 else f"{value:,.0f} µs"


def _values(case: Case, attr: str) -> list[float]:
    return [float(getattr(run, attr)) for run in case.runs]


def print_table(cases: list[Case], builds: list[str], args: argparse.Namespace) -> None:
    """One row per comparison: each build's median, the baseline's, each build's ratio;
    target and "met?" are those of the first build shown (the compiled one, where there
    is one)."""
    by_key = {case.key: case for case in cases}
    w, n = args.window, f"{args.inorder:,}"
    rows = [
        Row("ping-pong RTT p50 (await after own trigger), velo/raw zmq.asyncio", "velo_pp",
            "A_pp", "p50", 1.2, True),
        Row("ping-pong RTT p50 (subscribed ahead), velo/raw zmq.asyncio", "velo_pp_ahead",
            "A_pp", "p50", 1.2, True),
        Row("ping-pong RTT p99 (await after own trigger), velo/raw zmq.asyncio", "velo_pp",
            "A_pp", "p99", None, True),
        Row("ping-pong RTT p99 (subscribed ahead), velo/raw zmq.asyncio", "velo_pp_ahead",
            "A_pp", "p99", None, True),
        Row("ping-pong RTT p50 (await after own trigger), velo/raw drain (floor)", "velo_pp",
            "D_pp", "p50", 1.4, True),
        Row("ping-pong RTT p50 (subscribed ahead), velo/raw drain (floor)", "velo_pp_ahead",
            "D_pp", "p50", 1.4, True),
        Row("  the pattern's own floor: velo/bare pattern on the drain (own trigger)", "velo_pp",
            "bare_pp", "p50", None, True),
        Row(f"completions/s, {w} in flight, velo/raw zmq.asyncio", "velo_win", "A_win", "rate",
            1.0, False),
        Row(f"completions/s, {w} in flight, velo/raw drain (floor)", "velo_win", "D_win", "rate",
            None, False),
        Row("ping-pong RTT p50 (await after own set/trigger), dask/velo", "velo_pp", "dask_pp",
            "p50", 10.0, False, True),
        Row("ping-pong RTT p99 (await after own set/trigger), dask/velo", "velo_pp", "dask_pp",
            "p99", None, False, True),
        Row(f"events/s, velo {w} in flight / dask {n} in order", "velo_win", "dask_seq",
            "rate", 10.0, False, True),
        Row(f"events/s, {n} in order (1 in flight) both, velo/dask", "velo_seq", "dask_seq",
            "rate", 10.0, False, True),
    ]  # fmt: skip
    header = (
        "metric",
        *builds,
        "baseline",
        *(f"{build} ratio (min-max)" for build in builds),
        "target",
        "met?",
    )
    lines: list[tuple[str, ...]] = []
    for row in rows:
        base = _values(by_key[row.base], row.attr)
        if not base:
            skipped = ["-"] * len(builds)
            lines.append((row.metric, *skipped, "skipped", *skipped, "-", "-"))
            continue
        medians: list[str] = []
        ratio_texts: list[str] = []
        ratio_of: dict[str, float] = {}
        for build in builds:
            velo = _values(by_key[f"{row.velo}:{build}"], row.attr)
            if row.dask:
                v, b = statistics.median(velo), statistics.median(base)
                ratio = b / v if row.attr != "rate" else v / b
                ratio_texts.append(f"{ratio:.1f}x (of medians)")
            else:
                ratios = [v / b for v, b in zip(velo, base, strict=True)]
                ratio = statistics.median(ratios)
                ratio_texts.append(f"{ratio:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
            ratio_of[build] = ratio
            medians.append(_fmt(statistics.median(velo), row.attr))
        ratio = ratio_of[builds[0]]
        if row.target is None:
            target, met = "-", "-"
        elif row.at_most:
            target, met = f"<= {row.target:g}x", "yes" if ratio <= row.target else "NO"
        else:
            target, met = f">= {row.target:g}x", "yes" if ratio >= row.target else "NO"
        base_text = _fmt(statistics.median(base), row.attr)
        lines.append((row.metric, *medians, base_text, *ratio_texts, target, met))
    print_aligned([header, *lines])


def print_runs(cases: list[Case]) -> None:
    print("\nper-run values (in run order):")
    width = max(len(case.label) for case in cases)
    for case in cases:
        if not case.runs:
            continue
        if case.throughput:
            parts = [
                f"{run.rate / 1000:.1f}k" for run in case.runs if isinstance(run, ThroughputRun)
            ]
            text = "per s " + " ".join(parts)
        else:
            parts = [
                f"{run.p50:.0f}/{run.p99:.0f}" for run in case.runs if isinstance(run, LatencyRun)
            ]
            text = "p50/p99 µs " + " ".join(parts)
        print(f"  {case.label.ljust(width)}  {text}")


def _version(module: str) -> str:
    try:
        return str(importlib.import_module(module).__version__)
    except ImportError:
        return "not installed"


def print_header(args: argparse.Namespace) -> None:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    dask = "skipped (--no-dask)" if args.no_dask else _version("distributed")
    print(
        f"velo distributed-events benchmark | Python {platform.python_version()} "
        f"({platform.python_implementation()}) | pyzmq {zmq.pyzmq_version()} "
        f"libzmq {zmq.zmq_version()} | msgpack {'.'.join(map(str, msgpack.version))} | "
        f"distributed {dask} | tcp://127.0.0.1 | {os.cpu_count()} CPUs | {now}"
    )
    print(
        f"repeat {args.repeat}; ping-pong {args.rounds:,} rounds (+{WARMUP_ROUNDS} warm-up); "
        f"{args.events:,} completions with {args.window} in flight; {args.inorder:,} in order; "
        f"dask ping-pong {args.dask_rounds:,} rounds (+{DASK_WARMUP_ROUNDS}); medians over runs, "
        "velo/raw ratio = median of per-run ratios\n"
    )


# -- profiling ---------------------------------------------------------------------------------


async def profile(args: argparse.Namespace, directory: str) -> list[tuple[str, str]]:
    """The velo ping-pong and window cases under cProfile in both processes; returns (title,
    stats file) pairs for ``bench_am.print_profiles``."""
    results: list[tuple[str, str]] = []
    run: Callable[[Velo], Awaitable[Run]]
    for name, run in (
        ("ping-pong", lambda v: pingpong_velo(v, args.rounds, ahead=False)),
        ("ping-pong-ahead", lambda v: pingpong_velo(v, args.rounds, ahead=True)),
        ("window", lambda v: window_velo(v, args.events, args.window)),
    ):
        peer_file = os.path.join(directory, f"peer-{name}.prof")
        client_file = os.path.join(directory, f"client-{name}.prof")
        servers: list[Server] = []
        client_profile = cProfile.Profile()
        try:
            servers.append(start_events_peer(BIND, peer_file))
            async with contextlib.AsyncExitStack() as stack:
                v = await open_velo(servers[0], stack)
                async with asyncio.timeout(RUN_TIMEOUT):
                    await run(v)  # warm-up
                    client_profile.enable()
                    try:
                        result = await run(v)
                    finally:
                        client_profile.disable()
                print(f"profiled velo {name} ({built()} build): {result}")
        finally:
            stop_servers(servers)  # SIGTERM: the peer dumps its stats on the way out
        client_profile.dump_stats(client_file)
        results.append((f"A (benchmark), velo {name}", client_file))
        results.append((f"B (peer), velo {name}", peer_file))
    return results


# -- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--rounds", type=int, default=1000, help="ping-pong rounds per run")
    parser.add_argument("--events", type=int, default=20_000, help="completions per window run")
    parser.add_argument("--window", type=int, default=64, help="awaits in flight (default 64)")
    parser.add_argument("--inorder", type=int, default=1000, help="events of the in-order case")
    parser.add_argument("--dask-rounds", type=int, default=200, help="dask ping-pong rounds")
    parser.add_argument("--no-dask", action="store_true", help="skip the dask part")
    parser.add_argument("--profile", action="store_true", help="profile the velo cases only")
    parser.add_argument("--top", type=int, default=25, help="rows per profile listing")
    parser.add_argument("--driver", choices=BUILDS, help=argparse.SUPPRESS)  # see _builds
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.rounds, args.events, args.inorder, args.dask_rounds = (
            2,
            200,
            2000,
            300,
            50,
        )
    for name in ("repeat", "rounds", "events", "inorder", "dask_rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if not 1 <= args.window <= MAX_WINDOW:
        parser.error(f"--window must be in 1..{MAX_WINDOW}")
    return args


def main() -> None:
    args = parse_args()
    try:
        if args.driver:
            asyncio.run(driver(args))
            return
        if args.profile:
            directory = tempfile.mkdtemp(prefix="velo-bench-events-prof-")
            try:
                print_profiles(asyncio.run(profile(args, directory)), args.top)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            return
        print_header(args)
        cases, builds, notes = asyncio.run(velo_benchmark(args))
        if args.no_dask:
            notes.append("dask part skipped (--no-dask)")
        else:
            notes.append(dask_benchmark(args, cases))
        print()
        print_table(cases, builds, args)
        print_runs(cases)
        print()
        for note in notes:
            print(note)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
