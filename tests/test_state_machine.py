"""A Hypothesis state machine running a LocalEventSystem side by side with a small pure-Python
model of the slot table, the FIFO free list, merges (merged completions queued while merges
complete, as the core does) and shutdown. The model predicts every handle, outcome, reason,
error and waiter."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from velo_event import (
    DROPPED_REASON,
    MAX_REASON_LENGTH,
    AlreadyTriggeredError,
    EventError,
    EventHandle,
    EventPoison,
    EventStatus,
    InvalidGenerationError,
    LocalEventSystem,
    SystemShutdownError,
)
from velo_event._wake import waiter_keys  # white-box: a slot holds one waiter or a dict

MAX_GEN = 2**32 - 1
#: Poison reasons, drawn by index so that a failing example prints short; the long ones are
#: capped, and merging them exercises the bounded merge reason.
REASONS = ["L" * (MAX_REASON_LENGTH + 5), "a", "M" * (MAX_REASON_LENGTH - 40), "boom", "", "ünï"]
reasons = st.integers(min_value=0, max_value=len(REASONS) - 1)


# -- the model -------------------------------------------------------------------------------


def cap(reason: str) -> str:
    if len(reason) <= MAX_REASON_LENGTH:
        return reason
    return f"{reason[:MAX_REASON_LENGTH]}… [{len(reason) - MAX_REASON_LENGTH} more characters cut]"


def merged_reason(lines: list[str]) -> str:
    if len(lines) == 1:
        return lines[0]
    parts = ["Multiple merge dependencies failed:"]
    size = len(parts[0])
    for position, line in enumerate(lines):
        size += len(line) + 1
        if size > MAX_REASON_LENGTH and position:
            parts.append(f"… and {len(lines) - position} more failed dependencies")
            break
        parts.append(line)
    return cap("\n".join(parts))


@dataclass
class ModelSlot:
    last: int = 0
    active: int = 0


@dataclass(eq=False)  # identity: merges are waiter keys
class ModelMerge:
    handle: EventHandle
    inputs: list[EventHandle]
    fail_fast: bool
    remaining: int
    failures: list[tuple[int, str]] = field(default_factory=list)
    registered: list[tuple[EventHandle, tuple[ModelMerge, int]]] = field(default_factory=list)
    done: bool = False


Waiters = list[tuple[ModelMerge, int]]


class ModelError(Exception):
    """What the model expects the system to raise: the type and the exact message."""

    def __init__(self, kind: type[EventError], message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message


class Model:
    def __init__(self, system_id: int) -> None:
        self.system_id = system_id
        self.slots: list[ModelSlot] = []
        self.free: deque[int] = deque()
        self.poisons: dict[EventHandle, str] = {}
        self.waiters: dict[EventHandle, Waiters] = {}
        self.shutdown: str | None = None
        self.queue: deque[tuple[EventHandle, str | None]] | None = None
        self.max_pending = 0
        self.retired = 0

    def handle(self, index: int, generation: int) -> EventHandle:
        return EventHandle.from_parts(self.system_id, index, generation, local=True)

    def invalid(self, h: EventHandle) -> ModelError:
        slot = self.slots[h.index]
        active = f"active generation {slot.active}" if slot.active else "no active generation"
        return ModelError(
            InvalidGenerationError, f"Invalid generation {h.generation} for event {h}; {active}"
        )

    # -- operations mirrored from the core --

    def new_event(self) -> EventHandle:
        if self.shutdown is not None:
            raise ModelError(SystemShutdownError, "Event system shutdown in progress")
        if self.free:
            index = self.free.popleft()
        else:
            index = len(self.slots)
            self.slots.append(ModelSlot())
        slot = self.slots[index]
        slot.active = slot.last + 1
        self.max_pending = max(self.max_pending, sum(1 for s in self.slots if s.active))
        return self.handle(index, slot.active)

    def status(self, h: EventHandle) -> EventStatus:
        if h.generation <= self.slots[h.index].last:
            return EventStatus.POISONED if h in self.poisons else EventStatus.READY
        return EventStatus.PENDING

    def _complete(self, h: EventHandle, reason: str | None) -> Waiters:
        slot = self.slots[h.index]
        slot.last, slot.active = h.generation, 0
        if reason is not None:
            self.poisons[h] = reason
        if h.generation < MAX_GEN:
            self.free.append(h.index)
        else:
            self.retired += 1
        return self.waiters.pop(h, [])

    def trigger(self, h: EventHandle) -> None:
        if self.slots[h.index].active != h.generation or not h.generation:
            raise self.invalid(h)
        self._wake(self._complete(h, None), None)

    def poison(self, h: EventHandle, reason: str) -> None:
        reason = cap(reason)
        slot = self.slots[h.index]
        if h.generation == slot.active and h.generation:
            self._wake(self._complete(h, reason), reason)
        elif h.generation <= slot.last:
            if h not in self.poisons:
                raise ModelError(
                    AlreadyTriggeredError,
                    f"Event {h} generation {h.generation} already completed successfully",
                )
        else:
            raise self.invalid(h)

    def force_shutdown(self, reason: str) -> None:
        reason = cap(reason)
        if self.shutdown is not None:
            return
        self.shutdown = reason
        wakes = [
            self._complete(self.handle(index, slot.active), reason)
            for index, slot in enumerate(self.slots)
            if slot.active
        ]
        self.free.clear()
        for waiters in wakes:
            self._wake(waiters, reason)

    def _wake(self, waiters: Waiters, reason: str | None) -> None:
        """Like the core: every waiter is called at once, in registration order."""
        for merge, position in waiters:
            self._input_done(merge, position, reason)

    # -- merges --

    def merge(self, inputs: list[EventHandle], fail_fast: bool) -> EventHandle:
        merged = self.new_event()
        merge = ModelMerge(merged, inputs, fail_fast, len(inputs))
        for position, h in enumerate(inputs):
            key = (merge, position)
            slot = self.slots[h.index]
            if h.generation <= slot.last:
                self._input_done(merge, position, self.poisons.get(h))
            elif h.generation != slot.active:
                error = self.invalid(h)
                self._record(merge, position, f"Merge dependency {h} failed: {error.message}")
                continue
            else:
                self.waiters.setdefault(h, []).append(key)
                merge.registered.append((h, key))
            if merge.done:
                break
        if merge.done:
            self._release(merge)
        return merged

    def _input_done(self, merge: ModelMerge, position: int, reason: str | None) -> None:
        failure = None
        if reason is not None:
            failure = f"Merge dependency {merge.inputs[position]} poisoned: {reason}"
        self._record(merge, position, failure)

    def _release(self, merge: ModelMerge) -> None:
        for h, key in merge.registered:
            if key in self.waiters.get(h, []):
                self.waiters[h].remove(key)
        merge.registered.clear()

    def _record(self, merge: ModelMerge, position: int, failure: str | None) -> None:
        if merge.done:
            return
        merge.remaining -= 1
        if failure is not None:
            merge.failures.append((position, failure))
        outcome: str | None
        if merge.fail_fast and failure is not None:
            outcome = failure
        elif merge.remaining == 0:
            lines = [line for _, line in sorted(merge.failures)]
            outcome = merged_reason(lines) if lines else None
        else:
            return
        merge.done = True
        self._release(merge)
        self._complete_merge(merge.handle, outcome)

    def _complete_merge(self, h: EventHandle, outcome: str | None) -> None:
        """Like the core: a merge completed while merges are being completed is queued (FIFO)."""
        if self.queue is not None:
            self.queue.append((h, outcome))
            return
        self.queue = deque([(h, outcome)])
        try:
            while self.queue:
                merged, merged_outcome = self.queue.popleft()
                try:
                    if merged_outcome is None:
                        self.trigger(merged)
                    else:
                        self.poison(merged, merged_outcome)
                except ModelError:
                    pass  # completed by hand or by shutdown first
        finally:
            self.queue = None


# -- the machine -----------------------------------------------------------------------------


class EventSystemMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.mgr = LocalEventSystem()
        self.model = Model(self.mgr.system_id)
        self.known: list[EventHandle] = []
        self.first_seen: dict[EventHandle, tuple[EventStatus, str | None]] = {}

    def expect(self, expected: ModelError | None, raised: EventError | None) -> None:
        if expected is None:
            assert raised is None, f"unexpected {raised!r}"
        else:
            assert raised is not None, f"expected {expected.kind.__name__}"
            assert type(raised) is expected.kind
            assert str(raised) == expected.message

    def handle_from(self, data: st.DataObject) -> EventHandle:
        h = data.draw(st.sampled_from(self.known))
        variant = data.draw(st.sampled_from(["as is"] * 6 + ["generation 0", "future"]))
        if variant == "generation 0":
            return h.with_generation(0)
        if variant == "future":
            return h.with_generation(min(self.model.slots[h.index].last + 2, MAX_GEN))
        return h

    # -- rules --

    @rule()
    def create(self) -> None:
        expected: ModelError | None = None
        try:
            predicted = self.model.new_event()
        except ModelError as error:
            expected = error
        try:
            h = self.mgr.new_event().handle
        except EventError as error:
            self.expect(expected, error)
            return
        self.expect(expected, None)
        assert h == predicted
        self.known.append(h)

    @rule()
    def create_and_drop_a_guard(self) -> None:
        try:
            predicted = self.model.new_event()
        except ModelError:
            return
        event = self.mgr.new_event()
        event.into_guard()  # dropped at once, armed: reference counting finalizes it here
        self.model.poison(predicted, DROPPED_REASON)
        assert event.handle == predicted
        self.known.append(predicted)

    @precondition(lambda self: self.known)
    @rule(data=st.data())
    def trigger(self, data: st.DataObject) -> None:
        h = self.handle_from(data)
        expected = raised = None
        try:
            self.model.trigger(h)
        except ModelError as error:
            expected = error
        try:
            self.mgr.trigger(h)
        except EventError as error:
            raised = error
        self.expect(expected, raised)

    @precondition(lambda self: self.known)
    @rule(data=st.data(), reason_id=reasons)
    def poison(self, data: st.DataObject, reason_id: int) -> None:
        reason = REASONS[reason_id]
        h = self.handle_from(data)
        expected = raised = None
        try:
            self.model.poison(h, reason)
        except ModelError as error:
            expected = error
        try:
            self.mgr.poison(h, reason)
        except EventError as error:
            raised = error
        self.expect(expected, raised)

    @precondition(lambda self: self.known)
    @rule(data=st.data(), fail_fast=st.booleans())
    def merge(self, data: st.DataObject, fail_fast: bool) -> None:
        size = data.draw(st.integers(min_value=1, max_value=5))
        self.check_merge([self.handle_from(data) for _ in range(size)], fail_fast)

    def check_merge(self, inputs: list[EventHandle], fail_fast: bool) -> None:
        expected = raised = None
        try:
            predicted = self.model.merge(inputs, fail_fast)
        except ModelError as error:
            expected = error
        try:
            merged = self.mgr.merge_events(inputs, fail_fast=fail_fast)
        except EventError as error:
            raised = error
        self.expect(expected, raised)
        if raised is None:
            assert merged == predicted
            self.known.append(merged)

    @precondition(lambda self: any(h in self.model.poisons for h in self.known))
    @rule(data=st.data(), fail_fast=st.booleans())
    def merge_failures(self, data: st.DataObject, fail_fast: bool) -> None:
        """Merges of several poisoned inputs (duplicates too): the multiple-failure reasons."""
        poisoned = [h for h in self.known if h in self.model.poisons]
        inputs = data.draw(st.lists(st.sampled_from(poisoned), min_size=2, max_size=4))
        self.check_merge(inputs, fail_fast)

    @precondition(lambda self: self.known)
    @rule(data=st.data())
    def poll(self, data: st.DataObject) -> None:
        h = self.handle_from(data)
        assert self.mgr.poll(h) is self.model.status(h)

    @precondition(lambda self: self.known)
    @rule(data=st.data())
    def wait_without_blocking(self, data: st.DataObject) -> None:
        h = self.handle_from(data)
        status = self.model.status(h)
        try:
            self.mgr.wait(h, timeout=0)
            assert status is EventStatus.READY
        except EventPoison as poison:
            assert status is EventStatus.POISONED
            assert (poison.handle, poison.reason) == (h, self.model.poisons[h])
        except TimeoutError:
            assert status is EventStatus.PENDING
            assert self.model.slots[h.index].active == h.generation
        except InvalidGenerationError as error:
            assert str(error) == self.model.invalid(h).message

    @precondition(lambda self: len(self.known) >= 12)  # late, so that runs do more first
    @rule(reason_id=reasons)
    def shutdown(self, reason_id: int) -> None:
        reason = REASONS[reason_id]
        self.model.force_shutdown(reason)
        self.mgr.force_shutdown(reason)

    @precondition(lambda self: self.model.free and self.model.shutdown is None)
    @rule()
    def jump_to_the_last_generations(self) -> None:
        """Test hook: the next event on the free list's first slot gets the highest generation,
        and completing it retires the slot."""
        index = self.model.free[0]
        self.model.slots[index].last = MAX_GEN - 1
        self.mgr._core._slots[index].last = MAX_GEN - 1

    # -- invariants --

    @invariant()
    def every_handle_matches_the_model(self) -> None:
        core = self.mgr._core
        for h in self.known:
            status = self.mgr.poll(h)
            reason = self.mgr.poison_reason(h)
            assert status is self.model.status(h), h
            assert reason == self.model.poisons.get(h), h
            if status is not EventStatus.PENDING:
                assert self.first_seen.setdefault(h, (status, reason)) == (status, reason)
            else:
                assert h not in self.first_seen, "a completed generation became pending"
                registered = waiter_keys(core._slots[h.index].waiters)
                assert len(registered) == len(self.model.waiters.get(h, []))

    @invariant()
    def slots_stay_bounded(self) -> None:
        count = self.mgr._core.slot_count()
        assert count == len(self.model.slots)
        assert count <= self.model.max_pending + self.model.retired
        assert list(self.mgr._core._free) == list(self.model.free)


EventSystemMachine.TestCase.settings = settings(
    max_examples=250, stateful_step_count=50, deadline=None
)
TestEventSystemMachine = EventSystemMachine.TestCase
