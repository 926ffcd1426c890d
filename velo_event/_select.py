"""Which build of the hot modules is in use: the compiled one (``velo_event._compiled``, built
by mypyc where a C compiler was found) unless :data:`PURE_VARIABLE` asks for the pure one or it
is missing. Both builds share the pure modules outside the hot set (errors, handles)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Final

from ._hot import DIGEST_NAME, sources_digest

__all__ = ["COMPILED", "PURE_VARIABLE", "awaiter", "core", "manager", "merge", "wake"]

logger = logging.getLogger("velo_event")

#: Set to a non-empty value other than ``0``, it makes ``import velo_event`` use the pure build.
PURE_VARIABLE: Final = "VELO_PURE"
STALE: Final = "the compiled build is older than its sources; rebuild it: pip install -e ."


def pure_requested() -> bool:
    return os.environ.get(PURE_VARIABLE, "") not in ("", "0")


if TYPE_CHECKING:  # both builds have one interface: the pure modules describe it
    from . import _awaiter as awaiter
    from . import _core as core
    from . import _manager as manager
    from . import _merge as merge
    from . import _wake as wake

    COMPILED: bool
else:
    try:
        if pure_requested():
            raise ImportError(f"{PURE_VARIABLE} is set")
        from ._compiled import _awaiter as awaiter
        from ._compiled import _core as core
        from ._compiled import _manager as manager
        from ._compiled import _merge as merge
        from ._compiled import _wake as wake

        if getattr(core, DIGEST_NAME, None) != sources_digest():
            raise ImportError(STALE)
    except Exception as error:  # a compiled build that cannot load (ImportError, mostly)
        from . import _awaiter as awaiter
        from . import _core as core
        from . import _manager as manager
        from . import _merge as merge
        from . import _wake as wake

        COMPILED = False
        log = logger.warning if str(error) == STALE else logger.debug
        log("velo_event: pure-Python build (%s)", error)
    else:
        COMPILED = True
        logger.debug("velo_event: compiled build (%s)", os.path.dirname(core.__file__))
