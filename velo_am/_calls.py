"""The table of calls in flight: message ids, timers, and answers turned into results or
exceptions.

A call is registered when its request goes out and ends with whichever comes first: the
peer's ``Response`` (its unpacked result), its ``ErrorResponse`` (the exception its error code
stands for), the call's timeout (:class:`CallTimeout`), the peer's loss, or this worker's
close. Runs on the worker's loop.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from . import _protocol as p
from ._codec import unpack
from ._errors import (
    AMError,
    CallTimeout,
    HandlerNotFound,
    PeerBusy,
    PeerDraining,
    PeerLost,
    RemoteError,
)

__all__ = ["CallTable"]


class _Expired(Exception):
    """Set on a call's future by its timer; :meth:`CallTable.wait` turns it into CallTimeout."""


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_Expired())


def error_for(error: p.ErrorResponse, peer: str) -> AMError:
    """The exception an ``ErrorResponse`` from ``peer`` (its description) raises at the caller."""
    code = error.code
    if code == p.ErrorCode.HANDLER_NOT_FOUND:
        return HandlerNotFound(error.message)
    if code == p.ErrorCode.DRAINING:
        return PeerDraining(f"{peer} is shutting down")
    if code == p.ErrorCode.BUSY:
        return PeerBusy(f"{peer} refused the call: {error.message}")
    if code == p.ErrorCode.WRONG_INCARNATION:
        return PeerLost(f"{peer} restarted: {error.message}")
    return RemoteError(error.error_type, error.message, error.traceback)


class CallTable:
    """Calls this worker made that await an answer, by message id."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        #: A fresh message id (also for requests that expect no answer): the counter's own
        #: method, one call per send fewer than a method around it.
        self.next_id: Callable[[], int] = self._ids.__next__
        # msg_id -> (future, peer id)
        self._calls: dict[int, tuple[asyncio.Future[Any], int]] = {}
        self._by_peer: dict[int, set[int]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def peers(self) -> set[int]:
        """The workers this one has calls in flight to."""
        return set(self._by_peer)

    def open(
        self, loop: asyncio.AbstractEventLoop, peer_id: int
    ) -> tuple[int, asyncio.Future[Any]]:
        """Register a call to ``peer_id``: its message id, and the future its answer sets."""
        msg_id = next(self._ids)
        future: asyncio.Future[Any] = loop.create_future()
        self._calls[msg_id] = (future, peer_id)
        calls = self._by_peer.get(peer_id)
        if calls is None:
            self._by_peer[peer_id] = {msg_id}
        else:
            calls.add(msg_id)
        return msg_id, future

    async def wait(
        self,
        loop: asyncio.AbstractEventLoop,
        msg_id: int,
        future: asyncio.Future[Any],
        timeout: float,
        what: str,
    ) -> Any:
        """The call's result; :class:`CallTimeout` (naming ``what``) after ``timeout``
        seconds. The call leaves the table however it ends."""
        # A plain timer, cheaper than asyncio.timeout() on this path.
        timer = loop.call_later(timeout, _expire, future)
        try:
            return await future
        except _Expired:
            raise CallTimeout(f"no answer from {what} within {timeout} s") from None
        finally:
            timer.cancel()
            self.close(msg_id)

    def close(self, msg_id: int) -> None:
        """Forget a call (ended, or its request could not be sent)."""
        entry = self._calls.pop(msg_id, None)
        if entry is not None:
            calls = self._by_peer.get(entry[1])
            if calls is not None:
                calls.discard(msg_id)
                if not calls:
                    del self._by_peer[entry[1]]

    def _pending(self, peer_id: int, msg_id: int) -> asyncio.Future[Any] | None:
        entry = self._calls.get(msg_id)
        if entry is None or entry[1] != peer_id or entry[0].done():
            return None
        return entry[0]

    def on_response(self, peer_id: int, msg_id: int, payload: bytes) -> bool:
        """A ``Response``: False if no call of ``peer_id`` awaits it (late, or forged)."""
        future = self._pending(peer_id, msg_id)
        if future is None:
            return False
        try:
            future.set_result(unpack(payload))
        except Exception as error:
            future.set_exception(RemoteError("BadResponse", str(error)))
        return True

    def on_error(self, peer_id: int, error: p.ErrorResponse, peer: str) -> bool:
        """An ``ErrorResponse`` from ``peer_id`` (described as ``peer``); False if late."""
        future = self._pending(peer_id, error.msg_id)
        if future is None:
            return False
        future.set_exception(error_for(error, peer))
        return True

    def fail_peer(self, peer_id: int, error: AMError) -> None:
        """The peer is gone: its calls fail with ``error`` (a fresh copy each)."""
        for msg_id in list(self._by_peer.get(peer_id, ())):
            future = self._calls[msg_id][0]
            if not future.done():
                future.set_exception(type(error)(*error.args))

    def fail_all(self, error: AMError) -> None:
        """This worker is closing: every call fails with ``error``."""
        for future, _ in list(self._calls.values()):
            if not future.done():
                future.set_exception(type(error)(*error.args))
