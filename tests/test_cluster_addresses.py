"""Workers bound to every interface (``tcp://0.0.0.0:PORT``) on hosts of their own (network
namespaces): what they advertise must be dialable from the other hosts, and a host on
two networks is reached on the one the dialler shares with it.

The first test runs the README's example as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, Lan, Script, stop, velo

from velo_event import EventHandle

pytestmark = pytest.mark.timeout(90)


def readme_example() -> dict[str, list[str]]:
    """The shell lines of the README's wildcard-bind example, by the host they run on."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Addresses: what a worker advertises", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    lines: dict[str, list[str]] = {}
    host = ""
    for line in block.group(1).splitlines():
        if (comment := re.match(r"# host (\w+)", line)) is not None:
            host = comment.group(1)
        elif line.strip():
            lines.setdefault(host, []).append(line)
    return lines


def worker_of(line: str, lan: Lan, host: str) -> Script:
    """A README ``velo-am worker …`` line, run on ``host`` with this interpreter."""
    words = shlex.split(line)
    assert words[:2] == ["velo-am", "worker"], line
    return Script("-m", "velo_am", *words[1:], launcher=lan.launcher(host))


def test_the_readme_wildcard_example_runs_as_written_on_three_hosts(lan: Lan) -> None:
    lines = readme_example()
    assert sorted(lines) == ["A", "B", "C"]
    lan.host("A", "10.0.0.1/24")
    lan.host("B", "10.0.0.2/24")
    lan.host("C", "10.0.0.3/24")
    seed = worker_of(*lines["A"], lan, "A")
    member = None
    try:
        assert seed.ready() == (0x1, "tcp://10.0.0.1:5555")
        member = worker_of(*lines["B"], lan, "B")
        # On the code before the fix, B advertised tcp://0.0.0.0:5555 and its verification
        # dial from A reached A itself: B never joined.
        assert member.ready() == (0x2, "tcp://10.0.0.2:5555")
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        script = "set -e\n" + "\n".join(lines["C"]) + '\necho "$EVENT"\n'
        done = subprocess.run(
            [*lan.launcher("C"), "bash", "-c", script],
            env={**os.environ, "PATH": path},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert EventHandle.parse(done.stdout.strip()).worker_id == 0x2
    finally:
        stop(member, seed)


def test_a_host_on_two_networks_is_dialled_on_the_one_the_dialler_shares(lan: Lan) -> None:
    # A is on both networks; E and F only on the second. F learns A's address from E's member
    # list, and must dial A's second address: the first one is on a network F cannot reach.
    lan.host("A", "10.0.0.1/24", "10.1.0.1/24")
    lan.host("E", "10.1.0.5/24")
    lan.host("F", "10.1.0.6/24")
    bridge = Script(
        "-m", "velo_am", "worker", "--id", "0xa", "--bind", "tcp://0.0.0.0:5555",
        launcher=lan.launcher("A"),
    )  # fmt: skip
    edge = None
    try:
        assert bridge.ready() == (0xA, "tcp://10.0.0.1:5555 tcp://10.1.0.1:5555")
        edge = Script(
            "-m", "velo_am", "worker", "--id", "0xe", "--bind", "tcp://0.0.0.0:5555",
            "--seed", "tcp://10.1.0.1:5555", launcher=lan.launcher("E"),
        )  # fmt: skip
        assert edge.ready() == (0xE, "tcp://10.1.0.5:5555")
        seed = ["--seed", "tcp://10.1.0.5:5555", "--connect-timeout", "5"]
        on_f = lan.launcher("F")
        created = velo("new-event", "--on", "0xa", *seed, launcher=on_f)
        assert created.returncode == 0, created.stderr
        handle = created.stdout.strip()
        assert EventHandle.parse(handle).worker_id == 0xA
        assert velo("trigger", handle, *seed, launcher=on_f).returncode == 0
        assert velo("status", handle, *seed, launcher=on_f).stdout.strip() == "ready"
    finally:
        stop(edge, bridge)


def test_an_advertised_host_name_is_what_the_others_dial(lan: Lan) -> None:
    # A is known by a name (a Kubernetes service's, say): it advertises the name, and C, which
    # joins through B, reaches A by the name it learned from B's member list.
    lan.host("A", "10.0.0.1/24")
    lan.host("B", "10.0.0.2/24")
    lan.host("C", "10.0.0.3/24")
    for host in "ABC":
        lan.names(host, {"a.cluster.test": "10.0.0.1"})
    owner = Script(
        "-m", "velo_am", "worker", "--id", "0x1", "--bind", "tcp://0.0.0.0:5555",
        "--advertise", "a.cluster.test", launcher=lan.launcher("A"),
    )  # fmt: skip
    member = None
    try:
        assert owner.ready() == (0x1, "tcp://a.cluster.test:5555")
        member = Script(
            "-m", "velo_am", "worker", "--id", "0x2", "--bind", "tcp://0.0.0.0:5555",
            "--seed", "tcp://a.cluster.test:5555", launcher=lan.launcher("B"),
        )  # fmt: skip
        assert member.ready() == (0x2, "tcp://10.0.0.2:5555")
        seed = ["--seed", "tcp://10.0.0.2:5555"]
        created = velo("new-event", "--on", "0x1", *seed, launcher=lan.launcher("C"))
        assert created.returncode == 0, created.stderr
        mesh = velo("inspect", "0x2", "--json", *seed, launcher=lan.launcher("C"))
        assert mesh.returncode == 0, mesh.stderr
        assert "tcp://a.cluster.test:5555" in mesh.stdout
    finally:
        stop(member, owner)
