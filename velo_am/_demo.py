"""``velo-am demo``: a cross-process precondition graph modelled on an LLM server's start-up.

The demo starts N worker processes (``velo-am worker``, on loopback) and joins them as a
coordinator. Each worker "loads" a shard of the model weights and allocates its KV cache; the
first also loads the tokenizer, the last a draft model for speculative decoding, which fails.
Merges owned by different processes wait on all of it: the server becomes ready, speculative
decoding is poisoned with the draft model's reason, and the summary shows which event waited
on which, with timings and message counts. Ctrl-C stops every child cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from velo_event import EventHandle, EventPoison, OutcomeUnknown

from ._handlers import CallContext
from ._loops import run as run_loop
from ._worker import Worker

__all__ = ["CausalProgress", "progress_line", "register", "run_demo"]

MAX_WORKERS: Final = 16
COORDINATOR_ID: Final = 0xC0
DRAFT_MODEL_FAILURE: Final = (
    "draft model checkpoint not found: /models/draft-1b/model.safetensors "
    "(404 from the model store)"
)
_DEADLINE: Final = 60.0  # the whole graph, generously: a loaded CI machine is slow


# -- the workers' side (loaded into each `velo-am worker` with --load) ---------------------------


def register(worker: Worker) -> None:
    """``--load velo_am._demo:register``: the demo's one handler, ``demo.load``."""

    def load(payload: dict[str, Any], ctx: CallContext) -> EventHandle:
        """Create an event for a simulated loading step, complete it after ``seconds``
        (poisoned with ``fail`` if given), and return its handle at once."""
        event = worker.events.new_event(payload["label"])
        loop = asyncio.get_running_loop()
        if payload.get("fail"):
            loop.call_later(payload["seconds"], event.poison, payload["fail"])
        else:
            loop.call_later(payload["seconds"], event.trigger)
        return event.handle

    worker.register_handler("demo.load", load)


# -- the coordinator ------------------------------------------------------------------------


@dataclass
class DemoNode:
    """One event of the demo's graph, as the coordinator sees it complete."""

    label: str
    handle: EventHandle
    owner: int
    inputs: list[DemoNode] = field(default_factory=list)
    finished: float | None = None
    reason: str | None = None
    fail_fast: bool = False

    @property
    def status(self) -> str:
        if self.finished is None:
            return "pending"
        return "ready" if self.reason is None else "POISONED"


class CausalProgress:
    """The order of the live progress: a completion is shown once what caused it has been.

    The coordinator hears of completions in no causal order. A merge it owns completes inside
    the wake-up of its last input, before that input's own watcher resumes; and completions
    of different owners travel on different links, which keep no order between them
    (docs/protocol.md §1). So a completion heard of before its causes is held back until they
    have been shown: a merge's causes are all its inputs; a fail-fast merge that was poisoned
    needs only a poisoned input. A line keeps the time the coordinator heard of it, so a held
    line may show a slightly earlier time than the cause shown above it.
    """

    def __init__(self) -> None:
        self._shown: set[EventHandle] = set()
        self._held: list[DemoNode] = []

    def seen(self, node: DemoNode) -> list[DemoNode]:
        """``node`` was heard of complete (its ``reason`` set if poisoned): what to show now,
        in order (``node`` and what it released, or nothing while a cause is missing)."""
        self._held.append(node)
        shown = []
        while (ready := next(filter(self._caused, self._held), None)) is not None:
            self._held.remove(ready)
            self._shown.add(ready.handle)
            shown.append(ready)
        return shown

    def held(self) -> list[DemoNode]:
        """What is still held back, in the order it was heard of (the watch ended before a
        cause was heard of: shown anyway, it happened); then forgotten."""
        held, self._held = self._held, []
        return held

    def _caused(self, node: DemoNode) -> bool:
        shown = [cause for cause in node.inputs if cause.handle in self._shown]
        if len(shown) == len(node.inputs):
            return True
        failed = any(cause.reason is not None for cause in shown)
        return node.fail_fast and node.reason is not None and failed


def progress_line(node: DemoNode) -> str:
    """A completed node's line in the live progress."""
    mark = "✔" if node.reason is None else "✘"
    line = f"  {node.finished or 0.0:6.2f} s  {mark} {node.label:<34} (worker {node.owner:#x})"
    if node.reason is not None and not node.inputs:
        line += f"\n             {node.reason}"
    elif node.reason is not None:
        line += "  ← an input failed"
    return line


class _Children:
    """The worker processes: started in their own session (Ctrl-C reaches the coordinator,
    which stops them in order), always reaped."""

    def __init__(self) -> None:
        self.processes: dict[int, asyncio.subprocess.Process] = {}

    async def start(self, worker_id: int, seed: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "velo_am",
            "--log-level",
            "WARNING",
            "worker",
            "--id",
            f"{worker_id:#x}",
            "--seed",
            seed,
            "--load",
            "velo_am._demo:register",
            "--heartbeat-interval",
            "0.25",
            "--heartbeat-timeout",
            "3",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self.processes[worker_id] = process
        assert process.stdout is not None
        line = await process.stdout.readline()
        if not line.startswith(b"READY"):
            raise RuntimeError(f"worker {worker_id:#x} failed to start (exit {process.returncode})")
        return process.pid, line.split()[2].decode()

    async def stop(self, timeout: float = 10.0) -> list[str]:
        """SIGTERM (the workers drain and say goodbye), then SIGKILL what is left; the
        problems, if any. Stopped processes are forgotten: calling it again is harmless."""
        problems = []
        processes, self.processes = self.processes, {}
        for process in processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for worker_id, process in processes.items():
            try:
                async with asyncio.timeout(timeout):
                    if process.stdout is not None:
                        await process.stdout.read()
                    await process.wait()
            except TimeoutError:
                problems.append(f"worker {worker_id:#x} did not stop within {timeout} s: killed")
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            if process.returncode not in (0, -signal.SIGTERM):
                problems.append(f"worker {worker_id:#x} exited with {process.returncode}")
        return problems


class _Demo:
    def __init__(self, workers: int, out: Callable[[str], None]) -> None:
        self.count = workers
        self.out = out
        self.nodes: list[DemoNode] = []
        self.progress = CausalProgress()
        self.started = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def load(
        self, coordinator: Worker, owner: int, label: str, fail: str | None = None
    ) -> DemoNode:
        seconds = round(random.uniform(0.3, 1.2), 2)
        payload = {"label": label, "seconds": seconds, "fail": fail}
        handle: EventHandle = await coordinator.call(owner, "demo.load", payload)
        node = DemoNode(label, handle, owner)
        self.nodes.append(node)
        return node

    async def merge(
        self,
        coordinator: Worker,
        owner: int,
        label: str,
        inputs: list[DemoNode],
        fail_fast: bool = False,
    ) -> DemoNode:
        handles = [node.handle for node in inputs]
        handle = await coordinator.events.merge_events_on(
            owner, handles, label=label, fail_fast=fail_fast
        )
        node = DemoNode(label, handle, owner, inputs, fail_fast=fail_fast)
        self.nodes.append(node)
        return node

    async def watch(self, coordinator: Worker, node: DemoNode) -> None:
        try:
            await coordinator.events.awaiter(node.handle)
        except EventPoison as poison:
            node.reason = poison.reason
        except OutcomeUnknown as unknown:  # its owner was lost: shown as a failure
            node.reason = f"outcome unknown: {unknown.reason}"
        node.finished = self.elapsed()
        for shown in self.progress.seen(node):
            self.out(progress_line(shown))

    async def run(self) -> int:
        out = self.out
        noun = "process" if self.count == 1 else "processes"
        out(f"velo demo: an LLM server starting up across {self.count} worker {noun}")
        out("")
        children = _Children()
        try:
            async with Worker(
                COORDINATOR_ID, heartbeat_interval=0.25, heartbeat_timeout=3.0
            ) as coordinator:
                for index in range(1, self.count + 1):
                    pid, address = await children.start(index, coordinator.address)
                    out(f"  started worker {index:#x}  pid {pid:<7}  {address}")
                await coordinator.wait_for_peers(self.count, timeout=_DEADLINE)
                result = await self.build_and_watch(coordinator)
                totals = await self.message_counts(coordinator)
                out("")
                out("stopping the workers (SIGTERM: each drains and says goodbye)")
                problems = await children.stop()
        except BaseException:  # interrupted or failed: every child still stops, and says so
            for problem in await children.stop(timeout=5.0):
                out(f"  problem: {problem}")
            raise
        for problem in problems:
            out(f"  problem: {problem}")
        self.summary(totals)
        return 1 if problems else result

    async def build_and_watch(self, coordinator: Worker) -> int:
        out = self.out
        last = self.count
        self.started = time.monotonic()
        shards = [
            await self.load(coordinator, index, f"weights shard {index}/{self.count}")
            for index in range(1, self.count + 1)
        ]
        caches = [
            await self.load(coordinator, index, f"KV cache on worker {index:#x}")
            for index in range(1, self.count + 1)
        ]
        tokenizer = await self.load(coordinator, 1, "tokenizer")
        draft = await self.load(coordinator, last, "draft model", fail=DRAFT_MODEL_FAILURE)
        weights = await self.merge(coordinator, 1, "all weights loaded", shards)
        model = await self.merge(coordinator, COORDINATOR_ID, "model ready", [weights, *caches])
        server = await self.merge(coordinator, COORDINATOR_ID, "server ready", [model, tokenizer])
        # Fail-fast: speculative decoding is given up as soon as its draft model fails.
        speculative = await self.merge(
            coordinator, last, "speculative decoding ready", [model, draft], fail_fast=True
        )
        merges = sum(1 for node in self.nodes if node.inputs)
        out(
            f"\ngraph: {len(self.nodes) - merges} loading steps and {merges} merges, "
            f"owned by {self.count + 1} processes; live progress:"
        )
        watchers = [asyncio.ensure_future(self.watch(coordinator, node)) for node in self.nodes]
        try:
            async with asyncio.timeout(_DEADLINE):
                await asyncio.gather(*watchers)
        finally:
            for watcher in watchers:
                watcher.cancel()
            for node in self.progress.held():
                self.out(progress_line(node))
        self.server, self.speculative = server, speculative
        expected = (
            server.reason is None
            and speculative.reason is not None
            and DRAFT_MODEL_FAILURE in speculative.reason
        )
        return 0 if expected else 1

    async def message_counts(self, coordinator: Worker) -> dict[int, int]:
        totals = {COORDINATOR_ID: coordinator.stats()["messages_out"]}
        for worker_id in range(1, self.count + 1):
            with contextlib.suppress(Exception):
                snap = await coordinator.call(worker_id, "_inspect", {"limit": 0}, timeout=5.0)
                totals[worker_id] = snap["stats"]["messages_out"]
        return totals

    def summary(self, totals: dict[int, int]) -> None:
        out = self.out
        server, speculative = self.server, self.speculative
        out("")
        out("=" * 78)
        if server.reason is None:
            out(f"RESULT: server ready after {server.finished:.2f} s")
        else:
            out(f"RESULT: server FAILED to start: {server.reason}")
        if speculative.reason is not None:
            out(f"        speculative decoding POISONED after {speculative.finished:.2f} s:")
            for line in speculative.reason.splitlines():
                out(f"          {line}")
            for cause in self.nodes:
                if cause.reason is not None and not cause.inputs:
                    out(f"        root cause: {cause.label!r} on worker {cause.owner:#x}")
            out("        the server runs without it (the poison reached every waiter)")
        out("=" * 78)
        out("")
        out("which events waited on which (time = when the coordinator saw it complete):")
        shown: set[int] = set()
        for root in (server, speculative):
            self.tree(root, "", True, shown, top=True)
        sent = sum(totals.values())
        per = ", ".join(f"{wid:#x}: {count}" for wid, count in sorted(totals.items()))
        out("")
        out(f"messages sent: {sent} in all ({per})")

    def tree(
        self, node: DemoNode, prefix: str, last: bool, shown: set[int], top: bool = False
    ) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        when = f"{node.finished:6.2f} s" if node.finished is not None else "    -   "
        name = f"{prefix}{branch}{node.label}"
        repeat = id(node) in shown and node.inputs
        suffix = "  (inputs shown above)" if repeat else ""
        self.out(f"  {name:<48} {node.status:<9} {when}  owner {node.owner:#x}{suffix}")
        if repeat:
            return
        shown.add(id(node))
        child_prefix = prefix + ("" if top else ("   " if last else "│  "))
        for position, child in enumerate(node.inputs):
            self.tree(child, child_prefix, position == len(node.inputs) - 1, shown)


def run_demo(workers: int, out: Callable[[str], None] | None = None) -> int:
    """Run the demo; the exit code (0: the graph ended as designed, children stopped)."""
    if not 1 <= workers <= MAX_WORKERS:
        print(f"velo-am demo: --workers must be 1..{MAX_WORKERS}", file=sys.stderr)
        return 3
    write = out or (lambda line: print(line, flush=True))
    demo = _Demo(workers, write)
    try:
        code = run_loop(_interruptible(demo.run()))
    except Exception as error:
        print(f"velo-am demo: failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if code is None:
        write("\ninterrupted: every worker was stopped")
        return 130
    return code


async def _interruptible(main: Awaitable[int]) -> int | None:
    """``main``, cancelled by SIGINT (Ctrl-C) or SIGTERM so that its cleanup runs: then
    ``None``."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        if task.cancelled() and not _current_task_cancelling():
            return None
        raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
