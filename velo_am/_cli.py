"""``velo-am`` (also ``python -m velo_am``): run workers, take part in a mesh from a shell,
inspect a live worker, and run the demo.

Exit codes: 0 success; 1 the event was poisoned (``wait``) or the owner refused the operation
(``trigger``/``poison`` of a completed event); 2 ``wait`` timed out; 3 any other error,
usage errors included (so a script's ``case $?`` never reads a typo as a timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect as pyinspect
import io
import ipaddress
import json
import logging
import os
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, NoReturn

from velo_event import EventError, EventHandle, EventPoison, EventStatus

from ._config import OPTIONS, resolve
from ._demo import run_demo
from ._errors import AMError, RemoteError
from ._inspect import build_graph, render_dot, render_mermaid, render_text
from ._worker import Worker

__all__ = ["main"]

logger = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_POISONED: Final = 1
EXIT_TIMEOUT: Final = 2
EXIT_ERROR: Final = 3


class CommandError(Exception):
    """Ends the command with a message on stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# -- logging (the CLI configures it; the library never does) -----------------------------------

_RECORD_FIELDS: Final = frozenset(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and every structured field the
    library passed in ``extra`` (``peer``, ``handle``, ``worker``…)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in data:
                data[key] = value if isinstance(value, int | float | str | bool) else str(value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def _configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# -- argument types ---------------------------------------------------------------------------


def _worker_id(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a worker id: {text!r} (use 0x… or decimal)"
        ) from None
    if not 0 < value < 1 << 64:
        raise argparse.ArgumentTypeError(f"a worker id is a non-zero 64-bit integer: {text}")
    return value


def _handle(text: str) -> EventHandle:
    try:
        return EventHandle.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"a number of seconds >= 0: {text}")
    return value


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None


def _discovery(text: str) -> str:
    return text if text.startswith("dir:") else f"dir:{text}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def _add_mesh_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("joining the mesh")
    group.add_argument(
        "--seed",
        action="append",
        metavar="ADDR",
        help="address of a mesh member to join through (repeatable; default: $VELO_PEERS)",
    )
    group.add_argument(
        "--discovery",
        type=_discovery,
        metavar="DIR",
        help="shared discovery directory, to find workers by id (default: $VELO_DISCOVERY)",
    )
    group.add_argument(
        "--bind",
        metavar="ADDR",
        help="this short-lived process's endpoint (default: loopback, or the interface that "
        "reaches the seed)",
    )
    group.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="seconds to wait for the mesh to answer (default: 5)",
    )


def _add_logging_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """``--log-level``/``--log-format``, accepted before and after the command name."""
    parser.add_argument(
        "--log-level",
        default=os.environ.get("VELO_LOG_LEVEL") if top else argparse.SUPPRESS,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level on stderr (default: $VELO_LOG_LEVEL, else INFO for worker, "
        "WARNING for the rest)",
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("VELO_LOG_FORMAT", "text") if top else argparse.SUPPRESS,
        choices=["text", "json"],
        help="json: one object per line, with the structured fields (worker, peer, handle)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="velo-am",
        description="Run velo workers, take part in a mesh from a shell, inspect a live worker.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples("""
            velo-am demo --workers 3
            velo-am worker --id 0x1 --bind tcp://127.0.0.1:5555
            H=$(velo-am new-event --seed tcp://127.0.0.1:5555 --label "nightly ETL")
            velo-am wait "$H" --timeout 600 --seed tcp://127.0.0.1:5555
            velo-am inspect tcp://127.0.0.1:5555 --graph
        """)
        + "\n\nexit codes: 0 ok, 1 poisoned or refused, 2 wait timed out, 3 any other error",
    )
    _add_logging_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, examples: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=_examples(examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_logging_options(sub, top=False)
        return sub

    demo = command(
        "demo",
        "start worker processes and run a cross-process start-up graph, live",
        """
        velo-am demo
        velo-am demo --workers 5
        """,
    )
    demo.add_argument("--workers", type=int, default=3, metavar="N", help="1 to 16 (default 3)")

    worker = command(
        "worker",
        "run a long-lived worker; prints 'READY <id> <address>' once it listens",
        """
        velo-am worker --id 0x1 --bind tcp://127.0.0.1:5555
        velo-am worker --id 0x2 --bind tcp://127.0.0.1:5556 --seed tcp://127.0.0.1:5555
        velo-am worker --id 0x3 --discovery /run/velo --load myapp.handlers:register
        """,
    )
    worker.add_argument("--id", dest="worker_id", type=_worker_id, help="default: random")
    worker.add_argument("--seed", action="append", metavar="ADDR", help="repeatable")
    worker.add_argument("--discovery", type=_discovery, metavar="DIR")
    worker.add_argument(
        "--load",
        action="append",
        metavar="MODULE:FUNCTION",
        help="call FUNCTION(worker) before joining, to register handlers (repeatable)",
    )
    for opt in OPTIONS:
        if opt.name in ("worker_id", "peers", "discovery"):
            continue
        worker.add_argument(
            opt.flag,
            dest=opt.name,
            type=opt.parse,
            metavar=opt.name.split("_")[-1].upper(),
            help=f"{opt.doc} (default: ${opt.env} or {opt.default_text})",
        )

    new_event = command(
        "new-event",
        "have a long-lived worker create an event; prints its handle",
        """
        H=$(velo-am new-event --seed tcp://127.0.0.1:5555)
        H=$(velo-am new-event --on 0x2 --label "backup done" --discovery /run/velo)
        """,
    )
    new_event.add_argument(
        "--on", type=_worker_id, metavar="WORKER_ID", help="the owner (default: the seed)"
    )
    new_event.add_argument("--label", help="a name shown by inspect")
    _add_mesh_options(new_event)

    merge = command(
        "merge",
        "have a long-lived worker merge events (ready when all are); prints its handle",
        """
        M=$(velo-am merge "$H1" "$H2" --label "inputs ready" --seed tcp://127.0.0.1:5555)
        """,
    )
    merge.add_argument("handles", nargs="+", type=_handle, metavar="HANDLE")
    merge.add_argument("--on", type=_worker_id, metavar="WORKER_ID")
    merge.add_argument("--label")
    merge.add_argument(
        "--fail-fast", action="store_true", help="poison at the first poisoned input"
    )
    _add_mesh_options(merge)

    trigger = command(
        "trigger",
        "complete an event successfully (waits for its owner's verdict)",
        """
        velo-am trigger "$H" --seed tcp://127.0.0.1:5555
        """,
    )
    trigger.add_argument("handle", type=_handle, metavar="HANDLE")
    _add_mesh_options(trigger)

    poison = command(
        "poison",
        "complete an event as failed, with a reason",
        """
        velo-am poison "$H" "backup failed: disk full" --seed tcp://127.0.0.1:5555
        """,
    )
    poison.add_argument("handle", type=_handle, metavar="HANDLE")
    poison.add_argument("reason", metavar="REASON")
    _add_mesh_options(poison)

    status = command(
        "status",
        "print pending, ready, or 'poisoned: REASON', as the owner knows it",
        """
        velo-am status "$H" --seed tcp://127.0.0.1:5555
        """,
    )
    status.add_argument("handle", type=_handle, metavar="HANDLE")
    _add_mesh_options(status)

    wait = command(
        "wait",
        "wait for an event: exit 0 ready, 1 poisoned (reason on stderr), 2 timeout, 3 error",
        """
        velo-am wait "$H" --timeout 600 --seed tcp://127.0.0.1:5555 && ./run-next-step
        """,
    )
    wait.add_argument("handle", type=_handle, metavar="HANDLE")
    wait.add_argument(
        "--timeout", type=_seconds, metavar="S", help="give up after S seconds (default: never)"
    )
    _add_mesh_options(wait)

    call = command(
        "call",
        "run a handler on a worker and print its result as JSON (exit 1 if it raised)",
        """
        velo-am call 0x2 ping '{"n": 1}' --seed tcp://127.0.0.1:5555
        """,
    )
    call.add_argument("worker", type=_worker_id, metavar="WORKER_ID")
    call.add_argument("handler", metavar="HANDLER")
    call.add_argument(
        "payload", nargs="?", default="null", type=_json, metavar="JSON", help="default: null"
    )
    call.add_argument("--timeout", type=_seconds, metavar="S", help="default: 30")
    _add_mesh_options(call)

    inspect = command(
        "inspect",
        "show a live worker's peers, events, waiters, counters and handler latencies",
        """
        velo-am inspect tcp://127.0.0.1:5555
        velo-am inspect tcp://127.0.0.1:5555 --graph | dot -Tsvg > graph.svg
        velo-am inspect tcp://127.0.0.1:5555 --graph mermaid --mesh
        """,
    )
    inspect.add_argument("address", metavar="ADDR")
    inspect.add_argument(
        "--graph",
        nargs="?",
        const="dot",
        choices=["dot", "mermaid"],
        help="print the pending precondition graph as Graphviz DOT (default) or Mermaid",
    )
    inspect.add_argument(
        "--mesh", action="store_true", help="ask every live peer too, and unite their views"
    )
    inspect.add_argument("--json", action="store_true", help="print the raw snapshot(s)")
    inspect.add_argument("--connect-timeout", type=_seconds, default=5.0, metavar="S")
    inspect.add_argument("--bind", metavar="ADDR")
    return parser


# -- short-lived mesh members -------------------------------------------------------------------


def _local_endpoint_towards(addresses: Sequence[str]) -> str:
    """Where a short-lived process listens: loopback, unless a seed is on another host; then
    the local interface that routes to it (so the mesh can answer). No packet is sent."""
    for address in addresses:
        if not address.startswith("tcp://"):
            continue
        host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).is_loopback:
                continue
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return f"tcp://{s.getsockname()[0]}:0"
    return "tcp://127.0.0.1:0"


@contextlib.asynccontextmanager
async def _member(args: argparse.Namespace) -> AsyncIterator[Worker]:
    """A worker for one command: joins through the seeds (or discovery), then leaves."""
    seeds = _seeds(args)
    discovery = args.discovery or resolve("discovery", None)
    if not seeds and not discovery:
        raise CommandError("no mesh to join: give --seed ADDR or --discovery DIR")
    worker = Worker(
        bind=args.bind or _local_endpoint_towards(seeds),
        peers=seeds,
        discovery=discovery,
        handshake_timeout=args.connect_timeout,
        close_grace=1.0,
    )
    try:
        await worker.start()
    except AMError as error:
        raise CommandError(f"cannot join the mesh: {error}") from None
    try:
        yield worker
    finally:
        await worker.close()


def _seeds(args: argparse.Namespace) -> list[str]:
    """``--seed`` addresses, else ``$VELO_PEERS``."""
    return list(args.seed or resolve("peers", None))


async def _owner_ready(worker: Worker, owner: int, timeout: float) -> None:
    if owner != worker.worker_id:
        await worker.wait_for_peer(owner, timeout)


async def _default_owner(worker: Worker, args: argparse.Namespace) -> int:
    """``--on``, else the first seed (a handshake names it)."""
    if args.on is not None:
        return int(args.on)
    seeds = _seeds(args)
    if not seeds:
        raise CommandError("which worker should own it? give --on WORKER_ID (or --seed ADDR)")
    return await worker.connect(seeds[0])


async def _cmd_new_event(args: argparse.Namespace) -> int:
    async with _member(args) as worker:
        owner = await _default_owner(worker, args)
        await _owner_ready(worker, owner, args.connect_timeout)
        handle = await worker.events.new_event_on(owner, args.label, args.connect_timeout)
    print(handle)
    return EXIT_OK


async def _cmd_merge(args: argparse.Namespace) -> int:
    async with _member(args) as worker:
        owner = await _default_owner(worker, args)
        await _owner_ready(worker, owner, args.connect_timeout)
        try:
            handle = await worker.events.merge_events_on(
                owner,
                args.handles,
                fail_fast=args.fail_fast,
                label=args.label,
                timeout=args.connect_timeout,
            )
        except EventError as error:
            raise CommandError(f"the owner refused the merge: {error}") from None
    print(handle)
    return EXIT_OK


async def _cmd_complete(args: argparse.Namespace) -> int:
    handle: EventHandle = args.handle
    async with _member(args) as worker:
        await _owner_ready(worker, handle.worker_id, args.connect_timeout)
        try:
            if args.command == "trigger":
                await worker.events.trigger_confirmed(handle, args.connect_timeout)
            else:
                await worker.events.poison_confirmed(handle, args.reason, args.connect_timeout)
        except EventError as error:
            raise CommandError(f"the owner refused: {error}", EXIT_POISONED) from None
    return EXIT_OK


async def _cmd_status(args: argparse.Namespace) -> int:
    handle: EventHandle = args.handle
    async with _member(args) as worker:
        await _owner_ready(worker, handle.worker_id, args.connect_timeout)
        status = await worker.events.poll_remote(handle, args.connect_timeout)
        reason = worker.events.poison_reason(handle) if status is EventStatus.POISONED else None
    print(status.name.lower() if reason is None else f"poisoned: {reason}")
    return EXIT_OK


async def _cmd_wait(args: argparse.Namespace) -> int:
    handle: EventHandle = args.handle
    started = time.monotonic()
    async with _member(args) as worker:
        # Asking the owner first turns an unreachable owner or a bad handle into exit 3.
        await _owner_ready(worker, handle.worker_id, args.connect_timeout)
        await worker.events.poll_remote(handle, args.connect_timeout)
        remaining = None if args.timeout is None else args.timeout - (time.monotonic() - started)
        try:
            async with asyncio.timeout(remaining):
                await worker.events.awaiter(handle)
        except TimeoutError:
            raise CommandError(
                f"{handle} still pending after {args.timeout} s", EXIT_TIMEOUT
            ) from None
        except EventPoison as poison:
            raise CommandError(f"poisoned: {poison.reason}", EXIT_POISONED) from None
    return EXIT_OK


async def _cmd_call(args: argparse.Namespace) -> int:
    async with _member(args) as worker:
        await _owner_ready(worker, args.worker, args.connect_timeout)
        try:
            result = await worker.call(args.worker, args.handler, args.payload, args.timeout)
        except RemoteError as error:
            raise CommandError(f"the handler raised {error}", EXIT_POISONED) from None
    print(json.dumps(result, default=_bytes_as_hex))
    return EXIT_OK


def _bytes_as_hex(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


async def _cmd_inspect(args: argparse.Namespace) -> int:
    args.seed = [args.address]
    args.discovery = None
    async with _member(args) as worker:
        target = await worker.connect(args.address)
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


# -- long-lived worker ------------------------------------------------------------------------


def _load(spec: str) -> Callable[[Worker], Any]:
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise CommandError(f"--load wants MODULE:FUNCTION, got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's own modules
    try:
        module = importlib.import_module(module_name)
        function: Callable[[Worker], Any] = getattr(module, function_name)
    except (ImportError, AttributeError) as error:
        raise CommandError(f"--load {spec}: {error}") from None
    return function


async def _cmd_worker(args: argparse.Namespace) -> int:
    options = {opt.name: getattr(args, opt.name, None) for opt in OPTIONS}
    options["peers"] = args.seed
    options["discovery"] = args.discovery
    try:
        worker = Worker(**options)
    except (TypeError, ValueError) as error:
        raise CommandError(str(error)) from None
    for spec in args.load or ():
        result = _load(spec)(worker)
        if pyinspect.isawaitable(result):
            await result
    try:
        await worker.start()
    except (AMError, OSError) as error:
        raise CommandError(f"cannot start the worker: {error}") from None
    try:
        await worker.serve_forever(
            ready=lambda: print(f"READY {worker.worker_id:#x} {worker.address}", flush=True)
        )
    finally:
        await worker.close()
    print("CLOSED", flush=True)
    return EXIT_OK


_COMMANDS: Final[dict[str, Callable[[argparse.Namespace], Any]]] = {
    "worker": _cmd_worker,
    "new-event": _cmd_new_event,
    "merge": _cmd_merge,
    "trigger": _cmd_complete,
    "poison": _cmd_complete,
    "status": _cmd_status,
    "wait": _cmd_wait,
    "inspect": _cmd_inspect,
    "call": _cmd_call,
}


def main(argv: Sequence[str] | None = None) -> int:
    """The ``velo-am`` entry point; returns the exit code."""
    for stream in (sys.stdout, sys.stderr):  # ✔, µs, … on a terminal that cannot show them
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    args = build_parser().parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "worker" else "WARNING")
    _configure_logging(level, args.log_format)
    try:
        if args.command == "demo":
            return run_demo(args.workers)
        code: int = asyncio.run(_COMMANDS[args.command](args))
        return code
    except CommandError as error:
        print(f"velo-am {args.command}: {error}", file=sys.stderr)
        return error.code
    except Exception as error:  # any other error: exit 3, said in one line
        logger.debug("velo-am %s failed", args.command, exc_info=True)
        print(f"velo-am {args.command}: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
