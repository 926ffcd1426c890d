"""The command line across two hosts: network namespaces joined by a veth pair, each with its
own address. A short-lived command must listen where the other host can answer it."""

from __future__ import annotations

import signal
import subprocess
import sys

from support import ROOT, Hosts, Script

from velo_event import EventHandle


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


def test_a_command_on_another_host_takes_part(hosts: Hosts) -> None:
    host_a, host_b, address_a = hosts.a, hosts.b, hosts.address_a
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
