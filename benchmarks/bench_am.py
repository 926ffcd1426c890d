"""Two-process benchmark of velo_am against raw pyzmq doing the same work on loopback.

Run: ``PYTHONPATH=. python benchmarks/bench_am.py [--repeat N] [--quick] [--transport ipc]
[--curve]`` (``--profile`` instead runs only the velo cases, under cProfile in both processes,
with the build ``VELO_PURE`` selects, and prints where the time goes; ``--curve`` adds the
velo cases over CURVE, beside the plaintext ones).

Method
------
* This process is the raw baselines' client. Each server is a separate process
  (``benchmarks/_am_peer.py``, started with ``sys.executable``), one per mode, all started up
  front and idle (parked in epoll or a blocking receive) while another case runs. Clients are
  created once and reused.
* Both builds of velo_event, side by side: the velo cases run once per build, each build's
  in a driver process of its own (this script with ``--driver BUILD``, see ``_builds.py``)
  whose client worker and velo server both run that build (``VELO_PURE=1`` for the pure one);
  the compiled build is left out, with a note, where the install has none. The drivers run
  one case run at a time when asked, so builds and baselines stay interleaved. The table
  gives each build's median and ratios; target and "met?" are the compiled build's.
  Everything is on ``tcp://127.0.0.1`` (default) or on ``ipc://`` paths in a temporary
  directory. The default asyncio event loop is used on both sides; the GC is left on.
* Cases run interleaved: one run of every case per repetition (``--repeat``, default 5), the
  order reversed every other repetition. The table gives the median over repetitions of
  each side and the median (min-max) of the per-repetition ratios velo / baseline.
* Latency: ``--calls`` (2,000) sequential round trips of a 64-byte payload after 200 warm-up
  round trips, each timed with ``perf_counter_ns``; per run p50 and p99.
  A: ``zmq.asyncio`` DEALER -> ROUTER echo, one ``await recv_multipart()`` per message on both
  sides. B: blocking pyzmq on both sides. "drain": plain sockets read through
  ``loop.add_reader(FD)`` and non-blocking receives on both sides (how velo reads: the
  floor, no target). velo: ``await w.call(server, "ping", payload)`` against a Worker whose
  ``ping`` handler returns its payload. Raw messages are two frames (a 40-byte header and the
  payload) like velo's (a ~40-byte msgpack header and the msgpack-encoded payload).
* Throughput: ``--messages`` (100,000) one-way messages of 64 bytes, timed from the first send
  until the receiver has counted all of them. Raw senders are plain DEALERs doing
  ``send_multipart(NOBLOCK)``; the last message asks the ROUTER for its count, and its answer
  (which must equal N) stops the clock. C: the receiver does one ``await recv_multipart()``
  per message (zmq.asyncio). D: the receiver drains with ``recv_multipart(NOBLOCK)`` until
  ``zmq.Again``, woken by ``add_reader`` on the socket's FD (the floor; target, issue 13:
  velo >= 0.7x of it). velo: ``await w.send(server,
  "count", payload)`` per message into a Worker whose ``count`` handler increments a counter,
  then ``await w.call(server, "count_value")`` (repeated, bounded, until it equals N; the first
  call normally suffices since one peer's messages arrive and start in order) stops the clock.
  Every sender yields to its event loop once per 1,024 messages (so the client's heartbeats
  and reader run during a long burst). velo's send raises ``PeerUnreachable`` when the
  DEALER's queue (SNDHWM 100,000) is full; N <= 100,000 cannot fill it, but a send refused
  for that reason is retried after 1 ms (bounded by the run's deadline) and counted in the
  per-run line (``retries``); raw senders do the same on ``zmq.Again``.
* ``--curve``: one more velo server, and a client worker, with CURVE on (one key pair made
  for the run, shared by both: ``Worker(curve=...)``, the server through ``VELO_CURVE_KEY``
  and ``VELO_CURVE_ALLOW``); its call and send cases run interleaved with the others and
  the table compares them with velo over plaintext.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import datetime
import io
import os
import platform
import pstats
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import zmq
import zmq.asyncio
import zmq.auth
from _builds import BUILDS, Driver, built, serve_driver, start_drivers, stop_drivers

from velo_am import PeerUnreachable, Worker

_now = time.perf_counter_ns
_HERE = Path(__file__).resolve().parent
_PEER_SCRIPT = _HERE / "_am_peer.py"

HWM = 100_000  # as velo's DEALER SNDHWM / ROUTER RCVHWM
HEADER_LEN = 40
ECHO = b"E" + bytes(HEADER_LEN - 1)
MESSAGE = b"M" + bytes(HEADER_LEN - 1)
FIN = b"F" + bytes(HEADER_LEN - 1)
YIELD_EVERY = 1024
WARMUP_CALLS = 200
READY_TIMEOUT = 30.0  # seconds for a server to print READY
RUN_TIMEOUT = 120.0  # seconds for any one run
RETRY_SLEEP = 0.001


# -- server processes --------------------------------------------------------------------------


@dataclass
class Server:
    mode: str
    process: subprocess.Popen[bytes]
    address: str = ""


def start_server(mode: str, bind: str, profile: str | None = None) -> Server:
    command = [str(_PEER_SCRIPT), mode, "--bind", bind]
    if profile is not None:
        command += ["--profile", profile]
    return launch_server(mode, command)


def launch_server(
    name: str, arguments: list[str], extra_env: dict[str, str] | None = None
) -> Server:
    """Run ``python *arguments`` and wait (bounded) for its ``READY <address>`` line."""
    env = {**os.environ, **(extra_env or {})}
    root = str(_HERE.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    # Own session: a Ctrl-C in the terminal reaches only us, and we stop the servers. Their
    # stdin is a pipe from us: if we die without cleaning up, they see EOF and exit.
    process = subprocess.Popen(
        [sys.executable, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    server = Server(name, process)
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            stop_servers([server])
            raise RuntimeError(f"{name} server did not start (output so far: {line!r})")
        readable, _, _ = select.select([process.stdout], [], [], remaining)
        if readable:
            chunk = process.stdout.readline()
            if not chunk:
                continue  # EOF: the poll() above notices the exit
            line += chunk
    word, _, address = line.decode().strip().partition(" ")
    if word != "READY" or not address:
        stop_servers([server])
        raise RuntimeError(f"{name} server said {line!r}")
    server.address = address
    return server


def stop_servers(servers: list[Server], timeout: float = 5.0) -> None:
    """Terminate, wait (bounded), kill what is left, reap everything."""
    for server in servers:
        with contextlib.suppress(OSError):
            if server.process.stdin is not None:
                server.process.stdin.close()
        if server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                server.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for server in servers:
        try:
            server.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=timeout)
        if server.process.stdout is not None:
            server.process.stdout.close()


# -- clients -----------------------------------------------------------------------------------


class PlainReader:
    """Awaitable receives on a plain pyzmq socket: ``add_reader`` on its FD, non-blocking
    receives, park only after ``zmq.Again`` (which re-arms the edge-triggered ZMQ_FD)."""

    def __init__(self, sock: zmq.Socket[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self._loop = loop
        self._fd = sock.FD
        self._waiter: asyncio.Future[None] | None = None
        loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        # Let libzmq process its commands, which clears the FD (asyncio polls it level-
        # triggered: left signalled, the loop would spin on it while nobody receives).
        self.sock.getsockopt(zmq.EVENTS)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> list[bytes]:
        while True:  # bounded by the caller's asyncio.timeout
            try:
                return self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                pass
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        self.sock.close(linger=0)


def _dealer(context: zmq.Context[Any], address: str, *, blocking: bool = False) -> Any:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    if blocking:  # bound blocking sends/receives (not on zmq.asyncio: a timer per receive)
        sock.setsockopt(zmq.SNDTIMEO, int(RUN_TIMEOUT * 1000))
        sock.setsockopt(zmq.RCVTIMEO, int(RUN_TIMEOUT * 1000))
    sock.connect(address)
    return sock


@dataclass
class Clients:
    """The raw baselines' sockets (the velo cases run in the builds' driver processes)."""

    async_sock: zmq.asyncio.Socket
    sync_sock: zmq.Socket[bytes]
    drain: PlainReader
    count_await: PlainReader
    count_drain: PlainReader


def _percentile(sorted_samples: list[int], q: float) -> float:
    index = min(len(sorted_samples) - 1, round(q * (len(sorted_samples) - 1)))
    return sorted_samples[index] / 1000.0  # ns -> µs


@dataclass
class LatencyRun:
    p50: float
    p99: float


@dataclass
class ThroughputRun:
    rate: float
    retries: int


def _latency(samples: list[int]) -> LatencyRun:
    samples.sort()
    return LatencyRun(_percentile(samples, 0.50), _percentile(samples, 0.99))


def _check_echo(reply: list[bytes], payload: bytes) -> None:
    if len(reply) != 2 or reply[0] != ECHO or reply[1] != payload:
        raise RuntimeError(f"bad echo: {reply!r}")


async def latency_asyncio(c: Clients, n: int, payload: bytes) -> LatencyRun:
    sock, frames = c.async_sock, [ECHO, payload]
    for _ in range(WARMUP_CALLS):
        await sock.send_multipart(frames)
        await sock.recv_multipart()
    samples: list[int] = []
    reply: list[bytes] = []
    for _ in range(n):
        start = _now()
        await sock.send_multipart(frames)
        reply = await sock.recv_multipart()
        samples.append(_now() - start)
    _check_echo(reply, payload)
    return _latency(samples)


async def latency_sync(c: Clients, n: int, payload: bytes) -> LatencyRun:
    sock, frames = c.sync_sock, [ECHO, payload]
    for _ in range(WARMUP_CALLS):
        sock.send_multipart(frames)
        sock.recv_multipart()
    samples: list[int] = []
    reply: list[bytes] = []
    for _ in range(n):
        start = _now()
        sock.send_multipart(frames)
        reply = sock.recv_multipart()
        samples.append(_now() - start)
    _check_echo(reply, payload)
    return _latency(samples)


async def latency_drain(c: Clients, n: int, payload: bytes) -> LatencyRun:
    reader, frames = c.drain, [ECHO, payload]
    sock = reader.sock
    for _ in range(WARMUP_CALLS):
        sock.send_multipart(frames, zmq.NOBLOCK)
        await reader.recv()
    samples: list[int] = []
    reply: list[bytes] = []
    for _ in range(n):
        start = _now()
        sock.send_multipart(frames, zmq.NOBLOCK)
        reply = await reader.recv()
        samples.append(_now() - start)
    _check_echo(reply, payload)
    return _latency(samples)


async def velo_calls(worker: Worker, peer: int, n: int, payload: bytes) -> LatencyRun:
    for _ in range(WARMUP_CALLS):
        await worker.call(peer, "ping", payload)
    samples: list[int] = []
    reply: Any = None
    for _ in range(n):
        start = _now()
        reply = await worker.call(peer, "ping", payload)
        samples.append(_now() - start)
    if reply != payload:
        raise RuntimeError(f"bad velo echo: {reply!r}")
    return _latency(samples)


async def _send_retrying(sock: zmq.Socket[bytes], frames: list[bytes]) -> int:
    """Send, retrying every millisecond while the queue is full; returns the retry count."""
    retries = 0
    while True:  # bounded by the run's asyncio.timeout
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
            return retries
        except zmq.Again:
            retries += 1
            await asyncio.sleep(RETRY_SLEEP)


async def _raw_stream(reader: PlainReader, n: int, payload: bytes) -> ThroughputRun:
    sock, frames = reader.sock, [MESSAGE, payload]
    retries = 0
    start = _now()
    for i in range(n):
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            retries += await _send_retrying(sock, frames)
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
    retries += await _send_retrying(sock, [FIN, b""])
    reply = await reader.recv()
    elapsed = _now() - start
    if reply != [b"F", str(n).encode()]:
        raise RuntimeError(f"raw receiver counted {reply!r}, expected {n}")
    return ThroughputRun(n / (elapsed / 1e9), retries)


async def throughput_await(c: Clients, n: int, payload: bytes) -> ThroughputRun:
    return await _raw_stream(c.count_await, n, payload)


async def throughput_drain(c: Clients, n: int, payload: bytes) -> ThroughputRun:
    return await _raw_stream(c.count_drain, n, payload)


async def velo_stream(worker: Worker, peer: int, n: int, payload: bytes) -> ThroughputRun:
    await worker.call(peer, "count_reset")
    retries = 0
    start = _now()
    for i in range(n):
        while True:  # bounded by the run's asyncio.timeout
            try:
                await worker.send(peer, "count", payload)
                break
            except PeerUnreachable:  # the DEALER's queue is full (or the peer is gone)
                retries += 1
                await asyncio.sleep(RETRY_SLEEP)
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
    counted = -1
    while counted != n:  # bounded by the run's asyncio.timeout
        counted = await worker.call(peer, "count_value")
        if counted != n:
            await asyncio.sleep(RETRY_SLEEP)
    elapsed = _now() - start
    return ThroughputRun(n / (elapsed / 1e9), retries)


# -- cases and table ---------------------------------------------------------------------------

Run = LatencyRun | ThroughputRun
CaseFn = Callable[[Clients, int, bytes], Awaitable[Run]]

#: The velo cases, run in each build's driver: key -> (label, throughput?).
VELO_CASES = {
    "velo_call": ("velo call", False),
    "curve_call": ("velo call, CURVE", False),
    "velo_send": ("velo send", True),
    "curve_send": ("velo send, CURVE", True),
}


@dataclass
class Case:
    key: str  # a raw case's key, or a velo case's key and its build: "velo_call:pure"
    label: str
    fn: CaseFn | None  # None: a velo case, run by ``driver``
    throughput: bool
    driver: Driver | None = None
    runs: list[Run] = field(default_factory=list)


def velo_cases(key: str, drivers: list[Driver]) -> list[Case]:
    label, throughput = VELO_CASES[key]
    return [Case(f"{key}:{d.build}", f"{label} [{d.build}]", None, throughput, d) for d in drivers]


def make_cases(curve: bool, drivers: list[Driver]) -> list[Case]:
    cases = [
        *velo_cases("velo_call", drivers),
        *(velo_cases("curve_call", drivers) if curve else []),
        Case("A", "A raw zmq.asyncio", latency_asyncio, False),
        Case("B", "B sync pyzmq", latency_sync, False),
        Case("drain_rtt", "raw add_reader drain", latency_drain, False),
        *velo_cases("velo_send", drivers),
        *(velo_cases("curve_send", drivers) if curve else []),
        Case("C", "C raw await/msg", throughput_await, True),
        Case("D", "D raw NOBLOCK drain", throughput_drain, True),
    ]
    return cases


def _values(case: Case, attr: str) -> list[float]:
    return [float(getattr(run, attr)) for run in case.runs]


@dataclass
class Row:
    metric: str
    velo: str  # a velo case's key: one column per build
    base: str  # a raw case's key, or a velo case's (then each build against the same build)
    attr: str
    target: float | None  # ratio target (of the compiled build); None = reference only
    higher_is_better: bool


def _fmt(value: float, attr: str) -> str:
    return f"{value:,.0f}/s" if attr == "rate" else f"{value:,.0f} µs"


def print_table(cases: dict[str, Case], builds: list[str]) -> None:
    """One row per comparison: each build's median, the baseline's, each build's median
    per-run ratio (with its min-max); target and "met?" are those of the first build shown
    (the compiled one, where there is one)."""
    rows = [
        Row("call RTT p50 vs A (zmq.asyncio)", "velo_call", "A", "p50", 1.0, False),
        Row("call RTT p99 vs A (zmq.asyncio)", "velo_call", "A", "p99", None, False),
        Row("call RTT p50 vs B (sync pyzmq)", "velo_call", "B", "p50", None, False),
        Row("call RTT p50 vs raw drain (floor)", "velo_call", "drain_rtt", "p50", None, False),
        Row("send msgs/s vs C (await/msg)", "velo_send", "C", "rate", 3.0, True),
        Row("send msgs/s vs D (NOBLOCK drain, floor)", "velo_send", "D", "rate", 0.7, True),
    ]
    if f"curve_call:{builds[0]}" in cases:
        rows += [
            Row("CURVE call RTT p50 vs velo call", "curve_call", "velo_call", "p50", None, False),
            Row("CURVE call RTT p99 vs velo call", "curve_call", "velo_call", "p99", None, False),
            Row("CURVE call RTT p50 vs A (zmq.asyncio)", "curve_call", "A", "p50", None, False),
            Row("CURVE send msgs/s vs velo send", "curve_send", "velo_send", "rate", None, True),
            Row("CURVE send msgs/s vs D (NOBLOCK drain)", "curve_send", "D", "rate", None, True),
        ]
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
        medians: list[str] = []
        ratio_texts: list[str] = []
        first_ratio = 0.0
        base_text = ""
        for build in builds:
            velo = _values(cases[f"{row.velo}:{build}"], row.attr)
            base_case = cases.get(row.base) or cases[f"{row.base}:{build}"]
            base = _values(base_case, row.attr)
            base_text = _fmt(statistics.median(base), row.attr)
            if row.base not in cases:
                base_text = "same build"  # each build against itself
            ratios = [v / b for v, b in zip(velo, base, strict=True)]
            ratio = statistics.median(ratios)
            first_ratio = first_ratio or ratio
            medians.append(_fmt(statistics.median(velo), row.attr))
            ratio_texts.append(f"{ratio:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
        if row.target is None:
            target, met = "-", "-"
        elif row.higher_is_better:
            target, met = f">= {row.target:.1f}x", "yes" if first_ratio >= row.target else "NO"
        else:
            target, met = f"<= {row.target:.1f}x", "yes" if first_ratio <= row.target else "NO"
        lines.append((row.metric, *medians, base_text, *ratio_texts, target, met))
    print_aligned([header, *lines])


def print_aligned(rows: list[tuple[str, ...]]) -> None:
    """Print rows as left-aligned columns, a rule under the first (the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * width for width in widths))


def print_runs(cases: list[Case]) -> None:
    print("\nper-run values (in run order):")
    width = max(len(case.label) for case in cases)
    for case in cases:
        if case.throughput:
            parts = [
                f"{run.rate / 1000:.1f}k" for run in case.runs if isinstance(run, ThroughputRun)
            ]
            retries = sum(run.retries for run in case.runs if isinstance(run, ThroughputRun))
            text = "msgs/s " + " ".join(parts) + f"  (send retries: {retries})"
        else:
            parts = [
                f"{run.p50:.0f}/{run.p99:.0f}" for run in case.runs if isinstance(run, LatencyRun)
            ]
            text = "p50/p99 µs " + " ".join(parts)
        print(f"  {case.label.ljust(width)}  {text}")


def print_header(transport: str, args: argparse.Namespace, builds_note: str) -> None:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(
        f"velo_am two-process benchmark | Python {platform.python_version()} "
        f"({platform.python_implementation()}) | pyzmq {zmq.pyzmq_version()} "
        f"libzmq {zmq.zmq_version()} | msgpack {'.'.join(map(str, msgpack.version))} | "
        f"{transport} | {os.cpu_count()} CPUs | {now}"
    )
    print(
        f"repeat {args.repeat}, {args.calls} calls (+{WARMUP_CALLS} warm-up) per latency run, "
        f"{args.messages:,} messages per throughput run, payload {args.payload} B; "
        "medians over runs, ratio = median of per-run velo/baseline"
    )
    print(f"{builds_note}; each build's velo cases in a driver process of its own\n")


# -- driver ------------------------------------------------------------------------------------


class Endpoints:
    """Where servers and the client worker bind: tcp port 0 on loopback, or ipc:// paths in a
    temporary directory (removed at the end)."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.directory = tempfile.mkdtemp(prefix="velo-bench-") if transport == "ipc" else None

    def bind(self, name: str) -> str:
        if self.directory is None:
            return "tcp://127.0.0.1:0"
        return f"ipc://{self.directory}/{name}.sock"

    def describe(self) -> str:
        return "tcp://127.0.0.1" if self.directory is None else f"ipc://{self.directory}/"

    def cleanup(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _payload(size: int) -> bytes:
    return bytes(i % 256 for i in range(size))


async def run_case(case: Case, clients: Clients, args: argparse.Namespace) -> Run:
    n = args.messages if case.throughput else args.calls
    if case.driver is not None:
        values = await case.driver.run(case.key.partition(":")[0], n, RUN_TIMEOUT)
        return ThroughputRun(values[0], int(values[1])) if case.throughput else LatencyRun(*values)
    assert case.fn is not None
    async with asyncio.timeout(RUN_TIMEOUT):
        return await case.fn(clients, n, _payload(args.payload))


async def open_clients(servers: dict[str, Server], stack: contextlib.AsyncExitStack) -> Clients:
    loop = asyncio.get_running_loop()
    sync_context: zmq.Context[Any] = zmq.Context()
    async_context = zmq.asyncio.Context()
    stack.callback(sync_context.term)
    stack.callback(async_context.term)
    async_sock = _dealer(async_context, servers["asyncio"].address)
    stack.callback(async_sock.close, 0)
    sync_sock = _dealer(sync_context, servers["sync"].address, blocking=True)
    stack.callback(sync_sock.close, 0)
    readers = []
    for mode in ("drain", "asyncio", "drain"):
        reader = PlainReader(_dealer(sync_context, servers[mode].address), loop)
        stack.callback(reader.close)
        readers.append(reader)
    return Clients(async_sock, sync_sock, *readers)


def make_curve_keys(directory: str) -> tuple[str, str]:
    """One CURVE key pair for the run (shared by the client and the server), and the
    directory of allowed keys: ``(secret certificate, allowed directory)``."""
    allow = os.path.join(directory, "allow")
    os.makedirs(allow)
    public, secret = zmq.auth.create_certificates(directory, "bench")
    shutil.copy(public, allow)
    return secret, allow


async def velo_worker(
    bind: str, server: Server, stack: contextlib.AsyncExitStack, **options: Any
) -> tuple[Worker, int]:
    worker = Worker(bind=bind, close_grace=0.5, **options)
    await worker.start()
    stack.push_async_callback(worker.close)
    return worker, await worker.connect(server.address)


async def driver(args: argparse.Namespace, endpoints: Endpoints) -> None:
    """``--driver BUILD``: the velo cases of one build (``_builds``), in this process and a
    velo server of its own, both with the build this process's environment selects."""
    servers: list[Server] = []
    keys = tempfile.mkdtemp(prefix="velo-bench-curve-") if args.curve else None
    try:
        servers.append(start_server("velo", endpoints.bind("velo")))
        async with contextlib.AsyncExitStack() as stack:
            worker, peer = await velo_worker(endpoints.bind("client"), servers[0], stack)
            runs: dict[str, Callable[[int, bytes], Awaitable[Run]]] = {
                "velo_call": lambda n, p: velo_calls(worker, peer, n, p),
                "velo_send": lambda n, p: velo_stream(worker, peer, n, p),
            }
            if keys is not None:
                curve = make_curve_keys(keys)
                variables = {"VELO_CURVE_KEY": curve[0], "VELO_CURVE_ALLOW": curve[1]}
                arguments = [str(_PEER_SCRIPT), "velo", "--bind", endpoints.bind("velo_curve")]
                servers.append(launch_server("velo_curve", arguments, variables))
                c_worker, c_peer = await velo_worker(
                    endpoints.bind("curve-client"), servers[1], stack, curve=curve
                )
                runs["curve_call"] = lambda n, p: velo_calls(c_worker, c_peer, n, p)
                runs["curve_send"] = lambda n, p: velo_stream(c_worker, c_peer, n, p)
            payload = _payload(args.payload)

            async def run(key: str, n: int) -> list[float]:
                async with asyncio.timeout(RUN_TIMEOUT):
                    result = await runs[key](n, payload)
                return [float(value) for value in dataclasses.astuple(result)]

            await serve_driver({}, run)
    finally:
        stop_servers(servers)
        if keys is not None:
            shutil.rmtree(keys, ignore_errors=True)


async def benchmark(args: argparse.Namespace, endpoints: Endpoints) -> None:
    servers: list[Server] = []
    drivers: list[Driver] = []
    forwarded = ["--transport", args.transport, "--payload", str(args.payload)]
    try:
        for mode in ("asyncio", "sync", "drain"):
            servers.append(start_server(mode, endpoints.bind(mode)))
        drivers, builds_note = await start_drivers(
            Path(__file__), forwarded + (["--curve"] if args.curve else [])
        )
        by_mode = {server.mode: server for server in servers}
        async with contextlib.AsyncExitStack() as stack:
            clients = await open_clients(by_mode, stack)
            cases = make_cases(args.curve, drivers)
            print_header(endpoints.describe(), args, builds_note)
            for case in cases:  # warm-up: one short run of each case, not recorded
                warm = argparse.Namespace(**{**vars(args), "messages": args.messages // 10})
                await run_case(case, clients, warm)
            for repetition in range(args.repeat):
                order = cases if repetition % 2 == 0 else cases[::-1]
                for case in order:
                    case.runs.append(await run_case(case, clients, args))
                print(f"  repetition {repetition + 1}/{args.repeat} done", file=sys.stderr)
            print_table({case.key: case for case in cases}, [d.build for d in drivers])
            print_runs(cases)
    finally:
        await stop_drivers(drivers)
        stop_servers(servers)


# -- profiling ---------------------------------------------------------------------------------


async def profile(
    args: argparse.Namespace, endpoints: Endpoints, directory: str
) -> list[tuple[str, str]]:
    """Run the velo call and send paths under cProfile in both processes; returns (title,
    stats file) pairs for :func:`print_profiles`."""
    results: list[tuple[str, str]] = []
    velo_fn: Callable[[Worker, int, int, bytes], Awaitable[Run]]
    for velo_fn, n, name in (
        (velo_calls, args.calls, "call"),
        (velo_stream, args.messages, "send"),
    ):
        server_file = os.path.join(directory, f"server-{name}.prof")
        client_file = os.path.join(directory, f"client-{name}.prof")
        servers = [start_server("velo", endpoints.bind(f"prof-{name}"), server_file)]
        client_profile = cProfile.Profile()
        try:
            async with contextlib.AsyncExitStack() as stack:
                worker = Worker(bind=endpoints.bind(f"prof-client-{name}"), close_grace=0.5)
                await worker.start()
                stack.push_async_callback(worker.close)
                peer = await worker.connect(servers[0].address)
                payload = _payload(args.payload)
                async with asyncio.timeout(RUN_TIMEOUT):
                    await velo_fn(worker, peer, max(1, n // 10), payload)  # warm-up
                    client_profile.enable()
                    try:
                        result = await velo_fn(worker, peer, n, payload)
                    finally:
                        client_profile.disable()
                print(f"profiled velo {name} ({n:,}, {built()} build): {result}")
        finally:
            stop_servers(servers)  # SIGTERM: the server dumps its stats on the way out
        client_profile.dump_stats(client_file)
        results += [(f"client, velo {name}", client_file), (f"server, velo {name}", server_file)]
    return results


def print_profiles(results: list[tuple[str, str]], limit: int) -> None:
    for title, path in results:
        if not os.path.exists(path):
            print(f"\n===== {title}: no profile written =====")
            continue
        out = io.StringIO()
        pstats.Stats(path, stream=out).strip_dirs().sort_stats("tottime").print_stats(limit)
        print(f"\n===== {title} (sorted by tottime, top {limit}) =====")
        print(out.getvalue().strip("\n"))


# -- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--calls", type=int, default=2000, help="round trips per latency run")
    parser.add_argument("--messages", type=int, default=100_000, help="messages per stream")
    parser.add_argument("--payload", type=int, default=64, help="payload bytes")
    parser.add_argument("--transport", choices=("tcp", "ipc"), default="tcp")
    parser.add_argument("--profile", action="store_true", help="profile the velo cases only")
    parser.add_argument("--curve", action="store_true", help="velo over CURVE too, side by side")
    parser.add_argument("--top", type=int, default=25, help="rows per profile listing")
    parser.add_argument("--driver", choices=BUILDS, help=argparse.SUPPRESS)  # see _builds
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.calls, args.messages = 2, 300, 10_000
    if args.repeat < 1 or args.calls < 1 or args.messages < 1:
        parser.error("--repeat, --calls and --messages must be positive")
    if args.payload < 0:
        parser.error("--payload must be >= 0")
    return args


def main() -> None:
    args = parse_args()
    endpoints = Endpoints(args.transport)
    try:
        if args.driver:
            asyncio.run(driver(args, endpoints))
        elif args.profile:
            directory = tempfile.mkdtemp(prefix="velo-bench-prof-")
            try:
                print_profiles(asyncio.run(profile(args, endpoints, directory)), args.top)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
        else:
            asyncio.run(benchmark(args, endpoints))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        endpoints.cleanup()


if __name__ == "__main__":
    main()
