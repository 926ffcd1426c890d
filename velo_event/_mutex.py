"""`Mutex`: the event core's lock, a ``queue.SimpleQueue`` holding one token.

Why not a ``threading.Lock``: its ``acquire`` takes optional arguments that CPython parses on
every call, which made a lock round trip about half the cost of a core operation. A
``SimpleQueue``'s ``get`` and ``put`` are fast-call C methods, about twice as fast for the
same guarantee: the queue is documented thread-safe (on a free-threaded build too), so
whoever took its one token holds the lock until it puts it back. ``put`` never blocks and
is reentrant (safe in a finalizer); a blocked ``get`` sleeps until the token is back.

Finalizers also take the token: ``EventCore.poison_soon`` (an armed guard collected) drains
its queue with ``acquire(blocking=False)``, i.e. ``get(block=False)``, and may run on a thread
that is itself inside a blocking ``get`` of this queue (a signal handler the interrupted wait
runs through ``Py_MakePendingCalls`` drops the guard's last reference, or collects it). CPython
documents only ``put`` as reentrant: we rely on what its implementations (the list and lock of
3.11-3.12, the ring buffer and parking lot of 3.13+) do with such a nested non-blocking
``get``. It never waits: it takes the token if the queue holds it (and ``poison_soon`` puts
it back before returning), else raises ``Empty`` and the poison stays deferred for the token's
holder, which drains the deferred poisons after releasing it. The interrupted outer ``get``
then looks at the queue again and waits again: no token is lost or doubled.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Final

__all__ = ["TOKEN", "Mutex"]

#: What the queue holds while the lock is free.
TOKEN: Final = True


class Mutex:
    """A non-reentrant lock with ``threading.Lock``'s interface (``acquire``, ``release``,
    ``with``), and ``take()`` / ``give(TOKEN)`` for hot paths to bind once."""

    __slots__ = ("_queue", "give", "take")

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._queue.put(TOKEN)
        #: Acquire: ``take(True)`` waits for the token and returns it. Pass the ``True``: a
        #: compiled caller passes no argument array for a call without arguments, and CPython's
        #: ``get`` then parses its arguments the slow way (about 15 ns a call).
        self.take: Callable[[bool], bool] = self._queue.get
        #: Release: give the token back (never blocks).
        self.give: Callable[[bool], None] = self._queue.put

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """As ``threading.Lock.acquire``: whether the lock was taken."""
        try:
            if not blocking:
                self._queue.get(block=False)
            elif timeout < 0:
                self._queue.get()
            else:
                self._queue.get(timeout=timeout)
        except queue.Empty:
            return False
        return True

    def release(self) -> None:
        """Release the lock; ``RuntimeError`` if it is not held (a second token would let
        two holders in)."""
        if not self._queue.empty():
            raise RuntimeError("release unlocked lock")
        self._queue.put(TOKEN)

    def locked(self) -> bool:
        return self._queue.empty()

    def __enter__(self) -> bool:
        return self._queue.get()

    def __exit__(self, *exc_info: object) -> None:
        self._queue.put(TOKEN)
