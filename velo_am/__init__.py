"""velo_am: an active-messaging runtime on ZeroMQ ROUTER/DEALER with msgpack framing.

Workers reach each other by worker id and run named handlers on each other; a dead peer is an
error within the liveness window, never a hang. Every public coroutine documents what it raises.
``SyncWorker`` is the same surface with blocking methods, for plain scripts and threads; the
``velo-am`` command line (``python -m velo_am``) runs workers, demos and inspections.

The seams are public subpackages: :mod:`velo_am.transport` (how messages travel, with an
in-process fake for tests, and socket security) and :mod:`velo_am.discovery` (where workers
find each other: a shared directory, DNS records, or a backend of one's own).

``COMPILED`` says whether the compiled build of the wire's per-message path is in use (like
``velo_event.COMPILED``; ``VELO_PURE=1`` forces the pure-Python build of both packages).
"""

from ._errors import (
    AMError,
    AuthenticationRefused,
    CallTimeout,
    HandlerNotFound,
    PeerBusy,
    PeerDraining,
    PeerLost,
    PeerUnreachable,
    RemoteError,
    WorkerClosed,
)
from ._handlers import CallContext
from ._peers import PeerState, PeerStatus
from ._protocol import ProtocolError
from ._select import COMPILED
from ._sync import SyncWorker
from ._sync_events import SyncEvents
from ._worker import Worker, WorkerState
from .transport import Curve, CurveConfig

__all__ = [
    "AMError",
    "COMPILED",
    "AuthenticationRefused",
    "Curve",
    "CurveConfig",
    "CallContext",
    "CallTimeout",
    "HandlerNotFound",
    "PeerBusy",
    "PeerDraining",
    "PeerLost",
    "PeerState",
    "PeerStatus",
    "PeerUnreachable",
    "ProtocolError",
    "RemoteError",
    "SyncEvents",
    "SyncWorker",
    "Worker",
    "WorkerClosed",
    "WorkerState",
]
