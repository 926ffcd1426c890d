"""Fixtures of the multi-process tests: example scripts as OS processes, and this test
process as one more worker of the mesh."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from support import FAST, Script

from velo_am import Worker


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
