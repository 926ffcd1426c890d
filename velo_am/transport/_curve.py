"""CURVE for :class:`~velo_am.transport.ZmqTransport`: ZeroMQ's own authentication and
encryption, with ``zmq.auth`` for the certificates and the ZAP handler (no crypto here).

Each worker has one certificate pair (``velo-am keygen``) and a directory of allowed public
certificates. Its ROUTER's listener is a CURVE server with the worker's key; each link it opens
is a CURVE client with the same key, dialling the server key of the peer. A worker advertises
its public key in its address (``tcp://HOST:PORT curve:KEY``), so every address the mesh passes
around (Hello, member lists, gossip, discovery, a READY line) says which key to dial; a seed
given without one is dialled with this worker's own public key (a key shared mesh-wide), or
names it: ``tcp://HOST:PORT curve:NAME`` (``NAME.key`` in the allowed directory) or
``curve:KEY``. The ZAP handler runs in a thread of its own (``ThreadAuthenticator``): it must
answer handshakes while the event loop runs a long synchronous handler.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

__all__ = ["Curve", "CurveConfig"]

logger = logging.getLogger(__name__)

#: The token of an address that carries the key to dial it with.
KEY_TOKEN: Final = "curve:"
_KEY_LENGTH: Final = 40  # a 32-byte key in Z85


def _check_key(key: bytes, path: Path) -> str:
    text = key.decode("ascii", errors="replace")
    try:
        valid = len(key) == _KEY_LENGTH and len(z85.decode(key)) == 32
    except (ValueError, KeyError):
        valid = False
    if not valid:
        raise ValueError(f"malformed CURVE key in {path} (not a 40-character Z85 key)")
    return text


def _public_keys(directory: Path) -> dict[str, str]:
    """``NAME`` -> public key of each ``NAME.key`` certificate of ``directory``."""
    if not directory.is_dir():
        raise ValueError(f"the allowed keys' directory {directory} does not exist")
    keys: dict[str, str] = {}
    for path in sorted(directory.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the certificate {path}: {error}") from None
        keys[path.stem] = _check_key(public, path)
    if not keys:
        raise ValueError(
            f"no public certificate (*.key) in the allowed keys' directory {directory}"
        )
    return keys


def key_of_address(address: str) -> str | None:
    """The ``curve:`` token of an address (a key or a certificate's name), if any."""
    for token in address.split():
        if token.startswith(KEY_TOKEN):
            return token[len(KEY_TOKEN) :]
    return None


def without_key(address: str) -> str:
    """The endpoints of an address, its ``curve:`` token left out."""
    return " ".join(token for token in address.split() if not token.startswith(KEY_TOKEN))


@dataclass(frozen=True, slots=True)
class CurveConfig:
    """Where a worker's CURVE material is: ``secret_key``, the path of its secret certificate
    (``NAME.key_secret``, by ``velo-am keygen``), and ``allow``, the directory of the public
    certificates (``*.key``) of the workers it lets in (its own among them)."""

    secret_key: str | os.PathLike[str]
    allow: str | os.PathLike[str]


class Curve:
    """CURVE security: the ROUTER's listener authenticates clients against the allowed public
    certificates (ZAP, domain ``*``), every link is encrypted, and each link this worker opens
    authenticates the server it dials. ``ValueError`` (naming the file) for a missing or
    malformed certificate or directory, at once.

    With one key pair shared mesh-wide, a key proves membership of the mesh; with a pair per
    worker, it proves which member: a worker binds each member's id to the key it proved
    when it was admitted (see the README's threat model). A ``Curve`` runs one worker's ZAP
    handler: give each worker its own (``Worker(curve=(key, allow))`` makes one)."""

    def __init__(self, secret_key: str | os.PathLike[str], allow: str | os.PathLike[str]) -> None:
        path = Path(secret_key)
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the secret certificate {path}: {error}") from None
        if secret is None:
            raise ValueError(f"{path} is a public certificate: give the secret one (.key_secret)")
        self.public_key: Final = _check_key(public, path)
        self._secret = _check_key(secret, path).encode()
        self.allow: Final = Path(allow)
        self._allowed = _public_keys(self.allow)
        self._by_key = set(self._allowed.values())
        self._authenticator: ThreadAuthenticator | None = None

    @classmethod
    def of(cls, curve: Curve | CurveConfig | tuple[object, object]) -> Curve:
        """``curve`` as given to a worker: a :class:`Curve`, a :class:`CurveConfig` or a
        ``(secret_key, allow)`` pair."""
        if isinstance(curve, Curve):
            return curve
        if isinstance(curve, CurveConfig):
            return cls(curve.secret_key, curve.allow)
        if isinstance(curve, tuple) and len(curve) == 2:
            key, allow = curve
            if isinstance(key, str | os.PathLike) and isinstance(allow, str | os.PathLike):
                return cls(key, allow)
        raise TypeError(
            "curve must be a Curve, a CurveConfig or a (secret_key, allow) pair of paths, got "
            f"{curve!r}"
        )

    def start(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        authenticator = ThreadAuthenticator(context, log=logger)
        authenticator.start()
        authenticator.configure_curve(domain="*", location=self.allow)
        self._authenticator = authenticator

    def configure_listener(self, socket: zmq.Socket[bytes]) -> None:
        socket.curve_secretkey = self._secret
        socket.curve_publickey = self.public_key.encode()
        socket.curve_server = True

    def advertise(self, address: str) -> str:
        return f"{address} {KEY_TOKEN}{self.public_key}"

    def server_key(self, address: str) -> str:
        """The key to dial ``address`` with: its ``curve:`` token (a key, or the name of an
        allowed certificate), else this worker's own (a key shared mesh-wide)."""
        named = key_of_address(address)
        if named is None:
            return self.public_key
        if named in self._allowed:
            return self._allowed[named]
        if named in self._by_key or named == self.public_key:
            return named
        # A key from outside the allowed set is never dialled: whoever holds it is no member.
        raise ValueError(
            f"{KEY_TOKEN}{named} is not an allowed key (nor the name of one) of {self.allow}"
        )

    def configure_link(
        self, socket: zmq.Socket[bytes], address: str, peer_id: int | None
    ) -> str | None:
        # libzmq copies a socket's options into each connection when it is made: the
        # listener, bound earlier as a server, stays one.
        key = self.server_key(address)
        socket.curve_serverkey = key.encode()
        return key

    def peer_identity(self, frame: zmq.Frame) -> str | None:
        return str(frame.get("User-Id"))  # ZAP's User-Id: the client's public key

    def refusal(self, event: int, address: str) -> str | None:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (
                f"authentication refused by {address}: this worker's key "
                f"({self.public_key}) is not in its allowed keys"
            )
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            return (
                f"authentication failed with {address}: it does not hold the key dialled "
                f"({self.server_key(address)}), or it closed every connection during the "
                f"handshake; with a key per worker, give the seed as "
                f"'{without_key(address)} {KEY_TOKEN}NAME' (NAME.key in {self.allow})"
            )
        return None

    def close(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None

    def __repr__(self) -> str:
        return f"Curve(public_key={self.public_key!r}, allow={str(self.allow)!r})"
