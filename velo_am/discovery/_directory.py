"""``dir:PATH`` discovery: one JSON file per worker in a shared directory.

Each worker writes its entry (worker id, address, pid, incarnation, last seen) on start,
refreshes it while it runs and removes it on close. A lookup ignores, and deletes, the entry of
a process that no longer exists or of one that stopped refreshing it. Besides the asynchronous
:class:`~velo_am.discovery.Discovery` methods a worker uses (their file I/O runs on a thread),
:class:`DirectoryDiscovery` has blocking ones for scripts: ``register``, ``unregister``,
``lookup`` and ``entries``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

from ._base import DiscoveryEntry

__all__ = ["DirectoryDiscovery"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def _off_loop(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on the loop's default executor; directly when that refuses new work
    (at interpreter exit, where a worker may still be closing)."""
    try:
        future = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
    except RuntimeError:
        return fn(*args)
    return await future


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


class DirectoryDiscovery:
    """Entries in the directory ``path`` (created on first use); an entry not refreshed for
    ``stale_after`` seconds, or whose process is gone, is dead."""

    def __init__(self, path: str | os.PathLike[str], *, stale_after: float = 60.0) -> None:
        self.path = Path(path)
        self.stale_after = stale_after

    def _file(self, worker_id: int) -> Path:
        return self.path / f"{worker_id:016x}.json"

    def register(self, entry: DiscoveryEntry) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self._file(entry.worker_id)
        temporary = target.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(entry)), encoding="utf-8")
        os.replace(temporary, target)  # readers never see a half-written entry

    def unregister(self, worker_id: int, incarnation: int) -> None:
        entry = self._read(self._file(worker_id))
        if entry is not None and entry.incarnation == incarnation:
            with contextlib.suppress(FileNotFoundError):
                self._file(worker_id).unlink()

    def lookup(self, worker_id: int) -> DiscoveryEntry | None:
        """The live entry for ``worker_id``; a dead one is removed and ``None`` returned."""
        path = self._file(worker_id)
        entry = self._read(path)
        if entry is None:
            return None
        if self._alive(entry):
            return entry
        logger.info("removing stale discovery entry of worker %#x (pid %d)", worker_id, entry.pid)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None

    def entries(self) -> list[DiscoveryEntry]:
        """Every live entry (dead ones are cleaned up on the way)."""
        if not self.path.is_dir():
            return []
        live = []
        for path in sorted(self.path.glob("*.json")):
            entry = self._read(path)
            if entry is None:
                continue
            if self._alive(entry):
                live.append(entry)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return live

    def _alive(self, entry: DiscoveryEntry) -> bool:
        fresh = time.time() - entry.last_seen < self.stale_after
        return fresh and _process_exists(entry.pid)

    @staticmethod
    def _read(path: Path) -> DiscoveryEntry | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return DiscoveryEntry(
                worker_id=int(data["worker_id"]),
                address=str(data["address"]),
                pid=int(data["pid"]),
                incarnation=int(data["incarnation"]),
                last_seen=float(data["last_seen"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("ignoring unreadable discovery entry %s: %s", path, error)
            return None

    # -- the Discovery protocol ---------------------------------------------------------------

    async def publish(self, entry: DiscoveryEntry) -> None:
        await _off_loop(self.register, entry)

    async def withdraw(self, worker_id: int, incarnation: int) -> None:
        await _off_loop(self.unregister, worker_id, incarnation)

    async def find(self, worker_id: int) -> DiscoveryEntry | None:
        return await _off_loop(self.lookup, worker_id)

    async def members(self) -> list[DiscoveryEntry]:
        return await _off_loop(self.entries)

    def __repr__(self) -> str:
        return f"DirectoryDiscovery({str(self.path)!r})"
