"""Shared fixtures: workers on the in-process fake network; for multi-process tests, example
scripts as OS processes and this test process as one more worker of the mesh."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from support import FAKE_FAST, FAST, Script

from velo_am import Worker
from velo_am.transport import FakeNetwork


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
