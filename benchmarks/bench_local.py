"""Local micro-benchmarks of velo_event against plain asyncio doing the same work.

Run: ``PYTHONPATH=. python benchmarks/bench_local.py [--repeat N] [--quick]``

Method
------
* Every case has a velo side per build (pure and, where this install has it, compiled: both
  imported side by side, whatever ``VELO_PURE`` says) and a plain-asyncio baseline side that
  do the same work (same number of creations, completions, awaits and tasks). All run in one
  process, on one event loop (the default asyncio loop), and are interleaved: pure run,
  compiled run, baseline run, pure run, ... for ``--repeat`` repetitions (default 5). The
  table shows the median of each side and, per build, the median of the per-repetition
  ratios velo / baseline (a paired ratio, so it can differ slightly from the quotient of the
  two medians); the last column is the range of the last build's ratios (the compiled one,
  where there is one), a quick view of the noise; "met" is that build's.
* Times come from ``time.perf_counter_ns`` around the timed loop only; setup (creating the
  inputs of a merge, for example) is outside it. The collector is run before, and disabled
  during, every timed loop of both sides (``gc.collect(); gc.disable()`` ... ``gc.enable()``).
* The pending wake-up has a reference row under it, "its floor": the same ping-pong on each
  build's ``EventCore`` alone (``velo_event.lowlevel``: ``new_event``, ``add_waiter`` with a
  bare future and a waker that only sets its result, ``trigger``), with none of the public
  layer. It has no target: it splits the wake-up's cost between the thread-safe generational
  core and the layer above it (``Event``, ``EventAwaiter``, the waiter's asyncio adapter).
* Memory per pending event is the ``tracemalloc`` traced-memory delta of K events (each with
  one waiting task) divided by K, on a fresh event system each time so the slots it
  allocates are counted. The baseline holds a future and an int handle per event in a dict,
  with the same kind of waiting task (a task whose coroutine awaits once).
* The million-event case measures flatness, not speed: tracemalloc slows that loop about
  tenfold, so it reads VmRSS from /proc/self/status (and ``sys.getallocatedblocks()``, which
  is exact and free) after the warm-up and at the end; growth between the two should be ~0.
  It is a single run per side; the memory-per-event case is, like the timings, a median.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from typing import Any, cast

from velo_event import EventHandle
from velo_event import _manager as pure_manager
from velo_event._manager import Event, LocalEventSystem
from velo_event.lowlevel import Wake

_now = time.perf_counter_ns

#: A side of a timed case: runs ``n`` operations, returns the nanoseconds of the timed loop.
Side = Callable[[int], Coroutine[Any, Any, int]]
#: A build's event system (both builds have the pure one's interface).
System = Callable[[], LocalEventSystem]


def builds() -> dict[str, System]:
    """The builds of velo_event this install holds, by name: both, side by side in one run,
    whatever ``VELO_PURE`` says (it chooses what ``import velo_event`` uses)."""
    found: dict[str, System] = {"pure": pure_manager.LocalEventSystem}
    try:
        from velo_event._compiled import _manager as compiled_manager
    except ImportError:
        return found
    found["compiled"] = compiled_manager.LocalEventSystem
    return found


#: An arbitrary 128-bit base for the baseline's int handles (the size of a velo handle).
_HANDLE_BASE = 0x1234_5678_9ABC_DEF0 << 64


# -- case 1: new_event + trigger + await of the triggered event ------------------------------


def velo_trigger_await(system: System) -> Side:
    async def run(n: int) -> int:
        s = system()
        start = _now()
        for _ in range(n):
            e = s.new_event()
            e.trigger()
            await s.awaiter(e.handle)
        return _now() - start

    return run


async def base_trigger_await(n: int) -> int:
    loop = asyncio.get_running_loop()
    start = _now()
    for _ in range(n):
        f = loop.create_future()
        f.set_result(None)
        await f
    return _now() - start


# -- case 2: ping-pong, every await is a pending wake-up -------------------------------------
#
# Two tasks take turns: each publishes a fresh event of its own, triggers the other's, and
# awaits its own. A's loop of n rounds covers exactly 2n wake-ups; B's last wait is released
# outside the timed region.


def velo_ping_pong(system: System) -> Side:
    return lambda wakeups: ping_pong(system(), wakeups)


async def ping_pong(s: LocalEventSystem, wakeups: int) -> int:
    rounds = wakeups // 2
    box: list[Event] = []
    elapsed = 0

    async def b_side() -> None:
        mine = s.new_event()
        box.append(mine)
        await s.awaiter(mine.handle)
        for _ in range(rounds):
            mine = s.new_event()
            box[1] = mine
            box[0].trigger()
            await s.awaiter(mine.handle)

    async def a_side() -> None:
        nonlocal elapsed
        box.insert(0, s.new_event())  # placeholder, replaced in round 1
        start = _now()
        for _ in range(rounds):
            mine = s.new_event()
            box[0] = mine
            box[1].trigger()
            await s.awaiter(mine.handle)
        elapsed = _now() - start

    b = asyncio.create_task(b_side())
    await asyncio.create_task(a_side())
    box[1].trigger()
    await b
    return elapsed


def core_ping_pong(system: System) -> Side:
    """The same ping-pong on the build's ``EventCore`` alone (``velo_event.lowlevel``), each
    wait a bare future registered with ``add_waiter``: what a thread-safe generational core
    costs with none of the public layer (no ``Event``, no ``EventAwaiter``, no poison to
    raise, no waiter to unregister on cancellation, one waker that only sets the result)."""

    async def run(wakeups: int) -> int:
        core = system().core
        rounds = wakeups // 2
        loop = asyncio.get_running_loop()
        box: list[EventHandle] = []
        elapsed = 0

        async def b_side() -> None:
            mine = core.new_event()
            box.append(mine)
            future = loop.create_future()
            core.add_waiter(mine, future, set_result)
            await future
            for _ in range(rounds):
                mine = core.new_event()
                box[1] = mine
                core.trigger(box[0])
                future = loop.create_future()
                core.add_waiter(mine, future, set_result)
                await future

        async def a_side() -> None:
            nonlocal elapsed
            box.insert(0, core.new_event())  # placeholder, replaced in round 1
            start = _now()
            for _ in range(rounds):
                mine = core.new_event()
                box[0] = mine
                core.trigger(box[1])
                future = loop.create_future()
                core.add_waiter(mine, future, set_result)
                await future
            elapsed = _now() - start

        b = asyncio.create_task(b_side())
        await asyncio.create_task(a_side())
        core.trigger(box[1])
        await b
        return elapsed

    return run


#: The core floor's waker: ``Future.set_result`` itself, called as ``(future, outcome)`` (the
#: shape of a waker's call), so no Python-level function runs between the core and the future.
set_result = cast("Callable[[Hashable, Wake], None]", asyncio.Future.set_result)


async def base_ping_pong(wakeups: int) -> int:
    rounds = wakeups // 2
    loop = asyncio.get_running_loop()
    box: list[asyncio.Future[None]] = []
    elapsed = 0

    async def b_side() -> None:
        mine: asyncio.Future[None] = loop.create_future()
        box.append(mine)
        await mine
        for _ in range(rounds):
            mine = loop.create_future()
            box[1] = mine
            box[0].set_result(None)
            await mine

    async def a_side() -> None:
        nonlocal elapsed
        box.insert(0, loop.create_future())  # placeholder, replaced in round 1
        start = _now()
        for _ in range(rounds):
            mine: asyncio.Future[None] = loop.create_future()
            box[0] = mine
            box[1].set_result(None)
            await mine
        elapsed = _now() - start

    b = asyncio.create_task(b_side())
    await asyncio.create_task(a_side())
    box[1].set_result(None)
    await b
    return elapsed


# -- case 3: merges ----------------------------------------------------------------------------
#
# ``n`` counts inputs (merges * width), so per-op times are per input. Input creation is setup;
# the timed loop creates each merge, (pending variant) completes its inputs, and awaits it.


def countdown(
    loop: asyncio.AbstractEventLoop, inputs: list[asyncio.Future[None]]
) -> asyncio.Future[None]:
    """The plain-asyncio merge: an output future, a counter and a done-callback per input."""
    out: asyncio.Future[None] = loop.create_future()
    remaining = len(inputs)

    def input_done(_: asyncio.Future[None]) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            out.set_result(None)

    for f in inputs:
        f.add_done_callback(input_done)
    return out


def velo_merge_complete(width: int, system: System) -> Side:
    async def run(n: int) -> int:
        s = system()
        events = [s.new_event() for _ in range(width)]
        for e in events:
            e.trigger()
        handles = [e.handle for e in events]
        start = _now()
        for _ in range(max(1, n // width)):
            await s.awaiter(s.merge_events(handles))
        return _now() - start

    return run


def base_merge_complete(width: int) -> Side:
    async def run(n: int) -> int:
        loop = asyncio.get_running_loop()
        inputs: list[asyncio.Future[None]] = [loop.create_future() for _ in range(width)]
        for f in inputs:
            f.set_result(None)
        start = _now()
        for _ in range(max(1, n // width)):
            await countdown(loop, inputs)
        return _now() - start

    return run


def velo_merge_pending(width: int, system: System) -> Side:
    async def run(n: int) -> int:
        s = system()
        batches = [[s.new_event().handle for _ in range(width)] for _ in range(max(1, n // width))]
        start = _now()
        for handles in batches:
            merged = s.merge_events(handles)
            for h in handles:
                s.trigger(h)
            await s.awaiter(merged)
        return _now() - start

    return run


def base_merge_pending(width: int) -> Side:
    async def run(n: int) -> int:
        loop = asyncio.get_running_loop()
        batches: list[list[asyncio.Future[None]]] = [
            [loop.create_future() for _ in range(width)] for _ in range(max(1, n // width))
        ]
        start = _now()
        for inputs in batches:
            out = countdown(loop, inputs)
            for f in inputs:
                f.set_result(None)
            await out
        return _now() - start

    return run


# -- timing harness ----------------------------------------------------------------------------


@dataclass
class Timed:
    name: str
    velo: dict[str, Side]  # by build
    base: Side
    n: int  # operations per run
    target: float | None  # None: a reference row (no target)
    unit: str = "µs/op"
    granule: int = 1  # runs do whole multiples of this many operations (rounds, merges)
    per_merge: int = 0  # for merges: the width, so per-merge time can be shown too
    velo_us: dict[str, list[float]] = field(default_factory=dict)
    base_us: list[float] = field(default_factory=list)


async def run_side(side: Side, n: int) -> float:
    """Microseconds per operation of one run, the collector off during the timed loop."""
    gc.collect()
    gc.disable()
    try:
        elapsed = await side(n)
    finally:
        gc.enable()
    return elapsed / n / 1000


def effective_ops(case: Timed) -> int:
    return max(1, case.n // case.granule) * case.granule


# -- case 4: memory per pending event with one waiting task -----------------------------------


async def velo_waiter(s: LocalEventSystem, handle: EventHandle) -> None:
    await s.awaiter(handle)


async def base_waiter(f: asyncio.Future[None]) -> None:
    await f


async def settle() -> None:
    """Let every new task run up to its first wait."""
    for _ in range(3):
        await asyncio.sleep(0)


async def finish(tasks: list[asyncio.Task[None]]) -> None:
    # Not asyncio.gather: the finished gathering future outlives the call (on 3.11), keeping
    # every task alive until it is freed inside the *next* measurement.
    for task in tasks:
        await task


async def velo_pending_memory(system: System, k: int) -> float:
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    s = system()
    handles = [s.new_event().handle for _ in range(k)]
    tasks = [asyncio.create_task(velo_waiter(s, h)) for h in handles]
    await settle()
    per_event = (tracemalloc.get_traced_memory()[0] - before) / k
    for h in handles:
        s.trigger(h)
    await finish(tasks)
    return per_event


async def base_pending_memory(k: int) -> float:
    loop = asyncio.get_running_loop()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    registry: dict[int, asyncio.Future[None]] = {
        _HANDLE_BASE + (i << 32) + 1: loop.create_future() for i in range(k)
    }
    tasks = [asyncio.create_task(base_waiter(f)) for f in registry.values()]
    await settle()
    per_event = (tracemalloc.get_traced_memory()[0] - before) / k
    for f in registry.values():
        f.set_result(None)
    await finish(tasks)
    return per_event


# -- case 5: a million events created and triggered in sequence -------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Flatness:
    rss_warm: int
    rss_end: int
    blocks_warm: int
    blocks_end: int
    slots: int
    us_per_event: float

    @property
    def rss_growth(self) -> int:
        return self.rss_end - self.rss_warm

    @property
    def block_growth(self) -> int:
        return self.blocks_end - self.blocks_warm


def velo_flatness(system: System, warm: int, total: int) -> Flatness:
    s = system()
    gc.collect()
    gc.disable()
    try:
        for _ in range(warm):
            s.new_event().trigger()
        rss_warm, blocks_warm = rss_bytes(), sys.getallocatedblocks()
        start = _now()
        for _ in range(total - warm):
            s.new_event().trigger()
        elapsed = _now() - start
        rss_end, blocks_end = rss_bytes(), sys.getallocatedblocks()
    finally:
        gc.enable()
    slots = s._core.slot_count()
    return Flatness(
        rss_warm, rss_end, blocks_warm, blocks_end, slots, elapsed / (total - warm) / 1000
    )


def base_flatness(loop: asyncio.AbstractEventLoop, warm: int, total: int) -> Flatness:
    gc.collect()
    gc.disable()
    try:
        for _ in range(warm):
            loop.create_future().set_result(None)
        rss_warm, blocks_warm = rss_bytes(), sys.getallocatedblocks()
        start = _now()
        for _ in range(total - warm):
            loop.create_future().set_result(None)
        elapsed = _now() - start
        rss_end, blocks_end = rss_bytes(), sys.getallocatedblocks()
    finally:
        gc.enable()
    return Flatness(rss_warm, rss_end, blocks_warm, blocks_end, 0, elapsed / (total - warm) / 1000)


# -- report --------------------------------------------------------------------------------------


def fmt_us(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def count(n: int) -> str:
    return f"{n // 1000}k" if n < 1_000_000 else f"{n / 1_000_000:g}M"


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def ratio_stats(velo: list[float], base: list[float]) -> tuple[float, float, float]:
    ratios = [v / b for v, b in zip(velo, base, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


async def main(repeat: int, quick: bool) -> None:
    scale = 10 if quick else 1
    loop = asyncio.get_running_loop()
    systems = builds()
    print(
        f"velo_event local benchmark | Python {platform.python_version()} "
        f"({platform.python_implementation()}, {platform.machine()}, {os.cpu_count()} CPUs) | "
        f"event loop: {type(loop).__module__}.{type(loop).__qualname__} "
        f"(Future: {asyncio.Future.__module__}.{asyncio.Future.__qualname__}) | "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"
    )
    print(
        f"builds: {', '.join(systems)}"
        + ("" if "compiled" in systems else " (no compiled build in this install)")
        + f" | medians of {repeat} interleaved runs (each build, baseline, each build, ...); "
        "GC collected before and disabled during every timed loop, all sides"
        + (" | QUICK smoke run: counts / 10" if quick else "")
    )
    print()

    def each_build(factory: Callable[[System], Side]) -> dict[str, Side]:
        return {name: factory(system) for name, system in systems.items()}

    cases = [
        Timed(
            "new_event+trigger+await (ready)",
            each_build(velo_trigger_await),
            base_trigger_await,
            200_000 // scale,
            2.5,
        ),
        Timed(
            "ping-pong pending wake-up",
            each_build(velo_ping_pong),
            base_ping_pong,
            100_000 // scale,
            1.3,
            "µs/wake",
            granule=2,
        ),
        Timed(
            "  its floor: the EventCore alone",
            each_build(core_ping_pong),
            base_ping_pong,
            100_000 // scale,
            None,
            "µs/wake",
            granule=2,
        ),
    ]
    merge_inputs = 40_000 // scale
    for variant, velo_side, base_side in (
        ("complete", velo_merge_complete, base_merge_complete),
        ("pending", velo_merge_pending, base_merge_pending),
    ):
        for width in (2, 16, 256, 10_000):
            cases.append(
                Timed(
                    f"merge N={width} {variant}",
                    {name: velo_side(width, system) for name, system in systems.items()},
                    base_side(width),
                    max(merge_inputs, width),
                    2.0,
                    "µs/input",
                    granule=width,
                    per_merge=width,
                )
            )

    for _ in range(repeat):
        for case in cases:
            n = effective_ops(case)
            for name, side in case.velo.items():
                case.velo_us.setdefault(name, []).append(await run_side(side, n))
            case.base_us.append(await run_side(case.base, n))

    k = 10_000 // scale
    tracemalloc.start()
    velo_mem: dict[str, list[float]] = {name: [] for name in systems}
    base_mem: list[float] = []
    try:
        # A discarded round first: the first run grows tables that stay grown (the loop's task
        # WeakSet), which would be charged to whichever side went first.
        for system in systems.values():
            await velo_pending_memory(system, k)
        await base_pending_memory(k)
        for _ in range(repeat):
            for name, system in systems.items():
                velo_mem[name].append(await velo_pending_memory(system, k))
            base_mem.append(await base_pending_memory(k))
    finally:
        tracemalloc.stop()

    warm, total = 100_000 // scale, 1_000_000 // scale
    velo_flat = {name: velo_flatness(system, warm, total) for name, system in systems.items()}
    base_flat = base_flatness(loop, warm, total)

    # Ratios are each build's time over the baseline's, paired per repetition; "met" and the
    # range are those of the last build listed (the compiled one, where there is one).
    shown = list(systems)[-1]
    header = ["case", *systems, "baseline", *(f"{name} ratio" for name in systems)]
    rows = [[*header, "target", "met", f"{shown} range"]]
    per_input: dict[tuple[str, int], tuple[float, float]] = {}
    for case in cases:
        base = statistics.median(case.base_us)
        stats = {name: ratio_stats(times, case.base_us) for name, times in case.velo_us.items()}
        ratio, low, high = stats[shown]
        rows.append(
            [
                case.name,
                *(
                    f"{fmt_us(statistics.median(case.velo_us[name]))} {case.unit}"
                    for name in systems
                ),
                f"{fmt_us(base)} {case.unit}",
                *(f"{stats[name][0]:.2f}x" for name in systems),
                "-" if case.target is None else f"<= {case.target:g}x",
                "-" if case.target is None else "yes" if ratio <= case.target else "NO",
                f"{low:.2f}-{high:.2f}",
            ]
        )
        if case.per_merge:
            variant = case.name.rsplit(" ", 1)[1]
            per_input[variant, case.per_merge] = (statistics.median(case.velo_us[shown]), base)
    mem_stats = {name: ratio_stats(velo_mem[name], base_mem) for name in systems}
    ratio, low, high = mem_stats[shown]
    rows.append(
        [
            f"pending event + 1 waiting task (K={k})",
            *(f"{statistics.median(velo_mem[name]):.0f} B/event" for name in systems),
            f"{statistics.median(base_mem):.0f} B/event",
            *(f"{mem_stats[name][0]:.2f}x" for name in systems),
            "<= 2x",
            "yes" if ratio <= 2 else "NO",
            f"{low:.2f}-{high:.2f}",
        ]
    )
    growth_ok = all(
        flat.rss_growth < 1 << 20 and flat.block_growth < 100 for flat in velo_flat.values()
    )
    rows.append(
        [
            f"{count(total)} new+trigger: VmRSS growth {count(warm)}->{count(total)}",
            *(f"{velo_flat[name].rss_growth / 1024:+.0f} KiB" for name in systems),
            f"{base_flat.rss_growth / 1024:+.0f} KiB",
            *("-" for _ in systems),
            "~0",
            "yes" if growth_ok else "NO",
            "-",
        ]
    )
    print_table(rows)
    print()

    print(
        f"merge linearity ({shown}): per-input time at N=10,000 / per-input time at N=16 "
        "(1.00 = linear)"
    )
    for variant in ("complete", "pending"):
        velo_16, base_16 = per_input[variant, 16]
        velo_10k, base_10k = per_input[variant, 10_000]
        print(f"  {variant:<8}  velo {velo_10k / velo_16:.2f}   baseline {base_10k / base_16:.2f}")
    print(f"merge per-merge time, µs (velo {shown} / baseline)")
    for variant in ("complete", "pending"):
        cells = [
            f"N={width}: {per_input[variant, width][0] * width:.1f} / "
            f"{per_input[variant, width][1] * width:.1f}"
            for width in (2, 16, 256, 10_000)
        ]
        print(f"  {variant:<8}  " + "   ".join(cells))
    print(
        f"{count(total)} new+trigger, memory by VmRSS (tracemalloc would slow the loop ~10x), "
        "one run per side"
    )
    for name, flat in velo_flat.items():
        print(
            f"  velo {name:<9} VmRSS {flat.rss_warm / 2**20:.1f} MiB after {count(warm)}, "
            f"{flat.rss_end / 2**20:.1f} MiB after {count(total)}; allocated blocks "
            f"{flat.block_growth:+d}; slot_count() {flat.slots}; "
            f"{flat.us_per_event:.3f} µs/event"
        )
    print(
        f"  baseline       VmRSS {base_flat.rss_warm / 2**20:.1f} MiB after {count(warm)}, "
        f"{base_flat.rss_end / 2**20:.1f} MiB after {count(total)}; allocated blocks "
        f"{base_flat.block_growth:+d}; {base_flat.us_per_event:.3f} µs/future "
        "(create_future + set_result)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=None, help="runs per side (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: counts / 10, 1 repetition")
    args = parser.parse_args()
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    asyncio.run(main(arguments.repeat, arguments.quick))
