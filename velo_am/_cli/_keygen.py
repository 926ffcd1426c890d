"""``velo-am keygen``: a CURVE certificate pair, in ``zmq.auth``'s format."""

from __future__ import annotations

import argparse
from pathlib import Path

import zmq.auth

from ._shared import EXIT_OK, Command, CommandError

__all__ = ["COMMANDS"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="where to write (made if missing)")
    parser.add_argument(
        "--name",
        default="worker",
        help="the certificates' name: NAME.key (public) and NAME.key_secret (default: worker)",
    )


def _run(args: argparse.Namespace) -> int:
    name: str = args.name
    if not name or name != Path(name).name or name.startswith("."):
        raise CommandError(f"--name must be a plain file name, got {name!r}")
    directory = Path(args.directory)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise CommandError(f"{path} exists: not overwritten (choose another --name or DIR)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = zmq.auth.create_certificates(directory, name)
    except OSError as error:
        raise CommandError(f"cannot write the certificates in {directory}: {error}") from None
    secret.chmod(0o600)
    for file in written:
        print(file)
    return EXIT_OK


COMMANDS = (
    Command(
        "keygen",
        "write a CURVE certificate pair (NAME.key, NAME.key_secret) and print their paths",
        """
        velo-am keygen certs --name mesh      # one pair shared mesh-wide:
        mkdir allowed && cp certs/mesh.key allowed/
        velo-am worker --curve-key certs/mesh.key_secret --curve-allow allowed
        velo-am keygen certs --name node1     # or a pair per worker, every public one allowed
        """,
        _configure,
        _run,
    ),
)
