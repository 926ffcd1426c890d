"""Logging helpers: structured fields, and warnings rate-limited per category (a flood of bad
input must not become a flood of log lines)."""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitedLog", "fields"]


def fields(worker_id: int, peer_id: int = 0) -> dict[str, str]:
    """The structured fields of a record: ``worker`` and, when given, ``peer``."""
    extra = {"worker": f"{worker_id:#x}"}
    if peer_id:
        extra["peer"] = f"{peer_id:#x}"
    return extra


class RateLimitedLog:
    """At most one warning per category per second, saying how many were suppressed. Records
    carry the structured fields ``worker``, ``category`` (and ``peer`` when given)."""

    def __init__(self, logger: logging.Logger, worker_id: int) -> None:
        self._logger = logger
        self._worker_id = worker_id
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, category: str, message: str, *args: object, peer: int = 0) -> None:
        now = time.monotonic()
        if now - self._last.get(category, -1e9) < 1.0:
            self._suppressed[category] = self._suppressed.get(category, 0) + 1
            return
        self._last[category] = now
        suppressed = self._suppressed.pop(category, 0)
        suffix = f" ({suppressed} similar suppressed)" if suppressed else ""
        extra = {**fields(self._worker_id, peer), "category": category}
        self._logger.warning(message + suffix, *args, extra=extra)
