"""The asyncio adapter: awaiting a handle, and the thread-safe wake-up of a waiting future."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Generator, Hashable
from threading import get_ident
from typing import Any, Final, cast

from ._errors import EventPoison, OutcomeUnknown
from ._handle import EventHandle
from ._wake import PENDING, Outcome, Unanswered, Wake, WakeCallback

__all__ = ["READY_AWAITER", "EventAwaiter", "running_loop", "wake_future"]

# An exhausted iterator: ``await`` of an already-complete event returns through it at once,
# creating no Future and scheduling no callback.
_DONE: Generator[Any, None, None] = cast(Generator[Any, None, None], iter(()))


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running on this thread, or ``None`` on a plain thread."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _resolve(future: asyncio.Future[object], reason: object) -> None:
    if not future.done():  # a cancelled wait stays cancelled
        future.set_result(reason)


def wake_future(future: Hashable, reason: Wake) -> None:
    """Wake callback for an asyncio future, safe from any thread: a trigger on the future's
    own loop resolves it directly, one from another thread goes through its loop."""
    fut = cast("asyncio.Future[object]", future)
    loop = fut.get_loop()
    try:  # inline, not running_loop(): this is the hot path of every wake-up
        here = asyncio.get_running_loop() is loop
    except RuntimeError:
        here = False
    if here:
        _resolve(fut, reason)
        return
    with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to wake
        loop.call_soon_threadsafe(_resolve, fut, reason)


class _LoopWaker:
    """The wake callback of one await's future, knowing the loop and the thread the wait began
    on: a wake-up on that thread resolves the future directly (the loop is running there, or
    stopped or closed: its own thread may schedule on it either way), one from another thread
    goes through the loop. Unlike :func:`wake_future` it never asks
    ``asyncio.get_running_loop()``, which costs a ``getpid()`` system call per wake-up. (Only
    a wait outliving its thread, its loop run on by another thread since, and a new thread
    reusing the old one's id would see its wake-up wait for that loop's next iteration.)"""

    __slots__ = ("loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: int) -> None:
        self.loop = loop
        self.thread = thread

    def __call__(self, future: Hashable, reason: Wake) -> None:
        fut = cast("asyncio.Future[object]", future)
        if get_ident() == self.thread:
            # contextlib.suppress would cost more than the rest of the wake-up; and no done()
            # check first: a done future refuses at once.
            try:  # noqa: SIM105
                fut.set_result(reason)
            except (asyncio.InvalidStateError, RuntimeError):  # a cancelled wait stays
                pass  # cancelled; a closed loop has nobody left to wake
            return
        with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to wake
            self.loop.call_soon_threadsafe(_resolve, fut, reason)


AddWaiter = Callable[[EventHandle, Hashable, WakeCallback], Outcome]
RemoveWaiter = Callable[[EventHandle, Hashable], None]
#: Called once an await's timeout ran out and its waiter is gone, with the handle and the
#: timeout: returns the outcome if the generation completed meanwhile, else raises the timeout.
Expired = Callable[[EventHandle, float], Awaitable[Outcome]]
# What a waiting future is resolved with when its timeout runs out (never a wake-up value).
_EXPIRED: Final = object()


# The states of a `_Wait`.
_NEW: Final = 0  # not awaited yet
_WAITING: Final = 1  # its waiter registered, the task waiting on it
_WOKEN: Final = 2  # woken: `outcome` holds what it was woken with
_CANCELLED: Final = 3  # its task was cancelled (or its coroutine thrown into or closed)


class _Wait:
    """One await of a pending generation without a timeout, as the awaiting asyncio task sees
    it: a Future-like object (``asyncio.isfuture``, asyncio's documented protocol: the task
    finds ``_asyncio_future_blocking`` on what the coroutine yields, and uses ``get_loop``,
    ``add_done_callback``, ``cancel`` and ``result``) that is also the source's waiter key and
    wake callback: no asyncio Future and no separate waker per wait.

    Everything but the wake-up itself runs on the loop's thread: a wake-up on that thread
    (recorded, with the loop, before the waiter is registered) is delivered at once, one from
    another thread goes through ``call_soon_threadsafe``. Like a Future, it schedules its
    done callbacks (the task's wake-up) with ``call_soon`` in their context. A cancel (the
    task's, from ``asyncio.timeout``, ``wait_for``, ...) before the wake-up unregisters the
    waiter and leaves the event untouched; a wake-up after it is ignored."""

    __slots__ = (
        "_add_waiter",
        "_asyncio_future_blocking",
        "_callbacks",
        "_cancel_message",
        "_handle",
        "_loop",
        "_remove_waiter",
        "_state",
        "_thread_id",
        "outcome",
    )

    def __init__(self, handle: EventHandle, add_waiter: AddWaiter, remove_waiter: RemoveWaiter):
        self._handle = handle
        self._add_waiter = add_waiter
        self._remove_waiter = remove_waiter
        self._state = _NEW
        self._asyncio_future_blocking = False  # the Future protocol's mark (asyncio.isfuture)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = 0
        self._callbacks: list[tuple[Callable[[_Wait], object], contextvars.Context]] = []
        self._cancel_message: object = None
        #: What the wait was woken with (an outcome once :attr:`settled`).
        self.outcome: Wake = None

    @property
    def settled(self) -> bool:
        """Whether the wait was woken with an outcome (not :class:`Unanswered`), in
        :attr:`outcome`: final for the generation."""
        return self._state == _WOKEN and not isinstance(self.outcome, Unanswered)

    def run(self) -> Generator[_Wait, None, None]:
        """What ``await`` drives: register the waiter, hand this object to the task until its
        wake-up, then return or raise what the wait ended with. (A generator, not ``__next__``:
        the compiled build returns from it without raising StopIteration.)"""
        self._loop = asyncio.get_running_loop()  # before the waiter: its wake-up needs it
        self._thread_id = get_ident()
        self._state = _WAITING
        try:
            outcome = self._add_waiter(self._handle, self, self)
        except BaseException:
            self._state = _CANCELLED
            raise
        if outcome is not PENDING:
            self._state = _WOKEN
            self.outcome = cast(str | None, outcome)
        elif self._state == _WAITING:  # not woken already (a finalizer's poison can)
            self._asyncio_future_blocking = True
            try:
                yield self  # to the task, which waits for its done callback
            except BaseException:  # thrown in (the task's CancelledError among them)
                self._stop_waiting()
                raise
            if self._state == _WAITING:
                raise RuntimeError("await wasn't used with future")  # resumed by no task
            if self._state == _CANCELLED:
                raise self._cancelled_error()
        woken = self.outcome
        if woken is None:
            return
        if isinstance(woken, Unanswered):  # no verdict: the next await asks again
            raise OutcomeUnknown(self._handle, woken.reason)
        raise EventPoison(self._handle, woken)

    def _stop_waiting(self) -> None:
        if self._state == _WAITING:
            self._state = _CANCELLED
            self._callbacks.clear()
            self._remove_waiter(self._handle, self)

    # -- the wake callback ------------------------------------------------------------------

    def __call__(self, key: Hashable, reason: Wake) -> None:
        if get_ident() == self._thread_id:
            self._woken(reason)
            return
        loop = self._loop
        assert loop is not None  # set before the waiter was registered
        with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to wake
            loop.call_soon_threadsafe(self._woken, reason)

    def _woken(self, reason: Wake) -> None:
        if self._state != _WAITING:  # a cancelled wait stays cancelled
            return
        self._state = _WOKEN
        self.outcome = reason
        self._schedule_callbacks()

    def _schedule_callbacks(self) -> None:
        callbacks = self._callbacks
        if not callbacks:
            return
        loop = self._loop
        assert loop is not None
        try:  # not contextlib.suppress: it would cost more than the wake-up
            for callback, context in callbacks:
                loop.call_soon(callback, self, context=context)
        except RuntimeError:  # a closed loop has nobody left to wake
            pass
        callbacks.clear()

    # -- the Future protocol, as an asyncio task uses it --------------------------------------

    def get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the wait has not started")
        return loop

    def add_done_callback(
        self, callback: Callable[[_Wait], object], *, context: contextvars.Context | None = None
    ) -> None:
        if context is None:
            context = contextvars.copy_context()
        if self._state == _WAITING:
            self._callbacks.append((callback, context))
        else:
            self.get_loop().call_soon(callback, self, context=context)

    def remove_done_callback(self, callback: Callable[[_Wait], object]) -> int:
        kept = [entry for entry in self._callbacks if entry[0] != callback]
        removed = len(self._callbacks) - len(kept)
        self._callbacks[:] = kept
        return removed

    def cancel(self, msg: object = None) -> bool:
        if self._state != _WAITING:
            return False
        self._cancel_message = msg
        self._state = _CANCELLED
        self._remove_waiter(self._handle, self)
        self._schedule_callbacks()
        return True

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def done(self) -> bool:
        return self._state >= _WOKEN

    def result(self) -> None:
        """``None`` once woken (the ``await`` itself returns or raises the outcome)."""
        if self._state == _CANCELLED:
            raise self._cancelled_error()
        if self._state != _WOKEN:
            raise asyncio.InvalidStateError("Result is not ready.")

    def exception(self) -> BaseException | None:
        self.result()
        return None

    def _cancelled_error(self) -> asyncio.CancelledError:
        message = self._cancel_message
        return asyncio.CancelledError() if message is None else asyncio.CancelledError(message)

    def __repr__(self) -> str:
        state = ("new", "waiting", "woken", "cancelled")[self._state]
        return f"<EventAwaiter wait {self._handle} {state}>"


class EventAwaiter:
    """Awaitable completion of one event generation.

    ``await`` returns ``None`` when the event is triggered and raises :class:`EventPoison`
    (with the first poison reason) when it is poisoned, or :class:`OutcomeUnknown` when its
    source could not learn the outcome (another worker's handle whose owner was lost): that
    is no outcome, and awaiting again asks again. It can be awaited any number of times,
    by any number of tasks, and wrapped with ``asyncio.ensure_future`` for ``asyncio.wait``.
    Cancelling a wait (``asyncio.timeout``, ``wait_for``, task cancellation) leaves the event
    untouched and unregisters the waiter. With a ``timeout`` (seconds, for each await), a wait
    that runs out unregisters its waiter and calls ``expired``, which raises
    :class:`~velo_event.EventTimeout` (naming what the event still waits on) unless the event
    completed meanwhile.
    """

    __slots__ = (
        "_add_waiter",
        "_expired",
        "_handle",
        "_last",
        "_outcome",
        "_remove_waiter",
        "_timeout",
    )

    def __init__(
        self,
        handle: EventHandle,
        outcome: Outcome,
        add_waiter: AddWaiter,
        remove_waiter: RemoveWaiter,
        timeout: float | None = None,
        expired: Expired | None = None,
    ) -> None:
        if timeout is not None and expired is None:
            raise ValueError("an awaiter with a timeout needs an `expired` callback")
        self._handle = handle
        self._outcome = outcome
        self._add_waiter = add_waiter
        self._remove_waiter = remove_waiter
        self._timeout = timeout
        self._expired = expired
        # The latest wait without a timeout: once woken with an outcome, later awaits use it.
        self._last: _Wait | None = None

    @property
    def handle(self) -> EventHandle:
        return self._handle

    def __await__(self) -> Generator[Any, None, None]:
        outcome = self._outcome
        if outcome is PENDING:
            last = self._last
            if last is None or not last.settled:
                if self._timeout is not None:
                    return self._wait()
                # The hot path: one object for the task to wait on, and for the source to wake.
                self._last = wait = _Wait(self._handle, self._add_waiter, self._remove_waiter)
                return wait.run()
            outcome = self._outcome = cast(str | None, last.outcome)
        if outcome is None:
            return _DONE
        raise EventPoison(self._handle, cast(str, outcome))

    def _wait(self) -> Generator[Any, None, None]:
        """An await with a timeout: on an asyncio future, and a timer that resolves it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        waker = _LoopWaker(loop, get_ident())  # called as is: no bound method to make
        outcome: object = self._add_waiter(self._handle, future, waker)
        if outcome is PENDING:
            assert self._timeout is not None
            outcome = yield from self._wait_within(loop, future, self._timeout)
        if outcome is not None:
            if isinstance(outcome, Unanswered):  # no verdict: the next await asks again
                raise OutcomeUnknown(self._handle, outcome.reason)
            self._outcome = cast(str, outcome)  # later awaits take the fast path
            raise EventPoison(self._handle, cast(str, outcome))
        self._outcome = None

    def _wait_within(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[object], timeout: float
    ) -> Generator[Any, None, object]:
        """The wait on ``future``, up to ``timeout`` seconds; then ``expired`` decides."""
        timer = loop.call_later(timeout, _resolve, future, _EXPIRED)
        try:
            outcome = yield from future.__await__()
        except BaseException:
            self._remove_waiter(self._handle, future)
            raise
        finally:
            timer.cancel()
        if outcome is not _EXPIRED:
            return outcome
        self._remove_waiter(self._handle, future)
        assert self._expired is not None
        return (yield from self._expired(self._handle, timeout).__await__())

    def __repr__(self) -> str:
        last = self._last
        pending = self._outcome is PENDING and (last is None or not last.settled)
        return f"<EventAwaiter {self._handle} {'pending' if pending else 'complete'}>"


def _no_waiter(handle: EventHandle, key: Hashable, callback: WakeCallback) -> Outcome:
    return None


def _no_removal(handle: EventHandle, key: Hashable) -> None:
    pass


#: Shared by every awaiter of an already-triggered generation: awaiting one allocates nothing.
READY_AWAITER: Final = EventAwaiter(EventHandle.from_int(0), None, _no_waiter, _no_removal)
