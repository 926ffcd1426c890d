"""CURVE, review findings 3 and 9: what a failed handshake means, and when a key is bound.

libzmq reports every connection error during a handshake as ``HANDSHAKE_FAILED_NO_DETAIL``,
a seed that closes connections (restarting, overloaded, no ZeroMQ server at all) as well as
one that does not hold the key dialled: such a seed must not stop a join through the others,
and is named if the join times out. A key is bound to a worker id only when the worker is
admitted (a member verified at its address, an observer answered) and released when it is
known no more, so no holder of an allowed key can reserve the id of a worker yet to come.
Real workers, real sockets, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import FAST, wait_until
from test_curve import MEMBERS, Keys, Listener, Stranger, hello, make_keys

from velo_am import AuthenticationRefused, PeerUnreachable, Worker
from velo_am._keys import KeyBindings

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def per_worker(tmp_path: Path) -> Keys:
    """A key pair per worker (and one for the command line)."""
    return make_keys(tmp_path, MEMBERS)


class Closer:
    """A TCP server at a seed's address that accepts each connection and closes it at once,
    as a restarting or overloaded one does: every handshake with it fails without detail."""

    def __init__(self, server: asyncio.Server) -> None:
        self.server = server
        self.accepted = 0
        port = server.sockets[0].getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"

    def accept(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()


@pytest.fixture
async def closer() -> AsyncIterator[Closer]:
    holder: list[Closer] = []
    server = await asyncio.start_server(
        lambda reader, writer: holder[0].accept(reader, writer), "127.0.0.1", 0
    )
    holder.append(Closer(server))
    async with server:
        yield holder[0]


def unused_address() -> str:
    """A port nobody listens on (connections to it are refused)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


# -- finding 3: a handshake failed without detail is no refusal by itself ----------------------


async def test_a_seed_closing_connections_does_not_stop_the_join(
    per_worker: Keys, closer: Closer
) -> None:
    keys = per_worker
    async with (
        Worker(1, curve=keys.curve("a"), **FAST) as a,
        Worker(2, curve=keys.curve("b"), peers=[closer.address, a.address], **FAST) as b,
    ):
        assert closer.accepted >= 1, "the closing seed was tried first"
        assert b.is_connected(a.worker_id) and a.is_connected(b.worker_id)


async def test_a_join_through_closing_seeds_retries_and_names_them(
    per_worker: Keys, closer: Closer
) -> None:
    keys = per_worker
    dead = unused_address()
    worker = Worker(
        2,
        curve=keys.curve("b"),
        peers=[closer.address, dead],
        join_timeout=3,
        handshake_timeout=1,
        **FAST,
    )
    with pytest.raises(PeerUnreachable) as raised:
        await worker.start()
    assert type(raised.value) is PeerUnreachable, "not a refusal: one seed was unreachable"
    message = str(raised.value)
    assert "no seed answered within 3" in message
    assert f"authentication failed with {closer.address}" in message
    assert "does not hold the key dialled" in message and dead in message
    assert closer.accepted > 3, "the closing seed was tried again"
    assert worker.state == "closed"


async def test_a_seed_refusing_the_key_does_not_stop_the_join_through_another(
    per_worker: Keys, tmp_path: Path
) -> None:
    keys = per_worker
    strict = tmp_path / "strict"  # a's key, but b's not allowed: ZAP refuses b
    strict.mkdir()
    shutil.copy(keys.allow / "a.key", strict)
    async with (
        Worker(1, curve=keys.curve("a"), **FAST) as a,
        Worker(3, curve=(keys.secret("a"), strict), **FAST) as gate,
    ):
        alone = Worker(2, curve=keys.curve("b"), peers=[gate.address], join_timeout=60)
        with pytest.raises(AuthenticationRefused, match="is not in its allowed keys"):
            await alone.start()  # every seed refused: at once, not at the join timeout
        peers = [gate.address, a.address]
        async with Worker(2, curve=keys.curve("b"), peers=peers, **FAST) as b:
            assert b.is_connected(a.worker_id) and not b.is_connected(gate.worker_id)


# -- finding 9: a key is bound on admission, released when its worker is known no more ------


async def test_an_allowed_key_cannot_reserve_a_future_workers_id(per_worker: Keys) -> None:
    keys = per_worker
    async with Worker(0xA, curve=keys.curve("a"), **FAST) as a:
        stranger, listener = Stranger(a.address, keys.pair("cli")), Listener()
        try:
            stranger.send(hello(0xC, 1, listener.address))  # 0xC's id, the operator's key
            await wait_until(listener.dialled)  # a verifies the claim: it was read
            async with Worker(0xC, curve=keys.curve("c"), peers=[a.address], join_timeout=20):
                assert a.is_connected(0xC)
        finally:
            stranger.close()
            listener.close()


async def test_an_observer_that_left_frees_its_id(per_worker: Keys) -> None:
    keys = per_worker
    async with Worker(0xA, curve=keys.curve("a"), **FAST) as a:
        a.handler("echo")(lambda payload, ctx: payload)
        # As a command does: join, do business (a link of its own), say goodbye on closing.
        async with Worker(
            0x77, curve=keys.curve("cli"), peers=[a.address], observer=True
        ) as observer:
            assert await observer.call(a.worker_id, "echo", "hi") == "hi"
            assert a.stats()["peers_alive"] == 0  # an observer is no member
        async with Worker(0x77, curve=keys.curve("c"), peers=[a.address], join_timeout=20):
            assert a.is_connected(0x77)


def test_bindings_check_bind_and_release() -> None:
    keys = KeyBindings()
    assert keys.check("k1", 7) is None, "an unbound id: any key may claim it"
    assert keys.check("k2", 7) is None, "checking binds nothing"
    keys.bind("k1", 7)
    keys.bind("k2", 7)  # the first binding stays
    assert keys.check("k1", 7) is None
    refused = keys.check("k2", 7)
    assert refused is not None and "0x7 speaks with another key (k1), not k2" in refused
    assert keys.check(None, 7) is None, "nothing proved, nothing to check"
    keys.bind(None, 8)
    assert keys.check("k2", 8) is None, "no key, no binding"
    keys.bind("k1", 9)
    keys.release(7)
    assert keys.check("k2", 7) is None
    keys.retain(lambda worker_id: worker_id != 9)
    assert keys.check("k2", 9) is None
