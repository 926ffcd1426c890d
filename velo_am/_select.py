"""Which build of velo_am's hot set is in use: the compiled one (``velo_am._compiled``, built
by mypyc where a C compiler was found) unless ``VELO_PURE`` asks for the pure one (the same
variable as velo_event's: one switch for both packages) or it is missing or older than its
sources; ``protocol``, the chosen build's wire codec (``_layers`` picks the rest of the set
but the ZeroMQ transport's receive loop, ``_drain``, which ``transport/_zmq.py`` picks itself).
Both builds share the pure modules outside the hot set (messages, errors, handlers), so their
messages and exceptions are the same objects whichever build is in use (the hot set's own
classes, such as ``Serving``, are the chosen build's)."""

from __future__ import annotations

import importlib
import logging
import os
from typing import TYPE_CHECKING, Final

from ._hot import DIGEST_NAME, HOT_MODULES, sources_digest

__all__ = ["COMPILED", "protocol"]

logger = logging.getLogger("velo_am")

#: Set to a non-empty value other than ``0``, it makes ``import velo_am`` use the pure build.
PURE_VARIABLE: Final = "VELO_PURE"
STALE: Final = "the compiled build is older than its sources; rebuild it: pip install -e ."

if TYPE_CHECKING:  # both builds have one interface: the pure modules describe it
    from . import _protocol as protocol

    COMPILED: bool
else:
    try:
        if os.environ.get(PURE_VARIABLE, "") not in ("", "0"):
            raise ImportError(f"{PURE_VARIABLE} is set")
        from ._compiled import _protocol as protocol

        if getattr(protocol, DIGEST_NAME, None) != sources_digest():
            raise ImportError(STALE)
        for module in HOT_MODULES:  # the whole set loads (``_layers`` takes it), or none is used
            importlib.import_module(f"{__package__}._compiled.{module}")
    except Exception as error:  # a compiled build that cannot load (ImportError, mostly)
        from . import _protocol as protocol

        COMPILED = False
        log = logger.warning if str(error) == STALE else logger.debug
        log("velo_am: pure-Python build (%s)", error)
    else:
        COMPILED = True
        logger.debug("velo_am: compiled build (%s)", os.path.dirname(protocol.__file__))
