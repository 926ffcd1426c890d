"""velo_am's hot set: the modules of the wire's per-message path the compiled build covers
(decode and encode, admission, received sends' credits, handler execution, the events
layer's subscriptions, the ZeroMQ transport's receive loop), and the digest of their sources
that a compiled build records, so an import can tell a build older than the sources beside it
and not use it. Imports nothing of the package: setup.py loads it by path."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

__all__ = ["DEPENDENCIES", "DIGEST_NAME", "HOT_MODULES", "sources_digest"]

#: In the order they import each other.
HOT_MODULES: Final = ("_protocol", "_budget", "_receipts", "_execution", "_remote", "_drain")
#: The package's other modules the hot set imports at run time: mypyc copies their constants
#: (``Final`` names) into the compiled code, so a build is as old as they are too.
DEPENDENCIES: Final = (
    "_codec",
    "_errors",
    "_handlers",
    "_header_limits",
    "_log",
    "_messages",
    "_messenger",
)
#: The compiled ``_protocol``'s attribute that holds the digest of the sources it was built from.
DIGEST_NAME: Final = "SOURCE_DIGEST"


def sources_digest(package: Path = Path(__file__).parent) -> str:
    digest = hashlib.sha256()
    for module in (*HOT_MODULES, *DEPENDENCIES):
        digest.update((package / f"{module}.py").read_bytes())
    return digest.hexdigest()
