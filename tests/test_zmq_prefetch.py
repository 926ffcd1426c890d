"""libzmq 4.3.5 aborts the process (``Assertion failed: !_more (src/fq.cpp:80)``; libzmq
#3485) when a ROUTER disconnects a connection after prefetching the first frame of a message
from it (any poll or ``ZMQ_EVENTS``, which the transport reads after each send) and then
reads that message. The soak's coordinator died so right after a worker's graceful restart.
The transport disconnects only once a receive has found nothing (nothing prefetched)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import ROOT

SCENARIO = r"""
import asyncio, time
import zmq
from velo_am.transport import Liveness
from velo_am.transport._zmq import ZmqTransport

class Events:
    def __init__(self):
        self.messages, self.up = [], []
    def message(self, link, frames):
        self.messages.append(frames)
    def link_up(self, link):
        self.up.append(link)
    def link_down(self, link, why):
        pass

async def main():
    context = zmq.Context()
    peer = context.socket(zmq.ROUTER)
    peer.linger = 0
    port = peer.bind_to_random_port("tcp://127.0.0.1")
    events = Events()
    transport = ZmqTransport("tcp://127.0.0.1:0", max_message_size=1 << 20)
    transport.start(asyncio.get_running_loop(), events, identity=b"a", liveness=Liveness(1, 5))
    link = transport.connect(f"tcp://127.0.0.1:{port}")
    async with asyncio.timeout(10):
        while not events.up:
            await asyncio.sleep(0.01)
    transport.send(link, [b"hello"])
    connection, _ = await asyncio.to_thread(peer.recv_multipart)
    peer.send_multipart([connection, b"part 1", b"part 2", b"part 3"])
    router = transport._router
    deadline = time.monotonic() + 10  # the loop does not run: the message is not drained
    while not router.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # ... but prefetched
        assert time.monotonic() < deadline, "the message never arrived"
        time.sleep(0.01)
    transport.disconnect(link)
    async with asyncio.timeout(10):
        while not events.messages:
            await asyncio.sleep(0.01)
    print(events.messages)
    await transport.close()
    peer.close()
    context.term()

asyncio.run(main())
"""


@pytest.mark.timeout(30)
def test_a_link_closed_while_its_message_is_prefetched_loses_nothing_and_aborts_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[[b'part 1', b'part 2', b'part 3']]"
