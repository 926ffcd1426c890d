"""Blocking calls of discovery backends (file system, resolver), run off the event loop.

Each call runs in a daemon thread of its own while the loop awaits its result. Not in the
loop's default executor: a call stuck in a hung file system (a hard NFS mount) or resolver
would hold one of its few threads for good, and the interpreter joins those at exit; a daemon
thread holds neither. At most ``limit`` calls of one backend are in flight: one more while
they are stuck fails at once with ``OSError`` rather than piling up threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["BlockingCalls"]

T = TypeVar("T")


class BlockingCalls:
    """Runs the blocking calls of one backend (``what`` names it in errors)."""

    def __init__(self, what: str, *, limit: int = 4) -> None:
        self._what = what
        self._limit = limit
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Calls started and not yet returned (stuck ones included)."""
        with self._lock:
            return self._in_flight

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a thread; its result or exception. Raises ``OSError`` if ``limit``
        earlier calls are still running, or if no thread can be started (interpreter exit)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._in_flight >= self._limit:
                raise OSError(
                    f"{self._what}: {self._in_flight} earlier calls have not returned yet"
                )
            self._in_flight += 1

        def deliver(settle: Callable[[Any], None], value: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(_unless_done, future, settle, value)

        def work() -> None:
            try:
                result = fn()
            except Exception as error:
                deliver(future.set_exception, error)
            else:
                deliver(future.set_result, result)
            finally:
                self._release()

        try:
            threading.Thread(target=work, name="velo-discovery", daemon=True).start()
        except RuntimeError as error:  # threads can no longer start (interpreter exit)
            self._release()
            raise OSError(f"{self._what}: cannot start a thread: {error}") from None
        return await future

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1


def _unless_done(future: asyncio.Future[Any], settle: Callable[[Any], None], value: object) -> None:
    if not future.done():  # the waiter may have given up (a timeout, a cancel)
        settle(value)
