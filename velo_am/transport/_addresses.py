"""Which address a worker advertises, and which of a peer's addresses it dials.

A worker bound to a wildcard (``tcp://0.0.0.0:PORT``, ``tcp://*:PORT``) listens on every
interface, but ``0.0.0.0`` names no host another machine can dial: on the dialler's side it
means the dialler's own host. So a worker *advertises* (in its handshakes, its gossip and
discovery) the endpoints others can reach it at:

- ``advertise`` given: those endpoints (``tcp://HOST:PORT``, ``HOST:PORT`` or just ``HOST``,
  which takes the bound port; several separated by commas or spaces);
- else ``interface`` given (NCCL_SOCKET_IFNAME's syntax: ``eth0,ib`` name prefixes,
  ``=eth0`` an exact name, ``^docker,lo`` every interface but these): the addresses of the
  matching interfaces; a worker not bound to a wildcard *listens* on the first of them;
- else, bound to a wildcard: every IPv4 address of the interfaces that are up, but loopback,
  link-local and ``docker*`` bridges (whose subnets repeat on every host);
- else the bound endpoint itself.

An address with several endpoints is written with spaces between them. A dialler takes the
first endpoint on a subnet of one of its own interfaces, else the first: hosts with a fast
network and a management one reach each other on the network they share.

Everything here is pure but :func:`local_interfaces`, which reads the host's interfaces.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped]

__all__ = [
    "Interface",
    "advertised_address",
    "choose_endpoint",
    "endpoints_of",
    "listen_endpoint",
    "local_interfaces",
    "match_interfaces",
]

_WILDCARD_HOSTS = frozenset({"0.0.0.0", "*"})
# A docker bridge has the same subnet on every host: dialling it reaches the dialler's own.
_NEVER_BY_DEFAULT = ("docker",)


@dataclass(frozen=True, slots=True)
class Interface:
    """One IPv4 address of one network interface of this host."""

    name: str
    address: ipaddress.IPv4Interface
    up: bool = True

    @property
    def usable(self) -> bool:
        """Worth advertising without being asked: up, not loopback, not link-local."""
        ip = self.address.ip
        return self.up and not ip.is_loopback and not ip.is_link_local


def local_interfaces() -> list[Interface]:
    """This host's IPv4 addresses, interface by interface (in the order the OS lists them)."""
    stats = psutil.net_if_stats()
    found = []
    for name, addresses in psutil.net_if_addrs().items():
        up = name in stats and stats[name].isup
        for entry in addresses:
            if entry.family == socket.AF_INET and entry.netmask:
                address = ipaddress.IPv4Interface(f"{entry.address}/{entry.netmask}")
                found.append(Interface(name, address, up))
    return found


def _split_tcp(endpoint: str) -> tuple[str, str] | None:
    """``(host, port)`` of a ``tcp://HOST:PORT`` endpoint, else ``None``."""
    if not endpoint.startswith("tcp://"):
        return None
    host, sep, port = endpoint[len("tcp://") :].rpartition(":")
    return (host.strip("[]"), port) if sep else None


def _is_wildcard(endpoint: str) -> bool:
    parts = _split_tcp(endpoint)
    return parts is not None and parts[0] in _WILDCARD_HOSTS


def match_interfaces(spec: str, interfaces: Iterable[Interface]) -> list[Interface]:
    """The interfaces ``spec`` names, in NCCL_SOCKET_IFNAME's syntax: comma-separated name
    prefixes; ``=`` first: exact names; ``^`` first: every interface but those prefixes."""
    spec = spec.strip()
    exclude = spec.startswith("^")
    exact = spec.startswith("=")
    names = [name.strip() for name in spec.lstrip("^=").split(",") if name.strip()]
    if not names:
        raise ValueError(f"interface {spec!r} names no interface")

    def named(interface: Interface) -> bool:
        if exact:
            return interface.name in names
        return any(interface.name.startswith(name) for name in names)

    return [each for each in interfaces if each.up and named(each) != exclude]


def listen_endpoint(bind: str, interface: str | None, interfaces: Sequence[Interface]) -> str:
    """Where to listen: ``bind``, or with ``interface`` and a bind that is not a wildcard, the
    first address of that interface on bind's port. ``ValueError`` if no interface matches."""
    parts = _split_tcp(bind)
    if interface is None or parts is None or parts[0] in _WILDCARD_HOSTS:
        return bind
    return f"tcp://{_addresses_of(interface, interfaces)[0]}:{parts[1]}"


def advertised_address(
    bound: str,
    *,
    advertise: str | None,
    interface: str | None,
    interfaces: Sequence[Interface],
) -> str:
    """The address other workers dial to reach a worker listening at ``bound`` (port
    resolved): see the module's rules. ``ValueError`` for an ``advertise`` or ``interface``
    that cannot be used."""
    parts = _split_tcp(bound)
    port = parts[1] if parts else None
    if advertise is not None:
        return " ".join(_advertised_endpoint(item, port) for item in _items(advertise))
    if parts is None or (interface is None and not _is_wildcard(bound)):
        return bound
    if interface is not None:
        hosts = _addresses_of(interface, interfaces)
    else:
        hosts = [
            str(each.address.ip)
            for each in interfaces
            if each.usable and not each.name.startswith(_NEVER_BY_DEFAULT)
        ]
        hosts = list(dict.fromkeys(hosts)) or ["127.0.0.1"]  # an offline host: itself
    return " ".join(f"tcp://{host}:{port}" for host in hosts)


def endpoints_of(address: str) -> str:
    """The endpoints of an address (words with ``://``), without the other tokens a security
    adds (a ``curve:KEY``)."""
    return " ".join(word for word in address.split() if "://" in word)


def choose_endpoint(address: str, interfaces: Sequence[Interface]) -> str:
    """The endpoint of ``address`` to dial: the first on a subnet of one of this host's
    interfaces (loopback aside), else the first."""
    endpoints = address.split()
    if len(endpoints) <= 1:
        return address
    networks = [each.address.network for each in interfaces if each.usable]
    for endpoint in endpoints:
        parts = _split_tcp(endpoint)
        try:
            ip = ipaddress.ip_address(parts[0]) if parts else None
        except ValueError:  # a host name: no subnet to compare
            continue
        if ip is not None and any(ip in network for network in networks):
            return endpoint
    return endpoints[0]


def _items(text: str) -> list[str]:
    items = text.replace(",", " ").split()
    if not items:
        raise ValueError("advertise names no address")
    return items


def _advertised_endpoint(item: str, port: str | None) -> str:
    """``tcp://HOST:PORT`` (or any endpoint) as it is; ``HOST:PORT``; ``HOST`` on ``port``."""
    if "://" not in item:
        host, sep, item_port = item.rpartition(":")
        if sep and item_port.isdigit() and ":" not in host.strip("[]"):
            item = f"tcp://{item}"
        elif port is None:
            raise ValueError(f"cannot advertise {item!r} without a port: the worker is not on tcp")
        else:
            item = f"tcp://{item}:{port}"
    if item.startswith("tcp://") and (_split_tcp(item) is None or _is_wildcard(item)):
        raise ValueError(f"cannot advertise {item!r}: name a host and port others can dial")
    return item


def _addresses_of(spec: str, interfaces: Sequence[Interface]) -> list[str]:
    matched = match_interfaces(spec, interfaces)
    if not matched:
        listed = ", ".join(sorted({each.name for each in interfaces if each.up})) or "none"
        raise ValueError(f"no interface up matches {spec!r} (up: {listed})")
    return list(dict.fromkeys(str(each.address.ip) for each in matched))
