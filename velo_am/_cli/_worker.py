"""``velo-am worker``: a long-lived worker, with handlers loaded from the user's modules."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from .._config import OPTIONS
from .._errors import AMError
from .._worker import Worker
from ._shared import (
    EXIT_OK,
    Command,
    CommandError,
    add_curve_options,
    curve_of,
    discovery_url,
    worker_id,
)

__all__ = ["COMMANDS"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", dest="worker_id", type=worker_id, help="default: random")
    parser.add_argument("--seed", action="append", metavar="ADDR", help="repeatable")
    parser.add_argument(
        "--discovery",
        type=discovery_url,
        metavar="URL",
        help="a discovery URL (dir:PATH, dns:NAME:PORT) or a shared directory "
        "(default: $VELO_DISCOVERY)",
    )
    parser.add_argument(
        "--from-env",
        action="store_true",
        help="take the id, the address to bind and the seed from the launcher's variables "
        "(torchrun, Slurm, MPI, a Kubernetes Indexed Job, LeaderWorkerSet); flags given win",
    )
    parser.add_argument(
        "--wait-world",
        action="store_true",
        help="with --from-env: print READY only once every rank of the world has joined "
        "(exit 3 if they have not within the join timeout)",
    )
    parser.add_argument(
        "--load",
        action="append",
        metavar="MODULE:FUNCTION",
        help="call FUNCTION(worker) before joining, to register handlers (repeatable)",
    )
    for opt in OPTIONS:
        if opt.name in ("worker_id", "peers", "discovery", "curve_key", "curve_allow"):
            continue
        parser.add_argument(
            opt.flag,
            dest=opt.name,
            type=opt.parse,
            metavar=opt.name.split("_")[-1].upper(),
            help=f"{opt.doc} (default: ${opt.env} or {opt.default_text})",
        )
    add_curve_options(parser)


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


async def _run(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {opt.name: getattr(args, opt.name, None) for opt in OPTIONS}
    options["peers"] = args.seed
    options["discovery"] = args.discovery
    del options["curve_key"], options["curve_allow"]
    options["curve"] = curve_of(args)
    if args.wait_world and not args.from_env:
        raise CommandError("--wait-world needs --from-env (the launcher tells the world's size)")
    try:
        if args.from_env:
            given = {name: value for name, value in options.items() if value is not None}
            worker = Worker.from_env(wait_for_world=args.wait_world, **given)
        else:
            worker = Worker(**options)
    except (TypeError, ValueError) as error:
        raise CommandError(str(error)) from None
    for spec in args.load or ():
        result = _load(spec)(worker)
        if inspect.isawaitable(result):
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


COMMANDS = (
    Command(
        "worker",
        "run a long-lived worker; prints 'READY <id> <address>' once it listens",
        """
        velo-am worker --id 0x1 --bind tcp://127.0.0.1:5555
        velo-am worker --id 0x2 --bind tcp://127.0.0.1:5556 --seed tcp://127.0.0.1:5555
        velo-am worker --id 0x3 --discovery /run/velo --load myapp.handlers:register
        torchrun --nproc-per-node 4 --no-python velo-am worker --from-env --wait-world
        """,
        _configure,
        _run,
    ),
)
