"""Handler execution: runs the handlers of a worker's inbound requests and sends their replies.

Sync handlers of one burst run together in one loop callback scheduled after the receive
drain; async handlers each get a task; ordered handlers run per (handler, sender) lane. Each
run is timed into its handler's latency histogram.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import traceback
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from . import _protocol as p
from ._codec import unpack
from ._errors import PeerUnreachable
from ._handlers import CallContext, HandlerSpec, OrderedLanes

if TYPE_CHECKING:
    from ._peers import Peer
    from ._worker import Worker

__all__ = ["HandlerExecution"]

logger = logging.getLogger(__name__)


class _BadRequest(Exception):
    """The request's payload could not be decoded (the caller was told)."""


class HandlerExecution:
    """The handlers running for one worker (``tasks``: those with a task of their own)."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self.tasks: set[asyncio.Task[None]] = set()
        self._jobs: deque[tuple[HandlerSpec, Peer, p.Request]] = deque()
        self._lanes = OrderedLanes(self.spawn)

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._worker._loop
        assert loop is not None
        return loop

    def submit(self, spec: HandlerSpec, peer: Peer, msg: p.Request) -> None:
        """Run ``spec`` for ``msg``, the way its kind runs."""
        if spec.ordered:
            self._lanes.submit((spec.name, peer.worker_id), lambda: self._run(spec, peer, msg))
        elif spec.is_async:
            self.spawn(self._run(spec, peer, msg))
        else:
            self._jobs.append((spec, peer, msg))
            if len(self._jobs) == 1:
                self._loop().call_soon(self._run_sync_jobs)

    def spawn(self, coroutine: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _run_sync_jobs(self) -> None:
        """Sync handlers of a burst run one after another in one loop callback, scheduled after
        the receive loop's drain: as far from the receive loop as a task each (a sync handler
        holds the loop while it runs either way), at a fraction of the cost."""
        jobs = self._jobs
        try:
            while jobs:
                spec, peer, msg = jobs.popleft()
                started = time.perf_counter()
                try:
                    result = spec.fn(self._payload(peer, msg), self._context(peer, msg))
                except _BadRequest:
                    continue
                except (Exception, asyncio.CancelledError) as error:
                    self._handler_failed(spec, peer, msg, error, started)
                    continue
                if inspect.isawaitable(result):  # a sync function returning an awaitable
                    self.spawn(self._finish(spec, peer, msg, result, started))
                else:
                    self._reply(spec, peer, msg, result, started)
        finally:
            if jobs:  # left by an escaping BaseException: the rest still run
                self._loop().call_soon(self._run_sync_jobs)

    async def _run(self, spec: HandlerSpec, peer: Peer, msg: p.Request) -> None:
        started = time.perf_counter()
        try:
            result = spec.fn(self._payload(peer, msg), self._context(peer, msg))
        except _BadRequest:
            return
        except Exception as error:
            self._handler_failed(spec, peer, msg, error, started)
            return
        await self._finish(spec, peer, msg, result, started)

    async def _finish(
        self, spec: HandlerSpec, peer: Peer, msg: p.Request, result: Any, started: float
    ) -> None:
        try:
            if inspect.isawaitable(result):
                result = await result
        except Exception as error:
            self._handler_failed(spec, peer, msg, error, started)
            return
        except asyncio.CancelledError as error:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the worker is cancelling this handler (close): not the handler's doing
            self._handler_failed(spec, peer, msg, error, started)
            return
        self._reply(spec, peer, msg, result, started)

    @staticmethod
    def _context(peer: Peer, msg: p.Request) -> CallContext:
        return CallContext(peer.worker_id, msg.msg_id, msg.reply)

    def _payload(self, peer: Peer, msg: p.Request) -> Any:
        try:
            return unpack(msg.payload)
        except Exception as error:
            if msg.reply:
                self._worker._send_error(
                    peer, msg.msg_id, p.ErrorCode.BAD_REQUEST, type(error).__name__, str(error)
                )
            raise _BadRequest from error

    def _reply(
        self, spec: HandlerSpec, peer: Peer, msg: p.Request, result: Any, started: float
    ) -> None:
        worker = self._worker
        body = b""
        if msg.reply:
            try:
                body = worker._pack_bounded(result, "result")
            except (TypeError, ValueError) as error:
                self._handler_failed(spec, peer, msg, error, started)
                return
        worker.counters["requests_handled"] += 1
        spec.timer.record(time.perf_counter() - started, False)
        if not msg.reply:
            return
        frames = p.encode_response(
            worker.worker_id, worker.incarnation, peer.incarnation, msg.msg_id, body
        )
        try:
            worker._send_frames(peer, frames)
        except PeerUnreachable as error:
            worker._log.warning(
                "send",
                "dropping the response to %#x: %s",
                peer.worker_id,
                error,
                peer=peer.worker_id,
            )

    def _handler_failed(
        self,
        spec: HandlerSpec,
        peer: Peer,
        msg: p.Request,
        error: BaseException,
        started: float,
    ) -> None:
        self._worker.counters["requests_failed"] += 1
        spec.timer.record(time.perf_counter() - started, True)
        if not msg.reply:
            logger.error(
                "handler %r failed on a send from %#x",
                spec.name,
                peer.worker_id,
                exc_info=error,
                extra={**self._worker._peer_extra(peer.worker_id), "handler": spec.name},
            )
            return
        self._worker._send_error(
            peer,
            msg.msg_id,
            p.ErrorCode.HANDLER_ERROR,
            type(error).__name__,
            str(error),
            "".join(traceback.format_exception(error)),
        )
