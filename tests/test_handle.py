"""EventHandle: layout, accessors, encodings (int, bytes, text, pickle), and system identity."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from velo_event import DistributedEventFactory, EventHandle, LocalEventSystem

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
LOCAL_BIT = 1 << 63

workers = st.integers(min_value=0, max_value=U64)
indexes = st.integers(min_value=0, max_value=(1 << 31) - 1)
generations = st.integers(min_value=0, max_value=U32)


# -- minted handles --------------------------------------------------------------------------


def test_first_local_handle_layout() -> None:
    mgr = LocalEventSystem()
    h = mgr.new_event().handle
    assert type(h) is EventHandle
    assert mgr.system_id == mgr.worker_id != 0
    assert h.worker_id == mgr.system_id
    assert (h.index, h.generation) == (0, 1)
    assert h.is_local and not h.is_distributed
    assert int(h) == mgr.system_id << 64 | LOCAL_BIT | 1
    assert str(h) == f"ev:{mgr.system_id:x}:l0:1"


def test_first_distributed_handle_of_factory_0x42() -> None:
    factory = DistributedEventFactory(0x42)
    h = factory.event_manager().new_event().handle
    assert h == (0x42 << 64) | 1
    assert str(h) == "ev:42:0:1"
    assert h.worker_id == 0x42 == factory.worker_id
    assert h.is_distributed and not h.is_local
    assert (h.index, h.generation) == (0, 1)


def test_second_event_takes_the_next_index() -> None:
    mgr = LocalEventSystem()
    first, second = mgr.new_event().handle, mgr.new_event().handle
    assert (second.index, second.generation) == (1, 1)
    assert first != second


def test_local_systems_have_distinct_random_ids() -> None:
    ids = {LocalEventSystem().system_id for _ in range(20)}
    assert len(ids) == 20
    assert all(0 < i <= U64 for i in ids)


def test_repr_is_readable() -> None:
    h = DistributedEventFactory(0x42).event_manager().new_event().handle
    assert repr(h) == "EventHandle(worker_id=0x42, index=0, generation=1, distributed)"
    local = EventHandle.from_parts(0xABC, 7, 3, local=True)
    assert repr(local) == "EventHandle(worker_id=0xabc, index=7, generation=3, local)"


# -- construction ----------------------------------------------------------------------------


def test_from_parts_places_every_field() -> None:
    h = EventHandle.from_parts(0x1234, 5, 6, local=True)
    assert int(h) == 0x1234 << 64 | LOCAL_BIT | 5 << 32 | 6
    assert (h.worker_id, h.index, h.generation, h.is_local) == (0x1234, 5, 6, True)
    d = EventHandle.from_parts(0x1234, 5, 6)
    assert int(d) == 0x1234 << 64 | 5 << 32 | 6
    assert d.is_distributed
    assert d != h


@pytest.mark.parametrize(
    ("worker", "index", "generation"),
    [(-1, 0, 0), (U64 + 1, 0, 0), (1, -1, 0), (1, 1 << 31, 0), (1, 0, -1), (1, 0, U32 + 1)],
)
def test_from_parts_rejects_fields_out_of_range(worker: int, index: int, generation: int) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        EventHandle.from_parts(worker, index, generation)


def test_from_parts_accepts_the_extremes() -> None:
    h = EventHandle.from_parts(U64, (1 << 31) - 1, U32, local=True)
    assert int(h) == (1 << 128) - 1
    assert (h.worker_id, h.index, h.generation, h.is_local) == (U64, (1 << 31) - 1, U32, True)


def test_minted_handle_equals_from_parts() -> None:
    mgr = LocalEventSystem()
    h = mgr.new_event().handle
    assert EventHandle.from_parts(mgr.system_id, 0, 1, local=True) == h


def test_from_int_round_trip_and_hash() -> None:
    h = LocalEventSystem().new_event().handle
    back = EventHandle.from_int(int(h))
    assert back == h
    assert hash(back) == hash(h) == hash(int(h))
    assert type(back) is EventHandle
    assert {h: "x"}[back] == "x"


@pytest.mark.parametrize("value", [-1, 1 << 128])
def test_from_int_rejects_non_128_bit_values(value: int) -> None:
    with pytest.raises(ValueError, match="128-bit"):
        EventHandle.from_int(value)


def test_with_generation_keeps_system_index_and_flag() -> None:
    h = LocalEventSystem().new_event().handle
    h99 = h.with_generation(99)
    assert type(h99) is EventHandle
    assert h99.generation == 99
    assert (h99.worker_id, h99.index, h99.is_local) == (h.worker_id, h.index, h.is_local)
    assert h99.with_generation(1) == h
    assert h.with_generation(0).generation == 0
    assert h.with_generation(U32).generation == U32
    for bad in (-1, U32 + 1):
        with pytest.raises(ValueError, match="does not fit"):
            h.with_generation(bad)


def test_handle_is_immutable() -> None:
    h = EventHandle.from_parts(1, 2, 3)
    with pytest.raises(AttributeError):
        h.generation = 4  # type: ignore[misc]
    with pytest.raises(AttributeError):
        h.extra = 1  # type: ignore[attr-defined]
    assert h.generation == 3


# -- encodings -------------------------------------------------------------------------------


def test_bytes_are_16_big_endian() -> None:
    h = EventHandle.from_parts(0x42, 0, 1)
    data = h.to_bytes()
    assert data == bytes(7) + b"\x42" + bytes(7) + b"\x01"
    assert len(data) == 16
    back = EventHandle.from_bytes(data)
    assert back == h and type(back) is EventHandle


@pytest.mark.parametrize("size", [0, 15, 17])
def test_from_bytes_needs_16_bytes(size: int) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        EventHandle.from_bytes(bytes(size))


def test_text_form_of_local_and_distributed() -> None:
    assert str(EventHandle.from_parts(0xBEEF, 12, 34, local=True)) == "ev:beef:l12:34"
    assert str(EventHandle.from_parts(0xBEEF, 12, 34)) == "ev:beef:12:34"
    h = EventHandle.from_parts(0xBEEF, 12, 34)
    assert f"{h}" == str(h)
    assert f"{h:x}" == format(int(h), "x")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ev:",
        "ev:42:0",
        "ev:42:0:1:2",
        "EV:42:0:1",
        "ev:xyz:0:1",
        "ev:42:L0:1",
        "ev:42:-1:1",
        "ev:42:0:1x",
        "ev:42:2147483648:1",  # index needs 32 bits with the flag
        "ev:42:0:4294967296",  # generation beyond 32 bits
        "ev:10000000000000000:0:1",  # worker id beyond 64 bits
        "12345",
    ],
)
def test_parse_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError):  # the message varies with the faulty field
        EventHandle.parse(text)


def test_parse_tolerates_surrounding_whitespace() -> None:
    assert EventHandle.parse("  ev:42:0:1\n") == (0x42 << 64) | 1


@given(workers, indexes, generations, st.booleans())
def test_every_encoding_round_trips(worker: int, index: int, gen: int, local: bool) -> None:
    h = EventHandle.from_parts(worker, index, gen, local=local)
    assert (h.worker_id, h.index, h.generation, h.is_local) == (worker, index, gen, local)
    assert h.is_distributed is not local
    for back in (
        EventHandle.parse(str(h)),
        EventHandle.from_bytes(h.to_bytes()),
        EventHandle.from_int(int(h)),
        pickle.loads(pickle.dumps(h)),
        copy.deepcopy(h),
    ):
        assert back == h
        assert type(back) is EventHandle
        assert str(back) == str(h)


def test_pickled_handle_still_works_with_its_system() -> None:
    mgr = LocalEventSystem()
    e = mgr.new_event()
    h = pickle.loads(pickle.dumps(e.handle))
    mgr.trigger(h)
    assert mgr.poll(e.handle).name == "READY"


# -- DistributedEventFactory -----------------------------------------------------------------


@pytest.mark.parametrize("worker_id", [0, -1, 1 << 64, 1 << 70])
def test_factory_rejects_out_of_range_ids(worker_id: int) -> None:
    with pytest.raises(ValueError, match="non-zero 64-bit"):
        DistributedEventFactory(worker_id)


@pytest.mark.parametrize("worker_id", [True, False, 1.0, "1", None])
def test_factory_rejects_non_int_ids(worker_id: object) -> None:
    with pytest.raises(TypeError):
        DistributedEventFactory(worker_id)  # type: ignore[arg-type]


def test_factory_accepts_the_extremes() -> None:
    assert DistributedEventFactory(1).worker_id == 1
    top = DistributedEventFactory(U64)
    h = top.event_manager().new_event().handle
    assert top.worker_id == h.worker_id == U64
    assert str(h) == "ev:ffffffffffffffff:0:1"


def test_factory_managers_share_one_system() -> None:
    factory = DistributedEventFactory(0x99)
    a, b = factory.event_manager(), factory.event_manager()
    assert a.system_id == b.system_id == 0x99
    e = a.new_event()
    f = b.new_event()
    assert f.handle.index == e.handle.index + 1  # one slot table
    b.trigger(e.handle)
    assert a.poll(e.handle).name == "READY"
    a.poison(f.handle, "via a")
    assert b.poison_reason(f.handle) == "via a"
