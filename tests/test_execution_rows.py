"""The sync-job callback of handler execution (the selected build, via velo_am._layers) against
a stub outbound: rows of sends settled at once settle exactly as one by one, a settle that
raises neither double-counts nor strands the queue, and a handler escaping with a
BaseException is settled all the same."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from velo_am import CallContext
from velo_am import _protocol as p
from velo_am._budget import REQUEST_COST
from velo_am._codec import pack
from velo_am._handlers import HandlerRegistry, HandlerSpec
from velo_am._layers import HandlerExecution, ReceiveWindows
from velo_am._log import RateLimitedLog
from velo_am._receipts import ReceiveWindows as PureReceiveWindows
from velo_am._stats import new_counters

WINDOW = 12  # a credit every 3 finished sends
LINK = b"link"
BAD_PAYLOAD = b"\xc1"  # never valid msgpack


@dataclass(frozen=True)
class Sender:
    worker_id: int
    incarnation: int


SENDERS = (Sender(2, 0x22), Sender(5, 0x55))


class StubOutbound:
    """What HandlerExecution and ReceiveWindows use of an Outbound, recording what goes out."""

    worker_id = 3
    incarnation = 0x33
    max_message_size = 1 << 20

    def __init__(self) -> None:
        self.credits: list[tuple[int, p.Message]] = []
        self.replies: list[tuple[int, int]] = []  # (peer, msg_id)
        self.errors: list[tuple[int, int, p.ErrorCode]] = []
        self.fail_credits = False

    def has_link(self, peer_id: int) -> bool:
        return True

    def send_quietly(self, peer_id: int, msg: p.Message, *, dial: bool = True) -> None:
        self.credits.append((peer_id, msg))
        if self.fail_credits:  # what a user transport's send may raise
            raise RuntimeError("transport broke")

    def pack_bounded(self, value: Any, what: str) -> bytes:
        return pack(value)

    def reply(self, peer: Sender, link: object, msg_id: int, body: bytes) -> None:
        self.replies.append((peer.worker_id, msg_id))

    def reply_error(
        self, peer: Sender, link: object, msg_id: int, code: p.ErrorCode, *args: Any, **kw: Any
    ) -> None:
        self.errors.append((peer.worker_id, msg_id, code))


class Stop(BaseException):
    """Neither an Exception nor a cancellation (as KeyboardInterrupt is not), but one the
    event loop hands to its exception handler instead of ending the test."""


@dataclass
class Setup:
    out: StubOutbound
    counters: dict[str, int]
    receipts: Any
    execution: Any
    ran: list[int]
    gate: asyncio.Event
    escaped: list[BaseException]


def make(handlers: dict[str, Callable[..., Any]]) -> Setup:
    out = StubOutbound()
    registry = HandlerRegistry()
    for name, fn in handlers.items():
        registry.register(name, fn, ordered=False, replace=False)
    counters = new_counters()
    receipts = ReceiveWindows(WINDOW, out)  # type: ignore[arg-type]
    log = RateLimitedLog(logging.getLogger("test_execution_rows"), out.worker_id)
    execution = HandlerExecution(registry, out, counters, log, receipts)  # type: ignore[arg-type]
    escaped: list[BaseException] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, context: escaped.append(context["exception"])
    )
    return Setup(out, counters, receipts, execution, [], asyncio.Event(), escaped)


def request(sender: Sender, msg_id: int, handler: str, reply: bool, payload: bytes) -> p.Request:
    return p.Request(sender.worker_id, sender.incarnation, 0x33, msg_id, handler, reply, payload)


async def settled(setup: Setup, predicate: Callable[[], bool], what: str = "settled") -> None:
    """Yield to the loop until ``predicate`` holds (a bounded number of turns, no clock)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not {what} within 1000 loop turns: {setup}")


# Each job: (sender index, kind); a call or a send to a handler that returns, raises, returns
# an awaitable (finishing only once the gate opens), or a payload that does not decode.
KINDS = ("ok", "fail", "async", "bad")
jobs_strategy = st.lists(
    st.tuples(st.integers(0, 1), st.sampled_from(KINDS), st.booleans()), max_size=40
)


def run_rows(jobs: list[tuple[int, str, bool]]) -> None:
    async def main() -> None:
        async def later(msg_id: int) -> None:
            await setup.gate.wait()
            setup.ran.append(msg_id)

        def ok(payload: Any, context: CallContext) -> None:
            setup.ran.append(context.message_id)

        def fail(payload: Any, context: CallContext) -> None:
            raise ValueError("handler failed")

        def awaitable(payload: Any, context: CallContext) -> Coroutine[Any, Any, None]:
            return later(context.message_id)

        setup = make({"ok": ok, "fail": fail, "async": awaitable})
        budget = setup.receipts.budget
        # The reference: the same requests received, then finished one by one, in the order
        # they finish (sync handlers in the callback, awaitable results after the gate).
        reference_out = StubOutbound()
        reference = PureReceiveWindows(WINDOW, reference_out)  # type: ignore[arg-type]
        msgs = []
        for msg_id, (who, kind, reply) in enumerate(jobs, start=1):
            payload = BAD_PAYLOAD if kind == "bad" else pack([msg_id] * (msg_id % 5))
            msg = request(SENDERS[who], msg_id, "ok" if kind == "bad" else kind, reply, payload)
            msgs.append((SENDERS[who], kind, msg))
            if not reply:
                reference.received(SENDERS[who], msg_id)
            setup.execution.dispatch(SENDERS[who], msg, LINK)
        sync = [(s, m) for s, kind, m in msgs if kind != "async"]
        later_ones = [(s, m) for s, kind, m in msgs if kind == "async"]
        await asyncio.sleep(0)  # the one sync-job callback, scheduled at the first dispatch
        for sender, msg in sync:
            if not msg.reply:
                reference.finished(sender)
        assert setup.out.credits == reference_out.credits
        for sender in SENDERS:  # only the awaitable results still hold budget and a place
            held = [len(m.payload) + REQUEST_COST for s, m in later_ones if s is sender]
            assert budget.held(sender.worker_id) == sum(held)
        assert setup.receipts.unfinished() == sum(not m.reply for _, m in later_ones)
        count = {kind: sum(k == kind for _, k, _ in msgs) for kind in KINDS}
        assert setup.counters["requests_handled"] == count["ok"]
        assert setup.counters["requests_failed"] == count["fail"]
        setup.gate.set()
        await settled(setup, lambda: not setup.execution.tasks)
        for sender, msg in later_ones:
            if not msg.reply:
                reference.finished(sender)
        assert setup.out.credits == reference_out.credits
        assert budget.held() == 0 and setup.receipts.unfinished() == 0
        assert setup.counters["requests_handled"] == count["ok"] + count["async"]
        assert setup.counters["requests_failed"] == count["fail"]
        ran = sorted(m.msg_id for _, kind, m in msgs if kind in ("ok", "async"))
        assert sorted(setup.ran) == ran
        calls = {m.msg_id for _, m in sync + later_ones if m.reply}
        answered = {msg_id for _, msg_id in setup.out.replies}
        answered |= {msg_id for _, msg_id, _ in setup.out.errors}
        assert answered == calls
        assert setup.escaped == []

    asyncio.run(main())


@settings(max_examples=150, deadline=None)
@given(jobs_strategy)
def test_rows_of_mixed_requests_settle_exactly_as_one_by_one(
    jobs: list[tuple[int, str, bool]],
) -> None:
    run_rows(jobs)


def test_a_hand_made_mix_of_two_senders_settles_as_one_by_one() -> None:
    a, b = 0, 1
    run_rows(
        [(a, "ok", False)] * 4
        + [(b, "ok", False), (a, "ok", False), (a, "bad", False), (a, "ok", False)]
        + [(a, "ok", True), (a, "ok", False), (a, "fail", False), (a, "async", False)]
        + [(b, "ok", False)] * 7
    )


def test_a_settle_that_raises_neither_counts_twice_nor_strands_the_jobs_left() -> None:
    """Five sends, a credit due every three: the transport raises on both credits."""

    async def main() -> None:
        setup = make({"ok": lambda payload, context: setup.ran.append(context.message_id)})
        setup.out.fail_credits = True
        sender = SENDERS[0]
        for msg_id in range(1, 6):
            setup.execution.dispatch(sender, request(sender, msg_id, "ok", False, b"\x90"), LINK)
        await settled(setup, lambda: len(setup.ran) == 5, "all run (jobs stranded)")
        assert setup.ran == [1, 2, 3, 4, 5]
        assert len(setup.escaped) == 2
        assert setup.counters["requests_handled"] == 5
        assert setup.receipts.budget.held() == 0 and setup.receipts.unfinished() == 0
        credited = [msg.unfinished for _, msg in setup.out.credits]  # type: ignore[attr-defined]
        assert credited == [2, 0], "a credit for sends that had not run"
        assert all(isinstance(error, RuntimeError) for error in setup.escaped)

    asyncio.run(main())


def test_a_handler_escaping_with_a_base_exception_is_settled_and_the_rest_run() -> None:
    def stop(payload: Any, context: CallContext) -> None:
        raise Stop

    async def main() -> None:
        setup = make(
            {"stop": stop, "ok": lambda payload, context: setup.ran.append(context.message_id)}
        )
        sender = SENDERS[1]
        dispatch = setup.execution.dispatch
        dispatch(sender, request(sender, 1, "ok", False, b"\x90"), LINK)
        dispatch(sender, request(sender, 2, "stop", False, b"\x90"), LINK)
        dispatch(sender, request(sender, 3, "stop", True, b"\x90"), LINK)
        dispatch(sender, request(sender, 4, "ok", False, b"\x90"), LINK)
        await settled(setup, lambda: setup.ran == [1, 4])
        assert [type(error) for error in setup.escaped] == [Stop, Stop]
        assert setup.receipts.budget.held() == 0, "the budget of a stopped handler leaked"
        assert setup.receipts.unfinished() == 0, "a stopped send stayed unfinished"
        assert setup.counters["requests_failed"] == 2
        assert setup.counters["requests_handled"] == 2
        assert setup.out.errors == [(5, 3, p.ErrorCode.HANDLER_ERROR)]

    asyncio.run(main())


def test_dispatch_reads_the_registry_through_a_live_read_only_view() -> None:
    """The registry's ``by_name`` cannot be written past ``register``'s checks, and a handler
    registered after the execution was made (or unregistered) is what dispatch finds."""

    async def main() -> None:
        setup = make({})
        registry = HandlerRegistry()
        log = RateLimitedLog(logging.getLogger("test_execution_rows"), 3)
        out, counters, receipts = setup.out, setup.counters, setup.receipts
        execution = HandlerExecution(registry, out, counters, log, receipts)  # type: ignore[arg-type]
        spec = HandlerSpec("_reserved", lambda payload, context: None, False, False)
        with pytest.raises(TypeError):
            registry.by_name["_reserved"] = spec  # type: ignore[index]
        assert "_reserved" not in registry.by_name
        sender = SENDERS[0]
        execution.dispatch(sender, request(sender, 1, "late", True, b"\x90"), LINK)
        assert setup.out.errors == [(2, 1, p.ErrorCode.HANDLER_NOT_FOUND)]
        registry.register("late", lambda payload, context: 7, ordered=False, replace=False)
        execution.dispatch(sender, request(sender, 2, "late", True, b"\x90"), LINK)
        await settled(setup, lambda: setup.out.replies == [(2, 2)])
        registry.unregister("late")
        execution.dispatch(sender, request(sender, 3, "late", True, b"\x90"), LINK)
        assert setup.out.errors[1:] == [(2, 3, p.ErrorCode.HANDLER_NOT_FOUND)]

    asyncio.run(main())
