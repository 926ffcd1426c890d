"""A plain script (no asyncio) in a velo mesh: it makes an event and waits for a peer to end it.

    python examples/sync_script.py tcp://127.0.0.1:5555 --timeout 30
    VELO_PEERS=tcp://127.0.0.1:5555 python examples/sync_script.py

Prints ``READY <worker id> <address>`` and ``HANDLE <handle>``, serves ``ping``, and waits up to
``--timeout`` seconds for another worker to trigger or poison the event by its handle. Exits 0
(``READY-EVENT``) if triggered, 1 (``POISONED <reason>``) if poisoned, 2 (``TIMEOUT``) if not.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from velo_am import CallContext, SyncWorker
from velo_event import EventPoison


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peers", nargs="*", help="seed addresses (default: $VELO_PEERS)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    args = parser.parse_args()
    # start=False: handlers are registered before the mesh can call them.
    with SyncWorker(peers=args.peers, start=False) as worker:

        @worker.handler("ping")
        def ping(payload: Any, ctx: CallContext) -> Any:
            return payload  # handlers run on the worker's own thread: keep them short

        worker.start()
        event = worker.events.new_event()
        print(f"READY {worker.worker_id:#x} {worker.address}", flush=True)
        print(f"HANDLE {event.handle}", flush=True)
        try:
            worker.events.wait(event.handle, timeout=args.timeout)  # blocks this thread only
        except EventPoison as poison:
            print(f"POISONED {poison.reason}", flush=True)
            return 1
        except TimeoutError:
            print("TIMEOUT", flush=True)
            return 2
        print(f"READY-EVENT {event.handle}", flush=True)
        return 0  # leaving the with block closes the worker: peers see a goodbye


if __name__ == "__main__":
    sys.exit(main())
