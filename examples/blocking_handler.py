"""A handler that blocks its worker's event loop, for ``velo-am worker --load``.

    velo-am worker --id 0xb1 --load examples.blocking_handler:register

``block`` sleeps for the seconds it is given, inside a plain (sync) handler: the worker's loop
does nothing else meanwhile, as with any long computation run on it. Its peers still see it
alive (ZeroMQ's heartbeats are answered by libzmq's own thread) and nothing that waits on its
events is poisoned; a process that is frozen (SIGSTOP), killed or cut off is another matter,
and is detected within ``heartbeat_timeout``.
"""

from __future__ import annotations

import time
from typing import Any

from velo_am import CallContext, Worker


def register(worker: Worker) -> None:
    @worker.handler("block")
    def block(seconds: float, ctx: CallContext) -> float:
        time.sleep(seconds)  # on purpose: the loop is busy, the process is not dead
        return seconds

    @worker.handler("whoami")
    def whoami(payload: Any, ctx: CallContext) -> int:
        return worker.worker_id
