"""The asyncio adapter: awaiting a handle, and the thread-safe wake-up of a waiting future."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Generator, Hashable
from threading import get_ident
from typing import Any, Final, cast

from ._errors import EventPoison, OutcomeUnknown
from ._handle import EventHandle
from ._hot import mypyc_attr
from ._wake import PENDING, Answer, Unanswered, Wake, WakeCallback

__all__ = ["READY_AWAITER", "EventAwaiter", "running_loop", "wake_future"]

# An exhausted iterator: ``await`` of an already-complete event returns through it at once,
# creating no Future and scheduling no callback.
_DONE: Final[Generator[Any, None, None]] = cast(Generator[Any, None, None], iter(()))
# Final: a compiled build keeps these in statics, where a name is a lookup on every call.
_get_running_loop: Final = asyncio.get_running_loop
_get_ident: Final = get_ident


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
    """The wake callback of the awaits begun on one thread while one loop ran there, knowing
    that loop and that thread: a wake-up on that thread resolves the future directly (the
    loop is running there, or stopped or closed: its own thread may schedule on it either
    way), one from another thread goes through the loop. Unlike :func:`wake_future` it never
    asks ``asyncio.get_running_loop()``, which costs a ``getpid()`` system call per wake-up.
    Two cases take the same-thread path for a loop no longer running on that thread, so the
    wake-up is scheduled without waking the loop's selector and waits for its next iteration:
    a wait begun on thread T while its loop ran there, that loop since run by thread U, and
    a trigger from T; or a wait outliving its thread, its loop run on by another since, and
    a new thread reusing the old one's id. One is kept per thread (:func:`_thread_waker`) and
    shared by its awaits."""

    __slots__ = ("is_running", "loop", "new_future", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: int) -> None:
        self.loop = loop
        self.thread = thread
        # Bound once: a wait calls them without looking them up on the loop's class.
        self.new_future: Callable[[], asyncio.Future[object]] = loop.create_future
        self.is_running: Callable[[], bool] = loop.is_running

    def __call__(self, future: Hashable, reason: Wake) -> None:
        fut = cast("asyncio.Future[object]", future)
        if _get_ident() == self.thread:
            # contextlib.suppress would cost more than the rest of the wake-up; and no done()
            # check first: a done future refuses at once.
            try:  # noqa: SIM105
                fut.set_result(reason)
            except (asyncio.InvalidStateError, RuntimeError):  # a cancelled wait stays
                pass  # cancelled; a closed loop has nobody left to wake
            return
        with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to wake
            self.loop.call_soon_threadsafe(_resolve, fut, reason)


# This thread's waker, for the loop that ran here when it was made. Checking that the loop
# still runs replaces asyncio.get_running_loop()'s getpid() system call on every wait.
_here: Final = threading.local()


def _thread_waker() -> _LoopWaker:
    """The waker of the loop running on this thread (``RuntimeError`` if none is).

    The kept one serves while its loop runs: a loop runs on one thread at a time, so unless
    that loop has moved to another thread since (then the awaiting task refuses the future:
    see :func:`_moved`), it runs here. A loop that stopped (another ``asyncio.run`` on this
    thread) is replaced at once; a forked child starts afresh. The kept waker holds its loop
    (even stopped and closed) until this thread's next wait on a pending event under another
    loop, or the thread's exit: no cost per wait buys an earlier release."""
    waker: _LoopWaker | None = getattr(_here, "waker", None)
    if waker is not None and waker.is_running():
        return waker
    return _new_waker(_get_running_loop())


def _checked_waker() -> _LoopWaker:
    """:func:`_thread_waker`, checked against ``asyncio.get_running_loop()``: for a wait that
    schedules on its loop (a timer) before the task could refuse a moved loop's future."""
    loop = _get_running_loop()
    waker: _LoopWaker | None = getattr(_here, "waker", None)
    return waker if waker is not None and waker.loop is loop else _new_waker(loop)


def _new_waker(loop: asyncio.AbstractEventLoop) -> _LoopWaker:
    waker = _LoopWaker(loop, _get_ident())
    _here.waker = waker
    return waker


def _moved(loop: asyncio.AbstractEventLoop) -> bool:
    """After a wait failed: whether it waited on a future of a loop no longer running on this
    thread (it moved to another thread, this one runs another), which the awaiting task
    refused. The kept waker is dropped; the caller waits again on the right loop. Not when no
    loop runs here (a coroutine driven by hand): its own error is the one to raise."""
    running = running_loop()
    if running is None or running is loop:
        return False
    _forget_waker()
    return True


def _forget_waker() -> None:
    _here.waker = None


if hasattr(os, "register_at_fork"):  # a child's loops are its own: the parent's kept waker is not
    os.register_at_fork(after_in_child=_forget_waker)


AddWaiter = Callable[[EventHandle, Hashable, WakeCallback], Answer]
RemoveWaiter = Callable[[EventHandle, Hashable], None]
#: Called once an await's timeout ran out and its waiter is gone, with the handle and the
#: timeout: returns the outcome if the generation completed meanwhile, else raises the timeout.
Expired = Callable[[EventHandle, float], Awaitable[Answer]]
# What a waiting future is resolved with when its timeout runs out (never a wake-up value).
_EXPIRED: Final = object()
# What a wait says when the task refused its future (of a loop that moved to another thread).
_MOVED: Final = object()


@mypyc_attr(free_list_len=1)  # one freed instance kept for the next (compiled build)
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

    __slots__ = ("_add_waiter", "_expired", "_handle", "_outcome", "_remove_waiter", "_timeout")

    def __init__(
        self,
        handle: EventHandle,
        outcome: Answer,
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

    @property
    def handle(self) -> EventHandle:
        return self._handle

    def __await__(self) -> Generator[Any, None, None]:
        outcome = self._outcome
        if outcome is None:
            return _DONE
        if outcome is PENDING or type(outcome) is Unanswered:  # no verdict: ask at each await
            timeout = self._timeout
            return self._wait() if timeout is None else self._wait_timed(timeout)
        raise EventPoison(self._handle, cast(str, outcome))

    def _wait(self) -> Generator[Any, None, None]:
        """The hot path, a wait with no timeout: nothing here but the wait."""
        waker = _thread_waker()
        future = waker.new_future()
        outcome: object = self._add_waiter(self._handle, future, waker)
        if outcome is PENDING:
            try:
                outcome = yield from future.__await__()
            except BaseException as error:
                self._remove_waiter(self._handle, future)
                if not (isinstance(error, RuntimeError) and _moved(waker.loop)):
                    raise
                outcome = _MOVED
            if outcome is _MOVED:  # the task refused the future: wait on the running loop
                yield from self._wait()
                return
        self._settle(outcome)

    def _wait_timed(self, timeout: float) -> Generator[Any, None, None]:
        waker = _checked_waker()
        future = waker.new_future()
        outcome: object = self._add_waiter(self._handle, future, waker)
        if outcome is PENDING:
            outcome = yield from self._wait_within(waker.loop, future, timeout)
        self._settle(outcome)

    def _settle(self, outcome: object) -> None:
        """Return for a trigger; raise for a poison (remembered) or no outcome (not)."""
        if outcome is None:
            self._outcome = None
            return
        if isinstance(outcome, Unanswered):  # no verdict: the next await asks again
            raise OutcomeUnknown(self._handle, outcome.reason)
        self._outcome = cast(str, outcome)  # later awaits take the fast path
        raise EventPoison(self._handle, cast(str, outcome))

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
        if self._outcome is PENDING:
            state = "pending"
        elif isinstance(self._outcome, Unanswered):  # no outcome: each await asks again
            state = "unknown"
        else:
            state = "complete"
        return f"<EventAwaiter {self._handle} {state}>"


def _no_waiter(handle: EventHandle, key: Hashable, callback: WakeCallback) -> Answer:
    return None


def _no_removal(handle: EventHandle, key: Hashable) -> None:
    pass


#: Shared by every awaiter of an already-triggered generation: awaiting one allocates nothing.
READY_AWAITER: Final = EventAwaiter(EventHandle.from_int(0), None, _no_waiter, _no_removal)
