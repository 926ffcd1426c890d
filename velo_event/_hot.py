"""The hot set: the modules the compiled build covers, and the digest of their sources that a
compiled build records, so an import can tell a build older than the sources beside it (an
editable install whose code changed since) and not use it; and ``mypyc_attr``, the hot set's
class options for mypyc (a no-op without mypy_extensions installed). Imports nothing of the
package: setup.py loads it by path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

__all__ = ["DEPENDENCIES", "DIGEST_NAME", "HOT_MODULES", "mypyc_attr", "sources_digest"]

_T = TypeVar("_T")

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # the runtime needs none: mypyc reads the decorator when it compiles

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Callable[[_T], _T]:  # type: ignore[misc, unused-ignore]
        return lambda cls: cls


#: In the order they import each other.
HOT_MODULES: Final = ("_wake", "_mutex", "_slot", "_core", "_merge", "_awaiter", "_manager")
#: The package's other modules the hot set imports at run time: mypyc copies their constants
#: (``Final`` names) into the compiled code, so a build is as old as they are too.
DEPENDENCIES: Final = ("_errors", "_handle", "_hot", "_pending")
#: The compiled ``_core``'s attribute that holds the digest of the sources it was built from.
DIGEST_NAME: Final = "SOURCE_DIGEST"


def sources_digest(package: Path = Path(__file__).parent) -> str:
    digest = hashlib.sha256()
    for module in (*HOT_MODULES, *DEPENDENCIES):
        digest.update((package / f"{module}.py").read_bytes())
    return digest.hexdigest()
