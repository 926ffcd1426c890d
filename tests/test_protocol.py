"""Tests for the sans-IO wire protocol (velo_am._protocol)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from velo_am._protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    PROTOCOL_VERSION,
    Credit,
    Draining,
    ErrorCode,
    ErrorResponse,
    EventDone,
    EventUpdates,
    Goodbye,
    Heartbeat,
    Hello,
    HelloAck,
    HelloFlags,
    Kind,
    Message,
    PeerInfo,
    Peers,
    ProtocolError,
    Request,
    Response,
    decode,
    encode,
)
from velo_event import EventHandle

U64 = 2**64 - 1
INC = 0x0123456789ABCDEF  # a typical random incarnation
V = PROTOCOL_VERSION
H1 = EventHandle.from_parts(2, 7, 1)
H2 = EventHandle.from_parts(U64, 2**31 - 2, 2**32 - 1)


def roundtrip(msg: Message) -> Message:
    frames = encode(msg)
    assert isinstance(frames, list)
    assert all(type(f) is bytes for f in frames)
    out = decode(frames)
    assert out == msg
    assert type(out) is type(msg)
    return out


def header(*items: Any) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


def decode_or_error(frames: Any) -> Message | None:
    """The totality property: decode returns a message or raises ProtocolError, nothing else."""
    try:
        msg = decode(frames)
    except ProtocolError:
        return None
    # Whatever was accepted must be a valid message that survives re-encoding.
    assert decode(encode(msg)) == msg
    return msg


# --------------------------------------------------------------------------- constants


def test_constants_and_enums() -> None:
    assert PROTOCOL_VERSION == 6
    assert DEFAULT_MAX_MESSAGE_SIZE == 64 * 1024 * 1024
    assert {k.name: int(k) for k in Kind} == {
        "HELLO": 1,
        "HELLO_ACK": 2,
        "HEARTBEAT": 3,
        "PEERS": 4,
        "REQUEST": 5,
        "RESPONSE": 6,
        "ERROR_RESPONSE": 7,
        "GOODBYE": 8,
        "DRAINING": 9,
        "CREDIT": 10,
        "EVENT_UPDATES": 16,
    }
    assert {c.name: int(c) for c in ErrorCode} == {
        "HANDLER_ERROR": 1,
        "HANDLER_NOT_FOUND": 2,
        "DRAINING": 3,
        "BAD_REQUEST": 4,
        "WRONG_INCARNATION": 5,
        "BUSY": 6,
    }
    assert issubclass(ProtocolError, Exception)
    assert ProtocolError.__doc__


# --------------------------------------------------------------------- explicit round trips

PEERS = (
    PeerInfo(2, U64, "tcp://127.0.0.1:5555"),
    PeerInfo(U64, 1, "ipc:///tmp/velo-ß-😀", U64, 2),
)

EXAMPLES: list[Message] = [
    Hello(1, INC, 0, 0, "tcp://127.0.0.1:5555", 0, 1, ()),
    Hello(U64, U64, U64, U64, "ipc:///tmp/x", 255, U64, PEERS),
    HelloAck(7, 1, INC, 12345, "tcp://[::1]:1", 2, 9, PEERS),
    HelloAck(7, 1, 0, 1, "inproc://a", 0, 0, ()),
    Heartbeat(1, 1, 0),
    Heartbeat(U64, U64, U64),
    Peers(5, INC, INC, ()),
    Peers(5, INC, 0, PEERS),
    Request(1, INC, 0, 0, "echo", True, b""),
    Request(U64, U64, U64, U64, "ünïcødé.handler/😀", False, b"\x93\x01\x02\x03"),
    Request(3, 4, 5, 6, "h" * 255, True, b"\x00" * 1000),
    Request(3, 4, 5, 6, "é" * 127, True, b"x"),  # 254 UTF-8 bytes
    Response(1, INC, INC, 0, b""),
    Response(U64, U64, U64, U64, b"\xc1 not even msgpack"),
    ErrorResponse(1, INC, 0, 0, ErrorCode.HANDLER_ERROR, "ValueError", "bad", "Traceback..."),
    ErrorResponse(U64, U64, U64, U64, ErrorCode.WRONG_INCARNATION, "", "", ""),
    ErrorResponse(2, 2, 2, 9, ErrorCode.DRAINING, "Dräining", "ÿ\x00\n😀", "x" * 5000),
    Goodbye(1, INC, 0),
    Goodbye(U64, U64, U64),
    Draining(1, INC, 0),
    Draining(U64, U64, U64),
    Credit(1, INC, 0, 0, 0),
    Credit(U64, U64, U64, U64, U64),
    EventUpdates(1, INC, 0, (), ()),
    EventUpdates(U64, U64, U64, (H1, H2), (EventDone(H1, None), EventDone(H2, "ünïcødé 😀"))),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_roundtrip_examples(msg: Message) -> None:
    frames = encode(msg)
    expected_frames = 2 if isinstance(msg, Request | Response) else 1
    assert len(frames) == expected_frames
    assert msgpack.unpackb(frames[0])[:2] == [PROTOCOL_VERSION, int(msg.KIND)]
    roundtrip(msg)


def test_every_kind_has_an_example() -> None:
    assert {m.KIND for m in EXAMPLES} == set(Kind)


def test_payload_is_passed_through_verbatim() -> None:
    payload = b"\xc1\xff garbage that is not msgpack"
    frames = encode(Request(1, 2, 3, 4, "h", True, payload))
    assert frames[1] is payload
    out = decode(frames)
    assert isinstance(out, Request)
    assert out.payload == payload


def test_golden_bytes_of_documented_example() -> None:
    # The same example is shown in docs/protocol.md; keep them in sync.
    msg = Request(
        src=3,
        src_incarnation=0x0123456789ABCDEF,
        dst_incarnation=0xFEDCBA9876543210,
        msg_id=42,
        handler="echo",
        reply=True,
        payload=msgpack.packb({"x": 1}),
    )
    frames = encode(msg)
    assert frames[0].hex(" ") == (
        "98 06 05 03 cf 01 23 45 67 89 ab cd ef cf fe dc ba 98 76 54 32 10 2a a4 65 63 68 6f c3"
    )
    assert frames[1].hex(" ") == "81 a1 78 01"
    assert decode(frames) == msg
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text("utf-8")
    assert frames[0].hex(" ") in doc
    assert frames[1].hex(" ") in doc


def test_golden_bytes_of_documented_event_updates() -> None:
    # The EventUpdates example of docs/protocol.md: worker 2 subscribes to worker 3's event
    # and tells it that one of its own was poisoned.
    theirs = EventHandle.from_parts(3, 0, 1)
    mine = EventHandle.from_parts(2, 1, 5)
    msg = EventUpdates(2, 0x22, 0x33, (theirs,), (EventDone(mine, "disk full"),))
    frames = encode(msg)
    assert len(frames) == 1
    assert decode(frames) == msg
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text("utf-8")
    hexed = frames[0].hex(" ")
    assert hexed.startswith("97 06 10 02 22 33 91 c4 10")
    assert " ".join(doc.split()).count(hexed) == 1, hexed


def test_golden_bytes_of_documented_hello() -> None:
    # The Hello example of docs/protocol.md: a join that asks to pair, listing one member.
    member = PeerInfo(2, 0x2222, "tcp://10.0.0.2:5555", 3, 0)
    flags = int(HelloFlags.NEIGHBOR | HelloFlags.JOIN)
    msg = Hello(1, 0x1111, 0, 42, "tcp://10.0.0.1:5555", flags, 1, (member,))
    frames = encode(msg)
    assert decode(frames) == msg
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text("utf-8")
    hexed = frames[0].hex(" ")
    assert hexed.startswith("9a 06 01 01 cd 11 11 00 2a b3")
    assert " ".join(doc.split()).count(hexed) == 1, hexed


def test_golden_bytes_of_documented_credit() -> None:
    # The Credit example of docs/protocol.md: worker 3 tells worker 2 that it has received
    # its sends up to msg_id 300, and that 17 of them have not finished.
    msg = Credit(3, 0x33, 0x22, 300, 17)
    frames = encode(msg)
    assert decode(frames) == msg
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text("utf-8")
    hexed = frames[0].hex(" ")
    assert hexed == "97 06 0a 03 33 22 cd 01 2c 11"
    assert " ".join(doc.split()).count(hexed) == 1, hexed


def test_event_updates_decode_errors_name_the_item() -> None:
    good = H1.to_bytes()
    cases = [
        ([V, 16, 1, 1, 0, "x", []], r"^EventUpdates\.subscribe: expected an array"),
        ([V, 16, 1, 1, 0, [], {}], r"^EventUpdates\.done: expected an array"),
        ([V, 16, 1, 1, 0, [good[:15]], []], r"^EventUpdates\.subscribe\[0\]: expected a 16-byte"),
        ([V, 16, 1, 1, 0, [good, 5], []], r"^EventUpdates\.subscribe\[1\]"),
        ([V, 16, 1, 1, 0, [], [[good, None]]], r"^EventUpdates\.done\[0\]: expected \[handle, "),
        (
            [V, 16, 1, 1, 0, [], [[good, 7, False]]],
            r"^EventUpdates\.done\[0\]\.reason: expected str or None",
        ),
        (
            [V, 16, 1, 1, 0, [], [[good, "x", 1]]],
            r"^EventUpdates\.done\[0\]\.unknown: expected a bool",
        ),
        (
            [V, 16, 1, 1, 0, [], [[good, None, True]]],
            r"^EventUpdates\.done\[0\]: an unknown outcome needs a reason",
        ),
        (
            [V, 16, 1, 1, 0, [], [[good, None, False], [b"x", None, False]]],
            r"^EventUpdates\.done\[1\]",
        ),
    ]
    for items, match in cases:
        with pytest.raises(ProtocolError, match=match):
            decode([header(*items)])
    local = EventHandle.from_parts(2, 7, 1, local=True).to_bytes()
    with pytest.raises(ProtocolError, match="distributed"):
        decode([header(V, 16, 1, 1, 0, [local], [])])


@pytest.mark.parametrize(
    ("index", "value", "field"),
    [
        (2, 0, "src"),
        (2, True, "src"),
        (2, -1, "src"),
        (3, 0, "src_incarnation"),
        (3, False, "src_incarnation"),
        (4, True, "dst_incarnation"),
        (4, -1, "dst_incarnation"),
        (4, 1.5, "dst_incarnation"),
    ],
)
def test_event_updates_bad_envelope_names_the_field(index: int, value: Any, field: str) -> None:
    items: list[Any] = [V, 16, 1, 1, 0, [H1.to_bytes()], []]
    items[index] = value
    with pytest.raises(ProtocolError, match=rf"^EventUpdates\.{field}: "):
        decode([header(*items)])


def test_a_well_formed_event_updates_is_decoded_without_a_call_to_check_its_envelope(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every remote await and completion is an EventUpdates: its envelope's cheap checks run
    inline (two interpreted calls fewer a message than through ``check_envelope``, which
    only words a failure). Run on the pure module, whose global the patch replaces."""
    from velo_am import _protocol as pure_protocol

    calls: list[object] = []
    original = pure_protocol.check_envelope

    def counting(msg: object) -> None:
        calls.append(msg)
        original(msg)

    monkeypatch.setattr(pure_protocol, "check_envelope", counting)
    msg = EventUpdates(2, 0x22, 0x33, (H1,), (EventDone(H1, "why"),))
    assert pure_protocol.decode(pure_protocol.encode(msg)) == msg
    assert calls == []
    with pytest.raises(ProtocolError, match=r"^EventUpdates\.src: "):
        pure_protocol.decode([header(V, 16, 0, 1, 0, [], [])])
    assert len(calls) == 1


def test_event_updates_item_limit() -> None:
    from velo_am._protocol import MAX_EVENT_ITEMS

    EventUpdates(1, 1, 0, (H1,) * MAX_EVENT_ITEMS, ())
    with pytest.raises(ProtocolError, match="limit"):
        EventUpdates(1, 1, 0, (H1,) * MAX_EVENT_ITEMS, (EventDone(H1, None),))


def test_decode_accepts_bytes_like_frames() -> None:
    msg = Request(1, 2, 3, 4, "h", True, b"pay")
    h, p = encode(msg)
    assert decode([bytearray(h), memoryview(p)]) == msg
    assert decode((h, p)) == msg
    out = decode([memoryview(h), bytearray(p)])
    assert isinstance(out, Request)
    assert type(out.payload) is bytes


def test_decode_accepts_any_int_encoding() -> None:
    # A peer written in another language may use e.g. uint64 for small values.
    raw = b"\x98\x06\x05" + b"\xcf" + (1).to_bytes(8, "big") + b"\xd3" + (2).to_bytes(8, "big")
    raw += b"\x00\xcc\x07\xa1h\xc2"
    assert decode([raw, b""]) == Request(1, 2, 0, 7, "h", False, b"")


def test_error_code_int_is_normalised() -> None:
    m = ErrorResponse(1, 2, 0, 3, 2, "KeyError", "m", "t")  # type: ignore[arg-type]
    assert type(m.code) is ErrorCode
    assert m.code is ErrorCode.HANDLER_NOT_FOUND
    out = roundtrip(m)
    assert isinstance(out, ErrorResponse)
    assert type(out.code) is ErrorCode


def test_messages_are_frozen_and_hashable() -> None:
    m = Hello(1, 2, 0, 9, "tcp://a:1", 0, 1, PEERS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.src = 5  # type: ignore[misc]
    assert hash(m) == hash(Hello(1, 2, 0, 9, "tcp://a:1", 0, 1, PEERS))
    assert not hasattr(m, "__dict__")


def test_large_peer_list_round_trips() -> None:
    # Headers above 1 KiB take the element-budget decoding path.
    peers = tuple(
        PeerInfo(i + 1, U64 - i, f"tcp://10.0.{i // 256}.{i % 256}:5555") for i in range(3000)
    )
    msg = Peers(1, 2, 0, peers)
    assert len(encode(msg)[0]) > 1024
    roundtrip(msg)
    roundtrip(Hello(1, 2, 0, 3, "tcp://h:1", 0, 1, peers))


def test_encode_is_thread_safe() -> None:
    msgs = [Request(i + 1, i + 1, 0, i, f"h{i}", True, bytes([i % 256]) * i) for i in range(200)]
    expected = [encode(m) for m in msgs]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                for m, e in zip(msgs, expected, strict=True):
                    assert encode(m) == e
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ----------------------------------------------------------------- construction/encoding


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Heartbeat(0, 1, 0), "Heartbeat.src"),
        (lambda: Heartbeat(1, 0, 0), "Heartbeat.src_incarnation"),
        (lambda: Heartbeat(1, 1, -1), "Heartbeat.dst_incarnation"),
        (lambda: Goodbye(True, 1, 0), "Goodbye.src"),
        (lambda: Draining(1, 2**64, 0), "Draining.src_incarnation"),
        (lambda: Credit(1, 1, 0, -1, 0), "Credit.last_received"),
        (lambda: Credit(1, 1, 0, 1, True), "Credit.unfinished"),
        (lambda: Request(1, 1, 0, -1, "h", True, b""), "Request.msg_id"),
        (lambda: Request(1, 1, 0, 1, "", True, b""), "Request.handler"),
        (lambda: Request(1, 1, 0, 1, "h" * 256, True, b""), "Request.handler"),
        (lambda: Request(1, 1, 0, 1, "é" * 128, True, b""), "Request.handler"),
        (lambda: Request(1, 1, 0, 1, b"h", True, b""), "Request.handler"),
        (lambda: Request(1, 1, 0, 1, "h", 1, b""), "Request.reply"),
        (lambda: Request(1, 1, 0, 1, "h", True, "x"), "Request.payload"),
        (lambda: Request(1, 1, 0, 1, "h", True, bytearray()), "Request.payload"),
        (lambda: Response(1, 1, 0, 1.0, b""), "Response.msg_id"),
        (lambda: ErrorResponse(1, 1, 0, 1, 7, "", "", ""), "ErrorResponse.code"),
        (lambda: ErrorResponse(1, 1, 0, 1, True, "", "", ""), "ErrorResponse.code"),
        (lambda: ErrorResponse(1, 1, 0, 1, 1, None, "", ""), "ErrorResponse.error_type"),
        (lambda: ErrorResponse(1, 1, 0, 1, 1, "", b"", ""), "ErrorResponse.message"),
        (lambda: ErrorResponse(1, 1, 0, 1, 1, "", "", 3), "ErrorResponse.traceback"),
        (lambda: EventUpdates(1, 1, 0, [H1], ()), "EventUpdates.subscribe"),
        (lambda: EventUpdates(1, 1, 0, (int(H1),), ()), "EventUpdates.subscribe"),
        (
            lambda: EventUpdates(1, 1, 0, (H1.with_generation(0) | 1 << 63,), ()),
            "EventUpdates.subscribe",
        ),
        (lambda: EventUpdates(1, 1, 0, (), ((H1, None),)), "EventUpdates.done"),
        (lambda: EventUpdates(1, 1, 0, (), (EventDone(int(H1), None),)), "EventUpdates.done"),  # type: ignore[arg-type]
        (lambda: EventUpdates(1, 1, 0, (), (EventDone(H1, b"x"),)), "EventUpdates.done"),  # type: ignore[arg-type]
        (lambda: Hello(1, 1, 0, 1, "", 0, 1, ()), "Hello.address"),
        (lambda: Hello(1, 1, 0, -1, "tcp://a:1", 0, 1, ()), "Hello.token"),
        (lambda: Hello(1, 1, 0, 1, "tcp://a:1", 256, 1, ()), "Hello.flags"),
        (lambda: Hello(1, 1, 0, 1, "tcp://a:1", 0, -1, ()), "Hello.seq"),
        (lambda: HelloAck(1, 1, 0, None, "tcp://a:1", 0, 1, ()), "HelloAck.token"),
        (lambda: HelloAck(1, 1, 0, 1, "tcp://a:1", 0, 1, list(PEERS)), "HelloAck.peers"),
        (lambda: PeerInfo(1, 1, "tcp://a:1", 1, 3), "PeerInfo.state"),
        (lambda: Peers(1, 1, 0, ((2, 2, "tcp://b:1"),)), "Peers.peers"),
        (lambda: PeerInfo(0, 1, "tcp://a:1"), "PeerInfo.worker_id"),
        (lambda: PeerInfo(1, 0, "tcp://a:1"), "PeerInfo.incarnation"),
        (lambda: PeerInfo(1, 1, ""), "PeerInfo.address"),
    ],
)
def test_invalid_construction_names_class_and_field(make: Callable[[], Any], field: str) -> None:
    with pytest.raises(ProtocolError, match=rf"^{field}: "):
        make()


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(TypeError, match="protocol message"):
        encode(PeerInfo(1, 1, "tcp://a:1"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="protocol message"):
        encode("hello")  # type: ignore[arg-type]


def test_encode_unencodable_string_raises_protocol_error() -> None:
    msg = ErrorResponse(1, 1, 0, 1, ErrorCode.HANDLER_ERROR, "E", "lone \udc80 surrogate", "")
    with pytest.raises(ProtocolError, match="cannot encode ErrorResponse"):
        encode(msg)
    # The per-thread packer is still usable afterwards.
    roundtrip(Heartbeat(1, 1, 0))


def test_handler_with_lone_surrogate_is_rejected_on_encode() -> None:
    with pytest.raises(ProtocolError):
        encode(Request(1, 1, 0, 1, "\ud800", True, b""))


# ----------------------------------------------------------------------- decode errors

GOOD_REQ = [PROTOCOL_VERSION, Kind.REQUEST, 1, INC, 0, 7, "echo", True]


def req_frames(*, index: int | None = None, value: Any = None) -> list[bytes]:
    items = list(GOOD_REQ)
    if index is not None:
        items[index] = value
    return [header(*items), b"payload"]


def test_good_request_frames_decode() -> None:
    assert decode(req_frames()) == Request(1, INC, 0, 7, "echo", True, b"payload")


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5, 7, 255, 2**64 - 1, -1])
def test_wrong_version_names_seen_and_expected(version: int) -> None:
    with pytest.raises(ProtocolError, match=rf"version {version} \(expected 6\)"):
        decode(req_frames(index=0, value=version))


@pytest.mark.parametrize("version", [True, "1", 1.0, None, [1]])
def test_version_of_wrong_type(version: Any) -> None:
    with pytest.raises(ProtocolError, match="version"):
        decode(req_frames(index=0, value=version))


def test_newer_version_with_different_shape_reports_version() -> None:
    with pytest.raises(ProtocolError, match="version 7"):
        decode([header(7, "totally", {"different": "layout"})])
    with pytest.raises(ProtocolError, match="version 7"):
        decode([header(7)])
    with pytest.raises(ProtocolError, match=r"version 8 \(expected 6\)"):
        decode([header(8, 1, 2) + b"trailing"])
    with pytest.raises(ProtocolError, match=r"version 5 \(expected 6\)"):  # the previous one
        decode([header(5, Kind.HEARTBEAT, 1, 1, 0)])
    with pytest.raises(ProtocolError, match="malformed header"):  # version 6 but broken
        decode([header(V, {"a": 1})])


@pytest.mark.parametrize("kind", [0, 11, 15, 17, 31, 32, 255, 2**64 - 1, -5])
def test_unknown_kind(kind: int) -> None:
    with pytest.raises(ProtocolError, match=f"unknown message kind {kind}"):
        decode([header(V, kind, 1, 1, 0)])


@pytest.mark.parametrize("kind", [True, "5", 5.0, None, b"\x05"])
def test_kind_of_wrong_type(kind: Any) -> None:
    with pytest.raises(ProtocolError, match="kind must be an int"):
        decode(req_frames(index=1, value=kind))


@pytest.mark.parametrize(
    ("items", "frames"),
    [
        (GOOD_REQ[:-1], 2),
        ([*GOOD_REQ, "extra"], 2),
        ([V, Kind.HEARTBEAT, 1, 1, 0, 0], 1),
        ([V, Kind.HELLO, 1, 1, 0, 1, "tcp://a:1", 0, 1], 1),
        ([V, Kind.ERROR_RESPONSE, 1, 1, 0, 1, 1, "e", "m"], 1),
        ([V, Kind.EVENT_UPDATES, 1, 1, 0, []], 1),
    ],
)
def test_bad_arity_names_the_kind(items: list[Any], frames: int) -> None:
    name = {
        Kind.REQUEST: "Request",
        Kind.HEARTBEAT: "Heartbeat",
        Kind.HELLO: "Hello",
        Kind.ERROR_RESPONSE: "ErrorResponse",
        Kind.EVENT_UPDATES: "EventUpdates",
    }[items[1]]
    data = [header(*items), b"p"][:frames]
    with pytest.raises(ProtocolError, match=rf"^{name} \(kind \d+\): header must have \d+"):
        decode(data)


@pytest.mark.parametrize("short", [[], [1], [1, 5], [1, 5, 1, 1]])
def test_too_short_header(short: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        decode([header(*short), b"x"])


@pytest.mark.parametrize(
    ("index", "value", "field"),
    [
        (2, 0, "src"),
        (3, 0, "src_incarnation"),
        (2, True, "src"),
        (3, False, "src_incarnation"),
        (4, True, "dst_incarnation"),
        (5, False, "msg_id"),
        (2, -1, "src"),
        (4, -1, "dst_incarnation"),
        (5, -(2**63), "msg_id"),
        (5, 1.5, "msg_id"),
        (5, None, "msg_id"),
        (6, "", "handler"),
        (6, "h" * 256, "handler"),
        (6, "€" * 86, "handler"),  # 258 UTF-8 bytes, 86 characters
        (6, b"echo", "handler"),
        (6, 5, "handler"),
        (7, 1, "reply"),
        (7, None, "reply"),
        (7, "true", "reply"),
    ],
)
def test_bad_field_names_kind_and_field(index: int, value: Any, field: str) -> None:
    with pytest.raises(ProtocolError, match=rf"^Request\.{field}: "):
        decode(req_frames(index=index, value=value))


def test_int_at_or_above_2_64_is_rejected() -> None:
    for index in (2, 3, 4, 5):  # 2**64-1 is fine everywhere
        assert decode(req_frames(index=index, value=U64)) is not None
    with pytest.raises(ProtocolError, match=r"^Request\.msg_id: expected an int in 0\.\.2\*\*64-1"):
        Request(1, 1, 0, 2**64, "h", True, b"")
    with pytest.raises(ProtocolError, match=r"^Heartbeat\.dst_incarnation"):
        Heartbeat(1, 1, 2**64)
    # msgpack cannot express 2**64 as an int; a wider value smuggled as bin is a type error.
    with pytest.raises(ProtocolError, match=r"^Request\.src: "):
        decode([header(V, 5, (2**64).to_bytes(9, "big"), 1, 0, 7, "h", True), b""])


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (
            [V, Kind.HELLO, 1, 1, 0, 1, "tcp://a:1", 0, 1, "notalist"],
            r"^Hello\.peers: expected an array",
        ),
        (
            [V, Kind.HELLO, 1, 1, 0, 1, "tcp://a:1", 0, 1, [[1, 2]]],
            r"^Hello\.peers\[0\]: expected \[",
        ),
        (
            [V, Kind.HELLO_ACK, 1, 1, 0, 1, "tcp://a:1", 0, 1, [[1, 1, "a", 0, 0], 7]],
            r"^HelloAck\.peers\[1\]",
        ),
        (
            [V, Kind.PEERS, 1, 1, 0, [[0, 1, "tcp://a:1", 0, 0]]],
            r"^Peers\.peers\[0\]: PeerInfo\.worker",
        ),
        ([V, Kind.PEERS, 1, 1, 0, [[1, True, "tcp://a:1", 0, 0]]], r"PeerInfo\.incarnation"),
        ([V, Kind.PEERS, 1, 1, 0, [[1, 1, "", 0, 0]]], r"PeerInfo\.address: must not be empty"),
        ([V, Kind.PEERS, 1, 1, 0, [[1, 1, b"tcp", 0, 0]]], r"PeerInfo\.address: expected str"),
        ([V, Kind.PEERS, 1, 1, 0, [[1, 1, "a", 0, 7]]], r"PeerInfo\.state"),
        ([V, Kind.HELLO, 1, 1, 0, 1, 5, 0, 1, []], r"^Hello\.address: expected str"),
        ([V, Kind.HELLO, 1, 1, 0, True, "tcp://a:1", 0, 1, []], r"^Hello\.token: expected an int"),
        ([V, Kind.ERROR_RESPONSE, 1, 1, 0, 1, 0, "e", "m", "t"], r"ErrorResponse\.code"),
        ([V, Kind.ERROR_RESPONSE, 1, 1, 0, 1, 99, "e", "m", "t"], r"ErrorResponse\.code"),
        ([V, Kind.ERROR_RESPONSE, 1, 1, 0, 1, 1, "e", None, "t"], r"ErrorResponse\.message"),
        ([V, Kind.ERROR_RESPONSE, 1, 1, 0, 1, 1, "e", "m", b"t"], r"ErrorResponse\.traceback"),
    ],
)
def test_bad_header_only_fields(items: list[Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode([header(*items)])


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([V, Kind.RESPONSE, 1, 1, 0, "1"], r"^Response\.msg_id"),
    ],
)
def test_bad_payload_kind_fields(frames: list[Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode([header(*frames), b""])


def test_invalid_utf8_string() -> None:
    raw = bytearray(header(*GOOD_REQ))
    pos = raw.index(b"echo")
    raw[pos : pos + 2] = b"\xc3\x28"  # invalid 2-byte sequence
    with pytest.raises(ProtocolError, match="malformed header"):
        decode([bytes(raw), b""])
    surrogate = header(V, 5, 1, 1, 0, 7, "xyz", True).replace(b"xyz", b"\xed\xa0\x80")
    with pytest.raises(ProtocolError):
        decode([surrogate, b""])


def test_trailing_bytes_after_header() -> None:
    with pytest.raises(ProtocolError, match="trailing bytes"):
        decode([header(*GOOD_REQ) + b"\x00", b""])
    with pytest.raises(ProtocolError, match="trailing bytes"):
        decode([header(V, 3, 1, 1, 0) + header(V, 3, 1, 1, 0)])


def test_truncated_header() -> None:
    raw = header(*GOOD_REQ)
    for cut in range(len(raw)):
        with pytest.raises(ProtocolError):
            decode([raw[:cut], b""])


def test_max_size() -> None:
    frames = encode(Request(1, 1, 0, 1, "h", True, b"x" * 100))
    total = len(frames[0]) + len(frames[1])
    assert decode(frames, max_size=total) is not None
    with pytest.raises(ProtocolError, match=f"{total} bytes exceeds the maximum of {total - 1}"):
        decode(frames, max_size=total - 1)
    hb = encode(Heartbeat(1, 1, 0))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(hb, max_size=len(hb[0]) - 1)


def test_default_max_size_applies() -> None:
    big = bytes(DEFAULT_MAX_MESSAGE_SIZE)
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        decode([header(*GOOD_REQ), big])
    ok = big[: DEFAULT_MAX_MESSAGE_SIZE - len(header(*GOOD_REQ))]
    assert decode([header(*GOOD_REQ), ok]).payload == ok  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([], "expected 1 or 2 frames, got 0"),
        ([b"a", b"b", b"c"], "expected 1 or 2 frames, got 3"),
        ([header(V, 3, 1, 1, 0), b""], r"Heartbeat \(kind 3\) takes 1 frame"),
        ([header(V, 8, 1, 1, 0), b"x"], r"Goodbye \(kind 8\) takes 1 frame"),
        ([header(*GOOD_REQ)], r"Request \(kind 5\) takes 2 frames"),
        ([header(V, 6, 1, 1, 0, 1)], r"Response \(kind 6\) takes 2 frames"),
        ([header(V, 16, 1, 1, 0, [], []), b""], r"EventUpdates \(kind 16\) takes 1 frame"),
    ],
)
def test_wrong_frame_count(frames: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(frames)


@pytest.mark.parametrize(
    "frames",
    [None, 5, object(), [None], ["text"], [b"ok", 3], [1.5], {0: b"x"}, {"a": b"x"}],
)
def test_non_frame_input(frames: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(frames)


@pytest.mark.parametrize(
    "raw",
    [
        msgpack.packb({"v": 1}),
        msgpack.packb(1),
        msgpack.packb("x"),
        msgpack.packb(None),
        msgpack.packb([]),
        msgpack.packb([V, 5, 1, 1, 0, 7, {"h": 1}, True]),
        msgpack.packb([V, 5, 1, 1, 0, 7, msgpack.ExtType(1, b"x"), True]),
        msgpack.packb([V, 5, 1, 1, 0, 7, "h", msgpack.Timestamp(1)]),
        b"",
        b"\xc1",
        b"\x91" * 5000 + b"\x90",  # deep nesting
        b"\xdd\xff\xff\xff\xff",  # claims a 4G-element array
        b"\xdb\xff\xff\xff\xff",  # claims a 4 GiB string
    ],
)
def test_hostile_or_odd_headers(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode([raw])
    with pytest.raises(ProtocolError):
        decode([raw, b""])


def test_element_budget_bounds_large_headers() -> None:
    # Arrays that are each within limits but hold too many elements in total.
    chunk = [0] * 60_000
    raw = header(V, Kind.PEERS, 1, 1, 0, [chunk] * 7)  # 420,000 > 6 x 65,536 + 16
    with pytest.raises(ProtocolError, match="too many array elements"):
        decode([raw])
    # A single array longer than the peer limit.
    raw = header(V, Kind.PEERS, 1, 1, 0, [[1, 1, "a", 0, 0]] * 70_000)
    with pytest.raises(ProtocolError, match="malformed header"):
        decode([raw])
    # Many empty nested arrays (each a fresh list object when unpacked).
    empties = [[]] * 60_000
    raw = header(V, Kind.PEERS, 1, 1, 0, [empties] * 7)
    with pytest.raises(ProtocolError, match="too many array elements"):
        decode([raw])


# ---------------------------------------------------------------------------- hypothesis

u64 = st.integers(0, U64)
u64_nonzero = st.integers(1, U64)
nonempty_text = st.text(min_size=1, max_size=40)
handlers = st.text(min_size=1, max_size=90).filter(lambda s: len(s.encode()) <= 255)
payloads = st.binary(max_size=64)
peer_lists = st.lists(
    st.builds(PeerInfo, u64_nonzero, u64_nonzero, nonempty_text, u64, st.integers(0, 2)),
    max_size=4,
)
peers_st = peer_lists.map(tuple)
handles_st = st.builds(
    EventHandle.from_parts, u64, st.integers(0, 2**31 - 1), st.integers(0, 2**32 - 1)
)
common = (u64_nonzero, u64_nonzero, u64)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, *common, u64, nonempty_text, st.integers(0, 255), u64, peers_st),
    st.builds(HelloAck, *common, u64, nonempty_text, st.integers(0, 255), u64, peers_st),
    st.builds(Heartbeat, *common),
    st.builds(Peers, *common, peers_st),
    st.builds(Request, *common, u64, handlers, st.booleans(), payloads),
    st.builds(Response, *common, u64, payloads),
    st.builds(
        ErrorResponse, *common, u64, st.sampled_from(ErrorCode), st.text(), st.text(), st.text()
    ),
    st.builds(Goodbye, *common),
    st.builds(Draining, *common),
    st.builds(Credit, *common, u64, u64),
    st.builds(
        EventUpdates,
        *common,
        st.lists(handles_st, max_size=3).map(tuple),
        st.lists(
            st.builds(EventDone, handles_st, st.none() | st.text(), st.just(False))
            | st.builds(EventDone, handles_st, st.text(), st.just(True)),  # unknown: a reason
            max_size=3,
        ).map(tuple),
    ),
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(messages)
def test_hypothesis_roundtrip(msg: Message) -> None:
    roundtrip(msg)


@FAST
@given(st.lists(st.binary(max_size=64), max_size=3))
def test_fuzz_random_frames(frames: list[bytes]) -> None:
    decode_or_error(frames)


def _mutate(data: st.DataObject, frames: list[bytes]) -> list[bytes]:
    frames = list(frames)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "append", "drop"]))
        if op in ("append", "drop") or not frames:
            if op == "drop" and frames:
                frames.pop(data.draw(st.integers(0, len(frames) - 1)))
            else:
                frames.append(data.draw(st.binary(max_size=16)))
            continue
        i = data.draw(st.integers(0, len(frames) - 1))
        f = bytearray(frames[i])
        pos = data.draw(st.integers(0, len(f)))
        if op == "flip" and f:
            pos = min(pos, len(f) - 1)
            f[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            f[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and f:
            del f[min(pos, len(f) - 1)]
        else:
            del f[pos:]
        frames[i] = bytes(f)
    return frames


@settings(max_examples=600, deadline=None)
@given(messages, st.data())
def test_fuzz_mutated_encodings(msg: Message, data: st.DataObject) -> None:
    decode_or_error(_mutate(data, encode(msg)))


msgpack_objects = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), U64)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda children: (
        st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=24,
)


@FAST
@given(msgpack_objects, st.booleans())
def test_fuzz_arbitrary_msgpack_header(obj: Any, with_payload: bool) -> None:
    raw = msgpack.packb(obj, use_bin_type=True)
    assert decode_or_error([raw, b"p"] if with_payload else [raw]) is None or isinstance(obj, list)


# Values that sit on the edges of every validation rule.
EDGE_SCALARS = [0, 1, 2, 255, 256, -1, U64, -(2**63), True, False, None, 1.0]
EDGE_OTHERS = [
    "",
    "x",
    "tcp://a:1",
    "h" * 256,
    b"",
    b"x",
    [],
    [[1, 1, "a", 0, 0]],
    [[0, 1, "a"]],
    {},
]
edge_values = st.sampled_from([*EDGE_SCALARS, *EDGE_OTHERS, [[1, 1]]]) | msgpack_objects


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(sorted(Kind)), st.lists(edge_values, min_size=3, max_size=9), st.data())
def test_fuzz_near_valid_headers(kind: Kind, fields: list[Any], data: st.DataObject) -> None:
    raw = msgpack.packb([PROTOCOL_VERSION, int(kind), *fields], use_bin_type=True)
    frames = [raw, b"p"] if data.draw(st.booleans()) else [raw]
    msg = decode_or_error(frames)
    if msg is not None:
        assert kind == msg.KIND


@given(
    st.integers(1, 2**64 - 1),
    st.integers(1, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.text(min_size=1, max_size=80),
    st.booleans(),
    st.binary(max_size=64),
)
@settings(max_examples=200, deadline=None)
def test_fast_encoders_match_encode(
    src: int, inc: int, dst: int, msg_id: int, handler: str, reply: bool, payload: bytes
) -> None:
    from velo_am._protocol import encode_request, encode_response

    try:
        expected = encode(Request(src, inc, dst, msg_id, handler, reply, payload))
    except ProtocolError:
        with pytest.raises(ProtocolError):
            encode_request(src, inc, dst, msg_id, handler, reply, payload)
    else:
        assert encode_request(src, inc, dst, msg_id, handler, reply, payload) == expected
    assert encode_response(src, inc, dst, msg_id, payload) == encode(
        Response(src, inc, dst, msg_id, payload)
    )
