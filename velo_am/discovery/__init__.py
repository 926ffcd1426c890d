"""Discovery: where workers find each other, a public seam.

* :class:`Discovery`: the asynchronous protocol a backend implements (``publish``,
  ``withdraw``, ``find``, ``seeds``) and :class:`DiscoveryEntry`, what it stores per worker.
* Backends are named by URL scheme: :func:`open_discovery` opens ``scheme:REST``,
  :func:`register_scheme` adds a scheme (a ``Worker(discovery="...")``, ``$VELO_DISCOVERY``
  and the CLI's ``--discovery`` all go through it).
* ``dir:PATH``, :class:`DirectoryDiscovery`: one JSON file per worker in a directory shared
  by the processes of a host, or by hosts (NFS).
* ``dns:NAME:PORT``, :class:`DnsDiscovery`: the addresses a DNS name resolves to (a Kubernetes
  headless service), as seeds to join through.
"""

from ._base import (
    REFRESH_EVERY,
    Discovery,
    DiscoveryEntry,
    open_discovery,
    register_scheme,
    schemes,
    this_host,
)
from ._directory import STALE_AFTER, DirectoryDiscovery
from ._dns import DnsDiscovery, Resolver

register_scheme("dir", DirectoryDiscovery, usage="dir:PATH")
register_scheme("dns", DnsDiscovery.from_url, usage="dns:NAME:PORT")

__all__ = [
    "REFRESH_EVERY",
    "STALE_AFTER",
    "DirectoryDiscovery",
    "Discovery",
    "DiscoveryEntry",
    "DnsDiscovery",
    "Resolver",
    "open_discovery",
    "register_scheme",
    "schemes",
    "this_host",
]
