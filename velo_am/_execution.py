"""Handler execution: decides whether an inbound request runs, runs its handler and sends the
reply.

Requests are refused while the worker drains (runtime ``_`` handlers excepted) and answered
with an error for a handler that does not exist or a predecessor's request. Sync handlers of
one burst run together in one loop callback scheduled after the receive drain; async handlers
each get a task; ordered handlers run per (handler, sender) lane. Each run is timed into its
handler's latency histogram. Replies go out through the worker's
:class:`~velo_am._outbound.Outbound`; runs and failures are counted in its counters. Each
send (``reply`` false) is reported to the flow control's
:class:`~velo_am._receipts.ReceiveWindows` when it arrives and when it finishes (ran, failed, or
was refused), which is how its sender learns it may send more. Each request is charged to
its sender's budget (:class:`~velo_am._budget.ReceiveBudget`) from dispatch to that finish;
one that would overrun it is refused (``BUSY``).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import time
import traceback
from collections import deque
from collections.abc import Awaitable
from dataclasses import fields as dataclass_fields
from typing import TYPE_CHECKING, Any, Final

from . import _protocol as p
from ._codec import unpack
from ._handlers import (
    LATENCY_BUCKETS,
    CallContext,
    HandlerRegistry,
    HandlerSpec,
    HandlerTimer,
    OrderedLanes,
)
from ._log import RateLimitedLog, fields

if TYPE_CHECKING:
    from ._outbound import Addressee, Outbound
    from ._receipts import ReceiveWindows
    from .transport import LinkId

__all__ = ["HandlerExecution", "Serving"]

logger = logging.getLogger(__name__)

#: Requests admitted past the per-peer budget (charged all the same): event triggers, poisons
#: and lease renewals are small, quick and must not be lost.
_NEVER_REFUSED: Final = frozenset({"_ev.trigger", "_ev.poison", "_ev.renew"})

_new_context: Final = object.__new__
_set_sender, _set_message_id, _set_expects_reply = (
    getattr(CallContext, field.name).__set__ for field in dataclass_fields(CallContext)
)


class _BadRequest(Exception):
    """The request's payload could not be decoded (the caller was told)."""


class Serving(enum.Enum):
    """Which requests a worker serves: all, runtime handlers only (draining), none (closing)."""

    ALL = "all"
    RUNTIME = "runtime"
    NONE = "none"


_SERVING_ALL: Final = Serving.ALL  # a static of the compiled build, not a class lookup
_BOUNDS: Final = LATENCY_BUCKETS
_LAST_BOUND: Final = len(LATENCY_BUCKETS)


class _RunTimes:
    """The times of the sends of a row that ran, recorded into their handler's timer when the
    row is settled (or another handler's send runs): one call into the timer a row instead of
    one a send, which in the compiled build is most of what timing a send costs."""

    def __init__(self) -> None:
        self._timer: HandlerTimer | None = None
        self._runs = 0
        self._seconds = 0.0
        self._longest = 0.0
        self._buckets: list[int] = []

    def add(self, timer: HandlerTimer, seconds: float) -> bool:
        """A run of ``timer``'s handler took ``seconds``: whether the runs of another handler
        were recorded first (time the caller must not charge to the next run)."""
        flushed = False
        if timer is not self._timer:
            flushed = self.flush()
            self._timer = timer
        self._runs += 1
        self._seconds += seconds
        if seconds > self._longest:  # noqa: PLR1730 - max() is a builtin call per run
            self._longest = seconds
        index = 0  # bisect_left, from the bottom: a quick send's bucket is the first
        while index < _LAST_BOUND and _BOUNDS[index] < seconds:
            index += 1
        self._buckets.append(index)
        return flushed

    def flush(self) -> bool:
        """Record the runs not recorded yet into their timer: whether there were any."""
        timer, runs = self._timer, self._runs
        if timer is None or not runs:
            return False
        seconds, longest, buckets = self._seconds, self._longest, self._buckets
        self._runs, self._seconds, self._longest, self._buckets = 0, 0.0, 0.0, []
        timer.record_runs(runs, seconds, longest, buckets)
        return True


class HandlerExecution:
    """The handlers running for one worker (``tasks``: those with a task of their own)."""

    def __init__(
        self,
        registry: HandlerRegistry,
        outbound: Outbound,
        counters: dict[str, int],
        log: RateLimitedLog,
        receipts: ReceiveWindows,
    ) -> None:
        self._by_name = registry.by_name
        self._receipts = receipts
        self._budget = receipts.budget
        self._outbound = outbound
        self._counters = counters
        self._log = log
        #: Set by the worker as it starts and closes.
        self.serving = Serving.ALL
        self.tasks: set[asyncio.Task[None]] = set()
        self._jobs: deque[tuple[HandlerSpec, Addressee, p.Request, LinkId]] = deque()
        # Bound once: the compiled build calls a method looked up by name as Python does.
        self._queue_job = self._jobs.append
        self._lanes = OrderedLanes(self.spawn)
        self._times = _RunTimes()  # of the row of sends being run (one callback at a time)

    def dispatch(self, peer: Addressee, msg: p.Request, link: LinkId) -> None:
        """An inbound request from ``peer`` on ``link`` (its answer goes back there): run its
        handler, or refuse it."""
        if not msg.reply:
            self._receipts.received(peer, msg.msg_id)
        serving = self.serving
        # Runtime traffic (names starting with "_") still flows while draining.
        if serving is not _SERVING_ALL and not (
            serving is Serving.RUNTIME and msg.handler.startswith("_")
        ):
            self._counters["refused_draining"] += 1
            if msg.reply:
                self._outbound.reply_error(
                    peer, link, msg.msg_id, p.ErrorCode.DRAINING, "PeerDraining", "draining"
                )
            else:
                self._receipts.finished(peer)
            return
        try:  # a subscript: as cheap through the read-only view as on a dict (.get is not)
            spec: HandlerSpec | None = self._by_name[msg.handler]
        except KeyError:
            spec = None
        if spec is not None:
            always = msg.handler in _NEVER_REFUSED
            if not self._budget.admit(peer.worker_id, len(msg.payload), always=always):
                self._refuse_busy(peer, msg, link)
            elif spec.is_async or spec.ordered:
                self._submit(spec, peer, msg, link)
            else:  # a sync handler (nearly all of a burst): queued for the burst's one callback
                self._queue_job((spec, peer, msg, link))
                if len(self._jobs) == 1:
                    asyncio.get_running_loop().call_soon(self._run_sync_jobs)
        elif msg.reply:
            text = f"no handler named {msg.handler!r} on worker {self._outbound.worker_id:#x}"
            code = p.ErrorCode.HANDLER_NOT_FOUND
            self._outbound.reply_error(peer, link, msg.msg_id, code, "", text)
        else:
            self._log.warning("handler", "no handler named %r for a send", msg.handler)
            self._receipts.finished(peer)

    def _refuse_busy(self, peer: Addressee, msg: p.Request, link: LinkId) -> None:
        self._counters["refused_busy"] += 1
        held, limit = self._budget.held(peer.worker_id), self._budget.limit()
        text = (
            f"worker {peer.worker_id:#x}'s unfinished requests hold {held} bytes of worker "
            f"{self._outbound.worker_id:#x}'s per-peer budget ({limit} bytes)"
        )
        # A send is answered too (its sender counts it refused), and finishes at once.
        self._outbound.reply_error(peer, link, msg.msg_id, p.ErrorCode.BUSY, "PeerBusy", text)
        if not msg.reply:
            self._receipts.finished(peer)
            self._log.warning("busy", "refusing a send to %r: %s", msg.handler, text)

    def refuse_stale(self, peer: Addressee, msg: p.Request, link: LinkId) -> None:
        """A request meant for an earlier incarnation of this worker: answered in that
        predecessor's name (the incarnation the caller addressed), so the caller matches it to
        its call and fails it at once instead of at its timeout."""
        if msg.reply:
            me = self._outbound.worker_id
            self._outbound.reply_error(
                peer,
                link,
                msg.msg_id,
                p.ErrorCode.WRONG_INCARNATION,
                "PeerLost",
                f"worker {me:#x} restarted; the request was for its predecessor",
                as_incarnation=msg.dst_incarnation,
            )

    def _submit(self, spec: HandlerSpec, peer: Addressee, msg: p.Request, link: LinkId) -> None:
        """Run an ordered handler in its lane, an async one in a task of its own."""
        if spec.ordered:
            lane = (spec.name, peer.worker_id)
            self._lanes.submit(lane, lambda: self._run(spec, peer, msg, link))
        else:
            self.spawn(self._run(spec, peer, msg, link))

    def spawn(self, coroutine: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _run_sync_jobs(self) -> None:
        """Sync handlers of a burst run one after another in one loop callback, scheduled after
        the receive loop's drain: as far from the receive loop as a task each (a sync handler
        holds the loop while it runs either way), at a fraction of the cost. Sends in a row
        from one sender that ran are settled together (their budget, the count of requests
        handled, their credit), once per row: nothing but these handlers runs meanwhile, and
        a row ends where a credit falls due, so credits go out as if settled one by one.

        A settle that raises (a user transport may raise any error from a credit's send) has
        already released its budget and counted its sends: the error escapes to the loop's
        exception handler, which reports it, and the jobs left run in a callback of their own.
        Statistics (``requests_handled``, the handlers' timers, the budget held, the unfinished
        sends) lag by the row not settled yet while a handler runs: a call handler reading
        them (``_inspect``'s) may miss up to one row of sends that already ran.

        One clock read per send: a send's end is the next job's start (only the loop's own
        bookkeeping lies between); after anything else (a call's reply, a failure, a settle,
        which may send a credit, recording the previous handler's row of times) the next job
        reads the clock afresh."""
        jobs, next_job, clock = self._jobs, self._jobs.popleft, time.perf_counter
        sender: Addressee | None = None  # of the row of sends not settled yet
        sends = held = due = 0  # how many, the bytes of their payloads, where the row ends
        started = 0.0
        fresh = False  # whether ``started`` is the end of the send just run
        try:
            while jobs:
                spec, peer, msg, link = next_job()
                if peer is not sender and sends:
                    # Cleared before settling: a settle that raises (a transport may) leaves
                    # nothing for the finally to settle a second time.
                    row, row_held, sends, held = sends, held, 0, 0
                    self._settle(sender, row, row_held)
                    fresh = False
                if not fresh:
                    started = clock()
                fresh = False
                try:
                    payload = unpack(msg.payload)
                except Exception as error:
                    if sends:  # the row first: its credits as if settled one by one
                        row, row_held, sends, held = sends, held, 0, 0
                        self._settle(sender, row, row_held)
                    self._refuse_payload(peer, msg, link, error)
                    continue
                # The CallContext, as _context makes it, inline: one call fewer per request.
                context = _new_context(CallContext)
                _set_sender(context, peer.worker_id)
                _set_message_id(context, msg.msg_id)
                _set_expects_reply(context, msg.reply)
                try:
                    result = spec.fn(payload, context)
                except BaseException as error:
                    ended = None
                    if sends:  # timed first: settling the row (its times, a credit) is not its
                        ended = clock()
                        row, row_held, sends, held = sends, held, 0, 0
                        self._settle(sender, row, row_held)
                    self._handler_failed(spec, peer, msg, link, error, started, ended)
                    if isinstance(error, (Exception, asyncio.CancelledError)):
                        continue
                    raise  # KeyboardInterrupt, SystemExit: settled all the same, then let go
                # (None first: what nearly every sync handler returns, at no cost to check)
                if result is not None and inspect.isawaitable(result):  # a coroutine, say
                    self.spawn(self._finish(spec, peer, msg, link, result, started))
                elif msg.reply:
                    self._reply(spec, peer, msg, link, result, started)
                else:  # a send that ran: timed now, settled with its row
                    ended = clock()
                    recorded = self._times.add(spec.timer, ended - started)
                    if not sends:
                        sender, due = peer, self._receipts.due(peer)
                    sends += 1
                    held += len(msg.payload)
                    if sends >= due:
                        row, row_held, sends, held = sends, held, 0, 0
                        self._settle(sender, row, row_held)
                    elif not recorded:
                        started, fresh = ended, True
        finally:
            try:
                if sends:
                    self._settle(sender, sends, held)
            finally:  # the rest still run, whatever escaped (a BaseException, a failed settle)
                if jobs:
                    asyncio.get_running_loop().call_soon(self._run_sync_jobs)

    def _settle(self, sender: Addressee | None, sends: int, held: int) -> None:
        """``sends`` sends from ``sender`` (of ``held`` payload bytes in all) ran: what
        :meth:`_reply` does for each, at once."""
        assert sender is not None
        self._times.flush()
        self._budget.release(sender.worker_id, held, sends)
        self._counters["requests_handled"] += sends
        self._receipts.finished(sender, sends)

    async def _run(self, spec: HandlerSpec, peer: Addressee, msg: p.Request, link: LinkId) -> None:
        started = time.perf_counter()
        try:
            result = spec.fn(self._payload(peer, msg, link), self._context(peer, msg))
        except _BadRequest:
            return
        except Exception as error:
            self._handler_failed(spec, peer, msg, link, error, started)
            return
        await self._finish(spec, peer, msg, link, result, started)

    async def _finish(
        self,
        spec: HandlerSpec,
        peer: Addressee,
        msg: p.Request,
        link: LinkId,
        result: Any,
        started: float,
    ) -> None:
        try:
            if inspect.isawaitable(result):
                result = await result
        except Exception as error:
            self._handler_failed(spec, peer, msg, link, error, started)
            return
        except asyncio.CancelledError as error:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the worker is cancelling this handler (close): not the handler's doing
            self._handler_failed(spec, peer, msg, link, error, started)
            return
        self._reply(spec, peer, msg, link, result, started)

    @staticmethod
    def _context(peer: Addressee, msg: p.Request) -> CallContext:
        # CallContext(...) without the frozen dataclass __init__ (object.__setattr__ per
        # field): one is made for every request, and the values are the checked message's.
        context = _new_context(CallContext)
        _set_sender(context, peer.worker_id)
        _set_message_id(context, msg.msg_id)
        _set_expects_reply(context, msg.reply)
        return context

    def _payload(self, peer: Addressee, msg: p.Request, link: LinkId) -> Any:
        try:
            return unpack(msg.payload)
        except Exception as error:
            self._refuse_payload(peer, msg, link, error)
            raise _BadRequest from error

    def _refuse_payload(
        self, peer: Addressee, msg: p.Request, link: LinkId, error: Exception
    ) -> None:
        """The request's payload does not decode: it is not run, and its sender is told."""
        self._budget.release(peer.worker_id, len(msg.payload))
        if msg.reply:
            code = p.ErrorCode.BAD_REQUEST
            error_type = type(error).__name__
            self._outbound.reply_error(peer, link, msg.msg_id, code, error_type, str(error))
        else:
            what = f"a send to {msg.handler!r} from worker {peer.worker_id:#x}"
            self._log.warning(
                "payload", "dropping %s: its payload does not decode: %s", what, error
            )
            self._receipts.finished(peer)

    def _reply(
        self,
        spec: HandlerSpec,
        peer: Addressee,
        msg: p.Request,
        link: LinkId,
        result: Any,
        started: float,
    ) -> None:
        outbound = self._outbound
        body = b""
        if msg.reply:
            try:
                body = outbound.pack_bounded(result, "result")
            except (TypeError, ValueError) as error:
                self._handler_failed(spec, peer, msg, link, error, started)
                return
        self._budget.release(peer.worker_id, len(msg.payload))
        self._counters["requests_handled"] += 1
        spec.timer.record(time.perf_counter() - started, False)
        if msg.reply:
            outbound.reply(peer, link, msg.msg_id, body)
        else:
            self._receipts.finished(peer)

    def _handler_failed(
        self,
        spec: HandlerSpec,
        peer: Addressee,
        msg: p.Request,
        link: LinkId,
        error: BaseException,
        started: float,
        ended: float | None = None,
    ) -> None:
        """The handler failed (``ended``: when, if not now)."""
        self._budget.release(peer.worker_id, len(msg.payload))
        self._counters["requests_failed"] += 1
        spec.timer.record((time.perf_counter() if ended is None else ended) - started, True)
        if not msg.reply:
            self._receipts.finished(peer)
            logger.error(
                "handler %r failed on a send from %#x",
                spec.name,
                peer.worker_id,
                exc_info=error,
                extra={**fields(self._outbound.worker_id, peer.worker_id), "handler": spec.name},
            )
            return
        self._outbound.reply_error(
            peer,
            link,
            msg.msg_id,
            p.ErrorCode.HANDLER_ERROR,
            type(error).__name__,
            str(error),
            "".join(traceback.format_exception(error)),
        )
