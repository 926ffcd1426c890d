"""velo_am: an active-messaging runtime on ZeroMQ ROUTER/DEALER with msgpack framing.

Workers reach each other by worker id and run named handlers on each other; a dead peer is an
error within the liveness window, never a hang. Every public coroutine documents what it raises.
"""

from ._errors import (
    AMError,
    CallTimeout,
    HandlerNotFound,
    PeerDraining,
    PeerLost,
    PeerUnreachable,
    RemoteError,
    WorkerClosed,
)
from ._handlers import CallContext
from ._protocol import ProtocolError
from ._worker import PeerStatus, Worker

__all__ = [
    "AMError",
    "CallContext",
    "CallTimeout",
    "HandlerNotFound",
    "PeerDraining",
    "PeerLost",
    "PeerStatus",
    "PeerUnreachable",
    "ProtocolError",
    "RemoteError",
    "Worker",
    "WorkerClosed",
]
