"""What the ``velo-am`` commands share: exit codes and errors, logging, argument types and
option groups, and joining the mesh as a short-lived member."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from velo_event import EventHandle

from .._config import OPTIONS_BY_NAME, resolve
from .._errors import AMError
from .._worker import Worker
from ..discovery import schemes

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_POISONED",
    "EXIT_TIMEOUT",
    "Command",
    "CommandError",
    "Parser",
    "add_curve_options",
    "add_logging_options",
    "add_mesh_options",
    "configure_logging",
    "curve_of",
    "default_owner",
    "discovery_url",
    "examples",
    "handle_arg",
    "json_arg",
    "member",
    "owner_ready",
    "positive_seconds",
    "seconds",
    "seed_addresses",
    "worker_id",
]

EXIT_OK: Final = 0
EXIT_POISONED: Final = 1
EXIT_TIMEOUT: Final = 2
EXIT_ERROR: Final = 3


class CommandError(Exception):
    """Ends the command with a message on stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Command:
    """One ``velo-am`` command: its help and examples, its arguments, and what it runs."""

    name: str
    help: str
    examples: str
    configure: Callable[[argparse.ArgumentParser], None]
    #: The command's body: an exit code, or a coroutine the CLI runs to get one.
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int] | int]


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


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# -- argument types ---------------------------------------------------------------------------


def worker_id(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a worker id: {text!r} (use 0x… or decimal)"
        ) from None
    if not 0 < value < 1 << 64:
        raise argparse.ArgumentTypeError(f"a worker id is a non-zero 64-bit integer: {text}")
    return value


def handle_arg(text: str) -> EventHandle:
    try:
        return EventHandle.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"a number of seconds >= 0: {text}")
    return value


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"a finite number of seconds > 0: {text}")
    return value


def json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None


def discovery_url(text: str) -> str:
    """A discovery URL (``scheme:REST``, a registered scheme), or a bare directory path,
    which means ``dir:PATH``."""
    scheme, sep, _ = text.partition(":")
    if sep and scheme in schemes():
        return text
    if sep and scheme.isidentifier() and len(scheme) > 1:
        known = ", ".join(schemes().values())
        raise argparse.ArgumentTypeError(f"unknown discovery {text!r}: expected one of {known}")
    return f"dir:{text}"


class Parser(argparse.ArgumentParser):
    """Usage errors exit 3 (not argparse's 2): a script never reads a typo as a timeout."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def add_mesh_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("joining the mesh")
    group.add_argument(
        "--seed",
        action="append",
        metavar="ADDR",
        help="address of a mesh member to join through (repeatable; default: $VELO_PEERS)",
    )
    group.add_argument(
        "--discovery",
        type=discovery_url,
        metavar="URL",
        help="where to find workers: a discovery URL (dir:PATH, dns:NAME:PORT) or a shared "
        "directory (default: $VELO_DISCOVERY)",
    )
    group.add_argument(
        "--bind",
        metavar="ADDR",
        help="this short-lived process's endpoint (default: loopback, or the interface that "
        "reaches the seed)",
    )
    group.add_argument(
        "--connect-timeout",
        type=seconds,
        default=5.0,
        metavar="S",
        help="seconds to wait for the mesh to answer (default: 5)",
    )
    add_curve_options(parser)


def add_curve_options(parser: argparse.ArgumentParser) -> None:
    """``--curve-key``/``--curve-allow``: this process's CURVE certificate and allowed keys."""
    group = parser.add_argument_group("authentication (CURVE)")
    for name in ("curve_key", "curve_allow"):
        opt = OPTIONS_BY_NAME[name]
        group.add_argument(
            opt.flag,
            dest=name,
            metavar="PATH" if name == "curve_key" else "DIR",
            help=f"{opt.doc} (default: ${opt.env})",
        )


def curve_of(args: argparse.Namespace) -> tuple[str, str] | None:
    """The CURVE pair of the flags, each else from its variable; ``None``: CURVE off."""
    key = getattr(args, "curve_key", None) or resolve("curve_key", None)
    allow = getattr(args, "curve_allow", None) or resolve("curve_allow", None)
    if key is None and allow is None:
        return None
    if key is None or allow is None:
        missing = "--curve-key (or $VELO_CURVE_KEY)" if key is None else "--curve-allow"
        raise CommandError(f"CURVE needs a secret certificate and the allowed keys: {missing}")
    return key, allow


def add_logging_options(parser: argparse.ArgumentParser, top: bool) -> None:
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


# -- short-lived mesh members -------------------------------------------------------------------


def local_endpoint_towards(addresses: Sequence[str]) -> str:
    """Where a short-lived process listens: loopback, unless a seed is on another host; then
    the local interface that routes to it (so the mesh can answer). No packet is sent."""
    # A seed pasted from a READY line may name several endpoints (a wildcard-bound worker's).
    for address in (endpoint for seed in addresses for endpoint in seed.split()):
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
async def member(args: argparse.Namespace) -> AsyncIterator[Worker]:
    """A worker for one command: joins through the seeds (or discovery), then leaves."""
    seeds = seed_addresses(args)
    discovery = args.discovery or resolve("discovery", None)
    if not seeds and not discovery:
        raise CommandError("no mesh to join: give --seed ADDR or --discovery URL")
    # An observer: it acts and leaves, nobody gossips it or remembers it; the owners of the
    # events it awaits watch it through links of their own, so it listens where they can
    # reach it. Its own id and address, whatever VELO_WORKER_ID, VELO_ADVERTISE and
    # VELO_INTERFACE say: those describe the long-lived worker of the same shell.
    try:
        worker = Worker(
            secrets.randbits(64) or 1,
            bind=args.bind or local_endpoint_towards(seeds),
            advertise="",
            interface="",
            peers=seeds,
            discovery=discovery,
            handshake_timeout=args.connect_timeout,
            join_timeout=args.connect_timeout,
            close_grace=1.0,
            curve=curve_of(args),
            observer=True,
        )
    except ValueError as error:  # a bad certificate, named
        raise CommandError(str(error)) from None
    try:
        await worker.start()
    except AMError as error:
        raise CommandError(f"cannot join the mesh: {error}") from None
    try:
        yield worker
    finally:
        await worker.close()


def seed_addresses(args: argparse.Namespace) -> list[str]:
    """``--seed`` addresses, else ``$VELO_PEERS``."""
    return list(args.seed or resolve("peers", None))


async def owner_ready(worker: Worker, owner: int, timeout: float) -> None:
    if owner != worker.worker_id:
        await worker.wait_for_peer(owner, timeout)


async def default_owner(worker: Worker, args: argparse.Namespace) -> int:
    """``--on``, else the first seed (a handshake names it)."""
    if args.on is not None:
        return int(args.on)
    seeds = seed_addresses(args)
    if not seeds:
        raise CommandError("which worker should own it? give --on WORKER_ID (or --seed ADDR)")
    return await worker.connect(seeds[0])
