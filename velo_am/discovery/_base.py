"""The discovery seam: where workers find each other by id, and the registry of URL schemes.

A :class:`Discovery` is asynchronous (its I/O must never block the worker's loop): a worker
``publish``\\es its entry on start and refreshes it while it runs, ``withdraw``\\s it on close,
and ``find``\\s a worker it must reach but does not know. Backends are named by URL scheme
(``dir:PATH``); :func:`register_scheme` adds one, :func:`open_discovery` opens a URL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Discovery", "DiscoveryEntry", "open_discovery", "register_scheme", "schemes"]


@dataclass(frozen=True, slots=True)
class DiscoveryEntry:
    """One worker as discovery knows it: where it listens, which process and incarnation
    published the entry, and when it last refreshed it (``time.time()``)."""

    worker_id: int
    address: str
    pid: int
    incarnation: int
    last_seen: float


class Discovery(Protocol):
    """A discovery backend. Every method is a coroutine that may do I/O off the loop and
    raises ``OSError`` when the backend cannot be reached."""

    async def publish(self, entry: DiscoveryEntry) -> None:
        """Create or refresh this worker's entry."""
        ...

    async def withdraw(self, worker_id: int, incarnation: int) -> None:
        """Remove the entry of ``worker_id``, if it is still this incarnation's."""
        ...

    async def find(self, worker_id: int) -> DiscoveryEntry | None:
        """The live entry of ``worker_id``, or ``None``."""
        ...

    async def members(self) -> list[DiscoveryEntry]:
        """Every live entry."""
        ...


#: Makes a backend from the rest of a URL (what follows ``scheme:``).
DiscoveryFactory = Callable[[str], Discovery]

_SCHEMES: dict[str, tuple[DiscoveryFactory, str]] = {}


def register_scheme(scheme: str, factory: DiscoveryFactory, *, usage: str) -> Callable[[], None]:
    """Make ``scheme:REST`` open ``factory(REST)``; ``usage`` shows the form in errors and
    help (``"dir:PATH"``). Registering a scheme again replaces it. Returns a function that
    removes the registration."""
    if not scheme.isidentifier():
        raise ValueError(f"a discovery scheme is a word, got {scheme!r}")
    entry = _SCHEMES[scheme] = (factory, usage)

    def unregister() -> None:
        if _SCHEMES.get(scheme) is entry:
            del _SCHEMES[scheme]

    return unregister


def schemes() -> dict[str, str]:
    """Each registered scheme and its usage."""
    return {scheme: usage for scheme, (_, usage) in sorted(_SCHEMES.items())}


def open_discovery(url: str) -> Discovery:
    """The backend a discovery URL names, e.g. ``dir:/run/velo``. An unknown scheme or an
    empty rest is a ``ValueError`` that lists the known forms."""
    scheme, sep, rest = url.partition(":")
    entry = _SCHEMES.get(scheme) if sep else None
    if entry is None or not rest:
        known = ", ".join(usage for usage in schemes().values())
        raise ValueError(f"unsupported discovery {url!r}: expected one of {known}")
    factory, _ = entry
    return factory(rest)
