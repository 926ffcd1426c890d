"""Socket security of :class:`~velo_am.transport.ZmqTransport`: the seam where
authentication and encryption (ZeroMQ's CURVE, with ``zmq.auth`` for certificates and ZAP)
plug in.

A :class:`ZmqSecurity` configures the worker's ROUTER before it binds, and again before each
connection it opens: ZeroMQ applies a socket's options to the connections made after they are
set, so per-peer settings (the server key CURVE needs) go there. :class:`Plaintext`, the
default, leaves the socket as it is: anyone who can reach the endpoint can speak (see the
README's threat model).
"""

from __future__ import annotations

from typing import Protocol

import zmq

__all__ = ["Plaintext", "ZmqSecurity"]


class ZmqSecurity(Protocol):
    """Security settings of one :class:`~velo_am.transport.ZmqTransport`. Its methods run on
    the worker's loop thread, in the worker's process."""

    def start(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Once, when the transport starts, with the context it created (start a ZAP
        authenticator here)."""
        ...

    def configure_listener(self, socket: zmq.Socket[bytes]) -> None:
        """The worker's ROUTER, before it binds (e.g. ``curve_server``, its secret key)."""
        ...

    def configure_link(self, socket: zmq.Socket[bytes], address: str, peer_id: int | None) -> None:
        """A DEALER to ``address`` (worker ``peer_id`` when known), before it connects (e.g.
        this worker's key pair and the server's public key)."""
        ...

    def close(self) -> None:
        """When the transport closes, before its context terminates."""
        ...


class Plaintext:
    """No authentication, no encryption: sockets as ZeroMQ makes them."""

    def start(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        pass

    def configure_listener(self, socket: zmq.Socket[bytes]) -> None:
        pass

    def configure_link(self, socket: zmq.Socket[bytes], address: str, peer_id: int | None) -> None:
        pass

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "Plaintext()"
