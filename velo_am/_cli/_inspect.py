"""``velo-am inspect`` (a live worker's state, text or graph) and ``velo-am call`` (run a
handler and print its result)."""

from __future__ import annotations

import argparse
import json
import sys

from velo_event import EventHandle

from .._errors import AMError, RemoteError
from .._inspect import build_graph, render_dot, render_mermaid, render_text
from ._shared import (
    EXIT_OK,
    EXIT_POISONED,
    Command,
    CommandError,
    add_mesh_options,
    json_arg,
    member,
    owner_ready,
    seconds,
    worker_id,
)

__all__ = ["COMMANDS"]


def _configure_call(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("worker", type=worker_id, metavar="WORKER_ID")
    parser.add_argument("handler", metavar="HANDLER")
    parser.add_argument(
        "payload", nargs="?", default="null", type=json_arg, metavar="JSON", help="default: null"
    )
    parser.add_argument("--timeout", type=seconds, metavar="S", help="default: 30")
    add_mesh_options(parser)


async def _call(args: argparse.Namespace) -> int:
    async with member(args) as worker:
        await owner_ready(worker, args.worker, args.connect_timeout)
        try:
            result = await worker.call(args.worker, args.handler, args.payload, args.timeout)
        except RemoteError as error:
            raise CommandError(f"the handler raised {error}", EXIT_POISONED) from None
    print(json.dumps(_as_json(result), default=str))
    return EXIT_OK


def _as_json(value: object) -> object:
    """A result as JSON shows it: handles in their text form (what ``wait`` and ``trigger``
    read), bytes in hex."""
    if isinstance(value, EventHandle):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_as_json(item) for item in value]
    if isinstance(value, dict):
        return {_as_json(key): _as_json(item) for key, item in value.items()}
    return value


def _configure_inspect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        metavar="ADDR|WORKER_ID",
        help="a worker's address, or its id (then --seed or --discovery says how to reach it)",
    )
    parser.add_argument(
        "--graph",
        nargs="?",
        const="dot",
        choices=["dot", "mermaid"],
        help="print the pending precondition graph as Graphviz DOT (default) or Mermaid",
    )
    parser.add_argument(
        "--mesh", action="store_true", help="ask every live peer too, and unite their views"
    )
    parser.add_argument("--json", action="store_true", help="print the raw snapshot(s)")
    add_mesh_options(parser)


async def _inspect(args: argparse.Namespace) -> int:
    try:
        target_id: int | None = worker_id(args.target)
    except argparse.ArgumentTypeError:
        target_id = None  # an address
        args.seed = [args.target]
    async with member(args) as worker:
        if target_id is None:
            target = await worker.connect(args.target)
        else:
            target = target_id
            await owner_ready(worker, target, args.connect_timeout)
        snapshots = [await worker.call(target, "_inspect", {}, args.connect_timeout)]
        if args.mesh:
            for peer in snapshots[0]["peers"]:
                if peer["state"] != "alive" or peer["worker"] == worker.worker_id:
                    continue
                try:
                    await worker.wait_for_peer(peer["worker"], args.connect_timeout)
                    snap = await worker.call(peer["worker"], "_inspect", {}, args.connect_timeout)
                except AMError as error:
                    print(f"cannot inspect worker {peer['worker']:#x}: {error}", file=sys.stderr)
                    continue
                snapshots.append(snap)
    for snap in snapshots:  # the inspecting process itself is not worth showing
        snap["peers"] = [peer for peer in snap["peers"] if peer["worker"] != worker.worker_id]
    if args.json:
        print(json.dumps(snapshots if args.mesh else snapshots[0], indent=2, default=str))
    elif args.graph == "dot":
        print(render_dot(build_graph(snapshots)), end="")
    elif args.graph == "mermaid":
        print(render_mermaid(build_graph(snapshots)), end="")
    else:
        print("\n".join(render_text(snap) for snap in snapshots), end="")
    return EXIT_OK


COMMANDS = (
    Command(
        "call",
        "run a handler on a worker and print its result as JSON (exit 1 if it raised)",
        """
        velo-am call 0x2 ping '{"n": 1}' --seed tcp://127.0.0.1:5555
        """,
        _configure_call,
        _call,
    ),
    Command(
        "inspect",
        "show a live worker's peers, events, waiters, counters and handler latencies",
        """
        velo-am inspect tcp://127.0.0.1:5555
        velo-am inspect tcp://127.0.0.1:5555 --graph | dot -Tsvg > graph.svg
        velo-am inspect 0x2 --seed tcp://127.0.0.1:5555 --graph mermaid --mesh
        """,
        _configure_inspect,
        _inspect,
    ),
)
