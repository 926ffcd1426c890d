"""The command line across two hosts: network namespaces joined by a veth pair, each with its
own address. A short-lived command must listen where the other host can answer it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from support import ROOT, Script

from velo_event import EventHandle

SUBNET = "10.231.{}.{}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def hosts() -> Iterator[tuple[str, str, str]]:
    """Two namespaces: (host A, host B, A's address). Removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip)")
    tag = f"{os.getpid() % 100000}"
    host_a, host_b = f"velo-a-{tag}", f"velo-b-{tag}"
    subnet = os.getpid() % 250 + 1
    address_a, address_b = SUBNET.format(subnet, 1), SUBNET.format(subnet, 2)
    try:
        _ip("netns", "add", host_a)
        _ip("netns", "add", host_b)
        _ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        for host, link, address in (
            (host_a, f"va{tag}", address_a),
            (host_b, f"vb{tag}", address_b),
        ):
            _ip("link", "set", link, "netns", host)
            _ip("-n", host, "addr", "add", f"{address}/24", "dev", link)
            _ip("-n", host, "link", "set", link, "up")
            _ip("-n", host, "link", "set", "lo", "up")
        yield host_a, host_b, address_a
    finally:
        for host in (host_a, host_b):
            subprocess.run(
                ["ip", "netns", "del", host], check=False, capture_output=True, timeout=10
            )


def velo_on(host: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", host, sys.executable, "-m", "velo_am", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_a_command_on_another_host_takes_part(hosts: tuple[str, str, str]) -> None:
    host_a, host_b, address_a = hosts
    worker = Script(
        "-m", "velo_am", "worker", "--id", "0x61", "--bind", f"tcp://{address_a}:0",
        launcher=["ip", "netns", "exec", host_a],
    )  # fmt: skip
    try:
        worker_id, address = worker.ready()
        assert worker_id == 0x61 and address.startswith(f"tcp://{address_a}:")
        seed = ["--seed", address]

        created = velo_on(host_b, "new-event", "--label", "remote host", *seed)
        assert created.returncode == 0, created.stderr
        handle = EventHandle.parse(created.stdout.strip())
        assert handle.worker_id == 0x61
        assert velo_on(host_b, "trigger", str(handle), *seed).returncode == 0
        assert velo_on(host_b, "wait", str(handle), "--timeout", "10", *seed).returncode == 0

        # Listening on loopback, host B's command is still answered: answers come back on the
        # connection it opened, and nobody needs to reach the address it listens on.
        on_loopback = velo_on(
            host_b, "status", str(handle), *seed,
            "--bind", "tcp://127.0.0.1:0", "--connect-timeout", "1",
        )  # fmt: skip
        assert on_loopback.returncode == 0, on_loopback.stderr
        assert on_loopback.stdout.strip() == "ready"
    finally:
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.stderr()
        worker.reap()
