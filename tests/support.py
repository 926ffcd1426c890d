"""Test helpers: waiting on conditions with a deadline, and launching example scripts."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Liveness settings for this process's worker in multi-process tests: a dead peer is lost
#: within about a second.
FAST = {"heartbeat_interval": 0.2, "heartbeat_timeout": 1.0}
#: The same for in-process fake-network tests, where nothing is slow.
FAKE_FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.3, "handshake_timeout": 0.5}


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``predicate`` until true; ``TimeoutError`` after ``within`` seconds. For state
    that offers no notification of its own."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling state that has no event of its own
            await asyncio.sleep(0.005)


class Script:
    """An example script running as its own OS process, its stdout read line by line."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, launcher: Sequence[str] = ()
    ) -> None:
        """``launcher`` goes before the interpreter (``ip netns exec NAME``: another host)."""
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in reap()
        self.process = subprocess.Popen(
            [*launcher, sys.executable, "-u", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, prefix: str, timeout: float = 20.0) -> str:
        """The next stdout line starting with ``prefix`` (earlier lines are kept in ``lines``)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                raise AssertionError(
                    f"no line starting with {prefix!r} within {timeout} s; "
                    f"stdout so far: {self.lines}; stderr: {self.stderr()}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"process exited ({self.process.wait()}) before printing {prefix!r}; "
                    f"stdout: {self.lines}; stderr: {self.stderr()}"
                )
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def ready(self) -> tuple[int, str]:
        """Wait for ``READY <id> <address>``; return (worker id, address)."""
        _, worker_id, address = self.expect("READY").split(maxsplit=2)
        return int(worker_id, 0), address

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-4000:]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        return self.process.wait(timeout=timeout)

    def reap(self) -> None:
        """Kill if still running and collect the exit status: nothing is left behind."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Hosts:
    """Two network namespaces of this test's own, each with its address on a veth pair."""

    a: str
    b: str
    address_a: str
    address_b: str
    link_a: str  # the veth end inside host a

    def cut(self) -> None:
        """The cable between the two is pulled: nothing passes, nothing is refused."""
        ip("-n", self.a, "link", "set", self.link_a, "down")

    def mend(self) -> None:
        ip("-n", self.a, "link", "set", self.link_a, "up")

    def launcher(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", host]


def velo(
    *args: str,
    launcher: Sequence[str] = (),
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one ``python -m velo_am`` command to completion (``launcher``: on another host;
    ``env``: variables added to this process's)."""
    return subprocess.run(
        [*launcher, sys.executable, "-m", "velo_am", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        env={**os.environ, **(env or {})},
    )


def stop(*scripts: Script | None) -> None:
    """SIGTERM each long-lived script that was started: each must exit cleanly (0)."""
    for script in scripts:
        if script is not None:
            script.signal(signal.SIGTERM)
            assert script.wait() == 0, script.stderr()
            script.reap()


class Lan:
    """Hosts of this test's own (network namespaces) on subnets of its own: each subnet is a
    bridge in a namespace playing the switch. Each host's interfaces are ``eth0``, ``eth1``…
    in the order its addresses were given. :meth:`close` removes every namespace."""

    def __init__(self) -> None:
        self._tag = f"{os.getpid() % 100000}"
        self._switch = f"velo-sw-{self._tag}"
        self._bridges: dict[str, str] = {}
        self._hosts: dict[str, str] = {}
        self._cables = 0
        ip("netns", "add", self._switch)

    def host(self, name: str, *addresses: str) -> str:
        """Host ``name`` with one interface per address (``10.0.0.1/24``); its namespace."""
        namespace = self._hosts[name] = f"velo-{name}-{self._tag}"
        ip("netns", "add", namespace)
        ip("-n", namespace, "link", "set", "lo", "up")
        for index, address in enumerate(addresses):
            bridge = self._bridge(address)
            self._cables += 1
            cable, nic = f"c{self._cables}", f"eth{index}"
            ip("-n", self._switch, "link", "add", cable, "type", "veth",
               "peer", "name", nic, "netns", namespace)  # fmt: skip
            ip("-n", self._switch, "link", "set", cable, "master", bridge, "up")
            ip("-n", namespace, "addr", "add", address, "dev", nic)
            ip("-n", namespace, "link", "set", nic, "up")
        return namespace

    def _bridge(self, address: str) -> str:
        subnet = str(ipaddress.ip_interface(address).network)
        if subnet not in self._bridges:
            bridge = self._bridges[subnet] = f"br{len(self._bridges)}"
            ip("-n", self._switch, "link", "add", bridge, "type", "bridge")
            ip("-n", self._switch, "link", "set", bridge, "up")
        return self._bridges[subnet]

    def names(self, name: str, entries: dict[str, str]) -> None:
        """Host ``name`` resolves these host names to these addresses (``ip netns exec``
        mounts ``/etc/netns/NAMESPACE/hosts`` over ``/etc/hosts``)."""
        folder = Path("/etc/netns") / self._hosts[name]
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", *(f"{ip} {host}" for host, ip in entries.items())]
        (folder / "hosts").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def launcher(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self._hosts[name]]

    def close(self) -> None:
        for namespace in self._hosts.values():
            shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)
        for namespace in [*self._hosts.values(), self._switch]:
            subprocess.run(
                ["ip", "netns", "del", namespace], check=False, capture_output=True, timeout=10
            )
