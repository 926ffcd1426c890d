"""Reaching other workers: the handshakes this worker dials, how a worker id becomes a
connected peer (the mesh, a lost peer's second chance, discovery), and waiting for members.

A dial opens a link to an address and sends a ``Hello`` on it; the peer's ``HelloAck`` (fed
to the membership table by the worker) answers it, and the link then carries everything sent
to that peer. Dials are de-duplicated by address; each ends within ``handshake_timeout``.
Runs on the worker's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Final

from . import _protocol as p
from ._errors import PeerUnreachable, WorkerClosed
from ._membership import Peer, PeerState, PeerStatus, PeerTable
from .discovery import Discovery, DiscoveryEntry
from .transport import Link, LinkFull, Transport

__all__ = ["Routes"]

logger = logging.getLogger(__name__)


class _Dial:
    """A handshake in progress: its link (until a peer takes it over) and its outcome."""

    __slots__ = ("address", "future", "link")

    def __init__(self, address: str, link: Link, future: asyncio.Future[int]) -> None:
        self.address = address
        self.link: Link | None = link
        self.future = future


class Routes:
    """The handshakes of one worker, its routes to peers by id, and waits for members.

    ``changed`` is set whenever membership changes (a peer joins or is lost, the worker
    closes); ``check_running`` raises ``WorkerClosed`` once the worker no longer runs."""

    def __init__(
        self,
        table: PeerTable,
        transport: Transport,
        discovery: Discovery | None,
        handshake_timeout: float,
        check_running: Callable[[], None],
    ) -> None:
        self._table = table
        self._transport = transport
        self._discovery: Final = discovery
        self.handshake_timeout = handshake_timeout
        self._check_running = check_running
        self.changed = asyncio.Event()
        self._dials: dict[int, _Dial] = {}  # by token
        self._tasks: dict[str, asyncio.Task[int]] = {}  # by address

    # -- dialing ----------------------------------------------------------------------------

    def dial(self, address: str) -> asyncio.Task[int]:
        """The handshake with ``address`` (the one in progress, or a new one): its task ends
        with the peer's worker id, or :class:`PeerUnreachable`."""
        task = self._tasks.get(address)
        if task is None:
            task = asyncio.ensure_future(self._dial(address))
            self._tasks[address] = task
            self._table.dial_started(address)
            task.add_done_callback(functools.partial(self._dial_done, address))
        return task

    async def connect(self, address: str) -> int:
        """Handshake with ``address``; the peer's worker id (see :meth:`dial`)."""
        self._check_running()
        return await asyncio.shield(self.dial(address))

    def _dial_done(self, address: str, task: asyncio.Task[int]) -> None:
        if self._tasks.get(address) is task:
            del self._tasks[address]
        self._table.dial_ended(address)
        if not task.cancelled():
            task.exception()  # retrieved here: nobody may be waiting (a background dial)

    async def _dial(self, address: str) -> int:
        token = secrets.randbits(64) or 1
        try:
            link = self._transport.open_link(address)
        except LinkFull as error:
            raise PeerUnreachable(f"cannot connect to {address}: {error}") from None
        dial = _Dial(address, link, asyncio.get_running_loop().create_future())
        self._dials[token] = dial
        try:
            link.send(p.encode(self._table.hello(token)))
            async with asyncio.timeout(self.handshake_timeout):
                return await dial.future
        except TimeoutError:
            raise PeerUnreachable(
                f"no handshake answer from {address} within {self.handshake_timeout} s"
            ) from None
        except LinkFull as error:
            raise PeerUnreachable(f"cannot send to {address}: {error}") from None
        finally:
            del self._dials[token]
            if dial.link is not None:  # not taken over by a peer: ours to close
                dial.link.close(0)

    def take_link(self, token: int) -> Link | None:
        """The link of dial ``token``, handed over to the peer that answered it."""
        dial = self._dials.get(token)
        if dial is None:
            return None
        link, dial.link = dial.link, None
        return link

    def answered(self, token: int, peer_id: int) -> None:
        dial = self._dials.get(token)
        if dial is not None and not dial.future.done():
            dial.future.set_result(peer_id)

    def refused(self, token: int, why: str) -> None:
        dial = self._dials.get(token)
        if dial is not None and not dial.future.done():
            dial.future.set_exception(PeerUnreachable(f"{dial.address} {why}"))

    def close(self) -> None:
        """The worker closes: every handshake in progress fails."""
        for dial in self._dials.values():
            if dial.link is not None:
                dial.link.close(0)
                dial.link = None
            if not dial.future.done():
                dial.future.set_exception(WorkerClosed("worker closed during handshake"))

    # -- routes -----------------------------------------------------------------------------

    async def route(self, worker_id: int) -> Peer:
        """The peer ``worker_id``, connecting to it if needed: wait for a mesh join in
        progress, shake hands again with a lost peer, ask discovery. Raises
        :class:`PeerUnreachable`."""
        self._check_running()
        table = self._table
        peer = table.get(worker_id)
        deadline = time.monotonic() + self.handshake_timeout
        while peer is None and self._tasks and time.monotonic() < deadline:
            # A mesh join may be in progress: wait for handshakes until this one is known.
            await asyncio.wait(
                set(self._tasks.values()),
                timeout=deadline - time.monotonic(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            peer = table.get(worker_id)
        if peer is not None and peer.state is PeerState.LOST:
            with contextlib.suppress(PeerUnreachable):  # maybe it is back: one handshake
                await self.connect(peer.address)
            peer = table.get(worker_id) or peer
        if (peer is None or not peer.state.connected) and self._discovery is not None:
            entry = await self._discovery.find(worker_id)
            if entry is not None:
                with contextlib.suppress(PeerUnreachable):
                    await self.connect(entry.address)
                peer = table.get(worker_id)
        if peer is None:
            raise PeerUnreachable(f"unknown worker {worker_id:#x}: no route, no discovery entry")
        if peer.state is PeerState.LOST:
            raise PeerUnreachable(f"{peer.describe()} was lost (no message within the window)")
        if peer.state is PeerState.CLOSED:
            raise PeerUnreachable(f"{peer.describe()} has closed")
        return peer

    # -- discovery --------------------------------------------------------------------------

    async def publish(self, address: str) -> None:
        """Create or refresh this worker's discovery entry (a failure is logged)."""
        if self._discovery is None:
            return
        table = self._table
        entry = DiscoveryEntry(
            table.worker_id, address, os.getpid(), table.incarnation, time.time()
        )
        try:
            await self._discovery.publish(entry)
        except OSError as error:
            logger.warning("cannot register worker %#x in discovery: %s", table.worker_id, error)

    async def withdraw(self) -> None:
        """Remove this worker's discovery entry (the worker closes)."""
        if self._discovery is not None:
            with contextlib.suppress(OSError):
                await self._discovery.withdraw(self._table.worker_id, self._table.incarnation)

    # -- waiting for members --------------------------------------------------------------

    async def wait_for_peers(self, count: int, timeout: float | None) -> None:
        """Until at least ``count`` peers are connected; ``TimeoutError`` after ``timeout``."""
        async with asyncio.timeout(timeout):
            while self._table.connected_count() < count:
                self._check_running()
                self.changed.clear()
                await self.changed.wait()

    async def wait_for_peer(self, worker_id: int, timeout: float) -> PeerStatus:
        """Until ``worker_id`` is alive (joined, or found in discovery and dialed): its
        status. Raises :class:`PeerUnreachable` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        looked_up = False
        while True:
            self._check_running()
            peer = self._table.alive(worker_id)
            if peer is not None:
                return peer.status(time.monotonic())
            if not looked_up and self._discovery is not None:
                looked_up = True
                with contextlib.suppress(OSError):
                    entry = await self._discovery.find(worker_id)
                    if entry is not None:
                        self.dial(entry.address)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                known = self._table.get(worker_id)
                state = "not known" if known is None else known.state
                raise PeerUnreachable(
                    f"worker {worker_id:#x} is not a live peer after {timeout} s ({state})"
                )
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.changed.wait()
