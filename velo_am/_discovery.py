"""Discovery for scripts on one host: a directory with one small JSON file per live worker.

``discovery="dir:PATH"`` (or ``VELO_DISCOVERY=dir:PATH``): a worker writes
``PATH/<worker id in hex>.json`` (id, address, pid, incarnation, last seen) on start, refreshes
it while it runs and removes it on close. A lookup ignores, and deletes, the entry of a process
that no longer exists or of one that stopped refreshing it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["DirectoryDiscovery", "DiscoveryEntry", "parse_discovery"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DiscoveryEntry:
    worker_id: int
    address: str
    pid: int
    incarnation: int
    last_seen: float


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


class DirectoryDiscovery:
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


def parse_discovery(spec: str) -> DirectoryDiscovery:
    """``dir:PATH`` → a :class:`DirectoryDiscovery`; anything else is a ``ValueError``."""
    scheme, _, rest = spec.partition(":")
    if scheme != "dir" or not rest:
        raise ValueError(f"unsupported discovery {spec!r}: expected 'dir:PATH'")
    return DirectoryDiscovery(rest)
