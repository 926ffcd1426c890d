"""The command line across two hosts: network namespaces joined by a veth pair, each with its
own address. A short-lived command must listen where the other host can answer it."""

from __future__ import annotations

from support import Hosts, Script, stop, velo

from velo_event import EventHandle


def test_a_command_on_another_host_takes_part(hosts: Hosts) -> None:
    address_a, on_b = hosts.address_a, hosts.launcher(hosts.b)
    worker = Script(
        "-m", "velo_am", "worker", "--id", "0x61", "--bind", f"tcp://{address_a}:0",
        launcher=hosts.launcher(hosts.a),
    )  # fmt: skip
    try:
        worker_id, address = worker.ready()
        assert worker_id == 0x61 and address.startswith(f"tcp://{address_a}:")
        seed = ["--seed", address]

        created = velo("new-event", "--label", "remote host", *seed, launcher=on_b)
        assert created.returncode == 0, created.stderr
        handle = EventHandle.parse(created.stdout.strip())
        assert handle.worker_id == 0x61
        assert velo("trigger", str(handle), *seed, launcher=on_b).returncode == 0
        assert velo("wait", str(handle), "--timeout", "10", *seed, launcher=on_b).returncode == 0

        # Listening on loopback, host B's command is still answered: answers come back on the
        # connection it opened, and nobody needs to reach the address it listens on.
        on_loopback = velo(
            "status", str(handle), *seed,
            "--bind", "tcp://127.0.0.1:0", "--connect-timeout", "1", launcher=on_b,
        )  # fmt: skip
        assert on_loopback.returncode == 0, on_loopback.stderr
        assert on_loopback.stdout.strip() == "ready"
    finally:
        stop(worker)
