"""``dir:PATH`` discovery: one JSON file per worker in a directory, shared between the
processes of one host or, on a shared file system (NFS), between hosts.

Each worker writes its entry (worker id, address, pid, host, incarnation, last seen) on start,
rewrites it every :data:`~velo_am.discovery.REFRESH_EVERY` seconds while it runs and removes it
on close. An entry is dead once it has not been refreshed for ``stale_after`` seconds, whatever
its host; before that, only if it names a process of the reader's own host (and PID namespace)
that no longer exists: a pid means nothing on another host. Readers ignore dead entries and
remove them. An entry written before entries named their host is judged by its age alone.

Besides the asynchronous :class:`~velo_am.discovery.Discovery` methods a worker uses (their
file I/O runs in threads, never on the loop), :class:`DirectoryDiscovery` has blocking ones
for scripts: ``register``, ``unregister``, ``lookup`` and ``entries``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from ._base import REFRESH_EVERY, DiscoveryEntry, this_host
from ._blocking import BlockingCalls

__all__ = ["STALE_AFTER", "DirectoryDiscovery", "Origin", "why_dead"]

logger = logging.getLogger(__name__)

#: Seconds after which an entry nobody refreshed is dead: six refresh periods, room for a
#: refresh or two that came late (a slow file system, a busy loop) and some clock skew
#: between hosts (``last_seen`` is the writer's clock, compared with the reader's).
STALE_AFTER: Final = 6 * REFRESH_EVERY


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a process runs: its host's name and its PID namespace (Linux; ``""`` where
    unknown). Two processes' pids compare only if both are the same."""

    host: str
    pid_namespace: str

    @classmethod
    def here(cls) -> Origin:
        try:
            namespace = os.readlink("/proc/self/ns/pid")  # e.g. "pid:[4026531836]"
        except OSError:
            namespace = ""
        return cls(this_host(), namespace)


def why_dead(
    entry: DiscoveryEntry,
    written_in: str,
    here: Origin,
    now: float,
    stale_after: float,
    process_exists: Callable[[int], bool],
) -> str | None:
    """Why ``entry`` (its writer's PID namespace: ``written_in``) is dead for a reader at
    ``here`` at ``now`` (``time.time()``), or ``None`` if it is alive."""
    age = now - entry.last_seen
    if age >= stale_after:
        return f"not refreshed for {age:.0f} s"
    same_processes = entry.host and Origin(entry.host, written_in) == here
    if same_processes and not process_exists(entry.pid):
        return f"process {entry.pid} on this host is gone"
    return None


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
    ``stale_after`` seconds (at least two refresh periods), or whose process on this host is
    gone, is dead. Raises ``ValueError`` for an empty path or a too short ``stale_after``."""

    def __init__(self, path: str | os.PathLike[str], *, stale_after: float = STALE_AFTER) -> None:
        if not str(path):
            raise ValueError("dir:PATH needs a directory")
        if not stale_after >= 2 * REFRESH_EVERY:
            raise ValueError(
                f"stale_after must be at least {2 * REFRESH_EVERY:g} s (workers refresh their "
                f"entries every {REFRESH_EVERY:g} s), got {stale_after}"
            )
        self.path = Path(path)
        self.stale_after = stale_after
        self._here = Origin.here()
        self._calls = BlockingCalls(f"discovery dir:{self.path}")

    def _file(self, worker_id: int) -> Path:
        return self.path / f"{worker_id:016x}.json"

    def register(self, entry: DiscoveryEntry) -> None:
        """Write ``entry``, a process of this host (or of ``entry.host``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        target = self._file(entry.worker_id)
        temporary = target.with_suffix(f".{os.getpid()}.tmp")
        stored = {**asdict(entry), "pid_namespace": self._here.pid_namespace}
        temporary.write_text(json.dumps(stored), encoding="utf-8")
        os.replace(temporary, target)  # readers never see a half-written entry

    def unregister(self, worker_id: int, incarnation: int) -> None:
        found = self._read(self._file(worker_id))
        if found is not None and found[0].incarnation == incarnation:
            with contextlib.suppress(FileNotFoundError):
                self._file(worker_id).unlink()

    def lookup(self, worker_id: int) -> DiscoveryEntry | None:
        """The live entry for ``worker_id``; a dead one is removed and ``None`` returned."""
        return self._live(self._file(worker_id))

    def entries(self) -> list[DiscoveryEntry]:
        """Every live entry (dead ones are removed on the way)."""
        if not self.path.is_dir():
            return []
        found = (self._live(path) for path in sorted(self.path.glob("*.json")))
        return [entry for entry in found if entry is not None]

    def _live(self, path: Path) -> DiscoveryEntry | None:
        found = self._read(path)
        if found is None:
            return None
        entry, written_in = found
        why = why_dead(
            entry, written_in, self._here, time.time(), self.stale_after, _process_exists
        )
        if why is None:
            return entry
        if self._read(path) == found:  # not refreshed meanwhile: remove it
            logger.info(
                "removing the discovery entry of worker %#x (pid %d on %s): %s",
                entry.worker_id,
                entry.pid,
                entry.host or "an unnamed host",
                why,
            )
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return None

    @staticmethod
    def _read(path: Path) -> tuple[DiscoveryEntry, str] | None:
        """The entry in ``path`` and the PID namespace of its writer; ``None`` if there is
        none or it cannot be read."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entry = DiscoveryEntry(
                worker_id=int(data["worker_id"]),
                address=str(data["address"]),
                pid=int(data["pid"]),
                incarnation=int(data["incarnation"]),
                last_seen=float(data["last_seen"]),
                host=str(data.get("host", "")),  # older entries name no host
            )
            return entry, str(data.get("pid_namespace", ""))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            logger.warning("ignoring unreadable discovery entry %s: %s", path, error)
            return None

    # -- the Discovery protocol ---------------------------------------------------------------

    async def publish(self, entry: DiscoveryEntry) -> None:
        await self._calls.run(lambda: self.register(entry))

    async def withdraw(self, worker_id: int, incarnation: int) -> None:
        await self._calls.run(lambda: self.unregister(worker_id, incarnation))

    async def find(self, worker_id: int) -> DiscoveryEntry | None:
        return await self._calls.run(lambda: self.lookup(worker_id))

    async def seeds(self) -> list[str]:
        return [entry.address for entry in await self._calls.run(self.entries)]

    def __repr__(self) -> str:
        return f"DirectoryDiscovery({str(self.path)!r})"
