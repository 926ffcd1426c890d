"""Socket security of :class:`~velo_am.transport.ZmqTransport`: the seam where
authentication and encryption plug in (:class:`~velo_am.transport.Curve`: ZeroMQ's CURVE, with
``zmq.auth`` for certificates and ZAP).

A :class:`ZmqSecurity` configures the worker's ROUTER before it binds, and again before each
connection it opens: ZeroMQ applies a socket's options to the connections made after they are
set, so per-peer settings (the server key CURVE needs) go there. It may add to the address the
worker advertises what a peer needs to dial it (CURVE: the public key), and names the
*identity* a peer proved on a link (CURVE: its key), which the worker binds to the worker id
it admits that peer as. :class:`Plaintext`, the default, leaves the socket as it is: anyone who
can reach the endpoint can speak (see the README's threat model).
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

    def advertise(self, address: str) -> str:
        """The address peers are given to dial this worker (``address``, the endpoints, plus
        what a dial needs, e.g. a ``curve:KEY`` token; tokens without ``://`` are not
        endpoints)."""
        ...

    def configure_link(
        self, socket: zmq.Socket[bytes], address: str, peer_id: int | None
    ) -> str | None:
        """The ROUTER, before it connects to ``address`` (as advertised, with its tokens;
        worker ``peer_id`` when known), e.g. the server's public key. Returns the identity the
        peer proves by answering (its key), ``None`` if it proves none. ``ValueError``: the
        address cannot be dialled so."""
        ...

    def peer_identity(self, frame: zmq.Frame) -> str | None:
        """The identity the sender of an inbound message proved (``frame``: its first frame,
        e.g. ZAP's ``User-Id``), ``None`` if none."""
        ...

    def refusal(self, event: int, address: str) -> str | None:
        """Why a handshake failure (a monitor ``event``) on a link to ``address`` means this
        worker's credentials are refused, so retrying cannot help; ``None`` if it does not.
        ``HANDSHAKE_FAILED_NO_DETAIL`` (any connection error mid-handshake, for libzmq) is
        asked about only once it failed 3 handshakes in a row on the link."""
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

    def advertise(self, address: str) -> str:
        return address

    def configure_link(
        self, socket: zmq.Socket[bytes], address: str, peer_id: int | None
    ) -> str | None:
        return None

    def peer_identity(self, frame: zmq.Frame) -> str | None:
        return None

    def refusal(self, event: int, address: str) -> str | None:
        return None

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "Plaintext()"
