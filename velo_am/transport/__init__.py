"""Transports: how a worker's messages travel, a public seam (like httpcore's backends).

* :class:`Transport` and :class:`Link` are the protocols a transport implements;
  :class:`LinkFull` is what a link raises when it cannot take a message.
* :class:`ZmqTransport`: ZeroMQ ROUTER/DEALER, what a :class:`~velo_am.Worker` uses unless
  given ``transport=``. Its sockets are configured by a :class:`ZmqSecurity`
  (:class:`Plaintext` by default), the place for authentication and encryption.
* :class:`FakeNetwork`: an in-process network for tests, without sockets; each worker takes
  ``transport=network.transport()``.
"""

from ._base import FrameSink, Link, LinkFull, Transport
from ._fake import FakeNetwork, FakeTransport
from ._security import Plaintext, ZmqSecurity
from ._zmq import ZmqTransport

__all__ = [
    "FakeNetwork",
    "FakeTransport",
    "FrameSink",
    "Link",
    "LinkFull",
    "Plaintext",
    "Transport",
    "ZmqSecurity",
    "ZmqTransport",
]
