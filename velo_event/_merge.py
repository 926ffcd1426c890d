"""Merged events: an AND-gate over other events, driven by wake callbacks (no task, no loop).

A merge registers one waiter per input and counts completions down. With ``fail_fast`` the
first poisoned input poisons the merge at once; otherwise the merge completes when every input
has, poisoned with every failed input's reason, in input order. An input whose outcome could not
be learned (:class:`~velo_event.lowlevel.Unanswered`: its owner lost, or restarted since) counts
as failed, so the merge still gets an outcome of its own.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from ._core import EventCore
from ._errors import EventError
from ._handle import EventHandle
from ._wake import MAX_REASON_LENGTH, PENDING, Answer, Unanswered, Wake, WakeCallback, cap_reason

__all__ = ["MergeView", "merge_of", "merge_reason", "merge_view", "start_merge"]

logger = logging.getLogger(__name__)

#: Registers ``callback(key, reason)`` for a handle's completion, like ``EventCore.add_waiter``
#: (a distributed manager routes remote handles to their owner).
AddWaiter = Callable[[EventHandle, Hashable, WakeCallback], Answer]
RemoveWaiter = Callable[[EventHandle, Hashable], None]


def merge_reason(failures: Sequence[str]) -> str:
    """The merged poison reason: the single failure, or a header and one line per failure,
    bounded in size however many inputs failed (joined only up to the cap)."""
    if len(failures) == 1:
        return failures[0]
    parts = ["Multiple merge dependencies failed:"]
    size = len(parts[0])
    for position, line in enumerate(failures):
        size += len(line) + 1
        if size > MAX_REASON_LENGTH and position:  # the first line always stays (capped below)
            parts.append(f"… and {len(failures) - position} more failed dependencies")
            break
        parts.append(line)
    return cap_reason("\n".join(parts))


class _Merge:
    __slots__ = (
        "core",
        "done",
        "fail_fast",
        "failures",
        "finished",
        "handle",
        "inputs",
        "lock",
        "registered",
        "remaining",
        "remove_waiter",
    )

    def __init__(
        self,
        core: EventCore,
        inputs: Sequence[EventHandle],
        fail_fast: bool,
        remove_waiter: RemoveWaiter,
    ) -> None:
        self.core = core
        self.remove_waiter = remove_waiter
        # Waiters still registered on inputs; dropped when fail-fast decides early.
        self.registered: list[tuple[EventHandle, Hashable]] = []
        self.inputs = inputs
        self.fail_fast = fail_fast
        self.remaining = len(inputs)
        self.failures: list[tuple[int, str]] = []
        self.finished = bytearray(len(inputs))  # 1 at each position whose input completed
        self.done = False
        self.lock = threading.Lock()
        # The merged event, kept with the merge in the core (a timed-out wait finds its inputs).
        self.handle = core.new_event(self)

    def input_done(self, key: Hashable, reason: Wake) -> None:
        position = key[1]  # type: ignore[index]
        if reason is None:
            self.record(position, None)
        else:
            handle = self.inputs[position]
            if isinstance(reason, Unanswered):  # no outcome: the merge still gets one of its own
                self.record(position, f"Merge dependency {handle} failed: {reason.reason}")
            else:
                self.record(position, f"Merge dependency {handle} poisoned: {reason}")

    def release(self) -> None:
        """Drop the waiters still registered on inputs (fail-fast decided before they ended).
        Two threads may release at once (the wiring loop and a deciding input), so an empty
        list is the stop condition, not an error."""
        while True:
            try:
                handle, key = self.registered.pop()
            except IndexError:
                return
            self.remove_waiter(handle, key)

    def record(self, position: int, failure: str | None) -> None:
        with self.lock:
            if self.done:
                return
            self.remaining -= 1
            self.finished[position] = 1
            if failure is not None:
                self.failures.append((position, failure))
            if self.fail_fast and failure is not None:
                outcome: str | None = failure
            elif self.remaining == 0:
                self.failures.sort()
                outcome = (
                    merge_reason([line for _, line in self.failures]) if self.failures else None
                )
            else:
                return
            self.done = True
        if self.remaining:  # fail-fast decided: inputs still pending keep a waiter of ours
            self.release()
        _complete(self.core, self.handle, outcome)


@dataclass(frozen=True, slots=True)
class MergeView:
    """What inspection shows of a pending merge: its handle, its inputs, the positions of the
    inputs that failed so far and of those it still waits on."""

    handle: EventHandle
    inputs: Sequence[EventHandle]
    failed: frozenset[int]
    fail_fast: bool
    pending: frozenset[int] = frozenset()


def _view(merge: _Merge) -> MergeView:
    with merge.lock:
        failed = frozenset(position for position, _ in merge.failures)
        finished = merge.finished  # indexed, not enumerated: mypyc cannot iterate a bytearray
        pending = frozenset(position for position in range(len(finished)) if not finished[position])
    return MergeView(merge.handle, merge.inputs, failed, merge.fail_fast, pending)


def merge_view(key: Hashable) -> tuple[MergeView, int] | None:
    """If ``key`` is a waiter key of a merge (it waits on one of the merge's inputs), that
    merge's view and the input's position; else ``None``."""
    if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], _Merge)):
        return None
    return _view(key[0]), key[1]


def merge_of(core: EventCore, handle: EventHandle) -> MergeView | None:
    """The view of the pending merge ``handle`` names in ``core``; ``None`` if it names no
    merge of that core, or one that completed."""
    merge = core.attached(handle)
    return _view(merge) if isinstance(merge, _Merge) else None


_completing = threading.local()


def _complete(core: EventCore, handle: EventHandle, outcome: str | None) -> None:
    """Complete a merged event. Completing it wakes its waiters, which may be merges that
    complete in turn: those are queued here, not recursed into, so a chain of merges of any
    depth runs in constant stack."""
    queue: deque[tuple[EventCore, EventHandle, str | None]] | None = getattr(
        _completing, "queue", None
    )
    if queue is not None:
        queue.append((core, handle, outcome))
        return
    _completing.queue = queue = deque(((core, handle, outcome),))
    try:
        while queue:
            core, handle, outcome = queue.popleft()
            try:
                if outcome is None:
                    core.trigger(handle)
                else:
                    core.poison(handle, outcome)
            except EventError as error:
                # Triggered by hand, or poisoned by a shutdown: the merge's own outcome loses.
                logger.debug("Failed to complete merged event %s: %s", handle, error)
    finally:
        _completing.queue = None


def start_merge(
    core: EventCore,
    inputs: Sequence[EventHandle],
    fail_fast: bool,
    add_waiter: AddWaiter,
    remove_waiter: RemoveWaiter,
) -> EventHandle:
    """Create the merged event in ``core`` and wire its inputs; returns at once."""
    merge = _Merge(core, inputs, fail_fast, remove_waiter)
    merged = merge.handle
    input_done = merge.input_done  # one bound method for every input
    for position, handle in enumerate(inputs):
        key = (merge, position)
        try:
            outcome = add_waiter(handle, key, input_done)
        except EventError as error:
            merge.record(position, f"Merge dependency {handle} failed: {error}")
            continue
        if outcome is PENDING:
            merge.registered.append((handle, key))
        else:
            merge.input_done(key, outcome)  # type: ignore[arg-type]
        if merge.done:
            break  # fail-fast decided already
    if merge.done:  # maybe decided on another thread while the inputs were being wired
        merge.release()
    return merged
