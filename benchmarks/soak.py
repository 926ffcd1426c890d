"""Soak: random precondition graphs over a mesh of worker processes under kills, freezes and
restarts, checking the invariants of distributed events all along.

Run: ``PYTHONPATH=. python benchmarks/soak.py [--seconds 60] [--workers 4] [--seed S]
[--faults-every 3] [--poison-rate 0.3]``

Method
------
This script is the coordinator: a velo ``Worker`` (id ``0xc0``) that launches ``--workers``
processes of ``benchmarks/_soak_peer.py`` (ids 1..N, all on ``tcp://127.0.0.1``, joined
through the coordinator), all with a short liveness window (heartbeat every 0.2 s, lost after
1.0 s). Rounds run back to back until ``--seconds`` pass. Each round:

1. builds a random DAG: 2 to 8 leaves, each owned by a random worker (``new_event_on``), then
   1 to 6 merges of 1 to 4 random earlier nodes, each owned by a random worker
   (``merge_events_on``), ``fail_fast`` at random;
2. plans every leaf: triggered, or poisoned (``--poison-rate``) with the reason
   ``root cause <leaf label>``, by a random worker (``soak.complete``: a remote trigger when
   it is not the owner) after a random delay up to 0.5 s. Should that worker be lost, the
   coordinator completes the leaf itself, retrying while its owner may come back;
3. awaits every node from the coordinator, with a bound (``--bound``, 12 s);
4. asks a random other worker for each node's outcome (``soak.observe``), and the
   coordinator asks again for those it got no verdict for (``OutcomeUnknown``).

Meanwhile, every ``--faults-every`` seconds (± 50 %), one random worker suffers a fault, the
kinds in turn (each cycle shuffled): **kill** (SIGKILL, then the same id restarted: a new
incarnation), **freeze** (SIGSTOP for 2.5 heartbeat timeouts, then SIGCONT), **restart**
(SIGTERM: a graceful close, then the same id started again). A fault is *survived* once the
coordinator's calls reach that worker again (within 30 s).

Invariants (each breach is a *violation*; the run exits 1 if there is any):

* **every waiter resolves**: each await ends within the bound — ready, poisoned, or
  ``OutcomeUnknown`` (no verdict: the owner was lost or unreachable, or restarted since it
  minted the handle);
* **a merge is the all-of of its inputs**: a READY merge has no input ever seen POISONED; a
  POISONED merge has an input that failed (a planned poison below it, or a fault: an input's
  owner lost, shutting down, restarted);
* **a handle never gets two answers**: every observation of a handle (the coordinator's
  awaits, other workers' awaits after the round) agrees: never READY and POISONED, never two
  reasons. ``OutcomeUnknown`` is no answer, and the only one a worker may get for a handle of
  an owner that restarted since (its outcome died with the earlier incarnation): any verdict
  read then, such as "poisoned: minted by an earlier incarnation", beside the one observed
  before the restart, is two answers;
* **every reason names its root cause**: a poisoned leaf's reason is its own planned one; a
  poisoned merge's names a planned-poison leaf below it; or the reason names a fault of a
  worker faulted during the round (``lost``, ``unreachable``, ``shutting down``,
  ``earlier incarnation``). The reason of an ``OutcomeUnknown`` must name such a fault too,
  of a worker faulted during the round (else it is an unprovoked loss, below); one saying
  the handle is an earlier incarnation's is a violation unless its owner was restarted (a
  kill or a restart, not a freeze) during the round.

Counted, not violations: the observations that got ``OutcomeUnknown`` because the owner
restarted since it minted the handle (*unknown after an owner restarted*: the invariants above
held for them, this says how often they were put to the test); and a loss verdict naming a
worker that had no fault (a heartbeat missed on an overloaded host: *unprovoked losses*).

Reported: seconds, graphs completed, events created, awaits by outcome, messages (the sum of
``messages_out`` of the coordinator and every worker incarnation, as last sampled: a killed
incarnation's last messages are not counted), faults injected and survived by kind, peak RSS
per worker (``VmHWM`` of each incarnation, the largest), violations (the first 20).
Children are always reaped (Ctrl-C, errors); each also exits by itself an hour at most after
the soak's end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from velo_am import AMError, Worker
from velo_event import (
    EventError,
    EventHandle,
    EventPoison,
    EventTimeout,
    OutcomeUnknown,
)

_PEER = Path(__file__).resolve().parent / "_soak_peer.py"
COORDINATOR = 0xC0
HEARTBEAT_INTERVAL = 0.2
HEARTBEAT_TIMEOUT = 1.0
FAULT_KINDS = ("kill", "freeze", "restart")
FAULT_MARKERS = ("lost", "unreachable", "shutting down", "earlier incarnation")
STALE = "handle minted by an earlier incarnation"
ROOT_CAUSE = re.compile(r"root cause (r\d+\.leaf\d+)")
NAMED_WORKER = re.compile(r"worker (0x[0-9a-f]+)")


@dataclass
class Node:
    label: str
    handle: EventHandle
    owner: int
    inputs: list[int] = field(default_factory=list)  # indices of earlier nodes (merges)
    fail_fast: bool = False
    planned_poison: bool = False  # leaves
    poisoned_leaves: frozenset[str] = frozenset()  # labels of planned-poison leaves below

    @property
    def is_merge(self) -> bool:
        return bool(self.inputs)


@dataclass
class Outcome:
    kind: str  # "ready", "poisoned", "unknown", "timeout"
    reason: str = ""


def stamp() -> str:
    """Wall-clock time as the workers' logs stamp it (``_soak_peer.py``), to order them."""
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.ids = list(range(1, args.workers + 1))
        self.coordinator: Worker | None = None
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.incarnations: Counter[int] = Counter()
        self.logs: dict[int, IO[bytes]] = {}
        self.directory = ""  # the workers' logs: made by run()
        self.faulting: set[int] = set()  # workers in a fault now
        self.restarting: set[int] = set()  # those of them killed or restarted
        self.fault_windows: list[tuple[int, str, float, float]] = []  # worker, kind, start, end
        self.injected: Counter[str] = Counter()
        self.survived: Counter[str] = Counter()
        self.violations: list[str] = []
        self.unknown_after_restart = 0
        self.unprovoked: list[str] = []
        self.rounds = 0
        self.events = Counter[str]()
        self.awaits = Counter[str]()
        self.refused = 0  # creations a faulted worker could not answer
        self.messages: dict[tuple[int, int], int] = {}
        self.peak_rss: dict[int, int] = {}  # KiB

    @property
    def worker(self) -> Worker:
        assert self.coordinator is not None
        return self.coordinator

    def violation(self, text: str) -> None:
        self.violations.append(text)
        print(f"{stamp()} VIOLATION {text}", file=sys.stderr, flush=True)

    # -- processes -----------------------------------------------------------------------------

    def log_file(self, worker_id: int) -> IO[bytes]:
        """The worker's stderr, one file for all its incarnations (kept if a check fails)."""
        log = self.logs.get(worker_id)
        if log is None:
            path = Path(self.directory) / f"worker-{worker_id}.log"
            log = self.logs[worker_id] = path.open("ab")
        return log

    async def launch(self, worker_id: int) -> None:
        log = self.log_file(worker_id)
        env = {
            **os.environ,
            "VELO_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
            "VELO_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        }
        command = [sys.executable, str(_PEER), "--id", hex(worker_id)]
        command += ["--seed", self.worker.address, "--max-seconds", str(self.args.seconds + 3600)]
        process = await asyncio.create_subprocess_exec(
            *command,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
        self.processes[worker_id] = process
        self.incarnations[worker_id] += 1
        assert process.stdout is not None
        try:
            async with asyncio.timeout(60):
                line = await process.stdout.readline()
        except TimeoutError:
            raise RuntimeError(
                f"worker {worker_id:#x} (incarnation {self.incarnations[worker_id]}) printed no "
                "READY within 60 s: its start() could not join the mesh"
            ) from None
        if not line.startswith(b"READY"):
            raise RuntimeError(f"worker {worker_id:#x} did not start: {line!r}")

    async def reachable(self, worker_id: int, within: float) -> bool:
        """Whether the coordinator's calls reach the worker again within ``within`` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                await self.worker.call(worker_id, "soak.ping", timeout=1.0)
                return True
            except AMError:
                await asyncio.sleep(0.1)  # a retry's pace: the worker is (re)joining
        return False

    def sample_rss(self, worker_id: int) -> None:
        process = self.processes.get(worker_id)
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kib = int(line.split()[1])
                    self.peak_rss[worker_id] = max(self.peak_rss.get(worker_id, 0), kib)

    async def sample_messages(self, worker_id: int) -> None:
        try:
            out, _ = await self.worker.call(worker_id, "soak.stats", timeout=1.0)
        except AMError:
            return
        self.messages[worker_id, self.incarnations[worker_id]] = out

    async def check_alive(self) -> None:
        """A worker that exited with no fault injected crashed: a violation; it restarts."""
        for worker_id in self.ids:
            process = self.processes[worker_id]
            if worker_id in self.faulting or process.returncode is None:
                continue
            last = self.last_log_line(worker_id)
            self.violation(
                f"worker {worker_id:#x} exited by itself with code {process.returncode}: {last}"
            )
            await self.launch(worker_id)

    def last_log_line(self, worker_id: int) -> str:
        path = Path(self.directory) / f"worker-{worker_id}.log"
        lines = path.read_text(errors="replace").splitlines()
        return lines[-1] if lines else "(nothing on stderr)"

    async def sample(self) -> None:
        await self.check_alive()
        for worker_id in self.ids:
            self.sample_rss(worker_id)
        live = [w for w in self.ids if w not in self.faulting]
        await asyncio.gather(*(self.sample_messages(w) for w in live))

    async def stop_all(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGCONT)
                    process.terminate()
        for process in self.processes.values():
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()

    def kill_all(self) -> None:
        """Last resort (an exception, Ctrl-C): nothing outlives the soak."""
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        for log in self.logs.values():
            log.close()

    # -- faults --------------------------------------------------------------------------------

    async def inject_faults(self, stop: asyncio.Event) -> None:
        kinds: list[str] = []
        while not stop.is_set():
            pause = self.args.faults_every * self.rng.uniform(0.5, 1.5)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stop.wait()
            if stop.is_set():
                return
            if not kinds:
                kinds = list(FAULT_KINDS)
                self.rng.shuffle(kinds)
            await self.inject(kinds.pop(), self.rng.choice(self.ids))

    async def inject(self, kind: str, worker_id: int) -> None:
        process = self.processes[worker_id]
        self.faulting.add(worker_id)
        if kind != "freeze":
            self.restarting.add(worker_id)
        start = time.monotonic()
        self.injected[kind] += 1
        print(f"{stamp()} fault: {kind} worker {worker_id:#x}", file=sys.stderr, flush=True)
        try:
            self.sample_rss(worker_id)
            await self.sample_messages(worker_id)
            if kind == "freeze":
                process.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(2.5 * HEARTBEAT_TIMEOUT)  # the fault itself
                finally:
                    process.send_signal(signal.SIGCONT)
            else:
                if kind == "kill":
                    process.kill()
                else:
                    process.terminate()
                try:
                    async with asyncio.timeout(15):
                        await process.wait()
                except TimeoutError:
                    self.violation(f"worker {worker_id:#x} did not close within 15 s of SIGTERM")
                    process.kill()
                    await process.wait()
                await self.launch(worker_id)
            if await self.reachable(worker_id, 30):
                self.survived[kind] += 1
            else:
                self.violation(f"worker {worker_id:#x} unreachable 30 s after its {kind}")
        finally:
            self.faulting.discard(worker_id)
            self.restarting.discard(worker_id)
            # A fault's effects (loss verdicts) trail it by up to a heartbeat timeout.
            end = time.monotonic() + 2 * HEARTBEAT_TIMEOUT
            self.fault_windows.append((worker_id, kind, start, end))

    def faulted_since(self, since: float) -> set[int]:
        """The workers in a fault at some moment since ``since`` (or its trailing effects)."""
        return {w for w, _, _, end in self.fault_windows if end >= since} | self.faulting

    def restarted_since(self, since: float) -> set[int]:
        """The workers killed or restarted at some moment since ``since``."""
        windows = self.fault_windows
        return {w for w, kind, _, end in windows if kind != "freeze" and end >= since} | set(
            self.restarting
        )

    # -- one round -----------------------------------------------------------------------------

    async def build(self, number: int) -> list[Node]:
        nodes: list[Node] = []
        for index in range(self.rng.randint(2, 8)):
            owner = self.rng.choice(self.ids)
            label = f"r{number}.leaf{index}"
            poison = self.rng.random() < self.args.poison_rate
            try:
                handle = await self.worker.events.new_event_on(owner, label=label, timeout=2.0)
            except (AMError, EventError):
                self.refused += 1
                continue
            below = frozenset({label}) if poison else frozenset()
            nodes.append(Node(label, handle, owner, planned_poison=poison, poisoned_leaves=below))
        for index in range(self.rng.randint(1, 6)):
            if not nodes:
                break
            inputs = self.rng.sample(range(len(nodes)), self.rng.randint(1, min(4, len(nodes))))
            owner = self.rng.choice(self.ids)
            fail_fast = self.rng.random() < 0.5
            label = f"r{number}.merge{index}"
            try:
                handle = await self.worker.events.merge_events_on(
                    owner,
                    [nodes[i].handle for i in inputs],
                    fail_fast=fail_fast,
                    label=label,
                    timeout=2.0,
                )
            except (AMError, EventError):
                self.refused += 1
                continue
            below = frozenset().union(*(nodes[i].poisoned_leaves for i in inputs))
            nodes.append(Node(label, handle, owner, inputs, fail_fast, poisoned_leaves=below))
        for node in nodes:
            self.events["merges" if node.is_merge else "leaves"] += 1
        return nodes

    async def complete(self, node: Node, deadline: float) -> None:
        """Have a random worker complete the leaf as planned; should it fail, do it here."""
        reason = f"root cause {node.label}" if node.planned_poison else None
        delay = self.rng.uniform(0.0, 0.5)
        completer = self.rng.choice(self.ids)
        try:
            payload = [node.handle, delay, reason]
            await self.worker.call(completer, "soak.complete", payload, timeout=delay + 6.0)
            return
        except AMError:
            pass  # the completer was lost (or its owner): complete it from here
        while time.monotonic() < deadline:
            try:
                if reason is None:
                    await self.worker.events.trigger_confirmed(node.handle, timeout=2.0)
                else:
                    await self.worker.events.poison_confirmed(node.handle, reason, timeout=2.0)
                return
            except EventError:
                return  # completed already, or a handle of an incarnation now gone
            except AMError:
                await asyncio.sleep(0.2)  # its owner is down: retry while it may come back

    async def await_node(self, node: Node, bound: float) -> Outcome:
        try:
            await self.worker.events.awaiter(node.handle, timeout=bound)
        except EventPoison as poison:
            return Outcome("poisoned", poison.reason)
        except OutcomeUnknown as unknown:
            return Outcome("unknown", unknown.reason)
        except EventTimeout as timeout:
            return Outcome("timeout", str(timeout))
        except EventError as error:
            return Outcome("poisoned", f"refused: {error}")
        return Outcome("ready")

    async def observe(self, node: Node, own: Outcome) -> list[Outcome]:
        """Other views of the node's outcome, after the round."""
        answers: list[Outcome] = []
        others = [w for w in self.ids if w != node.owner and w not in self.faulting]
        if others:
            observer = self.rng.choice(others)
            with contextlib.suppress(AMError):
                answer = await self.worker.call(
                    observer, "soak.observe", [node.handle, 3.0], timeout=5.0
                )
                answers.append(Outcome(*answer))
        if own.kind == "unknown":  # no verdict then: a later await asks the owner again
            answers.append(await self.await_node(node, 3.0))
        return answers

    async def run_round(self, number: int) -> None:
        started = time.monotonic()
        nodes = await self.build(number)
        if not nodes:
            return
        bound = self.args.bound
        deadline = time.monotonic() + bound
        completions = [
            asyncio.ensure_future(self.complete(node, deadline))
            for node in nodes
            if not node.is_merge
        ]
        try:
            outcomes = await asyncio.gather(*(self.await_node(node, bound) for node in nodes))
        finally:
            await asyncio.gather(*completions)  # bounded by their deadline
        later = await asyncio.gather(
            *(self.observe(node, own) for node, own in zip(nodes, outcomes, strict=True))
        )
        faulted, restarted = self.faulted_since(started), self.restarted_since(started)
        self.check(number, nodes, outcomes, later, faulted, restarted)
        self.rounds += 1

    # -- invariants ----------------------------------------------------------------------------

    def check(
        self,
        number: int,
        nodes: list[Node],
        outcomes: list[Outcome],
        later: list[list[Outcome]],
        faulted: set[int],
        restarted: set[int],
    ) -> None:
        """``faulted``: the workers faulted during the round; ``restarted``: those of them
        killed or restarted."""
        views: list[list[Outcome]] = []
        for node, own, others in zip(nodes, outcomes, later, strict=True):
            self.awaits[own.kind] += 1
            name = f"round {number}: {node.label} {node.handle} (owner {node.owner:#x})"
            if own.kind == "timeout":
                self.violation(
                    f"{name}: its waiter did not resolve within {self.args.bound} s: {own.reason}"
                )
            answers = [o for o in [own, *others] if o.kind in ("ready", "poisoned")]
            self.check_one_answer(name, node, answers)
            views.append(answers)
            for unknown in (o for o in [own, *others] if o.kind == "unknown"):
                self.check_unknown(name, node, unknown.reason, faulted, restarted)
            for answer in {(o.kind, o.reason): o for o in answers}.values():  # each answer once
                if answer.kind == "poisoned":
                    self.check_reason(name, node, answer.reason, faulted)
                elif node.planned_poison:
                    self.violation(f"{name}: planned to be poisoned, read READY")
        for node, answers in zip(nodes, views, strict=True):
            if not node.is_merge:
                continue
            name = f"round {number}: merge {node.label} {node.handle}"
            inputs = [(nodes[i], views[i]) for i in node.inputs]
            for answer in answers:
                if answer.kind == "ready":
                    for child, seen in inputs:
                        if any(o.kind == "poisoned" for o in seen):
                            self.violation(
                                f"{name} READY though input {child.label} was "
                                f"POISONED: {seen[0].reason!r}"
                            )
                elif not any(m in answer.reason for m in FAULT_MARKERS) and all(
                    any(o.kind == "ready" for o in seen) for _, seen in inputs
                ):
                    # Poisoned, no fault named: some input must have been poisoned.
                    self.violation(
                        f"{name} POISONED ({answer.reason!r}) though every input was READY"
                    )

    def check_one_answer(self, name: str, node: Node, answers: list[Outcome]) -> None:
        distinct = {(o.kind, o.reason) for o in answers}
        if len(distinct) > 1:
            self.violation(f"two answers: {name}: answers {sorted(distinct)}")

    def check_unknown(
        self, name: str, node: Node, reason: str, faulted: set[int], restarted: set[int]
    ) -> None:
        if not any(marker in reason for marker in FAULT_MARKERS):
            self.violation(f"{name}: OutcomeUnknown names no fault: {reason!r}")
            return
        named = {int(text, 16) for text in NAMED_WORKER.findall(reason)} or {node.owner}
        if STALE in reason:
            if not named & restarted:
                self.violation(
                    f"{name}: OutcomeUnknown says an earlier incarnation, but no worker it "
                    f"names was restarted this round: {reason!r} (restarted: {sorted(restarted)})"
                )
                return
            self.unknown_after_restart += 1
        elif not named & faulted:
            self.unprovoked.append(f"{name}: {reason!r} (faulted this round: {sorted(faulted)})")

    def check_reason(self, name: str, node: Node, reason: str, faulted: set[int]) -> None:
        if any(cause in node.poisoned_leaves for cause in ROOT_CAUSE.findall(reason)):
            return
        if not any(marker in reason for marker in FAULT_MARKERS):
            self.violation(f"{name}: reason names no root cause: {reason!r}")
            return
        named = {int(text, 16) for text in NAMED_WORKER.findall(reason)}
        if not named & faulted:
            self.unprovoked.append(f"{name}: {reason!r} (faulted this round: {sorted(faulted)})")

    # -- the run -------------------------------------------------------------------------------

    async def run(self) -> float:
        self.directory = tempfile.mkdtemp(prefix="velo-soak-")
        self.coordinator = Worker(
            COORDINATOR,
            bind="tcp://127.0.0.1:0",
            heartbeat_interval=HEARTBEAT_INTERVAL,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
        )
        async with self.coordinator:
            try:
                await asyncio.gather(*(self.launch(w) for w in self.ids))
                for worker_id in self.ids:
                    if not await self.reachable(worker_id, 30):
                        raise RuntimeError(f"worker {worker_id:#x} never became reachable")
                started = time.monotonic()
                end = started + self.args.seconds
                stop = asyncio.Event()
                faults = asyncio.ensure_future(self.inject_faults(stop))
                try:
                    number = 0
                    while time.monotonic() < end and not faults.done():
                        number += 1
                        await self.run_round(number)
                        await self.sample()
                finally:
                    stop.set()
                    await faults  # the fault in progress completes (bounded)
                elapsed = time.monotonic() - started
                await self.sample()
                stats = self.worker.stats()
                self.messages[COORDINATOR, 1] = stats["messages_out"]
            finally:
                await self.stop_all()
        return elapsed

    def report(self, elapsed: float) -> None:
        def by_kind(counter: Counter[str]) -> str:
            return ", ".join(f"{kind} {counter[kind]}" for kind in FAULT_KINDS)

        rss = ", ".join(f"{w:#x} {kib / 1024:.1f}" for w, kib in sorted(self.peak_rss.items()))
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        awaits = ", ".join(
            f"{kind} {self.awaits[kind]}" for kind in ("ready", "poisoned", "unknown", "timeout")
        )
        rows = [
            ("seconds", f"{elapsed:.1f}"),
            ("graphs completed", str(self.rounds)),
            (
                "events created",
                f"{sum(self.events.values())} (leaves {self.events['leaves']}, "
                f"merges {self.events['merges']}; {self.refused} refused by a faulted worker)",
            ),
            ("coordinator awaits", awaits),
            (
                "messages",
                f"{sum(self.messages.values())} sent (coordinator and "
                f"{sum(self.incarnations.values())} worker incarnations)",
            ),
            ("faults injected", by_kind(self.injected)),
            ("faults survived", by_kind(self.survived)),
            ("unknown after an owner restarted (checked)", str(self.unknown_after_restart)),
            ("losses of a worker not faulted", str(len(self.unprovoked))),
            ("invariant violations", str(len(self.violations))),
            ("peak RSS per worker, MiB", f"{rss}; coordinator {own:.1f}"),
        ]
        print(
            f"velo soak | seed {self.args.seed} | {self.args.workers} workers + coordinator | "
            f"heartbeat {HEARTBEAT_INTERVAL}/{HEARTBEAT_TIMEOUT} s | a fault every "
            f"~{self.args.faults_every} s | Python {platform.python_version()} | "
            f"{os.cpu_count()} cores"
        )
        print("| metric | value |")
        print("|---|---|")
        for name, value in rows:
            print(f"| {name} | {value} |")
        for title, items in (
            ("violations", self.violations),
            ("losses of a worker not faulted", self.unprovoked),
        ):
            if items:
                print(f"\nfirst {min(20, len(items))} {title} of {len(items)}:")
                for item in items[:20]:
                    print(f"  {item}")
        if self.violations:
            print(f"\nworker logs kept in {self.directory}")


async def main(args: argparse.Namespace) -> int:
    soak = Soak(args)
    try:
        elapsed = await soak.run()
    except BaseException:
        if soak.directory:
            print(f"worker logs kept in {soak.directory}", file=sys.stderr)
        raise
    finally:
        soak.kill_all()
    soak.report(elapsed)
    if not soak.violations and soak.directory:
        shutil.rmtree(soak.directory, ignore_errors=True)
    return 1 if soak.violations else 0


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=positive, default=60.0, help="run length (60)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (4)")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed: the same graphs and fault choices (timings differ); default random",
    )
    parser.add_argument(
        "--faults-every", type=positive, default=3.0, help="mean seconds between faults (3)"
    )
    parser.add_argument(
        "--poison-rate", type=float, default=0.3, help="share of leaves poisoned (0.3)"
    )
    parser.add_argument(
        "--bound", type=positive, default=12.0, help="seconds an await may take (12)"
    )
    args = parser.parse_args(argv)
    if not 2 <= args.workers <= 64:
        parser.error(f"--workers must be in 2..64, got {args.workers}")
    if not 0 <= args.poison_rate <= 1:
        parser.error(f"--poison-rate must be in 0..1, got {args.poison_rate}")
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    try:
        sys.exit(asyncio.run(main(arguments)))
    except KeyboardInterrupt:
        print("interrupted: every worker process was stopped", file=sys.stderr)
        sys.exit(130)
