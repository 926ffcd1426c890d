"""The `velo-am` command line end to end: every command runs as its own OS process, the way a
shell script or cron job runs it, against long-lived `velo-am worker` processes."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pydot
import pytest
from support import Script, velo

from velo_am._cli._shared import member
from velo_event import EventHandle


def ok(*args: str) -> str:
    """Run a command that must succeed; its stdout, stripped."""
    result = velo(*args)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout.strip()


def start_worker(*args: str, env: dict[str, str] | None = None) -> tuple[Script, int, str]:
    script = Script(
        "-m", "velo_am", "worker", "--bind", "tcp://127.0.0.1:0", *args, env=env
    )  # fmt: skip
    try:
        worker_id, address = script.ready()
    except BaseException:
        script.reap()
        raise
    return script, worker_id, address


@pytest.fixture
def mesh() -> Iterator[tuple[list[str], int, int]]:
    """Two long-lived workers, 0x51 (the seed) and 0x52: (seed args, id, id)."""
    first, first_id, address = start_worker("--id", "0x51")
    second = None
    try:
        second, second_id, _ = start_worker("--id", "0x52", "--seed", address)
        yield ["--seed", address], first_id, second_id
    finally:
        for script in (second, first):
            if script is not None:
                script.signal(signal.SIGTERM)
        for script in (second, first):
            if script is not None:
                assert script.wait() == 0, script.stderr()
                script.reap()


def test_help_everywhere_shows_examples() -> None:
    commands = ["demo", "worker", "new-event", "merge", "trigger", "poison", "status", "wait"]
    for command in [*commands, "inspect", "call"]:
        result = velo(command, "--help")
        assert result.returncode == 0, result.stderr
        assert "examples:" in result.stdout, command
    assert "exit codes" in ok("--help")


def test_usage_errors_exit_3_not_2() -> None:
    """2 means "timed out" to a script running `wait`: a typo must not look like one."""
    assert velo("wait").returncode == 3
    assert velo("wait", "not-a-handle", "--seed", "tcp://127.0.0.1:1").returncode == 3
    assert velo("no-such-command").returncode == 3


def test_new_event_wait_trigger_exit_codes(mesh: tuple[list[str], int, int]) -> None:
    seed, first_id, second_id = mesh
    handle = EventHandle.parse(ok("new-event", *seed, "--label", "nightly ETL"))
    assert handle.worker_id == first_id, "the seed owns it by default"
    other = EventHandle.parse(ok("new-event", *seed, "--on", f"{second_id:#x}"))
    assert other.worker_id == second_id

    assert ok("status", str(handle), *seed) == "pending"
    timed_out = velo("wait", str(handle), "--timeout", "0.5", *seed)
    assert timed_out.returncode == 2, timed_out.stderr
    assert "still pending" in timed_out.stderr

    waiter = Script("-m", "velo_am", "wait", str(handle), "--timeout", "30", *seed)
    try:
        ok("trigger", str(handle), *seed)
        assert waiter.wait() == 0, waiter.stderr()
    finally:
        waiter.reap()
    assert ok("status", str(handle), *seed) == "ready"
    assert velo("wait", str(handle), *seed).returncode == 0, "a past generation answers"

    refused = velo("trigger", str(handle), *seed)
    assert refused.returncode == 1, "a second trigger is refused by the owner"
    assert "refused" in refused.stderr

    ok("poison", str(other), "backup failed: disk full", *seed)
    poisoned = velo("wait", str(other), *seed)
    assert poisoned.returncode == 1
    assert "backup failed: disk full" in poisoned.stderr
    assert ok("status", str(other), *seed) == "poisoned: backup failed: disk full"


def test_commands_ignore_the_long_lived_workers_identity_in_the_environment(
    mesh: tuple[list[str], int, int],
) -> None:
    # A shell that exported the long-lived worker's id and address (as a Slurm or Kubernetes
    # script does for `velo-am worker`) runs commands that take part as themselves.
    seed, first_id, _ = mesh
    handle = ok("new-event", *seed)
    identity = {"VELO_WORKER_ID": hex(first_id), "VELO_ADVERTISE": "tcp://127.0.0.1:9"}
    waiter = Script("-m", "velo_am", "wait", handle, "--timeout", "30", *seed, env=identity)
    try:
        ok("trigger", handle, *seed)
        assert waiter.wait() == 0, waiter.stderr()
    finally:
        waiter.reap()


async def test_a_command_listens_and_advertises_as_itself(
    mesh: tuple[list[str], int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed, first_id, _ = mesh
    monkeypatch.setenv("VELO_WORKER_ID", hex(first_id))
    monkeypatch.setenv("VELO_ADVERTISE", "tcp://127.0.0.1:9")
    monkeypatch.setenv("VELO_INTERFACE", "=no-such-interface")
    args = argparse.Namespace(seed=seed[1:], discovery=None, bind=None, connect_timeout=5.0)
    async with member(args) as command:
        assert command.worker_id != first_id
        assert command.address.startswith("tcp://127.0.0.1:")
        assert command.address != "tcp://127.0.0.1:9"


def test_wait_timeout_names_what_the_merge_still_waits_on(
    mesh: tuple[list[str], int, int],
) -> None:
    """Issue 12, item 5: a timed-out `wait` on a merge names its pending inputs, each with
    its label, its owner and the owner's liveness, one per line."""
    seed, first_id, second_id = mesh
    done = ok("new-event", *seed, "--label", "config loaded")
    weights = ok("new-event", *seed, "--label", "weights")
    remote = ok("new-event", *seed, "--on", f"{second_id:#x}", "--label", "tokenizer")
    merged = ok("merge", done, weights, remote, "--label", "serve ready", *seed)
    ok("trigger", done, *seed)

    result = velo("wait", merged, "--timeout", "1", *seed)
    assert result.returncode == 2, (result.stdout, result.stderr)
    # The owner (0x51) names its pending inputs; 0x52 is asked for its event's label.
    assert result.stderr.splitlines() == [
        f"velo-am wait: event {merged} still pending after 1 s, waiting on:",
        f"  weights ({weights}), owner {first_id:#x}: alive",
        f"  tokenizer ({remote}), owner {second_id:#x}: alive",
    ]
    assert done not in result.stderr, "a triggered input is not named"

    plain = velo("wait", weights, "--timeout", "0.5", *seed)
    assert plain.returncode == 2, plain.stderr
    assert plain.stderr.strip() == (
        f"velo-am wait: event weights ({weights}) still pending after 0.5 s; "
        f"owner {first_id:#x}: alive"
    )


def test_merge_from_the_shell_carries_the_poison_reason(mesh: tuple[list[str], int, int]) -> None:
    seed, _, second_id = mesh
    weights = ok("new-event", *seed, "--label", "weights")
    tokenizer = ok("new-event", *seed, "--on", f"{second_id:#x}", "--label", "tokenizer")
    merged = ok("merge", weights, tokenizer, "--on", f"{second_id:#x}", *seed)
    ok("trigger", weights, *seed)
    assert ok("status", merged, *seed) == "pending"
    ok("poison", tokenizer, "tokenizer download failed: 404", *seed)
    result = velo("wait", merged, "--timeout", "20", *seed)
    assert result.returncode == 1
    assert "tokenizer download failed: 404" in result.stderr


def test_errors_exit_3(mesh: tuple[list[str], int, int]) -> None:
    seed, _, _ = mesh
    unknown_owner = str(EventHandle.from_parts(0x99, 0, 1))
    result = velo("wait", unknown_owner, *seed, "--connect-timeout", "1")
    assert result.returncode == 3
    assert "0x99" in result.stderr
    assert velo("new-event").returncode == 3, "no mesh to join"
    dead = velo("status", unknown_owner, "--seed", "tcp://127.0.0.1:9", "--connect-timeout", "1")
    assert dead.returncode == 3
    assert "cannot join the mesh" in dead.stderr


def test_renew_of_a_handle_minted_before_its_owner_restarted_exits_3(
    mesh: tuple[list[str], int, int],
) -> None:
    """Measured: it exited 1, which says "already completed"; the outcome is unknown, as for
    `wait` (exit 3)."""
    seed, first_id, _ = mesh
    stale = str(EventHandle.from_parts(first_id, 0, 1))  # tag 0 and generation 1: no incarnation's
    result = velo("renew", stale, *seed)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "outcome unknown: handle minted by an earlier incarnation of worker 0x51" in (
        result.stderr
    )


# pydot 4 still calls pyparsing's pre-3.0 names, which pyparsing 3.3 deprecates: their
# warning, not ours, and only while the DOT text is parsed.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:pydot.dot_parser")
def test_inspect_shows_a_pending_event_and_valid_dot(mesh: tuple[list[str], int, int]) -> None:
    seed, first_id, second_id = mesh
    address = seed[1]
    weights = ok("new-event", *seed, "--label", "weights")
    tokenizer = ok("new-event", *seed, "--on", f"{second_id:#x}", "--label", "tokenizer")
    merged = ok("merge", weights, tokenizer, "--label", "serve ready", *seed)

    text = ok("inspect", address)
    assert f"worker {first_id:#x}  running" in text
    assert f"{weights} 'weights': waited on by merge {merged}" in text
    assert f"{merged} 'serve ready' merge of 2" in text
    assert f"{tokenizer} owner {second_id:#x}: waited on by merge {merged}" in text
    assert f"{second_id:#x}  alive" in text
    assert re.search(r"_ev\.new\s+[1-9]", text), "handler latencies are shown"

    dot = ok("inspect", address, "--graph", "--mesh")
    graphs = pydot.graph_from_dot_data(dot)
    assert graphs is not None and len(graphs) == 1
    graph = graphs[0]
    nodes = {node.get_name().strip('"'): node for node in graph.get_nodes()}
    assert {weights, tokenizer, merged} <= set(nodes)
    edges = {(e.get_source().strip('"'), e.get_destination().strip('"')) for e in graph.get_edges()}
    assert {(weights, merged), (tokenizer, merged)} <= edges
    assert "tokenizer" in nodes[tokenizer].get("label"), "the owner's label, from --mesh"
    assert f"waiting on weights ({weights}), owner {first_id:#x}" in dot

    mermaid = ok("inspect", address, "--graph", "mermaid")
    assert mermaid.startswith("flowchart LR")
    snapshots = json.loads(ok("inspect", address, "--mesh", "--json"))
    assert {snap["worker"] for snap in snapshots} == {first_id, second_id}

    ok("trigger", weights, *seed)
    ok("trigger", tokenizer, *seed)
    assert velo("wait", merged, "--timeout", "20", *seed).returncode == 0
    after = json.loads(ok("inspect", address, "--json"))
    assert after["pending"] == [], "nothing stays pending once the graph completed"


def test_worker_loads_handlers_and_logs_json(tmp_path: Path) -> None:
    (tmp_path / "my_handlers.py").write_text(
        "def register(worker):\n"
        "    worker.register_handler('double', lambda payload, ctx: payload * 2)\n"
        "    def fail(payload, ctx):\n"
        "        raise RuntimeError('no such model')\n"
        "    worker.register_handler('fail', fail)\n"
        "    events = []\n"
        "    def new(payload, ctx):\n"
        "        events.append(worker.events.new_event(payload))\n"
        "        return {'handle': events[-1].handle}\n"
        "    worker.register_handler('new', new)\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    script, worker_id, address = start_worker(
        "--load", "my_handlers:register", "--log-format", "json", env=env
    )
    try:
        seed = ["--seed", address]
        assert ok("call", f"{worker_id:#x}", "double", "21", *seed) == "42"
        failed = velo("call", f"{worker_id:#x}", "fail", *seed)
        assert failed.returncode == 1
        assert "RuntimeError: no such model" in failed.stderr
        # A handle in a result is printed in the text form the other commands read.
        handle = json.loads(ok("call", f"{worker_id:#x}", "new", '"tokenizer"', *seed))["handle"]
        assert EventHandle.parse(handle).worker_id == worker_id
        ok("trigger", handle, *seed)
        assert ok("status", handle, *seed).startswith("ready")
        text = ok("inspect", address)
        assert re.search(r"double\s+1\s+0", text)
        assert re.search(r"fail\s+1\s+1", text)
    finally:
        script.signal(signal.SIGTERM)
        assert script.wait() == 0
        stderr = script.stderr()
        script.reap()
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    joined = [record for record in records if "joined" in record["message"]]
    assert joined, stderr
    assert joined[0]["worker"] == f"{worker_id:#x}"
    assert joined[0]["peer"].startswith("0x"), "structured fields reach the JSON log"


def _pids(lines: list[str]) -> list[int]:
    return [int(match[1]) for line in lines if (match := re.search(r"pid (\d+)", line))]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_demo_with_three_workers_exits_0() -> None:
    demo = Script("-m", "velo_am", "demo", "--workers", "3")
    try:
        assert demo.wait(timeout=90) == 0, (demo.lines, demo.stderr())
        demo.expect("messages sent:")  # the whole output has been read
    finally:
        demo.reap()
    out = "\n".join(demo.lines)
    assert len(_pids(demo.lines)) == 3
    assert "RESULT: server ready after" in out
    assert "speculative decoding POISONED" in out
    assert "draft model checkpoint not found" in out
    assert "root cause: 'draft model' on worker 0x3" in out
    assert "problem:" not in out, "every child drained and exited 0"
    assert re.search(r"│  ├─ all weights loaded\s+ready", out), "the tree of who waited on whom"
    assert re.search(r"└─ draft model\s+POISONED", out)
    assert all(_gone(pid) for pid in _pids(demo.lines))


def test_demo_ctrl_c_stops_every_child() -> None:
    demo = Script("-m", "velo_am", "demo", "--workers", "3")
    try:
        demo.expect("graph:", timeout=60)
        demo.signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 130, (demo.lines, demo.stderr())
        demo.expect("interrupted")
    finally:
        demo.reap()
    assert not any("problem:" in line for line in demo.lines), "every child stopped cleanly"
    pids = _pids(demo.lines)
    assert len(pids) == 3
    assert all(_gone(pid) for pid in pids), "the demo reaps its workers before it exits"


def test_demo_rejects_a_bad_worker_count() -> None:
    result = velo("demo", "--workers", "0")
    assert result.returncode == 3
    assert "--workers must be" in result.stderr
