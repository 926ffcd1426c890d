"""``velo-am`` (also ``python -m velo_am``): run workers, take part in a mesh from a shell,
inspect a live worker, and run the demo. One module per group of commands; each command is a
:class:`~velo_am._cli._shared.Command` (its help, examples, arguments and body).

Exit codes: 0 success; 1 the event was poisoned (``wait``) or the owner refused the operation
(``trigger``/``poison``/``renew`` of a completed event); 2 ``wait`` timed out; 3 any other error,
usage errors included (so a script's ``case $?`` never reads a typo as a timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import sys
from collections.abc import Sequence
from typing import Final

from .._demo import run_demo
from .._loops import run as run_loop
from . import _events, _inspect, _keygen, _worker
from ._shared import (
    EXIT_ERROR,
    Command,
    CommandError,
    Parser,
    add_logging_options,
    configure_logging,
    examples,
)

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=3, metavar="N", help="1 to 16 (default 3)")


def _demo(args: argparse.Namespace) -> int:
    return run_demo(args.workers)


_DEMO: Final = Command(
    "demo",
    "start worker processes and run a cross-process start-up graph, live",
    """
    velo-am demo
    velo-am demo --workers 5
    """,
    _configure_demo,
    _demo,
)
COMMANDS: Final = {
    command.name: command
    for command in (
        _DEMO,
        *_worker.COMMANDS,
        *_events.COMMANDS,
        *_inspect.COMMANDS,
        *_keygen.COMMANDS,
    )
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="velo-am",
        description="Run velo workers, take part in a mesh from a shell, inspect a live worker.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples("""
            velo-am demo --workers 3
            velo-am worker --id 0x1 --bind tcp://127.0.0.1:5555
            H=$(velo-am new-event --seed tcp://127.0.0.1:5555 --label "nightly ETL")
            velo-am wait "$H" --timeout 600 --seed tcp://127.0.0.1:5555
            velo-am inspect tcp://127.0.0.1:5555 --graph
        """)
        + "\n\nexit codes: 0 ok, 1 poisoned or refused, 2 wait timed out, 3 any other error",
    )
    add_logging_options(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=examples(command.examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_logging_options(sub, top=False)
        command.configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``velo-am`` entry point; returns the exit code."""
    for stream in (sys.stdout, sys.stderr):  # ✔, µs, … on a terminal that cannot show them
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    args = build_parser().parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "worker" else "WARNING")
    configure_logging(level, args.log_format)
    try:
        outcome = COMMANDS[args.command].run(args)
        return run_loop(outcome) if asyncio.iscoroutine(outcome) else outcome
    except CommandError as error:
        print(f"velo-am {args.command}: {error}", file=sys.stderr)
        return error.code
    except Exception as error:  # any other error: exit 3, said in one line
        logger.debug("velo-am %s failed", args.command, exc_info=True)
        print(f"velo-am {args.command}: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
