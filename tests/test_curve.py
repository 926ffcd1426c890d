"""CURVE (issue 11, item 1): opt-in authentication and encryption with ZeroMQ's own machinery.

Meshes of workers with a key per worker and with one shared key; a refused key named at once;
every `velo-am` command with the flags and with the variables (real processes); and a real
unauthorised client, built from pyzmq and docs/protocol.md, for every attack of the issue: with
no key, with a key that is not allowed, and with an allowed key claiming another member's id.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth
from support import FAST, Script, velo, wait_until

from velo_am import (
    AuthenticationRefused,
    CallContext,
    Curve,
    CurveConfig,
    SyncWorker,
    Worker,
)
from velo_am import _codec as codec
from velo_am import _protocol as p
from velo_am.transport import Plaintext
from velo_event import EventHandle, EventStatus

pytestmark = pytest.mark.timeout(90)

MEMBERS = ("a", "b", "c", "cli")


@dataclass(frozen=True)
class Keys:
    """Certificates in ``certs``; the public ones of the members copied into ``allow``."""

    certs: Path
    allow: Path

    def secret(self, name: str) -> str:
        return str(self.certs / f"{name}.key_secret")

    def curve(self, name: str) -> tuple[str, str]:
        return self.secret(name), str(self.allow)

    def pair(self, name: str) -> tuple[bytes, bytes]:
        public, secret = zmq.auth.load_certificate(self.secret(name))
        assert secret is not None
        return public, secret

    def flags(self, name: str) -> list[str]:
        return ["--curve-key", self.secret(name), "--curve-allow", str(self.allow)]

    def env(self, name: str) -> dict[str, str]:
        return {"VELO_CURVE_KEY": self.secret(name), "VELO_CURVE_ALLOW": str(self.allow)}


def make_keys(root: Path, allowed: tuple[str, ...], outsiders: tuple[str, ...] = ()) -> Keys:
    keys = Keys(root / "certs", root / "allow")
    keys.certs.mkdir()
    keys.allow.mkdir()
    for name in (*allowed, *outsiders):
        zmq.auth.create_certificates(keys.certs, name)
    for name in allowed:
        shutil.copy(keys.certs / f"{name}.key", keys.allow)
    return keys


@pytest.fixture
def per_worker(tmp_path: Path) -> Keys:
    """A key pair per worker (and one for the command line); "stranger" is not allowed."""
    return make_keys(tmp_path, MEMBERS, outsiders=("stranger",))


@pytest.fixture
def shared(tmp_path: Path) -> Keys:
    """One pair, "mesh", shared by every worker."""
    return make_keys(tmp_path, ("mesh",), outsiders=("stranger",))


def endpoint(address: str) -> str:
    return address.split(maxsplit=1)[0]


# -- meshes ------------------------------------------------------------------------------------


async def test_a_mesh_with_a_key_per_worker(per_worker: Keys) -> None:
    keys = per_worker
    async with Worker(1, curve=keys.curve("a"), **FAST) as a:
        a.register_handler("whoami", lambda payload, ctx: f"a, asked by {ctx.sender:#x}")
        assert a.address.endswith(f" curve:{keys.pair('a')[0].decode()}"), "the key is advertised"
        async with (
            Worker(2, curve=CurveConfig(*keys.curve("b")), peers=[a.address], **FAST) as b,
            Worker(3, curve=Curve(*keys.curve("c")), peers=[b.address], **FAST) as c,
        ):
            assert await b.call(1, "whoami") == "a, asked by 0x2"
            # c never dialled a: a's address, with its key, came from b's member list.
            assert await c.call(1, "whoami") == "a, asked by 0x3"
            event = a.events.new_event("over CURVE")
            waiting = asyncio.ensure_future(c.events.awaiter(event.handle))
            await b.events.trigger_confirmed(event.handle)
            async with asyncio.timeout(5):
                await waiting
        # A seed may name its certificate instead of carrying the key.
        seed = f"{endpoint(a.address)} curve:a"
        async with Worker(4, curve=keys.curve("cli"), peers=[seed], **FAST) as d:
            assert await d.call(1, "whoami") == "a, asked by 0x4"


async def test_discovery_entries_carry_the_key(per_worker: Keys, tmp_path: Path) -> None:
    keys, spec = per_worker, f"dir:{tmp_path / 'board'}"
    async with (
        Worker(1, curve=keys.curve("a"), discovery=spec, **FAST) as a,
        Worker(2, curve=keys.curve("b"), discovery=spec, **FAST) as b,
    ):
        a.register_handler("whoami", lambda payload, ctx: 1)
        assert await b.call(1, "whoami") == 1, "found a, and its key, in the directory"


async def test_a_mesh_with_one_shared_key(shared: Keys) -> None:
    keys = shared
    async with Worker(1, curve=keys.curve("mesh"), **FAST) as a:
        a.register_handler("echo", lambda payload, ctx: payload)
        # A bare seed (no key): dialled with this worker's own key, the mesh's.
        async with (
            Worker(2, curve=keys.curve("mesh"), peers=[endpoint(a.address)], **FAST) as b,
            Worker(3, curve=keys.curve("mesh"), peers=[endpoint(b.address)], **FAST) as c,
        ):
            assert await b.call(1, "echo", "shared") == "shared"
            assert await c.call(1, "echo", "via gossip") == "via gossip"


async def test_a_refused_key_is_named_at_once_not_a_join_timeout(
    per_worker: Keys, figures: dict[str, str]
) -> None:
    keys = per_worker
    async with Worker(1, curve=keys.curve("a"), **FAST) as a:
        refused = Worker(2, curve=keys.curve("stranger"), peers=[a.address], join_timeout=60)
        started = time.monotonic()
        with pytest.raises(AuthenticationRefused) as raised:
            await refused.start()
        elapsed = time.monotonic() - started
        figures["a refused key: start() raised AuthenticationRefused after, s"] = f"{elapsed:.2f}"
        assert elapsed < 5
        message = str(raised.value)
        assert f"authentication refused by {a.address}" in message
        assert "this worker's key" in message and "is not in its allowed keys" in message
        assert refused.state == "closed" and a.peers == {}
        # A seed dialled with a key it does not hold (per-worker keys, a bare seed).
        wrong = Worker(3, curve=keys.curve("b"), peers=[endpoint(a.address)], join_timeout=60)
        started = time.monotonic()
        with pytest.raises(AuthenticationRefused, match="does not hold the key dialled"):
            await wrong.start()
        assert time.monotonic() - started < 5


def test_a_sync_worker_takes_curve_too(shared: Keys) -> None:
    with (
        SyncWorker(1, curve=shared.curve("mesh"), **FAST) as a,
        SyncWorker(2, curve=shared.curve("mesh"), peers=[a.address], **FAST) as b,
    ):
        a.register_handler("echo", lambda payload, ctx: payload)
        assert b.call(1, "echo", "sync over CURVE") == "sync over CURVE"
        assert " curve:" in a.address


def test_bad_certificates_are_named(per_worker: Keys, tmp_path: Path) -> None:
    keys = per_worker
    missing = tmp_path / "nope.key_secret"
    with pytest.raises(ValueError, match=f"cannot read the secret certificate {missing}"):
        Worker(curve=(str(missing), str(keys.allow)))
    public = keys.certs / "a.key"
    with pytest.raises(ValueError, match=f"{public} is a public certificate"):
        Worker(curve=(str(public), str(keys.allow)))
    mangled = tmp_path / "mangled.key_secret"
    mangled.write_text('curve\n    public-key = "short"\n    secret-key = "short"\n')
    with pytest.raises(ValueError, match=f"malformed CURVE key in {mangled}"):
        Worker(curve=(str(mangled), str(keys.allow)))
    with pytest.raises(ValueError, match=r"allowed keys. directory .*nowhere does not exist"):
        Worker(curve=(keys.secret("a"), str(tmp_path / "nowhere")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"no public certificate .* {empty}"):
        Worker(curve=(keys.secret("a"), str(empty)))
    (keys.allow / "broken.key").write_text("metadata\n")
    with pytest.raises(ValueError, match=f"cannot read the certificate {keys.allow}/broken.key"):
        Worker(curve=keys.curve("a"))
    with pytest.raises(TypeError, match="curve must be a Curve, a CurveConfig or a"):
        Worker(curve="a.key_secret")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="either security or curve"):
        Worker(curve=keys.curve("a"), security=Plaintext())


def test_the_variables_turn_curve_on(per_worker: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = per_worker
    monkeypatch.setenv("VELO_CURVE_KEY", keys.secret("a"))
    with pytest.raises(ValueError, match="VELO_CURVE_ALLOW is not set"):
        Worker()
    monkeypatch.setenv("VELO_CURVE_ALLOW", str(keys.allow))

    async def address() -> str:
        async with Worker() as worker:
            return worker.address

    assert asyncio.run(address()).endswith(f"curve:{keys.pair('a')[0].decode()}")


# -- the command line, real processes ------------------------------------------------------------


def start_worker(*args: str, env: dict[str, str] | None = None) -> tuple[Script, int, str]:
    script = Script(
        "-m", "velo_am", "worker", "--bind", "tcp://127.0.0.1:0",
        "--heartbeat-interval", "0.2", "--heartbeat-timeout", "2", *args, env=env,
    )  # fmt: skip
    try:
        worker_id, address = script.ready()
    except BaseException:
        script.reap()
        raise
    return script, worker_id, address


def stop(*scripts: Script) -> None:
    for script in scripts:
        script.signal(signal.SIGTERM)
    for script in scripts:
        assert script.wait() == 0, script.stderr()
        script.reap()


def test_keygen_writes_a_pair_and_never_overwrites(tmp_path: Path) -> None:
    result = velo("keygen", str(tmp_path / "certs"), "--name", "node1")
    assert result.returncode == 0, result.stderr
    public, secret = tmp_path / "certs/node1.key", tmp_path / "certs/node1.key_secret"
    assert result.stdout.split() == [str(public), str(secret)]
    key, secret_key = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public) == (key, None) and secret_key is not None
    assert secret.stat().st_mode & 0o077 == 0, "the secret is readable by its owner only"
    again = velo("keygen", str(tmp_path / "certs"), "--name", "node1")
    assert again.returncode == 3
    assert f"{public} exists: not overwritten" in again.stderr
    assert zmq.auth.load_certificate(secret) == (key, secret_key), "untouched"
    bad = velo("keygen", str(tmp_path), "--name", "../up")
    assert bad.returncode == 3 and "--name must be a plain file name" in bad.stderr


def mesh_commands(seed: list[str], owner: int, other: int, curve: list[str], **env: str) -> None:
    """Every mesh command, with ``curve`` flags (or none: the variables in ``env``)."""

    def ok(*args: str) -> str:
        result = velo(*args, *seed, *curve, env=env)
        assert result.returncode == 0, f"{args}: {result.stderr}"
        return result.stdout.strip()

    handle = ok("new-event", "--label", "curve job")
    assert EventHandle.parse(handle).worker_id == owner
    other_handle = ok("new-event", "--on", f"{other:#x}")
    merged = ok("merge", handle, other_handle)
    assert ok("status", handle) == "pending"
    waiter = Script("-m", "velo_am", "wait", merged, "--timeout", "30", *seed, *curve, env=env)
    try:
        ok("trigger", handle)
        ok("trigger", other_handle)
        assert waiter.wait() == 0, waiter.stderr()
    finally:
        waiter.reap()
    ok("wait", merged, "--timeout", "10")
    poisoned = ok("new-event")
    ok("poison", poisoned, "over CURVE")
    assert ok("status", poisoned) == "poisoned: over CURVE"
    assert ok("call", f"{owner:#x}", "whoami") == str(owner)
    assert "whoami" in ok("inspect", f"{owner:#x}")


@pytest.mark.timeout(240)
def test_every_command_with_the_flags_and_with_the_variables(per_worker: Keys) -> None:
    keys = per_worker
    load = ["--load", "examples.blocking_handler:register"]
    first, first_id, address = start_worker("--id", "0x1", *load, *keys.flags("a"))
    try:
        # The second worker takes its key from the variables; the seed carries a's key.
        second, second_id, _ = start_worker(
            "--id", "0x2", "--seed", address, *load, env=keys.env("b")
        )
        try:
            seed = ["--seed", address]
            mesh_commands(seed, first_id, second_id, keys.flags("cli"))
            mesh_commands(seed, first_id, second_id, [], **keys.env("cli"))
            # inspect by address, the key carried in it.
            result = velo("inspect", address, *keys.flags("cli"))
            assert result.returncode == 0 and "whoami" in result.stdout, result.stderr
            # No key at all: refused at the handshake, named, within the connect timeout.
            bare = velo("new-event", *seed, "--connect-timeout", "2")
            assert bare.returncode == 3
            assert "handshake failed" in bare.stderr
        finally:
            stop(second)
    finally:
        stop(first)


@pytest.mark.timeout(120)
def test_a_worker_whose_key_is_refused_exits_naming_authentication(per_worker: Keys) -> None:
    keys = per_worker
    first, _, address = start_worker("--id", "0x1", *keys.flags("a"))
    try:
        started = time.monotonic()
        refused = velo("worker", "--id", "0x9", "--seed", address, *keys.flags("stranger"))
        assert time.monotonic() - started < 15
        assert refused.returncode == 3
        assert f"authentication refused by {address}" in refused.stderr, refused.stderr
        assert "is not in its allowed keys" in refused.stderr
        command = velo("new-event", "--seed", address, *keys.flags("stranger"))
        assert command.returncode == 3
        assert "cannot join the mesh: authentication refused by" in command.stderr
        half = velo("new-event", "--seed", address, "--curve-key", keys.secret("cli"))
        assert half.returncode == 3 and "--curve-allow" in half.stderr
    finally:
        stop(first)


# -- a real unauthorised client, every attack of the issue ----------------------------------------


class Stranger:
    """A raw ZeroMQ client to one worker: plaintext, or CURVE with a key pair of its own."""

    def __init__(self, address: str, pair: tuple[bytes, bytes] | None = None) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if pair is not None:
            self.socket.curve_publickey, self.socket.curve_secretkey = pair
            self.socket.curve_serverkey = address.split("curve:")[1].encode()
        self.socket.connect(endpoint(address))

    def send(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames, flags=zmq.NOBLOCK)

    async def answers(self, within: float) -> list[list[bytes]]:
        """Every message that arrives within ``within`` seconds (the loop runs meanwhile)."""

        def collect() -> list[list[bytes]]:
            messages, deadline = [], time.monotonic() + within
            while (left := deadline - time.monotonic()) > 0:
                if self.socket.poll(int(left * 1000) + 1):
                    messages.append(self.socket.recv_multipart())
            return messages

        return await asyncio.to_thread(collect)

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


class Listener:
    """A TCP port of the stranger's, named in a Hello: does the worker dial it?"""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.setblocking(False)
        self.address = f"tcp://127.0.0.1:{self.socket.getsockname()[1]}"

    def dialled(self) -> bool:
        try:
            connection, _ = self.socket.accept()
        except BlockingIOError:
            return False
        connection.close()
        return True

    def close(self) -> None:
        self.socket.close()


def request(src: Worker, dst: Worker, handler: str, payload: Any, msg_id: int) -> list[bytes]:
    """A request as if from ``src`` (its id and incarnation) to ``dst``."""
    packed = codec.pack(payload)
    return p.encode_request(
        src.worker_id, src.incarnation, dst.incarnation, msg_id, handler, True, packed
    )


def hello(src: int, incarnation: int, address: str, flags: int = 0) -> list[bytes]:
    return p.encode(p.Hello(src, incarnation, 0, 7, address, flags, 1, ()))


@dataclass
class Victims:
    a: Worker  # owns the events and the user handler
    b: Worker  # awaits a's event
    calls: list[int]
    poisoned: EventHandle
    triggered: EventHandle
    awaited: EventHandle
    waiting: asyncio.Future[Any]


@pytest.fixture
async def victims(per_worker: Keys) -> AsyncIterator[Victims]:
    keys = per_worker
    async with (
        Worker(0xA, curve=keys.curve("a"), **FAST) as a,
        Worker(0xB, curve=keys.curve("b"), peers=[a.address], **FAST) as b,
    ):
        calls: list[int] = []

        @a.handler("work")
        def work(payload: Any, ctx: CallContext) -> str:
            calls.append(ctx.sender)
            return "done"

        poisoned, triggered, awaited = (a.events.new_event().handle for _ in range(3))
        waiting = asyncio.ensure_future(b.events.awaiter(awaited))
        await wait_until(lambda: awaited in a.events.served().get(b.worker_id, []))
        assert await b.call(a.worker_id, "work") == "done"  # the handler reaches members
        calls.clear()
        yield Victims(a, b, calls, poisoned, triggered, awaited, waiting)
        waiting.cancel()


STRANGERS = ["no key", "a key not allowed", "an allowed key claiming a member's id"]


@pytest.mark.parametrize("who", STRANGERS)
async def test_a_stranger_reaches_no_handler_and_changes_no_event(
    victims: Victims, per_worker: Keys, who: str, figures: dict[str, str]
) -> None:
    v, a, b = victims, victims.a, victims.b
    pair = {"no key": None, "a key not allowed": per_worker.pair("stranger")}.get(
        who, per_worker.pair("c")
    )
    at_a, at_b, listener = Stranger(a.address, pair), Stranger(b.address, pair), Listener()
    before_a, before_b = a.stats(), b.stats()
    b_incarnation = a.peers[b.worker_id].incarnation
    try:
        attacks_on_a = [
            hello(0x5, 1, "tcp://127.0.0.1:9", int(p.HelloFlags.JOIN)),  # the member list
            request(b, a, "_inspect", {}, 1),  # every pending handle, with its label
            request(b, a, "_ev.poison", [v.poisoned.to_bytes(), "forged"], 2),
            request(b, a, "_ev.trigger", [v.triggered.to_bytes()], 3),
            request(b, a, "work", None, 4),  # a user handler
            hello(b.worker_id, b.incarnation + 1, b.address),  # evict b, then answer for it
            hello(0x6, 1, listener.address),  # make a dial any host:port
        ]
        for frames in attacks_on_a:
            at_a.send(frames)
        done = p.EventDone(v.awaited, None)
        forged = p.EventUpdates(a.worker_id, a.incarnation, b.incarnation, (), (done,))
        at_b.send(p.encode(forged))  # b sees READY while a says PENDING
        assert await at_a.answers(within=2.0) == [] and await at_b.answers(within=0.1) == []
        figures[f"a stranger with {who}: attacks answered"] = "0 of 8"
        assert not listener.dialled()
        assert v.calls == []
        assert a.events.poll(v.poisoned) is EventStatus.PENDING
        assert a.events.poll(v.triggered) is EventStatus.PENDING
        assert a.events.poll(v.awaited) is EventStatus.PENDING
        assert not v.waiting.done() and b.events.poll(v.awaited) is EventStatus.PENDING
        assert set(a.peers) == {b.worker_id}, "no stranger became a member"
        assert a.peers[b.worker_id].incarnation == b_incarnation, "b was not evicted"
        assert a.is_connected(b.worker_id)
        drops = ("dropped_malformed", "dropped_unknown_peer", "dropped_wrong_incarnation")
        if pair is None or pair == per_worker.pair("stranger"):  # refused by ZAP: not read
            for worker, before in ((a, before_a), (b, before_b)):
                after = worker.stats()
                assert [after[drop] for drop in drops] == [before[drop] for drop in drops]
        else:  # an allowed member's key: read, and dropped as b's impersonation
            assert a.stats()["messages_spoofed"] >= before_a["messages_spoofed"] + 6
            assert b.stats()["messages_spoofed"] == before_b["messages_spoofed"] + 1
        # The members still do business.
        assert await b.call(a.worker_id, "work") == "done" and v.calls == [b.worker_id]
    finally:
        at_a.close()
        at_b.close()
        listener.close()
