"""``dns:NAME:PORT`` discovery: the records of a name as seeds, resolved off the loop and
again while joining. No DNS query leaves the machine: ``localhost`` comes from /etc/hosts,
and other names from resolvers of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import FAKE_FAST, wait_until

from velo_am import PeerUnreachable, Worker, discovery
from velo_am.transport import FakeNetwork

pytestmark = pytest.mark.timeout(60)

SERVICE = "velo-headless.default.svc.cluster.local"


def records(*ips: str) -> list[tuple[Any, ...]]:
    """What ``socket.getaddrinfo`` returns for ``ips`` (port 0: the caller's is used)."""
    found: list[tuple[Any, ...]] = []
    for ip in ips:
        if ":" in ip:
            found.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, 0, 0, 0)))
        else:
            found.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)))
    return found


def no_such_name(*args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_dns_urls() -> None:
    found = discovery.open_discovery("dns:velo-headless:29500")
    assert isinstance(found, discovery.DnsDiscovery)
    assert (found.name, found.port) == ("velo-headless", 29500)
    assert discovery.open_discovery("dns:[::1]:7").name == "::1"  # type: ignore[attr-defined]
    assert discovery.schemes()["dns"] == "dns:NAME:PORT"
    for bad, why in [
        ("dns:velo-headless", "needs a port after the name"),
        ("dns:velo-headless:", "needs a port after the name"),
        ("dns:velo-headless:http", "needs a port after the name"),
        ("dns:velo-headless:0", "port from 1 to 65535, got 0"),
        ("dns:velo-headless:70000", "port from 1 to 65535, got 70000"),
        ("dns::29500", "needs a host name"),
        ("dns:two words:29500", "needs a host name"),
    ]:
        with pytest.raises(ValueError, match=why):
            discovery.open_discovery(bad)


def test_every_record_becomes_a_seed_once() -> None:
    answer = records("10.0.0.1", "10.0.0.2", "10.0.0.1", "fd00::3")
    asked: list[tuple[Any, ...]] = []

    def resolver(*args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        asked.append((*args, kwargs))
        return answer

    dns = discovery.DnsDiscovery(SERVICE, 29500, resolver=resolver)
    assert dns.resolve() == [
        "tcp://10.0.0.1:29500",
        "tcp://10.0.0.2:29500",
        "tcp://[fd00::3]:29500",
    ]
    assert asked == [(SERVICE, 29500, {"type": socket.SOCK_STREAM})]
    failing = discovery.DnsDiscovery(SERVICE, 29500, resolver=no_such_name)
    with pytest.raises(OSError, match=f"cannot resolve '{SERVICE}': .*Name or service not known"):
        failing.resolve()


def test_localhost_resolves_through_the_system_resolver() -> None:
    assert "tcp://127.0.0.1:29500" in discovery.DnsDiscovery("localhost", 29500).resolve()


async def test_dns_knows_no_worker_ids_and_publishes_nothing() -> None:
    dns = discovery.DnsDiscovery(SERVICE, 29500, resolver=no_such_name)
    entry = discovery.DiscoveryEntry(1, "tcp://10.0.0.1:29500", 1, 1, time.time())
    await dns.publish(entry)
    await dns.withdraw(1, 1)
    assert await dns.find(1) is None


async def test_a_worker_joins_through_dns_localhost() -> None:
    async with Worker() as a:
        a.register_handler("hi", lambda payload, ctx: f"hi {ctx.sender:#x}")
        port = int(a.address.rsplit(":", 1)[1])
        async with Worker(discovery=f"dns:localhost:{port}") as b:
            assert a.worker_id in b.peers, "joined while starting"
            assert await b.call(a.worker_id, "hi") == f"hi {b.worker_id:#x}"
            await a.wait_for_peer(b.worker_id, timeout=5)
            with pytest.raises(PeerUnreachable, match="unknown worker 0xdead: no route"):
                async with asyncio.timeout(5):  # not a member, and DNS names no ids
                    await b.call(0xDEAD, "hi")


async def test_records_that_appear_while_joining_are_found() -> None:
    """A pod starts before the others' records exist: it resolves again until they do."""
    appeared = threading.Event()
    asked = 0

    def resolver(*args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        nonlocal asked
        asked += 1
        return records("127.0.0.1") if appeared.is_set() else no_such_name()

    async with Worker() as a:
        port = int(a.address.rsplit(":", 1)[1])
        b = Worker(discovery=discovery.DnsDiscovery(SERVICE, port, resolver=resolver))
        starting = asyncio.ensure_future(b.start())
        try:
            await wait_until(lambda: asked >= 2)
            assert not starting.done(), "no record yet: still joining"
            appeared.set()
            async with asyncio.timeout(10):
                await starting
            assert a.worker_id in b.peers
        finally:
            starting.cancel()
            await b.close()


async def test_nothing_to_resolve_fails_the_join_in_bounded_time() -> None:
    worker = Worker(
        discovery=discovery.DnsDiscovery(SERVICE, 29500, resolver=no_such_name), join_timeout=0.5
    )
    with pytest.raises(
        PeerUnreachable,
        match=r"no seed answered within 0\.5 s \(discovery DnsDiscovery\('velo-headless.*', "
        r"29500\)\): cannot resolve .*Name or service not known",
    ):
        async with asyncio.timeout(10):
            await worker.start()


async def test_a_resolver_that_hangs_blocks_neither_the_loop_nor_the_join() -> None:
    release = threading.Event()

    def hangs(*args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        release.wait(30)
        return []

    slow = discovery.DnsDiscovery(SERVICE, 29500, resolver=hangs)
    worker = Worker(discovery=slow, join_timeout=1.0, handshake_timeout=0.2)
    longest = 0.0

    async def tick() -> None:
        nonlocal longest
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            longest, last = max(longest, now - last), now

    ticking = asyncio.ensure_future(tick())
    try:
        with pytest.raises(PeerUnreachable, match=r"within 1\.0 s .*(did not answer|not returned)"):
            async with asyncio.timeout(10):
                await worker.start()
        assert longest < 0.5, f"the loop was blocked for {longest:.2f} s"
    finally:
        release.set()
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking


@contextlib.asynccontextmanager
async def pods(network: FakeNetwork, ips: list[str]) -> AsyncIterator[list[Worker]]:
    """A pod per address, each a worker on port 29500 whose discovery is the service's name,
    which resolves to every pod's address; all start at once."""

    def resolver(*args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        return records(*ips)

    workers = [
        Worker(
            n,
            transport=network.transport(f"tcp://{ip}:29500"),
            discovery=discovery.DnsDiscovery(SERVICE, 29500, resolver=resolver),
            **FAKE_FAST,  # type: ignore[arg-type]
        )
        for n, ip in enumerate(ips, start=1)
    ]
    try:
        async with asyncio.timeout(10):
            await asyncio.gather(*(worker.start() for worker in workers))
        yield workers
    finally:
        await asyncio.gather(*(worker.close(grace=0) for worker in workers))


async def test_the_pods_of_a_headless_service_form_one_mesh() -> None:
    ips = [f"10.0.0.{n}" for n in range(1, 7)]
    async with pods(FakeNetwork(), ips) as workers:
        for worker in workers:
            await worker.wait_for_peers(len(ips) - 1, timeout=10)


async def test_a_lone_pod_is_the_first_member() -> None:
    async with pods(FakeNetwork(), ["10.0.0.1"]) as (worker,):
        assert worker.peers == {}
