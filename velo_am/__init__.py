"""velo_am: an active-messaging runtime on ZeroMQ ROUTER/DEALER with msgpack framing.

Workers reach each other by worker id and run named handlers on each other; a dead peer is an
error within the liveness window, never a hang. Every public coroutine documents what it raises.
``SyncWorker`` is the same surface with blocking methods, for plain scripts and threads; the
``velo-am`` command line (``python -m velo_am``) runs workers, demos and inspections.
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
from ._peers import PeerStatus
from ._protocol import ProtocolError
from ._sync import SyncEvents, SyncWorker
from ._worker import Worker

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
    "SyncEvents",
    "SyncWorker",
    "Worker",
    "WorkerClosed",
]
