"""The exceptions of `velo_am`: one flat hierarchy under :class:`AMError`."""

from __future__ import annotations

__all__ = [
    "AMError",
    "AuthenticationRefused",
    "CallTimeout",
    "HandlerNotFound",
    "PeerBusy",
    "PeerDraining",
    "PeerLost",
    "PeerUnreachable",
    "RemoteError",
    "WorkerClosed",
]


class AMError(Exception):
    """Base of every error the runtime raises."""


class RemoteError(AMError):
    """The remote handler raised: ``error_type`` is its exception's type name, ``message`` its
    text and ``remote_traceback`` the formatted traceback on the remote worker."""

    def __init__(self, error_type: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.remote_traceback = remote_traceback


class HandlerNotFound(AMError):
    """The peer has no handler of that name."""


class CallTimeout(AMError, TimeoutError):
    """No answer within the call's timeout (the handler may still be running remotely)."""


class PeerBusy(AMError, TimeoutError):
    """A send was not made: the peer had not finished ``send_window`` earlier sends of this
    worker within the timeout (it handles them slower than they come); or a call was refused
    unrun: this worker's unfinished requests on the peer held its per-peer budget. Unlike
    :class:`CallTimeout`, nothing ran on the peer: trying again later is safe."""


class PeerUnreachable(AMError):
    """Unknown worker id (no route, no discovery entry), or the address cannot be reached."""


class AuthenticationRefused(PeerUnreachable):
    """With CURVE: a peer refused this worker's key (not among its allowed keys), or does not
    hold the key this worker dialled it with. Raised at once, not retried: a configuration
    error, not a slow peer."""


class PeerLost(AMError):
    """The peer died, went silent past the liveness window, closed or restarted while the call
    was in flight (or while a send waited for room in its window: that send was not made)."""


class PeerDraining(AMError):
    """The peer is shutting down and refused new work."""


# ProtocolError (malformed input) is defined with the message types in _messages.py.


class WorkerClosed(AMError):
    """This worker is closed (or closing) and cannot send."""
