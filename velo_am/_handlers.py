"""Handler registry: names, the calling convention, and per-sender ordered lanes.

A handler is ``fn(payload, ctx)``, sync or async: ``payload`` is the caller's decoded msgpack
value and ``ctx`` a :class:`CallContext`. Its return value is msgpack-encoded back to a caller
that used ``call``.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "LATENCY_BUCKETS",
    "CallContext",
    "Handler",
    "HandlerRegistry",
    "HandlerSpec",
    "HandlerStats",
    "HandlerTimer",
    "OrderedLanes",
]

logger = logging.getLogger(__name__)

Handler = Callable[[Any, "CallContext"], Any]


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who sent the message being handled: ``sender`` (worker id), ``message_id``, and whether
    the sender waits for a result (``expects_reply``)."""

    sender: int
    message_id: int
    expects_reply: bool


#: Upper bounds (seconds) of the handler latency histogram buckets; one more bucket counts
#: everything slower. Log-spaced from 10 µs to 10 s, the span of in-memory to disk-bound work.
LATENCY_BUCKETS: Final = (
    *(scale * step for scale in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1) for step in (1.0, 2.5, 5.0)),
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True, slots=True)
class HandlerStats:
    """One handler's record on this worker: runs, failures, and a latency histogram.

    ``bucket_counts[i]`` counts runs that took at most ``LATENCY_BUCKETS[i]`` seconds (and more
    than the bound before); the last entry counts the slower ones. Latency is measured from
    the start of the handler to its reply (or its end, for a send)."""

    name: str
    calls: int
    errors: int
    total_seconds: float
    max_seconds: float
    bucket_counts: tuple[int, ...]

    @property
    def mean_seconds(self) -> float:
        return self.total_seconds / self.calls if self.calls else 0.0

    def quantile(self, q: float) -> float:
        """An estimate of the ``q`` quantile (0 < q <= 1): the upper bound of the bucket it
        falls in (``max_seconds`` for the last), never above ``max_seconds``."""
        if not 0 < q <= 1:
            raise ValueError("q must be in (0, 1]")
        if not self.calls:
            return 0.0
        rank = q * self.calls
        seen = 0
        for bound, count in zip(LATENCY_BUCKETS, self.bucket_counts, strict=False):
            seen += count
            if seen >= rank:
                return min(bound, self.max_seconds)
        return self.max_seconds


class HandlerTimer:
    """The mutable counters behind :class:`HandlerStats` (updated on the worker's loop)."""

    __slots__ = ("buckets", "calls", "errors", "max", "total")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.total = 0.0
        self.max = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)

    def record(self, seconds: float, failed: bool) -> None:
        self.calls += 1
        if failed:
            self.errors += 1
        self.total += seconds
        if seconds > self.max:  # noqa: PLR1730 - max() is a builtin call per run
            self.max = seconds
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def record_runs(self, runs: int, seconds: float, longest: float, buckets: list[int]) -> None:
        """``runs`` runs that did not fail, of ``seconds`` in all, the longest ``longest``, in
        the buckets ``buckets`` lists (one index a run, as :meth:`record` finds it)."""
        self.calls += runs
        self.total += seconds
        if longest > self.max:  # noqa: PLR1730
            self.max = longest
        counts = self.buckets
        for index in buckets:
            counts[index] += 1

    def snapshot(self, name: str) -> HandlerStats:
        return HandlerStats(
            name, self.calls, self.errors, self.total, self.max, tuple(self.buckets)
        )


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    name: str
    fn: Handler
    ordered: bool
    is_async: bool
    internal: bool = False
    timer: HandlerTimer = field(default_factory=HandlerTimer, compare=False)


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, HandlerSpec] = {}
        #: The handlers by name, read-only: changed only through ``register``/``unregister``
        #: (the dispatch of every request looks its handler up in it directly).
        self.by_name: Mapping[str, HandlerSpec] = MappingProxyType(self._handlers)

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
        self._handlers[name] = HandlerSpec(name, fn, ordered, is_async, internal)

    def unregister(self, name: str) -> None:
        self._handlers.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def stats(self, *, internal: bool = True) -> dict[str, HandlerStats]:
        """Every handler's record (runtime ``_`` handlers too unless ``internal=False``)."""
        return {
            name: spec.timer.snapshot(name)
            for name, spec in sorted(self._handlers.items())
            if internal or not spec.internal
        }


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
