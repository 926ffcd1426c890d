"""The building blocks beneath :class:`~velo_event.EventManager`, for runtimes built on top.

Most code wants the top-level API (``LocalEventSystem``, ``EventManager``, ``Event``…). This
module is for code that serves handles in ways of its own, as velo_am's distributed events do:
a manager whose handles live in an :class:`EventCore` but whose awaits and merges route other
systems' handles elsewhere, through an :class:`EventSource` passed to
:class:`CoreEventManager`.

* :class:`EventCore`: the synchronous, thread-safe slot state machine of one system id.
  Completion wakes waiters, ``(key, callback)`` pairs, after its lock is released.
* :data:`Outcome`: what is known of a generation: ``None`` (triggered), the poison reason
  (``str``), or :data:`PENDING`. :data:`Wake`: what a waiter is woken with, an outcome or
  :class:`Unanswered` (no outcome could be learned; awaits raise ``OutcomeUnknown``).
  :data:`Answer`: what a source answers for a handle, an :data:`Outcome` or :class:`Unanswered`
  (a core's :attr:`EventCore.stale`, for a handle of an earlier incarnation).
* :data:`LOOKAHEAD`: how far past a slot's last generation a tagged core (one incarnation of
  a worker) still reads a generation as its own, not issued yet.
* :func:`wake_waiters`: run wake callbacks as the core does, given a ``key -> callback``
  mapping or one ``(key, callback)`` pair (a failing one is logged, the others still run);
  :func:`wake_future`: the wake callback of an asyncio future, from any thread;
  :func:`running_loop`: the loop running on this thread, if any.
* :class:`EventSource`: the five questions a manager asks about a handle.
* :func:`merge_view`: what inspection shows of the merge a waiter key belongs to;
  :func:`merge_of`: the view of a pending merge by its handle.
* :func:`blocking_events`: the walk from an event down through merges to what holds it up;
  :data:`THIS_WORKER` and :data:`UNKNOWN`, the liveness of an owner that is the waiting
  system itself or that it knows nothing of; :data:`MAX_PENDING_SHOWN`, how many a timeout
  names; :data:`WaitingOn`, what ``CoreEventManager.waiting_on`` returns.
* :func:`cap_reason` and :data:`MAX_REASON_LENGTH`: how long poison reasons are bounded.
"""

from typing import Final

from . import _select
from ._pending import MAX_PENDING_SHOWN, THIS_WORKER, UNKNOWN, WaitingOn, blocking_events

running_loop = _select.awaiter.running_loop
wake_future = _select.awaiter.wake_future
LOOKAHEAD: Final = _select.core.LOOKAHEAD
EventCore = _select.core.EventCore
CoreEventManager = _select.manager.CoreEventManager
EventSource = _select.manager.EventSource
MergeView = _select.merge.MergeView
merge_of = _select.merge.merge_of
merge_reason = _select.merge.merge_reason
merge_view = _select.merge.merge_view
MAX_REASON_LENGTH: Final = _select.wake.MAX_REASON_LENGTH
PENDING: Final = _select.wake.PENDING
cap_reason = _select.wake.cap_reason
Outcome = _select.wake.Outcome
Answer = _select.wake.Answer
Unanswered = _select.wake.Unanswered
Wake = _select.wake.Wake
WakeCallback = _select.wake.WakeCallback
wake_waiters = _select.wake.wake_waiters

__all__ = [
    "LOOKAHEAD",
    "MAX_PENDING_SHOWN",
    "MAX_REASON_LENGTH",
    "PENDING",
    "THIS_WORKER",
    "UNKNOWN",
    "Answer",
    "CoreEventManager",
    "EventCore",
    "EventSource",
    "MergeView",
    "Outcome",
    "Unanswered",
    "Wake",
    "WaitingOn",
    "WakeCallback",
    "blocking_events",
    "cap_reason",
    "merge_of",
    "merge_reason",
    "merge_view",
    "running_loop",
    "wake_future",
    "wake_waiters",
]
