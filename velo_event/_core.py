"""The generational slot state machine: synchronous, thread-safe, no event loop in sight.

One lock guards a system's slots. Every transition (begin a generation, complete it, register
or drop a waiter) happens under it; waiters are drained in the same critical section that
completes a generation and are woken *after* the lock is released, so there are no lost
wake-ups and no callbacks run under the lock. A waiter is a ``(key, callback)`` pair; the
callback gets ``(key, reason)``, where ``reason`` is ``None`` for a trigger and the poison
reason otherwise (see :mod:`velo_event._wake`). asyncio futures, blocking waits and merges
are all just waiters.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Final

from . import _wake
from ._errors import (
    AlreadyTriggeredError,
    EventError,
    ForeignHandleError,
    InvalidGenerationError,
    SystemShutdownError,
    UnknownEventError,
)
from ._handle import LOCAL_FLAG, MAX_GENERATION, MAX_INDEX, EventHandle
from ._mutex import TOKEN, Mutex
from ._slot import EarlyWaiters as _EarlyWaiters
from ._slot import Slot as _Slot
from ._wake import PENDING, Answer, Unanswered, WakeCallback, cap_reason, wake_waiters

__all__ = ["LOOKAHEAD", "EventCore"]

_U32: Final = 0xFFFF_FFFF
_HANDLE: Final = EventHandle  # compiled: a static, where the class name is a globals lookup
# A tagged core keeps the tag in the top 8 of the 31 index bits (8 M slots remain).
_TAG_SHIFT: Final = 23
_MAX_TAG: Final = 255
#: How far past a slot's last generation a tagged core still reads one as its own, not issued yet.
LOOKAHEAD: Final = 1 << 16


class EventCore:
    """All slots of one event system (one ``worker_id``)."""

    def __init__(
        self, system_id: int, *, local: bool, first_generation: int = 1, index_tag: int = 0
    ) -> None:
        """For a system id that outlives its process (a worker restarted under the same id):
        ``index_tag`` (1..255) fills the top bits of every slot index, so handles of another
        incarnation name no slot here, and ``first_generation`` > 1 marks every lower
        generation (but 0) as not issued here; such handles read as :attr:`stale`, no outcome
        (their outcome died with that incarnation). A tagged core also reads as stale a
        generation more than :data:`LOOKAHEAD` past its slot's last one (past the first
        generation, for a slot not allocated yet): it never issued it, and will not soon."""
        if not 0 < system_id < 1 << 64:
            raise ValueError(f"system id must be a non-zero 64-bit integer, got {system_id}")
        if not 1 <= first_generation < MAX_GENERATION:
            raise ValueError(f"first_generation must be in 1..{MAX_GENERATION - 1}")
        self._first_generation = first_generation
        self.stale_reason: Final = (
            f"handle minted by an earlier incarnation of worker {system_id:#x}"
        )
        self.stale: Final = Unanswered(self.stale_reason)
        self.system_id: Final = system_id
        self.local: Final = local
        if not 0 <= index_tag <= _MAX_TAG:
            raise ValueError(f"index_tag must be in 0..{_MAX_TAG}")
        self._prefix = system_id << 64 | (LOCAL_FLAG << 32 if local else 0)
        self._prefix |= index_tag << (32 + _TAG_SHIFT)
        self._slots: list[_Slot] = []
        self._free: deque[int] = deque()
        self._retired = 0
        self._lock = Mutex()
        # Bound once: a compiled build calls a stored bound method without looking it up.
        self._acquire: Callable[[bool], bool] = self._lock.take
        self._release: Callable[[bool], None] = self._lock.give
        self._take_free: Callable[[], int] = self._free.popleft
        self._put_free: Callable[[int], None] = self._free.append
        self._shutdown_reason: str | None = None
        # Poisons requested by garbage-collected guards while the lock was busy (see poison_soon).
        self._deferred: deque[tuple[EventHandle, str]] = deque()
        self._max_index = (1 << _TAG_SHIFT) - 2 if index_tag else MAX_INDEX
        self._tagged = bool(index_tag)
        self._lookahead = LOOKAHEAD if index_tag else MAX_GENERATION
        # Early waiters on generations not issued yet, by handle; new_event moves them to the slot.
        self._early: dict[int, _EarlyWaiters] = {}
        # The handle last issued (the very object) and its slot-local part, and that handle
        # once triggered: the usual next steps (trigger what was just made, await what was
        # just triggered) know it by identity, without a 128-bit subtraction. ``_triggered``
        # holds only objects this core made: ``awaitable`` reads it without the lock, so its
        # replacement must run no code (a caller's int subclass could, in its teardown).
        self._issued: object = None
        self._issued_local = 0
        self._triggered: object = None

    # -- lookups (call with the lock held) -------------------------------------------------

    def _slot(self, handle: int) -> _Slot:
        if handle >> 64 != self.system_id:
            raise ForeignHandleError(
                f"Handle {EventHandle.from_int(handle)} belongs to system {handle >> 64:#x}, "
                f"not this system {self.system_id:#x}"
            )
        index = (handle - self._prefix) >> 32
        if 0 <= index < len(self._slots):
            return self._slots[index]
        raise UnknownEventError(f"Unknown event {EventHandle.from_int(handle)}")

    def _slot_if_allocated(self, handle: int) -> _Slot | None:
        """Like :meth:`_slot`, but ``None`` for a slot this core may still allocate."""
        index = (handle - self._prefix) >> 32
        if handle >> 64 == self.system_id and len(self._slots) <= index <= self._max_index:
            return None
        return self._slot(handle)

    def _from_another_incarnation(self, handle: int) -> bool:
        """Whether a handle naming no slot here was minted by an earlier incarnation of this
        tagged core (another tag, or a generation below this one's first): a local await
        then reads it as :attr:`stale`, as other workers do, not as an unknown event
        (which would name neither the restart nor the worker)."""
        index = (handle - self._prefix) >> 32
        generation = handle & _U32
        return self._tagged and (
            not 0 <= index <= self._max_index or 0 < generation < self._first_generation
        )

    def _ahead(self, slot: _Slot | None, generation: int) -> bool:
        """Whether a generation above the slot's last (``slot`` None: not allocated yet) is
        one this core may still issue, within its lookahead."""
        last = self._first_generation - 1 if slot is None else slot.last
        return 0 < generation - last <= self._lookahead

    @staticmethod
    def _invalid_generation(handle: int, slot: _Slot) -> InvalidGenerationError:
        active = f"active generation {slot.active}" if slot.active else "no active generation"
        return InvalidGenerationError(
            f"Invalid generation {handle & _U32} for event {EventHandle.from_int(handle)}; {active}"
        )

    def _complete(self, handle: int, slot: _Slot) -> _wake.Held | None:
        """End the active generation; the caller has recorded a poison reason if any."""
        generation = handle & _U32
        slot.last = generation
        slot.active = 0
        waiters = slot.waiters
        slot.waiters = None
        slot.attached = None
        if generation < MAX_GENERATION:
            self._free.append((handle - self._prefix) >> 32)
        else:  # the slot retires (generations never wrap); old handles keep answering
            self._retired += 1
        return waiters

    def _poison_locked(self, handle: int, reason: str) -> _wake.Held | None:
        slot = self._slot(handle)
        generation = handle & _U32
        if generation == slot.active and generation:
            if slot.poisons is None:
                slot.poisons = {}
            slot.poisons[generation] = reason
            return self._complete(handle, slot)
        if generation <= slot.last:
            if slot.poisons is not None and generation in slot.poisons:
                return None  # poison after poison: the first reason stands
            if 0 < generation < self._first_generation:
                raise InvalidGenerationError(f"{self.stale_reason}: {EventHandle.from_int(handle)}")
            raise AlreadyTriggeredError(
                f"Event {EventHandle.from_int(handle)} generation {generation} "
                "already completed successfully"
            )
        raise self._invalid_generation(handle, slot)

    def _outcome(self, slot: _Slot, generation: int) -> str | Unanswered | None:
        """The outcome of a completed generation (``generation <= slot.last``)."""
        if 0 < generation < self._first_generation:
            return self.stale
        poisons = slot.poisons
        return poisons.get(generation) if poisons is not None else None

    # -- operations ------------------------------------------------------------------------

    # The hot operations inline their lookups, find a handle's slot and generation with one
    # 128-bit subtraction (none for the handle just issued, known by identity; the rest is
    # 64-bit arithmetic: native when compiled), and use acquire/release rather than ``with``:
    # on these machines that halves their cost. The lock is taken as ``take(True)`` (see
    # ``Mutex.take``).

    def new_event(self, attached: object = None) -> EventHandle:
        """A new pending generation; ``attached`` is kept with it until it completes (a merge
        keeps itself with its merged event, so a timed-out wait can find its inputs)."""
        self._acquire(True)
        try:
            if self._shutdown_reason is not None:
                raise SystemShutdownError("Event system shutdown in progress")
            if self._free:
                index = self._take_free()
                slot = self._slots[index]
            else:
                index = len(self._slots)
                if index > self._max_index:
                    raise EventError(
                        f"Local event index space exhausted ({self._max_index + 1} entries)"
                    )
                slot = _Slot(self._first_generation)
                self._slots.append(slot)
            slot.active = generation = slot.last + 1
            slot.attached = attached
            local = index << 32 | generation
            handle = _HANDLE(self._prefix + local)  # cheaper than int.__new__ (no wrapper)
            self._issued = handle
            self._issued_local = local
            if self._early:  # subscriptions that came before this generation was issued
                slot.waiters = self._early.pop(handle, None)
        finally:
            self._release(TOKEN)
            if self._deferred:
                self._drain_deferred()
        return handle

    def trigger(self, handle: int) -> None:
        self._acquire(True)
        try:
            issued = handle is self._issued
            local = self._issued_local if issued else handle - self._prefix
            slots = self._slots
            if 0 <= local < len(slots) << 32:  # this system's, flag and tag, allocated
                index = local >> 32
                slot = slots[index]
            else:
                slot = self._slot(handle)  # raises the right error
            generation = local & _U32
            if slot.active != generation or not generation:
                raise self._invalid_generation(handle, slot)
            slot.last = generation
            slot.active = 0
            waiters = slot.waiters
            slot.waiters = None
            slot.attached = None
            if generation < MAX_GENERATION:
                self._put_free(index)
            else:  # the slot retires, as in _complete
                self._retired += 1
            if issued:  # only an object this core made: its teardown runs no code (see above)
                self._triggered = handle
        finally:
            self._release(TOKEN)
            if self._deferred:
                self._drain_deferred()
        if waiters:
            wake_waiters(waiters, None)

    def poison(self, handle: int, reason: str) -> None:
        if not isinstance(reason, str):
            raise TypeError(f"a poison reason is a str, got {type(reason).__name__}")
        reason = cap_reason(reason)
        try:
            with self._lock:
                waiters = self._poison_locked(handle, reason)
        finally:
            if self._deferred:
                self._drain_deferred()
        if waiters:
            wake_waiters(waiters, reason)

    def poison_soon(self, handle: EventHandle, reason: str) -> None:
        """Poison from a finalizer: never blocks and never raises, on any thread, at any time
        (even while this thread holds the lock, when the collector runs inside an operation)."""
        self._deferred.append((handle, cap_reason(reason)))
        self._drain_deferred()

    def _drain_deferred(self) -> None:
        # Whoever holds the lock re-checks the queue after releasing it, so an item appended
        # while the lock is busy is never stranded.
        while self._deferred:
            if not self._lock.acquire(blocking=False):
                return
            wakes: list[tuple[_wake.Held, str]] = []
            try:
                while self._deferred:
                    handle, reason = self._deferred.popleft()
                    try:
                        waiters = self._poison_locked(handle, reason)
                    except EventError:
                        continue  # completed meanwhile: nothing to do
                    if waiters:
                        wakes.append((waiters, reason))
            finally:
                self._lock.release()
            for waiters, reason in wakes:
                wake_waiters(waiters, reason)

    # Reads of a completed generation take no lock: ``last`` only grows, and a poison reason
    # is recorded before ``last`` moves past its generation, so a reader that sees the
    # generation complete also sees its outcome. ``_triggered`` is read without it too: it
    # only ever names a generation that was triggered, which never changes. Anything else
    # goes through the lock.

    def _peek(self, handle: int) -> _Slot | None:
        """The handle's slot, without the lock; ``None`` for a handle the lock path refuses."""
        local = handle - self._prefix
        if 0 <= local < len(self._slots) << 32:
            return self._slots[local >> 32]
        return None

    def status(self, handle: int) -> Answer:
        """The outcome of the handle's generation, or :data:`PENDING` (also for one not issued
        yet); a tagged core's :attr:`stale` for another incarnation's handle."""
        generation = handle & _U32
        slot = self._peek(handle)
        if slot is not None:
            # Read once each: between two reads of ``last`` a trigger may end the generation.
            last, active = slot.last, slot.active
            if generation <= last:
                return self._outcome(slot, generation)
            if generation == active:
                return PENDING
        try:
            with self._lock:  # rare: not issued yet, or stale, or the slot just moved on
                slot = self._slot_if_allocated(handle) if self._tagged else self._slot(handle)
                if generation == 0:
                    return None  # never issued: always complete
                if slot is None:  # not allocated yet
                    return PENDING if self._ahead(None, generation) else self.stale
                if generation <= slot.last:
                    return self._outcome(slot, generation)
                if generation == slot.active or self._ahead(slot, generation):
                    return PENDING
                return self.stale
        except UnknownEventError:
            if self._tagged:
                return self.stale
            raise
        finally:
            if self._deferred:
                self._drain_deferred()

    def awaitable(self, handle: int) -> Answer:
        """Like :meth:`status`, but a generation not issued yet raises
        :class:`InvalidGenerationError` (nothing could ever complete it)."""
        if handle is self._triggered:  # its generation was triggered: that never changes
            return None
        local = handle - self._prefix
        generation = local & _U32  # the prefix's low 32 bits are 0
        if 0 <= local < len(self._slots) << 32:  # as _peek
            slot = self._slots[local >> 32]
            if generation <= slot.last:
                return self._outcome(slot, generation)
            if generation == slot.active:
                return PENDING  # if it completes meanwhile, the await sees it under the lock
        self._acquire(True)
        try:
            slot = self._slot(handle)
            if generation <= slot.last:
                return self._outcome(slot, generation)
            if generation != slot.active:
                raise self._invalid_generation(handle, slot)
            return PENDING
        except UnknownEventError:
            if self._from_another_incarnation(handle):
                return self.stale
            raise
        finally:
            self._release(TOKEN)
            if self._deferred:
                self._drain_deferred()

    def add_waiter(self, handle: int, key: Hashable, callback: WakeCallback) -> Answer:
        """Register ``callback(key, reason)`` for the handle's completion and return
        :data:`PENDING`; or, if the generation is already complete, register nothing and return
        its outcome. A generation not issued yet raises :class:`InvalidGenerationError`."""
        self._acquire(True)
        try:
            local = self._issued_local if handle is self._issued else handle - self._prefix
            if 0 <= local < len(self._slots) << 32:  # as in trigger
                slot = self._slots[local >> 32]
            else:
                slot = self._slot(handle)  # raises the right error
            generation = local & _U32
            if generation <= slot.last:
                return self._outcome(slot, generation)
            if generation != slot.active:
                raise self._invalid_generation(handle, slot)
            slot.waiters = _wake.holding(slot.waiters, key, callback)
        except UnknownEventError:
            if self._from_another_incarnation(handle):
                return self.stale
            raise
        finally:
            self._release(TOKEN)
            if self._deferred:
                self._drain_deferred()
        return PENDING

    def add_early_waiter(self, handle: int, key: Hashable, callback: WakeCallback) -> Answer:
        """:meth:`add_waiter` for another worker's subscription, which cannot be refused: a
        generation this core may still issue (within the lookahead, also in a slot not
        allocated yet) gets its waiter, woken when it completes (or with the shutdown reason).
        Any other generation not issued raises ``InvalidGenerationError`` (``UnknownEventError``
        in a slot not allocated yet)."""
        try:
            with self._lock:
                generation = handle & _U32
                slot = self._slot_if_allocated(handle)
                if slot is not None:
                    if generation <= slot.last:
                        return self._outcome(slot, generation)
                    if generation == slot.active:
                        slot.waiters = _wake.holding(slot.waiters, key, callback)
                        return PENDING
                if not self._ahead(slot, generation):
                    if generation == 0:
                        return None  # never issued: always complete
                    if slot is None:
                        raise UnknownEventError(f"Unknown event {EventHandle.from_int(handle)}")
                    raise self._invalid_generation(handle, slot)
                if self._shutdown_reason is not None:
                    return self._shutdown_reason  # nothing will be issued here any more
                self._early.setdefault(handle, {})[key] = callback
        finally:
            if self._deferred:
                self._drain_deferred()
        return PENDING

    def remove_waiter(self, handle: int, key: Hashable) -> None:
        """Forget a waiter (a cancelled wait); harmless if it was already woken."""
        try:
            with self._lock:
                early = self._early.get(handle)
                if early is not None:
                    early.pop(key, None)
                    if not early:
                        del self._early[handle]
                    return
                slot = self._slot_if_allocated(handle)  # None: an early waiter woken already
                if slot is not None and slot.active == handle & _U32:
                    slot.waiters = _wake.without(slot.waiters, key)
        finally:
            if self._deferred:
                self._drain_deferred()

    def attached(self, handle: int) -> object:
        """What :meth:`new_event` keeps with the handle's pending generation, or ``None`` (also
        for a handle of another system, or one that is not pending)."""
        try:
            with self._lock:
                slot = self._peek(handle)
                if slot is None or slot.active != handle & _U32 or not slot.active:
                    return None
                return slot.attached
        finally:
            if self._deferred:
                self._drain_deferred()

    def check_inputs(self, handles: Iterable[int]) -> None:
        """Merge inputs this core alone can serve: raise :class:`ForeignHandleError` for the
        first handle of another system."""
        low, high = self.system_id << 64, self.system_id + 1 << 64
        for handle in handles:
            if not low <= handle < high:  # compared: no shifted copy of each handle
                try:
                    with self._lock:
                        self._slot(handle)
                finally:
                    if self._deferred:
                        self._drain_deferred()

    def force_shutdown(self, reason: str) -> None:
        reason = cap_reason(reason)
        wakes: list[_wake.Held] = []
        try:
            with self._lock:
                if self._shutdown_reason is not None:
                    return
                self._shutdown_reason = reason
                for index, slot in enumerate(self._slots):
                    if slot.active:
                        handle = self._prefix | index << 32 | slot.active
                        waiters = self._poison_locked(handle, reason)
                        if waiters:
                            wakes.append(waiters)
                wakes.extend(self._early.values())  # generations that will never be issued
                self._early.clear()
                self._free.clear()
        finally:
            if self._deferred:
                self._drain_deferred()
        for waiters in wakes:
            wake_waiters(waiters, reason)

    @property
    def shutdown_reason(self) -> str | None:
        return self._shutdown_reason

    def pending_count(self) -> int:
        """Events pending now (a snapshot: other threads may change it at once)."""
        if self._shutdown_reason is not None:
            return 0
        return len(self._slots) - len(self._free) - self._retired

    def pending_waiters(self) -> list[tuple[EventHandle, list[Hashable]]]:
        """Every pending event and the keys of its waiters, for inspection (O(slots))."""
        try:
            with self._lock:
                return [
                    (
                        int.__new__(EventHandle, self._prefix | index << 32 | slot.active),
                        _wake.waiter_keys(slot.waiters),
                    )
                    for index, slot in enumerate(self._slots)
                    if slot.active
                ]
        finally:
            if self._deferred:
                self._drain_deferred()

    def slot_count(self) -> int:
        """Slots ever allocated: the high-water mark of simultaneously pending events."""
        return len(self._slots)
