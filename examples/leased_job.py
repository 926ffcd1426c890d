"""A job whose event has a lease: if the job's process dies or hangs, its waiters hear so.

    python examples/leased_job.py tcp://127.0.0.1:5555 --lease 10 --work 30
    VELO_PEERS=tcp://127.0.0.1:5555 python examples/leased_job.py

Joins the mesh and has a long-lived worker (``--on``, default: the first seed) create an event
leased to this process. Prints ``READY <worker id> <address>`` and ``HANDLE <handle>``, then
"works" for ``--work`` seconds, renewing the lease every third of its length, triggers the
event, prints ``DONE`` and exits 0. Anyone waiting (``velo-am wait HANDLE``) gets ready or,
if this process is killed, a poison naming the lease as soon as the owner loses it
(the liveness window); if it hangs without renewing, once ``--lease`` seconds have passed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from velo_am import SyncWorker


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peers", nargs="*", help="seed addresses (default: $VELO_PEERS)")
    parser.add_argument("--on", type=lambda text: int(text, 0), help="the owner's worker id")
    parser.add_argument("--lease", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--work", type=float, default=30.0, help="seconds of work (default 30)")
    parser.add_argument("--label", default="leased job")
    args = parser.parse_args()
    seeds = args.peers or [a for a in os.environ.get("VELO_PEERS", "").split(",") if a]
    if args.on is None and not seeds:
        parser.error("which worker should own the event? give a seed address or --on")
    with SyncWorker(peers=seeds) as worker:
        owner = args.on if args.on is not None else worker.connect(seeds[0])
        handle = worker.events.new_event_on(owner, label=args.label, lease=args.lease)
        print(f"READY {worker.worker_id:#x} {worker.address}", flush=True)
        print(f"HANDLE {handle}", flush=True)
        finished = time.monotonic() + args.work
        while (left := finished - time.monotonic()) > 0:
            time.sleep(min(left, args.lease / 3))  # a step of the job
            worker.events.renew_lease(handle)
        worker.events.trigger_confirmed(handle)
        print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
