"""``dns:NAME:PORT`` discovery: the addresses a DNS name resolves to, as seeds.

Made for a Kubernetes headless service (or any name with one record per worker): ``NAME``
resolves, with the system's resolver, to every A and AAAA record, and each address becomes
``tcp://IP:PORT`` to join through. A worker resolves it again at each attempt while it joins,
so records that appear as pods start are found. DNS knows addresses, not worker ids:
``publish`` and ``withdraw`` do nothing (the platform keeps the records) and ``find`` knows no
one (a worker reaches others by id through the mesh it joined).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from ._base import DiscoveryEntry
from ._blocking import BlockingCalls

__all__ = ["DnsDiscovery", "Resolver"]

#: ``socket.getaddrinfo``'s signature: ``(host, port, family, type, ...)`` to
#: ``(family, type, proto, canonname, sockaddr)`` tuples.
Resolver = Callable[..., Sequence[tuple[Any, ...]]]


class DnsDiscovery:
    """Seeds from the records of ``name``, on ``port``. ``resolver`` looks them up (a
    blocking function like ``socket.getaddrinfo``, the default; it runs in a thread). Raises
    ``ValueError`` for an empty name or a port out of range."""

    def __init__(self, name: str, port: int, *, resolver: Resolver = socket.getaddrinfo) -> None:
        name = name.strip()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]  # an IPv6 literal, [::1]
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"dns:NAME:PORT needs a host name, got {name!r}")
        if not 0 < port < 65536:
            raise ValueError(f"dns:NAME:PORT needs a port from 1 to 65535, got {port}")
        self.name = name
        self.port = port
        self._resolver = resolver
        self._calls = BlockingCalls(f"discovery dns:{name}:{port}")

    @classmethod
    def from_url(cls, rest: str) -> DnsDiscovery:
        """The backend of ``dns:NAME:PORT`` (``rest`` is ``NAME:PORT``)."""
        name, sep, port = rest.rpartition(":")
        if not sep or not port.strip().isdigit():
            raise ValueError(f"dns:NAME:PORT needs a port after the name, got 'dns:{rest}'")
        return cls(name, int(port))

    def resolve(self) -> list[str]:
        """``tcp://IP:PORT`` for each address of the name, in the resolver's order, once
        each (blocking). Raises ``OSError`` if the name does not resolve."""
        try:
            records = self._resolver(self.name, self.port, type=socket.SOCK_STREAM)
        except OSError as error:  # socket.gaierror: no such name (yet), no answer, ...
            raise OSError(f"cannot resolve {self.name!r}: {error}") from None
        addresses: dict[str, None] = {}
        for family, _, _, _, sockaddr in records:
            ip = sockaddr[0]
            host = f"[{ip}]" if family == socket.AF_INET6 else ip
            addresses.setdefault(f"tcp://{host}:{self.port}")
        return list(addresses)

    # -- the Discovery protocol ---------------------------------------------------------------

    async def publish(self, entry: DiscoveryEntry) -> None:
        """Nothing: the records are the platform's."""

    async def withdraw(self, worker_id: int, incarnation: int) -> None:
        """Nothing: the records are the platform's."""

    async def find(self, worker_id: int) -> DiscoveryEntry | None:
        """``None``: DNS names no worker ids."""
        return None

    async def seeds(self) -> list[str]:
        return await self._calls.run(self.resolve)

    def __repr__(self) -> str:
        return f"DnsDiscovery({self.name!r}, {self.port})"
