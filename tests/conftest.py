"""Shared fixtures: workers on the in-process fake network; for multi-process tests, example
scripts as OS processes and this test process as one more worker of the mesh."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from support import FAKE_FAST, FAST, Hosts, Lan, Script, ip

from velo_am import Worker
from velo_am.transport import FakeNetwork

#: What the fault tests measured: (test, name, value), printed after the run.
_FIGURES: list[tuple[str, str, str]] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """A fault test's figures (``figures["sends lost"] = "12"``), printed after the run
    under "fault suite figures" (recorded even if the test fails, to show how far it got)."""
    measured: dict[str, str] = {}
    yield measured
    _FIGURES.extend((request.node.name, name, value) for name, value in measured.items())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("fault suite figures")
    for test, name, value in _FIGURES:
        terminalreporter.write_line(f"{test}: {name}: {value}")


@pytest.fixture
def launch() -> Iterator[Callable[..., Script]]:
    scripts: list[Script] = []

    def start(*args: str) -> Script:
        script = Script(*args)
        scripts.append(script)
        return script

    yield start
    for script in scripts:
        script.reap()
    assert all(script.process.returncode is not None for script in scripts)


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    async with Worker(**FAST) as local:  # type: ignore[arg-type]
        yield local


@pytest.fixture
def network() -> FakeNetwork:
    return FakeNetwork()


@pytest.fixture
async def make_worker(network: FakeNetwork) -> AsyncIterator[Callable[..., Any]]:
    """Start workers on the in-process fake network; all are closed after the test."""
    workers: list[Worker] = []

    async def make(worker_id: int | None = None, **options: Any) -> Worker:
        options = {**FAKE_FAST, **options}
        worker = Worker(worker_id, transport=network.transport(), **options)
        await worker.start()
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        await worker.close(grace=0)


# -- two hosts: network namespaces joined by a veth pair ---------------------------------------


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """Two namespaces, removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip)")
    tag = f"{os.getpid() % 100000}"
    host_a, host_b = f"velo-a-{tag}", f"velo-b-{tag}"
    subnet = os.getpid() % 250 + 1
    address_a, address_b = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    try:
        ip("netns", "add", host_a)
        ip("netns", "add", host_b)
        ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        for host, link, address in (
            (host_a, f"va{tag}", address_a),
            (host_b, f"vb{tag}", address_b),
        ):
            ip("link", "set", link, "netns", host)
            ip("-n", host, "addr", "add", f"{address}/24", "dev", link)
            ip("-n", host, "link", "set", link, "up")
            ip("-n", host, "link", "set", "lo", "up")
        yield Hosts(host_a, host_b, address_a, address_b, f"va{tag}")
    finally:
        for host in (host_a, host_b):
            subprocess.run(
                ["ip", "netns", "del", host], check=False, capture_output=True, timeout=10
            )


@pytest.fixture
def lan() -> Iterator[Lan]:
    """Hosts on subnets of this test's own (network namespaces), removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip)")
    network = Lan()
    try:
        yield network
    finally:
        network.close()
