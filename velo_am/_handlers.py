"""Handler registry: names, the calling convention, and per-sender ordered lanes.

A handler is ``fn(payload, ctx)``, sync or async: ``payload`` is the caller's decoded msgpack
value and ``ctx`` a :class:`CallContext`. Its return value is msgpack-encoded back to a caller
that used ``call``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CallContext", "Handler", "HandlerRegistry", "HandlerSpec", "OrderedLanes"]

logger = logging.getLogger(__name__)

Handler = Callable[[Any, "CallContext"], Any]


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who sent the message being handled: ``sender`` (worker id), ``message_id``, and whether
    the sender waits for a result (``expects_reply``)."""

    sender: int
    message_id: int
    expects_reply: bool


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    name: str
    fn: Handler
    ordered: bool
    is_async: bool


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, HandlerSpec] = {}

    def register(
        self, name: str, fn: Handler, *, ordered: bool, replace: bool, internal: bool = False
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a handler name is a non-empty str")
        if len(name.encode()) > 255:
            raise ValueError("a handler name is at most 255 UTF-8 bytes")
        if name.startswith("_") and not internal:
            raise ValueError(
                f"handler names starting with '_' are reserved for the runtime: {name}"
            )
        if not callable(fn):
            raise TypeError(f"handler {name!r} is not callable")
        if name in self._handlers and not replace:
            raise ValueError(f"a handler named {name!r} is already registered (use replace=True)")
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
        )
        self._handlers[name] = HandlerSpec(name, fn, ordered, is_async)

    def unregister(self, name: str) -> None:
        self._handlers.pop(name, None)

    def get(self, name: str) -> HandlerSpec | None:
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)


class OrderedLanes:
    """Runs each (handler, sender) lane's jobs one at a time, in arrival order; a lane's task
    exists only while it has work."""

    def __init__(self, spawn: Callable[[Awaitable[None]], asyncio.Task[None]]) -> None:
        self._spawn = spawn
        self._lanes: dict[tuple[str, int], deque[Callable[[], Awaitable[None]]]] = {}

    def submit(self, lane: tuple[str, int], job: Callable[[], Awaitable[None]]) -> None:
        queue = self._lanes.get(lane)
        if queue is not None:
            queue.append(job)
            return
        self._lanes[lane] = deque((job,))
        self._spawn(self._run(lane))

    async def _run(self, lane: tuple[str, int]) -> None:
        queue = self._lanes[lane]
        try:
            while queue:
                try:
                    await queue[0]()
                except Exception:  # jobs report their own failures; never stall the lane
                    logger.exception("ordered handler job failed")
                queue.popleft()
        finally:
            del self._lanes[lane]
