"""Both builds (velo_event's and velo_am's hot paths) in one run of ``bench_am.py`` or
``bench_events.py``.

Which build a process uses is fixed when it imports ``velo_event`` and ``velo_am``
(``VELO_PURE`` decides for both), so each
build's velo cases run in a driver process of their own: the benchmark script started again
with ``--driver BUILD`` and ``VELO_PURE`` set for the pure build (unset for the compiled one);
the driver starts its own velo peer process, which inherits that environment, so both sides
of a velo case run the same build. The benchmark process itself runs the raw baselines, and
asks the drivers for one run of a case at a time, so the builds and the baselines stay
interleaved as before.

The driver protocol is one JSON line each way: the driver says ``{"ready": INFO}`` once its
peer is connected (INFO holds ``compiled``: both packages' ``COMPILED`` in the driver), then
answers each request ``[case key, size]`` with ``{"run": [numbers]}`` or ``{"error": text}``.
It exits at EOF of its stdin. Its stderr is the benchmark's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

#: The builds, in the order the tables show them.
BUILDS = ("compiled", "pure")
READY_TIMEOUT = 60.0  # seconds for a driver to start its peer and connect
STOP_TIMEOUT = 10.0  # seconds for a driver to stop its peer and exit

_ROOT = Path(__file__).resolve().parent.parent


def build_environment(build: str) -> dict[str, str]:
    """The environment of a process that must import ``build`` (if the install has it)."""
    env = dict(os.environ)
    env.pop("VELO_PURE", None)
    if build == "pure":
        env["VELO_PURE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class Driver:
    """The benchmark's end of one build's driver process."""

    def __init__(self, build: str, process: asyncio.subprocess.Process) -> None:
        self.build = build
        self._process = process
        self.info: dict[str, Any] = {}

    @classmethod
    async def start(cls, build: str, script: Path, arguments: list[str]) -> Driver:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            "--driver",
            build,
            *arguments,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=build_environment(build),
            start_new_session=True,  # a Ctrl-C reaches us only; we stop the drivers
        )
        driver = cls(build, process)
        try:
            driver.info = (await driver._answer(READY_TIMEOUT))["ready"]
        except BaseException:
            await driver.stop()
            raise
        return driver

    @property
    def compiled(self) -> bool:
        return bool(self.info.get("compiled"))

    async def run(self, key: str, size: int, timeout: float) -> list[float]:
        """One run of the velo case ``key`` (``size``: its calls, messages or rounds)."""
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps([key, size]).encode() + b"\n")
        await self._process.stdin.drain()
        return list((await self._answer(timeout))["run"])

    async def _answer(self, timeout: float) -> dict[str, Any]:
        assert self._process.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self._process.stdout.readline()
        if not line:
            code = await self._process.wait()
            raise RuntimeError(f"the {self.build} driver exited (status {code})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.build} driver: {answer['error']}")
        return answer

    async def stop(self) -> None:
        """Close its stdin (it stops its peer and exits), wait (bounded), kill what is left."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await self._process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()


async def start_drivers(script: Path, arguments: list[str]) -> tuple[list[Driver], str]:
    """A driver per build this install has (the compiled one only where it was built);
    returns them and a line for the report saying which."""
    drivers: list[Driver] = []
    try:
        for build in BUILDS:
            driver = await Driver.start(build, script, arguments)
            if driver.compiled != (build == "compiled"):
                await driver.stop()
                if build == "compiled":  # no compiled build in this install: pure only
                    continue
                raise RuntimeError("VELO_PURE=1 did not select the pure build")
            drivers.append(driver)
    except BaseException:
        await stop_drivers(drivers)
        raise
    names = [driver.build for driver in drivers]
    note = "" if "compiled" in names else " (no compiled build in this install)"
    return drivers, f"builds: {', '.join(names)}{note}"


async def stop_drivers(drivers: list[Driver]) -> None:
    for driver in drivers:
        await driver.stop()


def built() -> str:
    """The build this process imported (for the ``--profile`` listings)."""
    return "compiled" if _compiled() else "pure"


def _compiled() -> bool:
    """Whether this process runs the compiled build of both packages."""
    import velo_am
    import velo_event

    return velo_event.COMPILED and velo_am.COMPILED


async def serve_driver(
    info: dict[str, Any], run: Callable[[str, int], Awaitable[list[float]]]
) -> None:
    """The driver's loop: say ready, then run each requested case until stdin ends."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    answer: dict[str, Any] = {"ready": {**info, "compiled": _compiled()}}
    while True:  # ends at EOF of stdin
        print(json.dumps(answer), flush=True)
        line = await reader.readline()
        if not line:
            return
        key, size = json.loads(line)
        try:
            answer = {"run": await run(str(key), int(size))}
        except Exception as exc:  # reported to the benchmark, which stops
            answer = {"error": f"{key}: {type(exc).__name__}: {exc}"}
