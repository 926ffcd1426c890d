"""Running until the process is told to stop: SIGINT and SIGTERM, handled on the loop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

__all__ = ["run_until_signalled"]


async def run_until_signalled(closed: asyncio.Event, ready: Callable[[], object] | None) -> None:
    """Return on SIGINT or SIGTERM, or once ``closed`` is set. ``ready()`` is called once the
    signal handlers are in place; the previous handling is restored on return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if ready is not None:
            ready()
        waits = {asyncio.ensure_future(closed.wait()), asyncio.ensure_future(stop.wait())}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
