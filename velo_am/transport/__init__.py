"""Transports: how a worker's messages travel, a public seam (like httpcore's backends).

* :class:`Transport` is the protocol a transport implements, :class:`TransportEvents` what it
  reports to its worker (messages on links, links up and down), :class:`Liveness` how it
  watches links; :class:`LinkFull` and :class:`LinkClosed` are what a send raises.
* :class:`ZmqTransport`: one ZeroMQ ROUTER per worker, what a :class:`~velo_am.Worker`
  uses unless given ``transport=``. Its socket is configured by a :class:`ZmqSecurity`
  (:class:`Plaintext` by default), the place for authentication and encryption:
  :class:`Curve` is ZeroMQ's CURVE (``Worker(curve=...)``).
* :class:`FakeNetwork`: an in-process network for tests, without sockets; each worker takes
  ``transport=network.transport()``.
"""

from ._base import (
    LinkClosed,
    LinkError,
    LinkFull,
    LinkId,
    Liveness,
    Transport,
    TransportEvents,
)
from ._curve import Curve, CurveConfig
from ._fake import FakeNetwork, FakeTransport
from ._security import Plaintext, ZmqSecurity
from ._zmq import ZmqTransport

__all__ = [
    "Curve",
    "CurveConfig",
    "FakeNetwork",
    "FakeTransport",
    "LinkClosed",
    "LinkError",
    "LinkFull",
    "LinkId",
    "Liveness",
    "Plaintext",
    "Transport",
    "TransportEvents",
    "ZmqSecurity",
    "ZmqTransport",
]
