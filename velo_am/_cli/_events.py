"""The event commands: ``new-event``, ``merge``, ``trigger``, ``poison``, ``status``, ``wait``,
``renew``.

Each joins the mesh as a short-lived member; a long-lived worker owns what it creates."""

from __future__ import annotations

import argparse
import time

from velo_event import (
    EventError,
    EventHandle,
    EventPoison,
    EventStatus,
    EventTimeout,
    InvalidGenerationError,
    OutcomeUnknown,
)

from ._shared import (
    EXIT_OK,
    EXIT_POISONED,
    EXIT_TIMEOUT,
    Command,
    CommandError,
    add_mesh_options,
    default_owner,
    handle_arg,
    member,
    owner_ready,
    positive_seconds,
    seconds,
    worker_id,
)

__all__ = ["COMMANDS"]


def _configure_new_event(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--on", type=worker_id, metavar="WORKER_ID", help="the owner (default: the seed)"
    )
    parser.add_argument("--label", help="a name shown by inspect")
    parser.add_argument(
        "--lease",
        type=positive_seconds,
        metavar="S",
        help="the owner poisons the event unless it completes or is renewed (velo-am renew) "
        "within S seconds",
    )
    add_mesh_options(parser)


async def _new_event(args: argparse.Namespace) -> int:
    async with member(args) as worker:
        owner = await default_owner(worker, args)
        await owner_ready(worker, owner, args.connect_timeout)
        handle = await worker.events.new_event_on(
            owner, args.label, args.connect_timeout, lease=args.lease
        )
    print(handle)
    return EXIT_OK


def _configure_renew(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("handle", type=handle_arg, metavar="HANDLE")
    parser.add_argument(
        "--lease",
        type=positive_seconds,
        metavar="S",
        help="the lease now ends S seconds from now (default: the length it was created with)",
    )
    add_mesh_options(parser)


async def _renew(args: argparse.Namespace) -> int:
    handle: EventHandle = args.handle
    async with member(args) as worker:
        await owner_ready(worker, handle.worker_id, args.connect_timeout)
        try:
            await worker.events.renew_lease(handle, args.lease, args.connect_timeout)
        except InvalidGenerationError as error:
            # Completed (the lease ended with it: exit 1), or minted by the owner's earlier
            # incarnation: no outcome to tell, an error (exit 3), as for `wait`.
            status, why = await worker.events.status_remote(handle, args.connect_timeout)
            if status is EventStatus.UNKNOWN:
                raise CommandError(f"outcome unknown: {why}") from None
            raise CommandError(str(error), EXIT_POISONED) from None
        except EventError as error:
            raise CommandError(f"the owner refused: {error}") from None
    return EXIT_OK


def _configure_merge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("handles", nargs="+", type=handle_arg, metavar="HANDLE")
    parser.add_argument("--on", type=worker_id, metavar="WORKER_ID")
    parser.add_argument("--label")
    parser.add_argument(
        "--fail-fast", action="store_true", help="poison at the first poisoned input"
    )
    add_mesh_options(parser)


async def _merge(args: argparse.Namespace) -> int:
    async with member(args) as worker:
        owner = await default_owner(worker, args)
        await owner_ready(worker, owner, args.connect_timeout)
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


def _configure_handle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("handle", type=handle_arg, metavar="HANDLE")
    add_mesh_options(parser)


def _configure_poison(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("handle", type=handle_arg, metavar="HANDLE")
    parser.add_argument("reason", metavar="REASON")
    add_mesh_options(parser)


async def _complete(args: argparse.Namespace) -> int:
    handle: EventHandle = args.handle
    async with member(args) as worker:
        await owner_ready(worker, handle.worker_id, args.connect_timeout)
        try:
            if args.command == "trigger":
                await worker.events.trigger_confirmed(handle, args.connect_timeout)
            else:
                await worker.events.poison_confirmed(handle, args.reason, args.connect_timeout)
        except EventError as error:
            raise CommandError(f"the owner refused: {error}", EXIT_POISONED) from None
    return EXIT_OK


async def _status(args: argparse.Namespace) -> int:
    handle: EventHandle = args.handle
    async with member(args) as worker:
        await owner_ready(worker, handle.worker_id, args.connect_timeout)
        status, reason = await worker.events.status_remote(handle, args.connect_timeout)
    # "unknown: …": the owner restarted since it minted the handle, and cannot tell.
    print(status.value if reason is None else f"{status.value}: {reason}")
    return EXIT_OK


def _configure_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("handle", type=handle_arg, metavar="HANDLE")
    parser.add_argument(
        "--timeout", type=seconds, metavar="S", help="give up after S seconds (default: never)"
    )
    add_mesh_options(parser)


async def _wait(args: argparse.Namespace) -> int:
    handle: EventHandle = args.handle
    started = time.monotonic()
    async with member(args) as worker:
        # Asking the owner first turns an unreachable owner or a bad handle into exit 3.
        await owner_ready(worker, handle.worker_id, args.connect_timeout)
        await worker.events.poll_remote(handle, args.connect_timeout)
        remaining = None if args.timeout is None else args.timeout - (time.monotonic() - started)
        try:
            await worker.events.awaiter(handle, remaining)
        except EventTimeout as timeout:
            # Said with the timeout the user gave; the pending events come from the owner.
            told = EventTimeout(handle, args.timeout, timeout.pending, timeout.more)
            raise CommandError(str(told), EXIT_TIMEOUT) from None
        except EventPoison as poison:
            raise CommandError(f"poisoned: {poison.reason}", EXIT_POISONED) from None
        except OutcomeUnknown as unknown:  # owner lost, or restarted since: an error
            raise CommandError(f"outcome unknown: {unknown.reason}") from None
    return EXIT_OK


COMMANDS = (
    Command(
        "new-event",
        "have a long-lived worker create an event; prints its handle",
        """
        H=$(velo-am new-event --seed tcp://127.0.0.1:5555)
        H=$(velo-am new-event --on 0x2 --label "backup done" --discovery /run/velo)
        H=$(velo-am new-event --label "nightly export" --lease 60 --seed tcp://127.0.0.1:5555)
        """,
        _configure_new_event,
        _new_event,
    ),
    Command(
        "merge",
        "have a long-lived worker merge events (ready when all are); prints its handle",
        """
        M=$(velo-am merge "$H1" "$H2" --label "inputs ready" --seed tcp://127.0.0.1:5555)
        """,
        _configure_merge,
        _merge,
    ),
    Command(
        "trigger",
        "complete an event successfully (waits for its owner's verdict)",
        """
        velo-am trigger "$H" --seed tcp://127.0.0.1:5555
        """,
        _configure_handle,
        _complete,
    ),
    Command(
        "poison",
        "complete an event as failed, with a reason",
        """
        velo-am poison "$H" "backup failed: disk full" --seed tcp://127.0.0.1:5555
        """,
        _configure_poison,
        _complete,
    ),
    Command(
        "status",
        "print pending, ready, 'poisoned: REASON', or 'unknown: WHY' (a handle minted before "
        "its owner restarted), as the owner knows it",
        """
        velo-am status "$H" --seed tcp://127.0.0.1:5555
        """,
        _configure_handle,
        _status,
    ),
    Command(
        "wait",
        "wait for an event: exit 0 ready, 1 poisoned (reason on stderr), 2 timeout (what it "
        "still waits on on stderr), 3 error",
        """
        velo-am wait "$H" --timeout 600 --seed tcp://127.0.0.1:5555 && ./run-next-step
        """,
        _configure_wait,
        _wait,
    ),
    Command(
        "renew",
        "renew an event's lease (new-event --lease): exit 0 renewed, 1 the event already "
        "completed, 3 error (outcome unknown among them: its owner restarted since)",
        """
        while velo-am renew "$H" --seed tcp://127.0.0.1:5555; do sleep 20; done &
        velo-am renew "$H" --lease 600 --seed tcp://127.0.0.1:5555  # a long step ahead
        """,
        _configure_renew,
        _renew,
    ),
)
