"""`EventHandle`: the 128-bit, copy-anywhere name of one generation of one event."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_GENERATION", "MAX_INDEX", "EventHandle"]

_U64: Final = (1 << 64) - 1
_U32: Final = (1 << 32) - 1
LOCAL_FLAG: Final = 1 << 31
_INDEX_MASK: Final = LOCAL_FLAG - 1
#: Largest slot index a system hands out (2**31 - 1 slots: the top bit is the local flag).
MAX_INDEX: Final = _INDEX_MASK - 1
#: Largest generation of a slot; a slot that completes it retires (generations never wrap).
MAX_GENERATION: Final = _U32

_TEXT_FORM = re.compile(r"ev:([0-9a-f]{1,16}):(l?)([0-9]{1,10}):([0-9]{1,10})\Z")


class EventHandle(int):
    """One generation of one event: ``worker_id (64) | local flag + index (32) | generation (32)``.

    A handle *is* its 128-bit value (an immutable ``int`` subclass), so it hashes, compares
    and copies like one and costs nothing to pass around. ``str(h)`` is a compact text form,
    ``ev:<worker id in hex>:[l]<index>:<generation>`` (``l`` marks a local-only handle), that
    :meth:`parse` reads back, so a handle can travel through a command line, a file or an
    environment variable.
    """

    __slots__ = ()

    @classmethod
    def from_parts(
        cls, worker_id: int, index: int, generation: int, *, local: bool = False
    ) -> EventHandle:
        """Build a handle from its fields; each must fit its width."""
        if not 0 <= worker_id <= _U64:
            raise ValueError(f"worker_id {worker_id} does not fit in 64 bits")
        if not 0 <= index <= _INDEX_MASK:
            raise ValueError(f"index {index} does not fit in 31 bits")
        if not 0 <= generation <= _U32:
            raise ValueError(f"generation {generation} does not fit in 32 bits")
        flag = LOCAL_FLAG if local else 0
        return int.__new__(cls, worker_id << 64 | (flag | index) << 32 | generation)

    @classmethod
    def from_int(cls, value: int) -> EventHandle:
        """The handle whose 128-bit value is ``value``."""
        if not 0 <= value < 1 << 128:
            raise ValueError(f"{value} is not a 128-bit handle value")
        return int.__new__(cls, value)

    @classmethod
    def from_bytes(cls, data: bytes) -> EventHandle:  # type: ignore[override]
        """The handle encoded by :meth:`to_bytes` (16 bytes, big-endian)."""
        if len(data) != 16:
            raise ValueError(f"an EventHandle is 16 bytes, got {len(data)}")
        return int.__new__(cls, int.from_bytes(data, "big"))

    @classmethod
    def parse(cls, text: str) -> EventHandle:
        """Read the text form produced by ``str(handle)``."""
        match = _TEXT_FORM.match(text.strip())
        if match is None:
            raise ValueError(f"not an event handle: {text!r} (expected ev:<hex>:[l]<index>:<gen>)")
        worker, local, index, generation = match.groups()
        return cls.from_parts(int(worker, 16), int(index), int(generation), local=bool(local))

    def to_bytes(self) -> bytes:  # type: ignore[override]
        """The 16-byte big-endian encoding; :meth:`from_bytes` reads it back."""
        return int.to_bytes(self, 16, "big")

    @property
    def worker_id(self) -> int:
        """The id of the system (or worker) that owns the event."""
        return int(self) >> 64

    @property
    def index(self) -> int:
        """The slot index inside the owner, local flag stripped."""
        return int(self) >> 32 & _INDEX_MASK

    @property
    def generation(self) -> int:
        """Which completion of the slot this handle names (0 is always complete)."""
        return int(self) & _U32

    @property
    def is_local(self) -> bool:
        """True for handles of a :class:`LocalEventSystem`, which never leave their process."""
        return bool(int(self) >> 32 & LOCAL_FLAG)

    @property
    def is_distributed(self) -> bool:
        """True for handles minted by a worker id (:class:`DistributedEventFactory`)."""
        return not int(self) >> 32 & LOCAL_FLAG

    def with_generation(self, generation: int) -> EventHandle:
        """The same slot at another generation."""
        if not 0 <= generation <= _U32:
            raise ValueError(f"generation {generation} does not fit in 32 bits")
        return int.__new__(EventHandle, int(self) & ~_U32 | generation)

    def __str__(self) -> str:
        local = "l" if self.is_local else ""
        return f"ev:{self.worker_id:x}:{local}{self.index}:{self.generation}"

    def __repr__(self) -> str:
        kind = "local" if self.is_local else "distributed"
        return (
            f"EventHandle(worker_id={self.worker_id:#x}, index={self.index}, "
            f"generation={self.generation}, {kind})"
        )

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else int.__format__(self, spec)

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (EventHandle.from_int, (int(self),))
