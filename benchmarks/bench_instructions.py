"""What issue 13's pending wake-up and remote ping-pongs cost in CPU instructions (callgrind),
beside their baselines in the same run: a count that does not move with the machine's load,
where the clock's ratios do (by 20 % and more between runs on these 2-core machines).

Run: ``python benchmarks/bench_instructions.py [--repeat N] [--wakeups N] [--rounds N]``
(needs valgrind: ``valgrind``, ``callgrind_control`` and ``callgrind_annotate``; without them it
says so and exits).

Method
------
* Each repetition (``--repeat``, default 3) starts, per build (compiled where the install has
  it, then pure), one process of this script (``--child BUILD``) under ``valgrind
  --tool=callgrind --instr-atstart=no``, in that build's environment (``_builds``). It counts
  nothing but the cases' windows: ``callgrind_control -i on`` right before a case's loop,
  ``-i off`` and ``--dump=CASE`` right after, so each case has a dump of its own. A dump holds
  every thread of the process (the loop's and libzmq's I/O thread), user space only: the
  kernel's work is not in it. An empty window is counted too and taken off each case (the
  switch's own cost: about 0.1 M instructions, 0.1 % of a case).
* The cases, each after one uncounted warm-up run:
  - ``bench_local.py``'s pending wake-up ping-pong (``--wakeups``, default 10,000): velo's
    public layer, its ``EventCore`` alone, and the asyncio Future baseline; per wake-up, the
    garbage collector off as there.
  - ``bench_events.py``'s remote ping-pongs (``--rounds`` after 100 warm-up rounds, both
    counted; default 1,000): velo with the await after its own trigger and with its waiters
    subscribed ahead, the raw drain floor, the raw ``zmq.asyncio`` echo and the bare pattern.
    Counted in A (the child); B is the usual peer process, running natively, not counted.
    Per round of A, the garbage collector on as there.
* The table gives each side's median over the repetitions and the ratio of the medians (the
  baselines run in both builds' children: their median is over all of them). Below it, the
  median repetition of each case split by where its instructions ran (callgrind's self cost
  of each function, summed by the file it lives in), and velo's compiled functions in the
  own-trigger round with their callees' instructions (interpreted modules are not named:
  their instructions are CPython's).
* Instructions are not time. The kernel's work (system calls, wake-ups across processes) is
  not counted, nor is waiting; and what a side does after its send overlaps the peer's work
  on two CPUs, so it costs CPU but not latency. A ratio of counts is not the clock's ratio.
  What a count gives is a side's own CPU work, and so the difference between two versions
  of it: a local case repeats within 0.3 %, a socket case within 1 to 2 % (its drains batch
  differently from run to run). Run it with nothing else busy: a socket case takes a path
  that depends on timing, and under contention A often finds the peer's answer already
  waiting when it looks, which spares it a wait (its count falls, the floor's by up to half).
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
import gc
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import bench_events as events
import bench_local as local
from _builds import BUILDS, build_environment, built
from bench_am import print_aligned, start_server, stop_servers

TOOLS = ("valgrind", "callgrind_control", "callgrind_annotate")
CHILD_TIMEOUT = 1800.0  # seconds for one child (everything runs ~50x slower under valgrind)
#: The cases: key, label, unit, and the key of the baseline its ratio is taken against.
LOCAL_CASES = (
    ("wake", "pending wake-up ping-pong (bench_local)", "wake-up", "wake_future"),
    ("wake_core", "  its EventCore alone", "wake-up", "wake_future"),
)
REMOTE_CASES = (
    ("pp_own", "ping-pong, await after own trigger", "round", "pp_drain"),
    ("pp_own", "  the same, against zmq.asyncio", "round", "pp_asyncio"),
    ("pp_own", "  the same, against the bare pattern", "round", "pp_bare"),
    ("pp_ahead", "ping-pong, subscribed ahead", "round", "pp_drain"),
    ("pp_ahead", "  the same, against zmq.asyncio", "round", "pp_asyncio"),
)
BASELINES = {
    "wake_future": "asyncio Future ping-pong",
    "pp_drain": "raw drain (the floor)",
    "pp_asyncio": "raw zmq.asyncio echo",
    "pp_bare": "bare event pattern",
}
#: Where instructions ran, by a piece of the path of the file they live in (first match).
PLACES = (
    ("velo_event/_compiled", "velo_event (compiled)"),
    ("velo_am/_compiled", "velo_am (compiled)"),
    ("_asyncio", "asyncio's C module"),
    ("msgpack", "msgpack"),
    ("libzmq", "libzmq"),
    ("zmq", "pyzmq"),
    ("libpython", "CPython (interpreter, objects, calls)"),
    ("/Python-3.", "CPython (interpreter, objects, calls)"),  # inlined, named by its source
    ("libc", "libc"),
)


# -- the child: runs the cases under callgrind ------------------------------------------------


def _callgrind(*arguments: str) -> None:
    subprocess.run(
        ["callgrind_control", *arguments, str(os.getpid())],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=60,
    )


@contextlib.contextmanager
def counted(name: str) -> Iterator[None]:
    """Count instructions inside, into a dump of their own named ``name``."""
    _callgrind("-i", "on")
    try:
        yield
    finally:
        _callgrind("-i", "off")
        _callgrind(f"--dump={name}")


async def local_cases(build: str, wakeups: int) -> dict[str, int]:
    system = local.builds()[build]
    sides: dict[str, Callable[[int], Awaitable[int]]] = {
        "wake": local.velo_ping_pong(system),
        "wake_core": local.core_ping_pong(system),
        "wake_future": local.base_ping_pong,
    }
    for key, side in sides.items():
        await side(max(2, wakeups // 10))  # warm-up
        gc.collect()
        gc.disable()
        try:
            with counted(key):
                await side(wakeups)
        finally:
            gc.enable()
    return dict.fromkeys(sides, wakeups // 2 * 2)


async def remote_cases(rounds: int) -> dict[str, int]:
    servers = []
    try:
        for mode in ("asyncio", "drain", "bare"):
            servers.append(start_server(mode, events.BIND))
        servers.append(events.start_events_peer(events.BIND))
        async with contextlib.AsyncExitStack() as stack:
            v = await events.open_velo(servers[-1], stack)
            frames = events.raw_frames(*events.update_sizes(v))
            c = await events.open_clients({s.mode: s for s in servers[:3]}, stack, frames)
            raw: dict[str, Callable[[int], Awaitable[object]]] = {
                "pp_drain": lambda n: events.pingpong_drain(c, n),
                "pp_asyncio": lambda n: events.pingpong_asyncio(c, n),
                "pp_bare": lambda n: events.pingpong_bare(c, n),
            }
            for key, ahead in (("pp_own", False), ("pp_ahead", True)):
                await events.pingpong_velo(v, max(1, rounds // 10), ahead)  # warm-up
                await events.pingpong_velo(v, rounds, ahead, lambda key=key: counted(key))
            for key, run in raw.items():
                await run(max(1, rounds // 10))  # warm-up
                with counted(key):
                    await run(rounds)
    finally:
        stop_servers(servers)
    return dict.fromkeys(("pp_own", "pp_ahead", *raw), events.WARMUP_ROUNDS + rounds)


async def child(build: str, wakeups: int, rounds: int) -> None:
    with counted("empty"):
        pass
    operations = {"empty": 1, **await local_cases(build, wakeups), **await remote_cases(rounds)}
    print(json.dumps(operations))


# -- the parent: runs the children, reads their dumps -----------------------------------------


def read_dumps(prefix: Path) -> dict[str, Path]:
    """The dumps of one child, by the name its window gave."""
    dumps: dict[str, Path] = {}
    for path in prefix.parent.glob(prefix.name + ".*"):
        with path.open() as dump:
            for line in dump:
                if line.startswith("desc: Trigger: dump "):
                    dumps[line.removeprefix("desc: Trigger: dump ").strip()] = path
                    break
    return dumps


def total(dump: Path) -> int:
    with dump.open() as lines:
        for line in lines:
            if line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError(f"{dump}: no totals line")


_FUNCTION_LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*?)(?: \[(.*)\])?$")


def by_function(dump: Path, *, inclusive: bool = False) -> list[tuple[int, str, str]]:
    """(instructions, function, file it lives in) of every function in the dump, most first:
    its own (self) instructions, or with its callees' (``inclusive``)."""
    listing = subprocess.run(
        [
            "callgrind_annotate",
            "--threshold=100",
            "--auto=no",
            f"--inclusive={'yes' if inclusive else 'no'}",
            str(dump),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    rows = []
    for line in listing.partition("file:function")[2].splitlines():
        match = _FUNCTION_LINE.match(line)
        if match:
            count, function, where = match.groups()
            rows.append((int(count.replace(",", "")), function, where or function))
    return rows


def place(where: str) -> str:
    return next((name for piece, name in PLACES if piece in where), "other")


def run_child(build: str, args: argparse.Namespace, directory: Path) -> dict[str, tuple[int, Path]]:
    """One child's cases: instructions per operation (the empty window taken off) and dump."""
    prefix = directory / f"callgrind.{build}"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={prefix}",
        sys.executable,
        str(Path(__file__)),
        "--child",
        build,
        "--wakeups",
        str(args.wakeups),
        "--rounds",
        str(args.rounds),
    ]
    done = subprocess.run(
        command,
        check=False,  # its error output is reported below
        env=build_environment(build),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {build} child failed:\n{done.stderr[-3000:]}")
    operations: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    dumps = read_dumps(prefix)
    empty = total(dumps["empty"])
    return {
        key: ((total(dumps[key]) - empty) // count, dumps[key])
        for key, count in operations.items()
        if key != "empty"
    }


def main() -> None:
    args = parse_args()
    if args.child:
        asyncio.run(child(args.child, args.wakeups, args.rounds))
        return
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        sys.exit(f"bench_instructions needs valgrind; not found: {', '.join(missing)}")
    builds = [build for build in BUILDS if build == "pure" or built()]
    runs: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    with contextlib.ExitStack() as stack:
        scratch = args.keep or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="velo-instructions-")
        )
        for repetition in range(args.repeat):
            for build in builds:
                directory = Path(scratch) / f"{repetition}"
                directory.mkdir(exist_ok=True)
                for key, result in run_child(build, args, directory).items():
                    side = key if key in BASELINES else f"{key}:{build}"
                    runs[side].append(result)
            print(f"  repetition {repetition + 1}/{args.repeat} done", file=sys.stderr)
        report(runs, builds, args)


def _median(runs: list[tuple[int, Path]]) -> tuple[int, Path]:
    """The median run (the lower one of an even count: an actual run, with its dump)."""
    ordered = sorted(runs)
    return ordered[(len(ordered) - 1) // 2]


def report(runs: dict[str, list[tuple[int, Path]]], builds: list[str], args: Any) -> None:
    med = {side: _median(values)[0] for side, values in runs.items()}
    print(
        f"velo instructions (callgrind, user space, every thread of the counting process) | "
        f"Python {sys.version.split()[0]} | medians of {args.repeat} runs | builds: "
        f"{', '.join(builds)} | {args.wakeups:,} wake-ups, "
        f"{events.WARMUP_ROUNDS + args.rounds:,} ping-pong rounds per run\n"
    )
    header = ("case", "unit", *builds, "baseline", "baseline is", *[f"{b} ratio" for b in builds])
    rows: list[tuple[str, ...]] = [header]
    for key, label, unit, base in (*LOCAL_CASES, *REMOTE_CASES):
        values = [med[f"{key}:{build}"] for build in builds]
        rows.append(
            (
                label,
                f"per {unit}",
                *[f"{value:,}" for value in values],
                f"{med[base]:,}",
                BASELINES[base],
                *[f"{value / med[base]:.2f}x" for value in values],
            )
        )
    print_aligned(rows)
    print("\nper-run instructions (in run order):")
    for side, values in runs.items():
        print(f"  {side:<22} {' '.join(f'{count:,}' for count, _ in values)}")
    first = builds[0]
    split_sides = [f"wake:{first}", "wake_future", *[f"pp_own:{b}" for b in builds]]
    split_sides += [f"pp_ahead:{first}", "pp_drain", "pp_asyncio", "pp_bare"]
    places = {side: _places(runs[side], _unit(side, args)) for side in split_sides}
    names = sorted({name for split in places.values() for name in split}, key=_place_order)
    print(
        "\nwhere a wake-up (wake*) or a round (pp*) goes, median run, instructions by the file"
        " they ran in:"
    )
    split_rows: list[tuple[str, ...]] = [("", *places)]
    for name in names:
        split_rows.append((name, *[f"{split.get(name, 0):,}" for split in places.values()]))
    print_aligned(split_rows)
    if "compiled" in builds:
        count, dump = _median(runs["pp_own:compiled"])
        print(
            f"\npp_own:compiled, velo's compiled functions by instructions per round, their "
            f"callees' included ({count:,} in all; interpreted modules run inside CPython's):"
        )
        compiled = [row for row in by_function(dump, inclusive=True) if "CPyDef_" in row[1]]
        for instructions, function, _ in compiled[: args.top]:
            name = function.partition("CPyDef_")[2].replace("_compiled___", "")
            print(f"  {instructions // _unit('pp_own', args):>8,}  {'.'.join(name.split('___'))}")


def _unit(side: str, args: Any) -> int:
    return args.wakeups if side.startswith("wake") else events.WARMUP_ROUNDS + args.rounds


def _places(runs: list[tuple[int, Path]], unit: int) -> dict[str, int]:
    split: dict[str, int] = defaultdict(int)
    for instructions, _, where in by_function(_median(runs)[1]):
        split[place(where)] += instructions
    return {name: count // unit for name, count in split.items()}


def _place_order(name: str) -> int:
    names = [place_name for _, place_name in PLACES]
    return names.index(name) if name in names else len(names)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per build (default 3)")
    parser.add_argument("--wakeups", type=int, default=10_000, help="wake-ups per local run")
    parser.add_argument("--rounds", type=int, default=1_000, help="ping-pong rounds per run")
    parser.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    parser.add_argument(
        "--keep", metavar="DIR", help="keep the callgrind dumps in DIR (for callgrind_annotate)"
    )
    parser.add_argument("--child", choices=BUILDS, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
