"""The loop thread behind :class:`~velo_am.SyncWorker`: a private asyncio loop on a daemon
thread, jobs handed to it from other threads, and the exit hook that closes what is left open.

Every job is scheduled under the runtime's lock after a state check, and the jobs still
pending when the loop ends fail with :class:`WorkerClosed`, so no caller ever waits for a
loop that is gone.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import inspect
import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, Final, TypeVar

from ._errors import WorkerClosed
from ._loops import loop_factory
from ._worker import Worker

__all__ = ["CLOSE_MARGIN", "Runtime", "loop_thread_error", "track"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How much longer than its grace period :meth:`SyncWorker.close` waits for the loop thread.
CLOSE_MARGIN: Final = 5.0


# -- the loop thread --------------------------------------------------------------------------


def loop_thread_error(name: str) -> RuntimeError:
    return RuntimeError(
        f"{name}() blocks, and was called on the worker's own event loop thread (in a handler "
        "or a callback), which it would wait for forever; there, await the async API "
        f"instead: make the handler `async def` and `await sync_worker.worker.{name}(...)`"
    )


class _Job:
    """A function run on the worker's loop for a thread that waits for its outcome. A
    coroutine function's coroutine is made on the loop, so a job that never starts (the loop
    ended first) leaves no coroutine un-awaited."""

    __slots__ = ("_args", "_fn", "_task", "future")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._fn = fn
        self._args = args
        self._task: asyncio.Task[Any] | None = None
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def begin(self) -> None:
        """On the loop."""
        if self.future.done():  # given up before it started
            return
        try:
            result = self._fn(*self._args)
        except Exception as error:
            self.future.set_exception(error)
            return
        if not inspect.iscoroutine(result):
            self.future.set_result(result)
            return
        self._task = task = asyncio.ensure_future(result)
        task.add_done_callback(self._settle)

    def _settle(self, task: asyncio.Task[Any]) -> None:
        if self.future.done():
            return
        if task.cancelled():  # by the loop's shutdown, or by abandon()
            self.future.set_exception(WorkerClosed("the worker closed during the operation"))
        elif (error := task.exception()) is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(task.result())

    def abandon(self) -> None:
        """On the loop: the waiting thread stopped waiting (interrupted), so stop the work."""
        if self._task is not None:
            self._task.cancel()
        elif not self.future.done():
            self.future.cancel()


class Runtime:
    """The loop thread and the worker on it. It holds no reference to its :class:`SyncWorker`,
    so a SyncWorker nobody references can be collected (and is then closed).

    ``state``: ``new`` (built), ``started``, ``closing`` (no new operations; reads still
    served), ``closed`` (the loop is gone). Every job is scheduled under ``lock`` after a
    state check, and the jobs still pending when the loop ends fail with
    :class:`WorkerClosed`, so no caller ever waits for a loop that is gone.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = "new"
        self.worker: Worker | None = None
        self.worker_id = 0
        self.grace: float | None = None  # of the close under way
        self.jobs: set[_Job] = set()
        self.wakeups: set[threading.Event] = set()  # serve_forever() calls, set on close
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop = loop_factory()()  # uvloop if installed (see _loops)
        self.thread = threading.Thread(target=self._main, name="velo-am-loop", daemon=True)

    def describe(self) -> str:
        return f"worker {self.worker_id:#x}" if self.worker_id else "worker"

    def closed_text(self) -> str:
        return f"{self.describe()} is {self.state}"

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread.ident

    # -- jobs -------------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any, while_closing: bool = False) -> _Job:
        job = _Job(fn, args)
        with self.lock:
            if self.state == "closed" or (self.state == "closing" and not while_closing):
                raise WorkerClosed(self.closed_text())
            self.jobs.add(job)
            self.loop.call_soon_threadsafe(job.begin)
        job.future.add_done_callback(lambda _: self._forget(job))
        return job

    def _forget(self, job: _Job) -> None:
        with self.lock:
            self.jobs.discard(job)

    def run(self, fn: Callable[..., Any], *args: Any, while_closing: bool = False) -> Any:
        """``fn(*args)`` on the loop (awaited if it is a coroutine); its outcome, here."""
        job = self.submit(fn, *args, while_closing=while_closing)
        try:
            return job.future.result()
        except BaseException:
            if not job.future.done():  # interrupted (KeyboardInterrupt): stop the operation
                with contextlib.suppress(RuntimeError):
                    self.loop.call_soon_threadsafe(job.abandon)
            raise

    def blocking(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """:meth:`run` for a blocking method named ``name``, which must not be called on the
        loop thread (it would wait for itself)."""
        if self.on_loop_thread():
            raise loop_thread_error(name)
        return self.run(fn, *args)

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the loop thread, so it never races with the loop: directly when
        already there or once the loop is gone."""
        if self.state == "closed" or self.on_loop_thread():
            return fn(*args)
        try:
            result: T = self.run(fn, *args, while_closing=True)
        except WorkerClosed:
            if self.state != "closed":
                raise
            return fn(*args)  # the loop ended before it ran: nothing races any more
        return result

    # -- lifecycle --------------------------------------------------------------------------

    def spawn(self, coroutine: Any) -> None:
        """On the loop: a task kept alive until it ends (cancelled when the loop ends)."""
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start_worker(self) -> None:
        worker = self.worker
        assert worker is not None
        await worker.start()
        self.spawn(self._follow(worker))

    async def _follow(self, worker: Worker) -> None:
        """Closed through its async API (``await w.worker.close()``): end the thread too."""
        await worker.wait_closed()
        self.begin_close(0)

    def begin_close(self, grace: float | None) -> None:
        """Start closing, from any thread; the first call's grace period stands."""
        with self.lock:
            if self.state in ("closing", "closed"):
                return
            self.state = "closing"
            self.grace = grace
            self.loop.call_soon_threadsafe(self._begin_shutdown, grace)
            wakeups = list(self.wakeups)
        for wakeup in wakeups:
            wakeup.set()

    def close_bound(self) -> float:
        """How long a close may take (its grace period and a margin)."""
        grace = self.grace
        if grace is None:
            grace = self.worker.close_grace if self.worker is not None else 0.0
        return max(grace, 0.0) + CLOSE_MARGIN

    def _begin_shutdown(self, grace: float | None) -> None:
        self.spawn(self._shutdown(grace))

    async def _shutdown(self, grace: float | None) -> None:
        try:
            if self.worker is not None:
                await self.worker.close(grace)
        except Exception:
            logger.exception("closing %s failed", self.describe())
        finally:
            asyncio.get_running_loop().stop()

    def abandon(self) -> None:
        """The SyncWorker was collected while open: close in the background. Called by a
        finalizer (any thread, any time), so it neither blocks nor takes a lock."""
        if self.state in ("closing", "closed"):
            return
        warnings.warn(
            f"SyncWorker ({self.describe()}) was not closed; closing it now",
            ResourceWarning,
            stacklevel=2,
        )
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to do
            self.loop.call_soon_threadsafe(self.begin_close, None)

    def _main(self) -> None:
        loop = self.loop
        try:
            loop.run_forever()
        finally:
            try:
                _finish(loop)
            except Exception:
                logger.exception("shutting down the loop of %s failed", self.describe())
            finally:
                self._ended()

    def _ended(self) -> None:
        reason = f"{self.describe()} closed"
        with self.lock:  # from now on, nothing is scheduled on the loop by this module
            self.state = "closed"
            jobs, self.jobs = list(self.jobs), set()
            wakeups = list(self.wakeups)
        self.loop.close()
        for job in jobs:  # scheduled, but the loop ended before they ran
            if not job.future.done():
                job.future.set_exception(WorkerClosed(reason))
        if self.worker is not None:  # threads waiting on remote handles, whatever happened
            self.worker.events.abandon_remote(reason)
        for wakeup in wakeups:
            wakeup.set()
        _untrack(self)


async def _gather(tasks: set[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


def _finish(loop: asyncio.AbstractEventLoop) -> None:
    """What ``asyncio.run`` does after its main coroutine: cancel what is left (a cancelled
    task may start another: a few rounds), then shut down async generators and the executor."""
    for _ in range(3):
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        # Also runs the callbacks queued meanwhile (jobs, routing from other threads).
        loop.run_until_complete(_gather(tasks))
        if not asyncio.all_tasks(loop):
            break
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())


# Runtimes whose loop thread runs, closed at interpreter exit by one atexit hook. Runtimes,
# not SyncWorkers: a forgotten SyncWorker may be collected, and its runtime still closes.
_live: set[Runtime] = set()
_live_lock = threading.Lock()
_hook_installed = False


def track(runtime: Runtime) -> None:
    global _hook_installed
    with _live_lock:
        _live.add(runtime)
        if not _hook_installed:
            atexit.register(_close_at_exit)
            _hook_installed = True


def _untrack(runtime: Runtime) -> None:
    with _live_lock:
        _live.discard(runtime)


def _close_at_exit() -> None:
    """Close the workers still open, gracefully, waiting a bounded time for each."""
    with _live_lock:
        runtimes = list(_live)
    if not runtimes:
        return
    logger.info("closing %d worker(s) left open at exit", len(runtimes))
    for runtime in runtimes:
        runtime.begin_close(None)
    deadline = time.monotonic() + max(runtime.close_bound() for runtime in runtimes)
    for runtime in runtimes:
        runtime.thread.join(max(0.0, deadline - time.monotonic()))
        if runtime.thread.is_alive():
            logger.warning("%s did not close within its grace period", runtime.describe())
