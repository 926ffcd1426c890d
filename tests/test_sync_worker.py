"""SyncWorker, the blocking API: workers on real sockets used from plain threads in one process,
and scripts that run one as their own OS process (one of them forgets to close it). Every
wait has a deadline; nothing sleeps to synchronise."""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Script

from velo_am import (
    AMError,
    CallContext,
    HandlerNotFound,
    PeerUnreachable,
    RemoteError,
    SyncEvents,
    SyncWorker,
    WorkerClosed,
)
from velo_event import (
    DROPPED_REASON,
    EventError,
    EventGuard,
    EventHandle,
    EventManager,
    EventPoison,
    EventStatus,
    InvalidGenerationError,
    OutcomeUnknown,
    SystemShutdownError,
)

pytestmark = pytest.mark.timeout(90)

DEADLINE = 10.0
# Lenient liveness: these tests must not lose a peer to a busy machine; closes are goodbyes.
OPTIONS: dict[str, Any] = {"heartbeat_interval": 0.25, "heartbeat_timeout": 3.0}
PENDING, READY, POISONED = EventStatus.PENDING, EventStatus.READY, EventStatus.POISONED


def until(predicate: Callable[[], bool], within: float = DEADLINE) -> None:
    """Poll state that offers no notification of its own, with a deadline."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met within {within} s"
        time.sleep(0.005)


class Threads:
    """Plain threads whose outcomes (a result or an exception) are kept; joined by a deadline."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._outcomes: dict[int, object] = {}

    def start(self, fn: Callable[..., object], *args: object) -> None:
        index = len(self._threads)

        def run() -> None:
            try:
                self._outcomes[index] = fn(*args)
            except BaseException as error:
                self._outcomes[index] = error

        thread = threading.Thread(target=run, daemon=True)
        self._threads.append(thread)
        thread.start()

    def join(self, within: float = DEADLINE) -> list[object]:
        deadline = time.monotonic() + within
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not [thread for thread in self._threads if thread.is_alive()], "still running"
        return [self._outcomes[index] for index in range(len(self._threads))]


def loop_threads() -> set[str]:
    return {thread.name for thread in threading.enumerate() if thread.name.startswith("velo-am")}


def poison_reason(outcome: object) -> str:
    assert isinstance(outcome, EventPoison), repr(outcome)
    return outcome.reason


def unknown_reason(outcome: object) -> str:
    """Why a wait ended without an outcome (``OutcomeUnknown``)."""
    assert isinstance(outcome, OutcomeUnknown), repr(outcome)
    return outcome.reason


@pytest.fixture
def make() -> Iterator[Callable[..., SyncWorker]]:
    """SyncWorkers closed after the test; their loop threads must all have ended."""
    made: list[SyncWorker] = []

    def create(**options: Any) -> SyncWorker:
        worker = SyncWorker(**{**OPTIONS, **options})
        made.append(worker)
        return worker

    yield create
    for worker in made:
        worker.close(grace=0)
    assert not loop_threads() & {f"velo-am-{worker.worker_id:#x}" for worker in made}


@pytest.fixture
def pair(make: Callable[..., SyncWorker]) -> tuple[SyncWorker, SyncWorker]:
    a, b = make(), make()
    assert b.connect(a.address) == a.worker_id
    return a, b


# -- calls and handlers -----------------------------------------------------------------------


def test_call_send_and_handlers(pair: tuple[SyncWorker, SyncWorker]) -> None:
    a, b = pair
    received: list[tuple[Any, int]] = []
    recorded = threading.Event()

    @a.handler("add")
    def add(payload: Any, ctx: CallContext) -> int:
        return int(payload[0] + payload[1])

    @a.handler("echo")
    async def echo(payload: Any, ctx: CallContext) -> Any:
        await asyncio.sleep(0)
        return payload

    @a.handler("record")
    def record(payload: Any, ctx: CallContext) -> None:
        received.append((payload, ctx.sender))
        recorded.set()

    @a.handler("boom")
    def boom(payload: Any, ctx: CallContext) -> None:
        raise KeyError("missing shard")

    assert b.call(a.worker_id, "add", [2, 3]) == 5
    assert b.call(a.worker_id, "echo", {"x": b"\x00", "y": [1, "z"]}) == {
        "x": b"\x00",
        "y": [1, "z"],
    }
    b.send(a.worker_id, "record", "hello")
    assert recorded.wait(DEADLINE)
    assert received == [("hello", b.worker_id)]
    with pytest.raises(RemoteError) as caught:
        b.call(a.worker_id, "boom")
    assert caught.value.error_type == "KeyError" and "missing shard" in caught.value.message
    with pytest.raises(HandlerNotFound, match="nope"):
        b.call(a.worker_id, "nope")
    with pytest.raises(PeerUnreachable, match="unknown worker"):
        b.call(0x999, "add", [1, 2])
    with pytest.raises(ValueError, match="already registered"):
        a.register_handler("add", add)
    assert a.peers[b.worker_id].state == "alive" and a.is_connected(b.worker_id)
    assert b.stats()["calls_sent"] == 4 and a.stats()["requests_handled"] >= 3


def test_many_threads_calling_at_once_all_get_their_answers(
    pair: tuple[SyncWorker, SyncWorker],
) -> None:
    a, b = pair
    a.register_handler("square", lambda n, ctx: n * n)
    threads, calls = Threads(), 200

    def hammer(base: int) -> list[int]:
        return [b.call(a.worker_id, "square", base + k) for k in range(calls)]

    for i in range(8):
        threads.start(hammer, i * 1000)
    outcomes = threads.join(within=60)
    assert outcomes == [[(i * 1000 + k) ** 2 for k in range(calls)] for i in range(8)]
    assert b.stats()["calls_in_flight"] == 0


def test_blocking_methods_inside_a_handler_raise_instead_of_deadlocking(
    pair: tuple[SyncWorker, SyncWorker],
) -> None:
    a, b = pair
    pending = a.events.new_event()

    @a.handler("reenter")
    def reenter(payload: Any, ctx: CallContext) -> list[str]:
        attempts: list[Callable[[], object]] = [
            lambda: a.call(ctx.sender, "anything"),
            lambda: a.wait_for_peers(1),
            lambda: a.events.wait(pending.handle, timeout=1.0),
            lambda: a.events.poll_remote(pending.handle),
        ]
        errors = []
        for attempt in attempts:
            try:
                attempt()
            except RuntimeError as error:
                errors.append(f"{isinstance(error, EventError)} {error}")
        # Reads work here (on the loop thread, they run directly).
        errors.append(a.peers[ctx.sender].state)
        return errors

    started = time.monotonic()
    answer = b.call(a.worker_id, "reenter", timeout=DEADLINE)
    assert time.monotonic() - started < 1.0  # refused at once, not after a timeout
    assert len(answer) == 5 and answer[-1] == "alive", answer
    assert all("loop thread" in text for text in answer[:2]), answer
    assert answer[2].startswith("True ") and "own loop" in answer[2], answer
    assert "loop thread" in answer[3], answer
    assert b.call(a.worker_id, "reenter") == answer  # still serving: nothing deadlocked
    assert a.events.poll(pending.handle) is PENDING


def test_wait_on_a_thread_running_an_event_loop_is_refused(make: Callable[..., SyncWorker]) -> None:
    worker = make()
    event = worker.events.new_event()

    async def main() -> None:
        worker.events.wait(event.handle, timeout=1.0)

    with pytest.raises(EventError, match="running loop") as caught:
        asyncio.run(main())
    assert isinstance(caught.value, RuntimeError)
    assert worker.events.poll(event.handle) is PENDING


# -- distributed events from plain threads ---------------------------------------------------


def test_waits_from_many_threads_end_when_another_thread_triggers(
    pair: tuple[SyncWorker, SyncWorker],
) -> None:
    a, b = pair
    events = [a.events.new_event() for _ in range(2)]
    threads = Threads()
    for i in range(8):
        threads.start(b.events.wait, events[i % 2].handle, DEADLINE)
    until(lambda: a.events.stats()["served"] == 2)  # one subscription per handle, however many
    assert b.events.stats()["subscriptions_sent"] == 2
    assert [b.events.poll(event.handle) for event in events] == [PENDING, PENDING]

    def trigger_all() -> None:
        for event in events:
            event.trigger()

    trigger = threading.Thread(target=trigger_all)
    trigger.start()
    assert threads.join() == [None] * 8
    trigger.join(DEADLINE)
    assert [b.events.poll(event.handle) for event in events] == [READY, READY]
    b.events.wait(events[0].handle, timeout=0)  # from the cache: no traffic
    assert b.events.stats()["subscriptions_sent"] == 2


def test_poison_reaches_every_waiter_and_a_timeout_leaves_the_event_pending(
    pair: tuple[SyncWorker, SyncWorker],
) -> None:
    a, b = pair
    event = a.events.new_event()
    handle = event.handle
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="still pending"):
        b.events.wait(handle, timeout=0.2)
    assert time.monotonic() - started >= 0.19
    assert b.events.poll(handle) is PENDING and a.events.poll(handle) is PENDING
    threads = Threads()
    for _ in range(4):
        threads.start(b.events.wait, handle)
    threads.start(a.events.wait, handle)
    until(lambda: a.events.stats()["served"] == 1)
    reason = "disk full: /data/shard-3"
    # A remote poison from yet another thread: forwarded to the owner, which tells everyone.
    poisoner = threading.Thread(target=b.events.poison, args=(handle, reason))
    poisoner.start()
    outcomes = threads.join()
    poisoner.join(DEADLINE)
    assert [poison_reason(outcome) for outcome in outcomes] == [reason] * 5
    assert all(isinstance(o, EventPoison) and o.handle == handle for o in outcomes)
    assert a.events.poison_reason(handle) == reason
    assert b.events.poll(handle) is POISONED and b.events.poison_reason(handle) == reason


@pytest.mark.parametrize("fail", [None, "tokenizer.json: checksum mismatch"])
def test_merge_of_a_local_and_a_remote_event(
    pair: tuple[SyncWorker, SyncWorker], fail: str | None
) -> None:
    a, b = pair
    remote, local = a.events.new_event(), b.events.new_event()
    merged = b.events.merge_events([local.handle, remote.handle])
    threads = Threads()
    threads.start(b.events.wait, merged, DEADLINE)
    until(lambda: a.events.stats()["served"] == 1)
    local.trigger()
    assert b.events.poll(merged) is PENDING
    if fail is None:
        completer = threading.Thread(target=remote.trigger)
    else:
        completer = threading.Thread(target=remote.poison, args=(fail,))
    completer.start()
    [outcome] = threads.join()
    completer.join(DEADLINE)
    if fail is None:
        assert outcome is None and b.events.poll(merged) is READY
    else:
        reason = poison_reason(outcome)
        assert fail in reason and str(remote.handle) in reason


def test_confirmed_completion_and_remote_poll(pair: tuple[SyncWorker, SyncWorker]) -> None:
    a, b = pair
    first, second = a.events.new_event(), a.events.new_event()
    assert b.events.poll_remote(first.handle) is PENDING
    b.events.trigger_confirmed(first.handle)
    assert a.events.poll(first.handle) is READY
    with pytest.raises(InvalidGenerationError):  # the owner's verdict on a second trigger
        b.events.trigger_confirmed(first.handle, timeout=DEADLINE)
    b.events.poison_confirmed(second.handle, "no quorum")
    assert b.events.poll_remote(second.handle) is POISONED
    assert b.events.poison_reason(second.handle) == "no quorum"
    assert a.events.poison_reason(second.handle) == "no quorum"


def test_labels_events_made_by_another_worker_and_handler_stats(
    make: Callable[..., SyncWorker],
) -> None:
    seed = make()
    a, b = make(peers=[seed.address]), make(peers=[seed.address])
    assert a.wait_for_peer(b.worker_id, timeout=DEADLINE).state == "alive"  # via the mesh
    with pytest.raises(PeerUnreachable):
        a.wait_for_peer(0x999, timeout=0.1)
    # b makes events owned by a (as a script that will not stay would), and merges them there.
    first = b.events.new_event_on(a.worker_id, label="weights")
    second = b.events.new_event_on(a.worker_id)
    merged = b.events.merge_events_on(a.worker_id, [first, second], label="all inputs")
    assert merged >> 64 == first >> 64 == a.worker_id
    assert a.events.label_of(first) == "weights" and a.events.label_of(second) is None
    assert a.events.labels() == {first: "weights", merged: "all inputs"}
    local = a.events.new_event(label="local")
    assert a.events.label_of(local.handle) == "local"
    b.events.trigger(first)
    b.events.trigger_confirmed(second)
    a.events.wait(merged, timeout=DEADLINE)
    assert a.events.labels() == {local.handle: "local"}  # labels last while events pend
    a.register_handler("double", lambda n, ctx: 2 * n)
    assert [b.call(a.worker_id, "double", n) for n in range(3)] == [0, 2, 4]
    stats = a.handler_stats()
    assert stats["double"].calls == 3 and stats["double"].errors == 0
    assert "_ev.new" not in stats and a.handler_stats(internal=True)["_ev.new"].calls == 2
    assert a.state == "running"


def test_owner_closing_poisons_the_waiters_naming_it(make: Callable[..., SyncWorker]) -> None:
    a, b = make(), make()
    b.connect(a.address)
    event = a.events.new_event()
    threads = Threads()
    for _ in range(4):
        threads.start(b.events.wait, event.handle)
    until(lambda: a.events.stats()["served"] == 1)
    started = time.monotonic()
    a.close()
    outcomes = threads.join(within=5.0)
    assert time.monotonic() - started < 5.0
    reasons = [poison_reason(outcome) for outcome in outcomes]
    assert all(f"{a.worker_id:#x}" in reason for reason in reasons), reasons
    until(lambda: b.peers[a.worker_id].state == "closed")
    with pytest.raises(PeerUnreachable, match="closed"):
        b.call(a.worker_id, "anything")


def test_closing_the_waiting_worker_ends_its_waits_and_calls(
    make: Callable[..., SyncWorker],
) -> None:
    a, b = make(), make()
    b.connect(a.address)

    @a.handler("slow")
    async def slow(seconds: float, ctx: CallContext) -> str:
        await asyncio.sleep(seconds)
        return "done"

    event = a.events.new_event()
    waits, calls, reads = Threads(), Threads(), Threads()
    for _ in range(4):
        waits.start(b.events.wait, event.handle)
        calls.start(b.call, a.worker_id, "slow", 60.0)
    until(lambda: a.stats()["handlers_running"] == 4 and a.events.stats()["served"] == 1)

    def read_until_closed() -> int:
        """Reads go on through the close: on the loop while there is one, then directly."""
        count, deadline = 0, time.monotonic() + DEADLINE
        while f"velo-am-{b.worker_id:#x}" in loop_threads() and time.monotonic() < deadline:
            assert a.worker_id in b.peers and b.stats()["calls_sent"] == 4
            count += 1
        return count

    for _ in range(2):
        reads.start(read_until_closed)
    closers = Threads()
    for _ in range(3):  # closing from several threads at once: all return once it is closed
        closers.start(b.close)
    assert closers.join() == [None] * 3
    assert b.closed and f"velo-am-{b.worker_id:#x}" not in loop_threads()
    # Closing gave up the waits on a's event; it recorded no outcome for it.
    assert all(f"{b.worker_id:#x}" in unknown_reason(outcome) for outcome in waits.join())
    assert all(isinstance(outcome, WorkerClosed) for outcome in calls.join()), calls
    assert all(isinstance(count, int) and count > 0 for count in reads.join())
    # Once closed: other workers' handles are refused, this worker's events are poisoned.
    with pytest.raises(WorkerClosed):
        b.events.wait(event.handle, timeout=1.0)
    with pytest.raises(WorkerClosed):
        b.events.trigger(event.handle)
    assert a.events.poll(event.handle) is PENDING


# -- lifecycle --------------------------------------------------------------------------------


def test_context_manager_closes_and_using_after_close_raises(
    make: Callable[..., SyncWorker],
) -> None:
    peer = make()
    with SyncWorker(**OPTIONS) as worker:
        assert worker.connect(peer.address) == peer.worker_id
        event = worker.events.new_event()
        assert not worker.closed and repr(worker).endswith(f"started at {worker.address}>")
    assert worker.closed and f"velo-am-{worker.worker_id:#x}" not in loop_threads()
    assert "closed" in repr(worker) and worker.state == "closed"
    worker.close()
    worker.close(grace=0)  # closing again is harmless
    with pytest.raises(WorkerClosed):
        worker.call(peer.worker_id, "anything")
    with pytest.raises(WorkerClosed):
        worker.connect(peer.address)
    with pytest.raises(WorkerClosed):
        worker.send(peer.worker_id, "anything")
    with pytest.raises(WorkerClosed):
        worker.wait_for_peers(1, timeout=1.0)
    with pytest.raises(WorkerClosed):
        worker.events.poll_remote(event.handle)
    with pytest.raises(WorkerClosed):
        worker.start()
    with pytest.raises(SystemShutdownError):
        worker.events.new_event()
    with pytest.raises(EventPoison, match="shutting down"):  # closing poisoned its events
        worker.events.wait(event.handle, timeout=1.0)
    assert worker.peers[peer.worker_id].state in ("alive", "draining", "closed")
    assert worker.stats()["calls_sent"] == 0
    until(lambda: peer.peers[worker.worker_id].state == "closed")


def test_start_false_registers_handlers_before_joining(make: Callable[..., SyncWorker]) -> None:
    seed = make()
    late = make(start=False, peers=[seed.address])
    assert late.address == "" and not seed.peers
    late.register_handler("hello", lambda payload, ctx: f"hello {payload}")
    late.start()
    # The seed knows the newcomer as soon as start() returns, and its handler is there.
    assert seed.call(late.worker_id, "hello", "seed") == "hello seed"
    assert late.address.startswith("tcp://127.0.0.1:")
    with pytest.raises(AMError, match="already started"):
        late.start()


def test_remote_handles_need_a_started_worker(make: Callable[..., SyncWorker]) -> None:
    owner = make()
    event = owner.events.new_event()
    idle = make(start=False)
    with pytest.raises(AMError, match="not started"):
        idle.events.wait(event.handle, timeout=1.0)
    with pytest.raises(AMError, match="not started"):
        idle.events.merge_events([event.handle])
    idle.start()
    idle.connect(owner.address)
    waiting = Threads()
    waiting.start(idle.events.wait, event.handle, DEADLINE)
    until(lambda: owner.events.stats()["served"] == 1)
    event.trigger()
    assert waiting.join() == [None]


def test_a_failed_start_raises_and_leaves_no_thread() -> None:
    before = loop_threads()
    with pytest.raises(PeerUnreachable):
        SyncWorker(peers=["tcp://127.0.0.1:9"], join_timeout=0.3, **OPTIONS)
    with pytest.raises(TypeError):
        SyncWorker(no_such_option=1)
    assert loop_threads() <= before


def test_peer_lost_callbacks_run_on_the_loop_thread(make: Callable[..., SyncWorker]) -> None:
    a, b = make(), make()
    b.connect(a.address)
    seen: list[tuple[int, str, str]] = []
    called = threading.Event()

    def lost(worker_id: int, reason: str) -> None:
        seen.append((worker_id, reason, threading.current_thread().name))
        called.set()

    unsubscribe = a.on_peer_lost(lost)
    b.close()
    assert called.wait(DEADLINE)
    [(worker_id, reason, thread)] = seen
    assert worker_id == b.worker_id and "closed" in reason
    assert thread == f"velo-am-{a.worker_id:#x}"
    unsubscribe()


def test_serve_forever_returns_when_a_handler_closes_the_worker(
    make: Callable[..., SyncWorker],
) -> None:
    server, client = make(), make()
    client.connect(server.address)

    @server.handler("stop")
    def stop(payload: Any, ctx: CallContext) -> str:
        server.close()  # on the loop thread: starts the close, which waits for this handler
        return "closing"

    serving = Threads()
    serving.start(server.serve_forever)
    assert client.call(server.worker_id, "stop") == "closing"
    assert serving.join() == [None]
    server.close()
    assert server.closed and f"velo-am-{server.worker_id:#x}" not in loop_threads()
    until(lambda: client.peers[server.worker_id].state == "closed")


def test_events_are_an_event_manager_with_guards(pair: tuple[SyncWorker, SyncWorker]) -> None:
    a, b = pair
    assert isinstance(b.events, EventManager) and isinstance(b.events, SyncEvents)

    def stage(manager: EventManager) -> EventHandle:
        """Written against EventManager only."""
        with manager.new_event().into_guard("stage failed") as guard:
            return guard.handle  # left without completing it: the guard poisons it

    handle = stage(b.events)
    assert b.events.poison_reason(handle) == "stage failed"
    event = b.events.new_event()
    assert event.manager is b.events
    # A guard over another worker's event, dropped on a plain thread: the owner hears it.
    remote = a.events.new_event()
    dropper = threading.Thread(target=lambda: EventGuard(b.events, remote.handle))
    dropper.start()
    dropper.join(DEADLINE)
    gc.collect()
    until(lambda: a.events.poll(remote.handle) is POISONED)
    assert a.events.poison_reason(remote.handle) == DROPPED_REASON


def test_a_forgotten_sync_worker_is_closed_when_collected(
    make: Callable[..., SyncWorker],
) -> None:
    peer = make()

    def forget() -> int:
        worker = SyncWorker(peers=[peer.address], **OPTIONS)
        return worker.worker_id

    with pytest.warns(ResourceWarning, match="was not closed"):
        worker_id = forget()
        gc.collect()
    until(lambda: peer.peers[worker_id].state == "closed")
    until(lambda: f"velo-am-{worker_id:#x}" not in loop_threads())


# -- scripts as OS processes ------------------------------------------------------------------

FORGETS_TO_CLOSE = """\
import sys
from velo_am import SyncWorker

worker = SyncWorker(peers=sys.argv[1:], heartbeat_interval=0.25, heartbeat_timeout=3.0)
go, left = worker.events.new_event(), worker.events.new_event()
worker.register_handler("served", lambda payload, ctx: worker.events.stats()["served"])
print(f"READY {worker.worker_id:#x} {worker.address}", flush=True)
print(f"HANDLE {go.handle} {left.handle}", flush=True)
worker.events.wait(go.handle, timeout=30)
print("EXITING", flush=True)
# No close(): the interpreter's exit closes the worker, gracefully.
"""

SERVES = """\
import signal
import sys
from velo_am import SyncWorker

with SyncWorker(peers=sys.argv[1:], heartbeat_interval=0.25, heartbeat_timeout=3.0) as worker:
    worker.register_handler("ping", lambda payload, ctx: payload)
    # Whether serve_forever() took SIGTERM over yet (before, SIGTERM would just kill).
    worker.register_handler("serving", lambda p, ctx: callable(signal.getsignal(signal.SIGTERM)))
    print(f"READY {worker.worker_id:#x} {worker.address}", flush=True)
    worker.serve_forever()
print("CLOSED", flush=True)
"""


def assert_quiet(script: Script) -> None:
    """No traceback and no warning on stderr (``-W default`` shows even ResourceWarnings)."""
    stderr = script.stderr()
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr


def test_a_script_that_forgets_close_exits_promptly_with_a_goodbye(
    make: Callable[..., SyncWorker], launch: Callable[..., Script], tmp_path: Path
) -> None:
    here = make()
    path = tmp_path / "forgets_to_close.py"
    path.write_text(FORGETS_TO_CLOSE)
    script = launch("-W", "default", str(path), here.address)
    worker_id, _ = script.ready()
    go, left = map(EventHandle.parse, script.expect("HANDLE").split()[1:])
    waiting = Threads()
    waiting.start(here.events.wait, left)
    until(lambda: here.call(worker_id, "served") == 1)
    here.events.trigger_confirmed(go)
    script.expect("EXITING")
    started = time.monotonic()
    assert script.wait(timeout=DEADLINE) == 0
    assert time.monotonic() - started < 5.0
    # Its pending event was poisoned by the close, and the peer saw a goodbye, not a loss.
    [outcome] = waiting.join()
    assert poison_reason(outcome) == f"worker {worker_id:#x} shutting down"
    until(lambda: here.peers[worker_id].state != "alive")
    assert here.peers[worker_id].state == "closed"
    assert_quiet(script)


def test_serve_forever_in_a_script_returns_on_sigterm_and_closes(
    make: Callable[..., SyncWorker], launch: Callable[..., Script], tmp_path: Path
) -> None:
    here = make()
    path = tmp_path / "serves.py"
    path.write_text(SERVES)
    script = launch("-W", "default", str(path), here.address)
    worker_id, _ = script.ready()
    assert here.call(worker_id, "ping", [1, "x"]) == [1, "x"]
    until(lambda: bool(here.call(worker_id, "serving")))
    script.signal(signal.SIGTERM)
    assert script.expect("CLOSED") == "CLOSED"
    assert script.wait(timeout=DEADLINE) == 0
    until(lambda: here.peers[worker_id].state != "alive")
    assert here.peers[worker_id].state == "closed"
    assert_quiet(script)


@pytest.mark.parametrize(
    ("outcome", "code"), [("trigger", 0), ("poison", 1), ("timeout", 2)], ids=str
)
def test_sync_script_example(
    make: Callable[..., SyncWorker], launch: Callable[..., Script], outcome: str, code: int
) -> None:
    here = make()
    timeout = "0.5" if outcome == "timeout" else "30"
    script = launch("examples/sync_script.py", here.address, "--timeout", timeout)
    worker_id, _ = script.ready()
    handle = EventHandle.parse(script.expect("HANDLE").split()[1])
    assert here.call(worker_id, "ping", "hi") == "hi"
    if outcome == "trigger":
        here.events.trigger_confirmed(handle)
        assert script.expect("READY-EVENT") == f"READY-EVENT {handle}"
    elif outcome == "poison":
        here.events.poison_confirmed(handle, "upstream failed")
        assert script.expect("POISONED") == "POISONED upstream failed"
    else:
        assert script.expect("TIMEOUT") == "TIMEOUT"
    assert script.wait(timeout=DEADLINE) == code
    until(lambda: here.peers[worker_id].state != "alive")
    assert here.peers[worker_id].state == "closed"
