"""The soak benchmark (``benchmarks/soak.py``): a short run with a fault every ~0.3 s, as a
user starts it (part of the fault suite: it prints its figures), and its checker shown to
catch what it is there to catch."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from types import ModuleType

import pytest
from support import ROOT

from velo_event import LocalEventSystem


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", ROOT / "benchmarks" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def row(output: str, metric: str) -> str:
    match = re.search(rf"^\| {re.escape(metric)} \| (.*) \|$", output, re.MULTILINE)
    assert match, f"no {metric!r} row in:\n{output}"
    return match.group(1)


@pytest.mark.timeout(90)
def test_a_short_soak_survives_every_kind_of_fault_with_no_violation(
    figures: dict[str, str],
) -> None:
    """Measured: 5 of 10 such runs passed; the others hit libzmq's abort (a connection
    disconnected while a message of it was prefetched) or a restarted worker refused for
    good (its verification link passed for its dead predecessor's)."""
    # A freeze or a restart takes about 3 s: 10 s leave room for one fault of each kind.
    command = [sys.executable, "benchmarks/soak.py", "--seconds", "10", "--workers", "3"]
    command += ["--faults-every", "0.3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=80, check=False
    )
    output = done.stdout
    assert done.returncode == 0, f"{output}\n{done.stderr[-3000:]}"
    for metric in ("graphs completed", "faults survived", "invariant violations"):
        figures[f"soak {metric}"] = row(output, metric)
    figures["soak peak RSS per worker, MiB"] = row(output, "peak RSS per worker, MiB")
    assert row(output, "invariant violations") == "0"
    assert int(row(output, "graphs completed")) >= 1
    assert re.match(
        r"ready \d+, poisoned \d+, unknown \d+, timeout 0$", row(output, "coordinator awaits")
    )
    survived = dict(
        (kind, int(count))
        for kind, count in re.findall(r"(\w+) (\d+)", row(output, "faults survived"))
    )
    assert set(survived) == {"kill", "freeze", "restart"}
    assert all(count >= 1 for count in survived.values()), survived
    rss = row(output, "peak RSS per worker, MiB")
    assert all(f"{worker:#x} " in rss for worker in (1, 2, 3)), rss


def test_the_checker_reports_each_kind_of_violation() -> None:
    soak = load_soak()
    checker = soak.Soak(soak.parse_args(["--seed", "1"]))
    events = LocalEventSystem()
    leaf_a, leaf_b, merge = (events.new_event().handle for _ in range(3))
    nodes = [
        soak.Node("r1.leaf0", leaf_a, 1),
        soak.Node(
            "r1.leaf1", leaf_b, 2, planned_poison=True, poisoned_leaves=frozenset({"r1.leaf1"})
        ),
        soak.Node("r1.merge0", merge, 3, inputs=[0, 1], poisoned_leaves=frozenset({"r1.leaf1"})),
    ]
    ready, timeout = soak.Outcome("ready"), soak.Outcome("timeout", "still pending")
    poisoned_b = soak.Outcome("poisoned", "root cause r1.leaf1")
    # Consistent: leaf b poisoned as planned, the merge poisoned naming it.
    merge_poisoned = soak.Outcome(
        "poisoned", f"Merge dependency {leaf_b} failed: root cause r1.leaf1"
    )
    checker.check(1, nodes, [ready, poisoned_b, merge_poisoned], [[], [], []], set(), set())
    assert checker.violations == []

    # A merge READY over a poisoned input; leaf a answered twice; a reason naming no cause;
    # a waiter that never resolved.
    wrong = soak.Outcome("poisoned", "something else")
    checker.check(1, nodes, [timeout, poisoned_b, ready], [[ready, wrong], [], []], set(), set())
    text = "\n".join(checker.violations)
    assert "did not resolve" in text
    assert "two answers" in text
    assert "names no root cause: 'something else'" in text
    assert "READY though input r1.leaf1 was POISONED" in text
    assert "planned to be poisoned" not in text

    # After its owner restarted, a handle READY before may read as unknown, never as a verdict:
    # "poisoned: minted by an earlier incarnation" beside READY is two answers (soak finding 4).
    checker.violations.clear()
    stale = "handle minted by an earlier incarnation of worker 0x1"
    checker.check(2, nodes[:1], [ready], [[soak.Outcome("unknown", stale)]], {1}, {1})
    assert checker.violations == [] and checker.unknown_after_restart == 1
    checker.check(3, nodes[:1], [ready], [[soak.Outcome("poisoned", stale)]], {1}, {1})
    assert [v for v in checker.violations if "two answers" in v], checker.violations
    # An OutcomeUnknown must name a fault too.
    checker.violations.clear()
    checker.check(4, nodes[:1], [soak.Outcome("unknown", "no idea")], [[]], set(), set())
    assert len(checker.violations) == 1, checker.violations
    assert "r1.leaf0" in checker.violations[0]
    assert "OutcomeUnknown names no fault: 'no idea'" in checker.violations[0]

    # Its fault must be one of the round's: "earlier incarnation" only if the owner was
    # restarted (a freeze is no restart); a loss of a worker not faulted is unprovoked.
    checker.violations.clear()
    checker.check(5, nodes[:1], [soak.Outcome("unknown", stale)], [[]], {1}, set())
    assert len(checker.violations) == 1, checker.violations
    assert "no worker it names was restarted this round" in checker.violations[0]
    lost = "owner lost: worker 0x2 at tcp://127.0.0.1:1 lost: silent for 3.0 s"
    checker.check(6, nodes[:1], [soak.Outcome("unknown", lost)], [[]], {3}, set())
    assert len(checker.violations) == 1, checker.violations
    assert checker.unprovoked == [
        f"round 6: r1.leaf0 {leaf_a} (owner 0x1): {lost!r} (faulted this round: [3])"
    ]
    checker.check(7, nodes[:1], [soak.Outcome("unknown", lost)], [[]], {2}, set())
    assert len(checker.violations) == 1 and len(checker.unprovoked) == 1
