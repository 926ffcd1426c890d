"""The receive path's per-message work, cut for `send` throughput (issue 13), without a change
of behaviour: the ZeroMQ transport's receive loop is the chosen build's; a row of sends reads
the clock once a send and records its handlers' times at once, exactly as one by one."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import importlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from test_execution_rows import SENDERS, StubOutbound, request

import velo_am
from velo_am import CallContext
from velo_am._codec import pack
from velo_am._handlers import LATENCY_BUCKETS, HandlerRegistry, HandlerStats, HandlerTimer
from velo_am._layers import HandlerExecution, ReceiveWindows
from velo_am._log import RateLimitedLog
from velo_am._stats import new_counters
from velo_am.transport import _zmq

#: What the fake clock's handlers take: each bucket's bound exactly (bisect_left puts it in
#: that bucket), just above it, far below the first and past the last.
BOUNDARY_TIMES = [
    *LATENCY_BUCKETS,
    *(bound * 1.001 for bound in LATENCY_BUCKETS),
    1e-9,
    0.0,
    20.0,
]


#: The packages of velo_am's hot set in use: the pure one, and the compiled one if chosen (a
#: stale compiled build, refused at import, is not; nor under VELO_PURE).
BUILDS = ["velo_am", *(["velo_am._compiled"] if velo_am.COMPILED else [])]


class FakeClock:
    """``time.perf_counter`` for a test: time moves only when a handler says it took some;
    counts its reads."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0
        #: What each run takes as the execution measures it, its end less its start: a float
        #: difference, not quite what the handler was told to take.
        self.taken: list[float] = []

    def take(self, seconds: float) -> None:
        end = self.now + seconds
        self.taken.append(end - self.now)
        self.now = end

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def stats_of(durations: list[float]) -> HandlerStats:
    reference = HandlerTimer()
    for seconds in durations:
        reference.record(seconds, False)
    return reference.snapshot("ref")


def same_stats(got: HandlerStats, want: HandlerStats) -> None:
    assert (got.calls, got.errors, got.bucket_counts) == (
        want.calls,
        want.errors,
        want.bucket_counts,
    )
    assert got.max_seconds == want.max_seconds
    assert got.total_seconds == pytest.approx(want.total_seconds, rel=1e-12, abs=1e-15)


def test_the_zmq_transports_receive_loop_is_the_chosen_builds() -> None:
    package = "velo_am._compiled" if velo_am.COMPILED else "velo_am"
    assert _zmq.Receiver.__module__ == f"{package}._drain"


@contextlib.contextmanager
def inproc_pair(name: str) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """A ROUTER bound at ``inproc://name`` and a DEALER connected to it, closed after."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    try:
        for socket in (router, dealer):
            socket.setsockopt(zmq.LINGER, 0)
        router.bind(f"inproc://{name}")
        dealer.connect(f"inproc://{name}")
        yield router, dealer
    finally:
        router.close()
        dealer.close()
        context.term()


@pytest.mark.parametrize("build", BUILDS)
def test_a_failed_delivery_is_logged_as_the_transports_in_each_build(
    build: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The receive loop's module name differs between the builds; what a user's logging
    configuration sees of it does not: the transport's logger."""
    drain = importlib.import_module(f"{build}._drain")

    def deliver(link: bytes, frames: list[bytes]) -> None:
        raise RuntimeError("deliver failed")

    receiver = drain.Receiver(deliver, deliver, {}, 1 << 20, 4, 0)
    with inproc_pair("receive-path") as (router, dealer):
        dealer.send(b"hello")
        assert router.poll(10_000), "the message never arrived"
        with caplog.at_level(logging.ERROR):
            assert receiver.drain(router, 8, {}, {}) == drain.EMPTY
    failures = [r for r in caplog.records if r.getMessage() == "inbound message handler failed"]
    assert [record.name for record in failures] == [_zmq.__name__]


@pytest.mark.parametrize("build", BUILDS)
def test_a_held_message_waits_for_the_next_drain_which_hands_it_on_first_in_each_build(
    build: str,
) -> None:
    """``hold`` (a look inside a send found a message): received now, handed on by the next
    drain before what follows it; one at a time; nothing waiting, nothing held."""
    drain = importlib.import_module(f"{build}._drain")
    got: list[list[bytes]] = []
    receiver = drain.Receiver(
        lambda link, frames: got.append(frames),
        lambda link, what: got.append([b"refused"]),
        {},
        1 << 20,
        4,
        0,
    )
    with inproc_pair("held") as (router, dealer):
        receiver.hold(router)  # nothing waits: nothing held
        assert receiver.drain(router, 8, {}, {}) == drain.EMPTY and got == []
        for word in (b"one", b"two", b"three"):
            dealer.send(word)
        assert router.poll(10_000), "the messages never arrived"
        receiver.hold(router)
        receiver.hold(router)  # one is held already: no second one received
        assert got == []
        receiver.drain(router, 8, {}, {})  # the held one, and those behind it seen by then
        while len(got) < 3:  # bounded: a drain after a message arrived hands on one at least
            assert router.poll(10_000), f"only {got} arrived"
            receiver.drain(router, 8, {}, {})
        assert got == [[b"one"], [b"two"], [b"three"]]


async def run_sends(
    plan: list[tuple[str, int, bool, float]], recording_takes: float = 0.0
) -> tuple[HandlerRegistry, FakeClock]:
    """Each (handler, sender index, reply, seconds it takes) dispatched, then run in the one
    sync-job callback under a fake clock; the registry (its statistics) and the clock.
    ``recording_takes``: the seconds each recording of a row's times into a timer takes (no
    handler's own time)."""
    clock = FakeClock()
    record_runs = HandlerTimer.record_runs

    def slow_record_runs(
        timer: HandlerTimer, runs: int, seconds: float, longest: float, buckets: list[int]
    ) -> None:
        clock.now += recording_takes
        record_runs(timer, runs, seconds, longest, buckets)

    def takes(payload: Any, context: CallContext) -> None:
        clock.take(payload)

    def fails(payload: Any, context: CallContext) -> None:
        clock.take(payload)
        raise ValueError("failed")

    out = StubOutbound()
    registry = HandlerRegistry()
    for name, fn in {"a": takes, "b": takes, "c": takes, "fail": fails}.items():
        registry.register(name, fn, ordered=False, replace=False)
    receipts = ReceiveWindows(4096, out)  # type: ignore[arg-type]  # a credit every 1,024
    log = RateLimitedLog(logging.getLogger("test_receive_path"), out.worker_id)
    execution = HandlerExecution(registry, out, new_counters(), log, receipts)  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr("time.perf_counter", clock)
        monkeypatch.setattr(HandlerTimer, "record_runs", slow_record_runs)
        for msg_id, (handler, who, reply, seconds) in enumerate(plan, start=1):
            msg = request(SENDERS[who], msg_id, handler, reply, pack(seconds))
            execution.dispatch(SENDERS[who], msg, b"link")
        await asyncio.sleep(0)  # the one sync-job callback
    assert not execution.tasks and receipts.unfinished() == 0  # everything ran and settled
    return registry, clock


def test_a_row_of_sends_reads_the_clock_once_a_send() -> None:
    plan = [("a", 0, False, 1e-6)] * 20
    _, clock = asyncio.run(run_sends(plan))
    # One read as the row starts, then each send's end (the next one's start): not two a send.
    assert clock.reads == len(plan) + 1


def test_a_row_of_sends_times_each_as_one_by_one() -> None:
    plan = [("a", 0, False, seconds) for seconds in BOUNDARY_TIMES]
    registry, clock = asyncio.run(run_sends(plan))
    same_stats(registry.stats()["a"], stats_of(clock.taken))


def test_recording_a_rows_times_is_no_part_of_the_next_send() -> None:
    """A send of another handler records the row before it after its end is read: that
    recording's time is charged to no send (it was to the send after, here ``c``)."""
    plan = [("a", 0, False, 1e-6)] * 5 + [("b", 0, False, 2e-6), ("c", 0, False, 3e-6)]
    registry, clock = asyncio.run(run_sends(plan, recording_takes=1.0))
    stats = registry.stats()
    same_stats(stats["a"], stats_of(clock.taken[:5]))
    same_stats(stats["b"], stats_of(clock.taken[5:6]))
    same_stats(stats["c"], stats_of(clock.taken[6:]))


@pytest.mark.parametrize("build", BUILDS)
def test_the_row_times_put_each_run_in_the_timers_bucket(build: str) -> None:
    """Each bound exactly, just above it, below the first and past the last: the bucket
    ``HandlerTimer.record`` would choose (``bisect_left``), in each build."""
    run_times = importlib.import_module(f"{build}._execution")._RunTimes()
    timer = HandlerTimer()
    for seconds in BOUNDARY_TIMES:
        run_times.add(timer, seconds)
    assert timer.calls == 0  # recorded at the row's end, at once
    run_times.flush()
    same_stats(timer.snapshot("t"), stats_of(BOUNDARY_TIMES))


plans = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "fail"]),
        st.integers(0, 1),
        st.booleans(),
        st.sampled_from(BOUNDARY_TIMES),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(plans)
def test_mixed_rows_time_every_handler_as_one_by_one(
    plan: list[tuple[str, int, bool, float]],
) -> None:
    """Sends and calls of two handlers and a failing one, from two senders (rows broken by a
    sender, a failure, a handler change): each handler's statistics as if recorded one by
    one, the time spent recording them charged to none."""
    registry, clock = asyncio.run(run_sends(plan, recording_takes=7.0))
    got = registry.stats()
    for name in ("a", "b", "fail"):
        runs = [
            seconds
            for (handler, *_), seconds in zip(plan, clock.taken, strict=True)
            if handler == name
        ]
        want = HandlerTimer()
        for seconds in runs:
            want.record(seconds, name == "fail")
        same_stats(got[name], want.snapshot(name))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 30.0) | st.sampled_from(BOUNDARY_TIMES), max_size=50))
def test_a_timer_records_runs_at_once_as_one_by_one(durations: list[float]) -> None:
    timer = HandlerTimer()
    timer.record(0.5, True)  # earlier runs stay counted
    buckets = [bisect.bisect_left(LATENCY_BUCKETS, seconds) for seconds in durations]
    longest = max(durations, default=0.0)
    timer.record_runs(len(durations), sum(durations), longest, buckets)
    want = HandlerTimer()
    want.record(0.5, True)
    for seconds in durations:
        want.record(seconds, False)
    same_stats(timer.snapshot("t"), want.snapshot("t"))
