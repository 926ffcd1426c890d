"""What a worker knows of its peers: the public :class:`PeerStatus`, and its own bookkeeping."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ._transport import Link

__all__ = ["Dial", "Peer", "PeerStatus"]


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """What a worker knows of one peer. ``state`` is ``alive``, ``draining``, ``lost`` or
    ``closed``; ``silent_for`` is seconds since its last message."""

    worker_id: int
    address: str
    incarnation: int
    state: str
    silent_for: float


class Peer:
    """A peer as its worker tracks it (loop-owned, mutable)."""

    __slots__ = ("address", "calls", "incarnation", "last_seen", "link", "state", "worker_id")

    def __init__(self, worker_id: int, incarnation: int, address: str, link: Link) -> None:
        self.worker_id = worker_id
        self.incarnation = incarnation
        self.address = address
        self.link: Link | None = link
        self.state = "alive"
        self.last_seen = time.monotonic()
        self.calls: set[int] = set()

    def describe(self) -> str:
        return f"worker {self.worker_id:#x} at {self.address}"


class Dial:
    """A handshake in progress: its link, resolved with the peer's id when answered."""

    __slots__ = ("address", "future", "link")

    def __init__(self, address: str, link: Link, future: asyncio.Future[int]) -> None:
        self.address = address
        self.link = link
        self.future = future
