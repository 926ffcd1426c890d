"""Discovery: where workers find each other by id, a public seam.

* :class:`Discovery`: the asynchronous protocol a backend implements (``publish``,
  ``withdraw``, ``find``, ``members``) and :class:`DiscoveryEntry`, what it stores per worker.
* Backends are named by URL scheme: :func:`open_discovery` opens ``scheme:REST``,
  :func:`register_scheme` adds a scheme (a ``Worker(discovery="...")``, ``$VELO_DISCOVERY``
  and the CLI's ``--discovery`` all go through it).
* ``dir:PATH``, :class:`DirectoryDiscovery`: one JSON file per worker in a shared directory.
"""

from ._base import Discovery, DiscoveryEntry, open_discovery, register_scheme, schemes
from ._directory import DirectoryDiscovery

register_scheme("dir", DirectoryDiscovery, usage="dir:PATH")

__all__ = [
    "DirectoryDiscovery",
    "Discovery",
    "DiscoveryEntry",
    "open_discovery",
    "register_scheme",
    "schemes",
]
