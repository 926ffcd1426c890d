"""The event loop of the loops velo runs itself: the ``velo-am`` command, the demo and
:class:`~velo_am.SyncWorker`'s loop thread. A library user's own loop is never touched.

``uvloop`` (``pip install 'velo[uvloop]'``) is used when it is importable: a worker's hop
(a remote wake-up, a call) costs less on it. ``$VELO_LOOP`` decides otherwise: ``asyncio``
keeps the standard loop, ``uvloop`` insists on uvloop (an error if it is not installed);
empty or unset means ``auto``. The choice itself is pure (:func:`choose_loop`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

__all__ = ["LOOP_VARIABLE", "choose_loop", "loop_factory", "run"]

#: The environment variable that chooses the loop.
LOOP_VARIABLE: Final = "VELO_LOOP"
_CHOICES: Final = ("auto", "asyncio", "uvloop")

T = TypeVar("T")


def choose_loop(setting: str | None, uvloop_installed: bool) -> str:
    """``"uvloop"`` or ``"asyncio"``, for ``$VELO_LOOP``'s value ``setting`` (``None``:
    unset). Raises ``ValueError`` for an unknown value, or for ``uvloop`` when it is not
    installed (a choice made on purpose is not silently dropped)."""
    value = (setting or "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"${LOOP_VARIABLE} must be one of {', '.join(_CHOICES)}, got {setting!r}")
    if value == "uvloop" and not uvloop_installed:
        raise ValueError(
            f"${LOOP_VARIABLE}=uvloop, but uvloop is not installed (pip install 'velo[uvloop]')"
        )
    if value == "auto":
        return "uvloop" if uvloop_installed else "asyncio"
    return value


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new loop, as ``$VELO_LOOP`` and the installed packages say (raises
    ``ValueError`` as :func:`choose_loop` does)."""
    installed = importlib.util.find_spec("uvloop") is not None
    if choose_loop(os.environ.get(LOOP_VARIABLE), installed) == "asyncio":
        return asyncio.new_event_loop
    import uvloop  # noqa: PLC0415 - optional: imported only when chosen

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coroutine)`` on the chosen loop."""
    try:
        factory = loop_factory()
    except ValueError:
        coroutine.close()  # never awaited: no warning about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)
