"""``dir:`` discovery on a shared file system: entries name their host, a pid is checked on
its own host only, freshness decides elsewhere; and discovery I/O that hangs blocks neither
the loop nor the worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import FAKE_FAST, Hosts, Script, stop, velo, wait_until

from velo_am import PeerUnreachable, Worker, discovery  # new names: looked up per test
from velo_am.discovery import DirectoryDiscovery, DiscoveryEntry
from velo_am.discovery import _directory as directory
from velo_am.transport import FakeNetwork
from velo_event import EventHandle

pytestmark = pytest.mark.timeout(60)


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def write_entry(folder: Path, worker_id: int, **fields: Any) -> Path:
    """An entry as another process wrote it (``fields`` override a fresh one)."""
    entry = {
        "worker_id": worker_id,
        "address": "tcp://127.0.0.1:1",
        "pid": dead_pid(),
        "incarnation": 7,
        "last_seen": time.time(),
        **fields,
    }
    path = folder / f"{worker_id:016x}.json"
    path.write_text(json.dumps(entry))
    return path


# -- whose pid is checked, and when freshness decides ----------------------------------------


def test_a_fresh_entry_of_another_host_is_kept_though_its_pid_is_not_here(tmp_path: Path) -> None:
    path = write_entry(tmp_path, 0x41, host="another-host")  # its pid exists nowhere here
    folder = DirectoryDiscovery(tmp_path)
    found = folder.lookup(0x41)
    assert found is not None and found.address == "tcp://127.0.0.1:1"
    assert [entry.worker_id for entry in folder.entries()] == [0x41]
    assert path.exists(), "a live worker of another host must not be removed"


def test_a_stale_entry_is_ignored_and_removed_whatever_its_host(tmp_path: Path) -> None:
    long_ago = time.time() - 31
    elsewhere = write_entry(tmp_path, 0x42, host="another-host", last_seen=long_ago)
    unnamed = write_entry(tmp_path, 0x43, last_seen=long_ago, pid=os.getpid())  # an old entry
    folder = DirectoryDiscovery(tmp_path)
    assert folder.stale_after == 30.0
    assert folder.lookup(0x42) is None
    assert folder.entries() == []
    assert not elsewhere.exists() and not unnamed.exists()


def test_a_dead_process_of_this_host_is_removed_at_once(tmp_path: Path) -> None:
    folder = DirectoryDiscovery(tmp_path)
    here = discovery.this_host()
    gone = DiscoveryEntry(0x44, "tcp://127.0.0.1:1", dead_pid(), 1, time.time(), here)
    alive = DiscoveryEntry(0x45, "tcp://127.0.0.1:2", os.getpid(), 1, time.time(), here)
    folder.register(gone)
    folder.register(alive)
    assert folder.entries() == [alive]
    assert not (tmp_path / f"{0x44:016x}.json").exists()


def test_an_entry_that_names_no_host_is_judged_by_its_age(tmp_path: Path) -> None:
    """Written by an older velo: which host it came from is unknown, so its pid is not
    checked (it may be another host's); it goes once stale."""
    path = write_entry(tmp_path, 0x46)
    found = DirectoryDiscovery(tmp_path).lookup(0x46)
    assert found is not None and found.host == ""
    assert path.exists()


def test_a_pid_of_another_pid_namespace_on_this_host_is_not_checked(tmp_path: Path) -> None:
    """Containers with host networking share the host's name but not its pids."""
    here = discovery.this_host()
    write_entry(tmp_path, 0x47, host=here, pid_namespace="pid:[1]")
    assert DirectoryDiscovery(tmp_path).lookup(0x47) is not None


def test_why_an_entry_is_dead() -> None:
    here = directory.Origin("node-1", "pid:[9]")

    def judge(entry: DiscoveryEntry, written_in: str = "pid:[9]", now: float = 100.0) -> str | None:
        return directory.why_dead(entry, written_in, here, now, 30.0, lambda pid: pid == 5)

    def entry(pid: int, host: str, last_seen: float = 90.0) -> DiscoveryEntry:
        return DiscoveryEntry(1, "tcp://10.0.0.1:1", pid, 1, last_seen, host)

    assert judge(entry(5, "node-1")) is None
    assert judge(entry(6, "node-1")) == "process 6 on this host is gone"
    assert judge(entry(6, "node-2")) is None, "another host: its pid means nothing here"
    assert judge(entry(6, "node-1"), written_in="pid:[8]") is None, "another pid namespace"
    assert judge(entry(6, "")) is None, "no host named"
    assert judge(entry(5, "node-1", last_seen=70.0)) == "not refreshed for 30 s"
    assert judge(entry(6, "node-2", last_seen=60.0)) == "not refreshed for 40 s"
    assert judge(entry(6, "node-2", last_seen=130.0)) is None, "a writer's clock ahead"


def test_bad_directory_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"stale_after must be at least 10 s .* every 5 s"):
        DirectoryDiscovery("/tmp/x", stale_after=6)
    with pytest.raises(ValueError, match="needs a directory"):
        DirectoryDiscovery("")


async def test_a_worker_writes_its_host_and_refreshes_its_entry(tmp_path: Path) -> None:
    async with Worker(discovery=f"dir:{tmp_path}") as worker:
        written = json.loads((tmp_path / f"{worker.worker_id:016x}.json").read_text())
        assert written["host"] == discovery.this_host()
        assert written["pid"] == os.getpid() and written["address"] == worker.address
        assert time.time() - written["last_seen"] < 5


async def test_an_observer_leaves_no_entry(tmp_path: Path) -> None:
    """A short-lived member (the CLI's) is dialed by nobody: others must not join through it."""
    spec = f"dir:{tmp_path}"
    async with Worker(discovery=spec) as member, Worker(discovery=spec, observer=True) as observer:
        await observer.wait_for_peer(member.worker_id, timeout=5)
        listed = [entry.worker_id for entry in DirectoryDiscovery(tmp_path).entries()]
        assert listed == [member.worker_id]


class GatedDiscovery:
    """A backend whose ``publish`` waits for ``gate``: a slow file system."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.published: list[DiscoveryEntry] = []

    async def publish(self, entry: DiscoveryEntry) -> None:
        self.published.append(entry)
        await self.gate.wait()

    async def withdraw(self, worker_id: int, incarnation: int) -> None:
        pass

    async def find(self, worker_id: int) -> DiscoveryEntry | None:
        return None

    async def seeds(self) -> list[str]:
        return [entry.address for entry in self.published]


async def test_a_slow_discovery_gets_one_refresh_at_a_time() -> None:
    backend = GatedDiscovery()
    backend.gate.set()
    options: dict[str, Any] = {**FAKE_FAST, "handshake_timeout": 10.0}
    async with Worker(1, transport=FakeNetwork().transport(), discovery=backend, **options) as w:
        routes = w._routes
        backend.gate.clear()
        slow = asyncio.ensure_future(routes.refresh(w.address, rejoin=False))
        await wait_until(lambda: len(backend.published) == 2)
        async with asyncio.timeout(5):
            await routes.refresh(w.address, rejoin=False)  # the clock's next one: skipped
        assert len(backend.published) == 2
        backend.gate.set()
        await slow
        await routes.refresh(w.address, rejoin=False)
        assert len(backend.published) == 3


# -- two hosts sharing a directory --------------------------------------------------------------


def on_host(hosts: Hosts, netns: str, name: str, *, own_pids: bool) -> list[str]:
    """Run in network namespace ``netns`` with host name ``name`` and, with ``own_pids``, a
    PID namespace of its own (another host's processes are not there)."""
    pids = ["--pid", "--fork"] if own_pids else []
    rename = f'hostname {name} && exec "$0" "$@"'
    return [*hosts.launcher(netns), "unshare", "--uts", *pids, "sh", "-c", rename]


@pytest.mark.timeout(120)
def test_a_worker_on_another_host_is_found_through_a_shared_directory(
    hosts: Hosts, tmp_path: Path
) -> None:
    """Host B's command finds host A's worker by id in the directory they share, and leaves
    its entry alone although A's pid does not exist on B."""
    if shutil.which("unshare") is None or shutil.which("hostname") is None:
        pytest.skip("simulating hosts needs unshare and hostname (util-linux)")
    shared = f"dir:{tmp_path}"
    worker = Script(
        "-m", "velo_am", "worker", "--id", "0x62", "--discovery", shared,
        "--bind", f"tcp://{hosts.address_a}:0",
        launcher=on_host(hosts, hosts.a, "velo-host-a", own_pids=False),
    )  # fmt: skip
    try:
        worker_id, _ = worker.ready()
        on_b = on_host(hosts, hosts.b, "velo-host-b", own_pids=True)
        created = velo("new-event", "--on", "0x62", "--discovery", shared, launcher=on_b)
        assert created.returncode == 0, created.stderr
        assert EventHandle.parse(created.stdout.strip()).worker_id == worker_id
        entry = json.loads((tmp_path / f"{worker_id:016x}.json").read_text())
        assert entry["host"] == "velo-host-a"
    finally:
        stop(worker)


# -- discovery I/O that hangs -----------------------------------------------------------------


class LoopWatch:
    """Ticks on the loop every 10 ms: ``longest`` is the longest the loop went without
    running it, i.e. the longest anything blocked the loop."""

    def __init__(self) -> None:
        self.longest = 0.0

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[LoopWatch]:
        ticking = asyncio.create_task(self._tick())
        try:
            yield self
        finally:
            ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticking


@contextlib.contextmanager
def hung(path: Path) -> Iterator[None]:
    """``path`` is a FIFO nobody writes: opening it to read blocks, as a file on a hung
    file system does. Afterwards every reader is let go."""
    os.mkfifo(path)
    try:
        yield
    finally:
        writer = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # readers blocked in open() go on
        path.unlink()  # no new reader can open it
        os.close(writer)  # readers see the end of the file


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="a hung file needs a FIFO")


@needs_fifo
async def test_a_hung_discovery_directory_blocks_neither_the_loop_nor_calls_nor_close(
    tmp_path: Path,
) -> None:
    worker = Worker(discovery=f"dir:{tmp_path}", handshake_timeout=0.5)
    await worker.start()
    own = tmp_path / f"{worker.worker_id:016x}.json"
    try:
        with hung(tmp_path / f"{0x77:016x}.json"):
            async with LoopWatch().watching() as watch, asyncio.timeout(10):
                started = time.monotonic()
                with pytest.raises(PeerUnreachable, match=r"did not answer within 0\.5 s"):
                    await worker.call(0x77, "anything")
                assert time.monotonic() - started < 3
                own.unlink()
                with hung(own):  # withdrawing reads it
                    await worker.close()
            assert watch.longest < 0.5
    finally:
        await worker.close()


@needs_fifo
async def test_joining_through_a_hung_directory_fails_in_bounded_time(tmp_path: Path) -> None:
    worker = Worker(discovery=f"dir:{tmp_path}", join_timeout=1.0, handshake_timeout=0.2)
    with hung(tmp_path / f"{0x78:016x}.json"):
        async with LoopWatch().watching() as watch, asyncio.timeout(10):
            with pytest.raises(PeerUnreachable, match=r"no seed answered within 1\.0 s"):
                await worker.start()
        assert watch.longest < 0.5
