"""The discovery seam: where workers find each other, and the registry of URL schemes.

A :class:`Discovery` is asynchronous (its I/O must never block the worker's loop): a worker
``publish``\\es its entry on start and again every :data:`REFRESH_EVERY` seconds while it runs,
``withdraw``\\s it on close, joins the mesh through the addresses ``seeds`` lists and ``find``\\s
a worker it must reach but does not know. Backends are named by URL scheme (``dir:PATH``,
``dns:NAME:PORT``); :func:`register_scheme` adds one, :func:`open_discovery` opens a URL.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "REFRESH_EVERY",
    "Discovery",
    "DiscoveryEntry",
    "open_discovery",
    "register_scheme",
    "schemes",
    "this_host",
]

#: Seconds between a running worker's refreshes of its entry (``publish`` again).
REFRESH_EVERY: Final = 5.0


def this_host() -> str:
    """The name of the host this process runs on, as entries record it."""
    return socket.gethostname()


@dataclass(frozen=True, slots=True)
class DiscoveryEntry:
    """One worker as discovery knows it: where it listens, which process and incarnation
    published the entry, when it last refreshed it (``time.time()``) and on which host the
    process runs (its ``pid`` means something there only; ``""``: not known)."""

    worker_id: int
    address: str
    pid: int
    incarnation: int
    last_seen: float
    host: str = ""


class Discovery(Protocol):
    """A discovery backend. Every method is a coroutine whose I/O runs off the loop and that
    raises ``OSError`` when the backend cannot be reached. The worker waits for each call at
    most ``handshake_timeout`` seconds; one that takes longer counts as failed."""

    async def publish(self, entry: DiscoveryEntry) -> None:
        """Create or refresh this worker's entry."""
        ...

    async def withdraw(self, worker_id: int, incarnation: int) -> None:
        """Remove the entry of ``worker_id``, if it is still this incarnation's."""
        ...

    async def find(self, worker_id: int) -> DiscoveryEntry | None:
        """The live entry of ``worker_id``, or ``None``."""
        ...

    async def seeds(self) -> list[str]:
        """Addresses of live workers to join the mesh through, as of now (the worker's own
        may be among them). An empty list: no worker has appeared yet."""
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
    empty rest is a ``ValueError`` that lists the known forms; the backend raises
    ``ValueError`` for a rest it cannot read."""
    scheme, sep, rest = url.partition(":")
    entry = _SCHEMES.get(scheme) if sep else None
    if entry is None or not rest:
        known = ", ".join(usage for usage in schemes().values())
        raise ValueError(f"unsupported discovery {url!r}: expected one of {known}")
    factory, _ = entry
    return factory(rest)
