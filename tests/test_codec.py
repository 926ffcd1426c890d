"""Payload encoding (velo_am._codec): msgpack, with event handles travelling as themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from velo_am import CallContext, RemoteError
from velo_am._codec import HANDLE_EXT, pack, unpack
from velo_event import EventHandle, EventPoison, LocalEventSystem

H = EventHandle.from_parts(3, 1, 5)
WIDEST = EventHandle.from_int(2**128 - 1)


def test_a_handle_round_trips_as_an_event_handle() -> None:
    for handle in (H, WIDEST, EventHandle.from_parts(1, 0, 0)):
        out = unpack(pack(handle))
        assert type(out) is EventHandle
        assert out == handle


def test_handles_round_trip_nested_anywhere() -> None:
    value = {"inputs": [H, [WIDEST]], H: "a handle as a map key", "n": (1, H)}
    out = unpack(pack(value))
    assert out == {"inputs": [H, [WIDEST]], H: "a handle as a map key", "n": [1, H]}
    assert type(out["inputs"][0]) is EventHandle
    assert all(type(key) is EventHandle for key in out if not isinstance(key, str))
    assert type(out["n"][1]) is EventHandle


def test_the_documented_bytes() -> None:
    # docs/protocol.md §2.1 shows this payload; keep them in sync.
    packed = pack({"ready": H})
    hexed = packed.hex(" ")
    assert hexed == "81 a5 72 65 61 64 79 d8 01 00 00 00 00 00 00 00 03 00 00 00 01 00 00 00 05"
    assert packed.endswith(H.to_bytes()), "the handle's 16 bytes, big-endian"
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text("utf-8")
    assert " ".join(doc.split()).count(hexed) == 1
    assert f"| `{HANDLE_EXT}` | EventHandle |" in doc


def test_a_local_handle_stays_local() -> None:
    local = LocalEventSystem().new_event().handle
    out = unpack(pack([local]))[0]
    assert type(out) is EventHandle and out.is_local and out == local


def test_a_handle_of_worker_id_0_is_a_plain_integer() -> None:
    # Documented: it fits in 64 bits, so msgpack encodes it as an integer; no system mints one.
    out = unpack(pack(EventHandle.from_parts(0, 1, 5)))
    assert out == 1 << 32 | 5 and type(out) is int


def test_other_ext_types_pass_through() -> None:
    value = [msgpack.ExtType(7, b"mine"), msgpack.ExtType(HANDLE_EXT + 1, H.to_bytes())]
    assert unpack(pack(value)) == value


@pytest.mark.parametrize("size", [0, 1, 15, 17, 100])
def test_a_malformed_handle_is_a_clear_error(size: int) -> None:
    data = msgpack.packb([msgpack.ExtType(HANDLE_EXT, b"\x01" * size)])
    with pytest.raises(ValueError, match=f"malformed EventHandle in payload.* {size} bytes"):
        unpack(data)


def test_what_cannot_be_encoded_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cannot encode an object of type set"):
        pack({"x": {1, 2}})
    for number in (2**64, -(2**63) - 1, 2**200):
        with pytest.raises(TypeError, match="out of msgpack's range"):
            pack([number])
    assert unpack(pack([2**64 - 1, -(2**63)])) == [2**64 - 1, -(2**63)]


handles = st.integers(0, 2**128 - 1).map(EventHandle.from_int)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary()
keys = st.text() | st.integers(-(2**63), 2**64 - 1) | handles
values = st.recursive(
    scalars | handles,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=30,
)


def _same(a: Any, b: Any) -> bool:
    """Equal, and a handle wherever there was one (as a key too)."""
    if isinstance(a, EventHandle) and a.bit_length() > 64:
        return type(b) is EventHandle and a == b
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        if not isinstance(b, dict) or a != b:
            return False
        out_keys = {key: key for key in b}
        return all(_same(key, out_keys[key]) and _same(a[key], b[key]) for key in a)
    return bool(a == b) and (type(a) is type(b) or isinstance(a, EventHandle))


@given(values)
def test_any_nesting_of_handles_round_trips(value: Any) -> None:
    assert _same(value, unpack(pack(value)))


# -- in a real call ----------------------------------------------------------------------------


async def test_a_handler_returns_a_handle_and_the_caller_awaits_it(make_worker: Any) -> None:
    caller, owner = await make_worker(1), await make_worker(2)
    events = []

    @owner.handler("load")
    def load(payload: Any, ctx: CallContext) -> Any:
        event = owner.events.new_event(label=payload)
        events.append(event)
        return {"handle": event.handle, "all": [event.handle]}

    @owner.handler("finish")
    def finish(payload: Any, ctx: CallContext) -> None:
        assert type(payload["event"]) is EventHandle, "a handle in a request arrives as one"
        owner.events.poison(payload["event"], payload["why"])

    await caller.connect(owner.address)
    answer = await caller.call(2, "load", "weights")
    handle = answer["handle"]
    assert type(handle) is EventHandle and handle == events[0].handle
    assert answer["all"] == [handle] and handle.worker_id == 2
    waiting = caller.events.awaiter(handle)
    await caller.call(2, "finish", {"event": handle, "why": "disk full"})
    with pytest.raises(EventPoison, match="disk full"):
        await waiting


async def test_malformed_handles_fail_the_call_clearly(make_worker: Any) -> None:
    caller, owner = await make_worker(1), await make_worker(2)
    owner.register_handler("echo", lambda payload, ctx: payload)
    owner.register_handler("bad", lambda payload, ctx: msgpack.ExtType(HANDLE_EXT, b"short"))
    await caller.connect(owner.address)
    with pytest.raises(RemoteError, match="malformed EventHandle in payload") as request:
        await caller.call(2, "echo", [msgpack.ExtType(HANDLE_EXT, b"\x00" * 17)])
    assert request.value.error_type == "ValueError", "the request is refused: BAD_REQUEST"
    with pytest.raises(RemoteError, match="malformed EventHandle in payload") as response:
        await caller.call(2, "bad")
    assert response.value.error_type == "BadResponse"
    assert await caller.call(2, "echo", [H]) == [H], "both still serve"
