"""Reaching other workers: the handshakes this worker dials, joining through seeds (retried
until ``join_timeout``), how a worker id becomes a reachable peer (the mesh, a lost peer's
second chance, discovery), waiting for members, and this worker's discovery entry.

A dial opens (or reuses) this worker's link to an address and sends a ``Hello`` on it; the
peer's ``HelloAck`` (fed to the membership table by the shell) answers it within
``handshake_timeout``, or the dial fails. Runs on the worker's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final, TypeVar

from . import _peers as ms
from . import _protocol as p
from ._errors import AuthenticationRefused, PeerDraining, PeerUnreachable, WorkerClosed
from ._membership import PeerTable
from ._outbound import Outbound
from .discovery import Discovery, DiscoveryEntry, this_host
from .transport import LinkId

__all__ = ["Routes"]

logger = logging.getLogger(__name__)

_LOG_WAITING_EVERY: Final = 5.0
_MAX_JOIN_DELAY: Final = 5.0

T = TypeVar("T")


class _Dial:
    __slots__ = ("address", "future", "link", "peer_id", "timer")

    def __init__(
        self,
        address: str,
        link: LinkId,
        future: asyncio.Future[int],
        timer: asyncio.TimerHandle,
        peer_id: int | None,
    ) -> None:
        self.address = address
        self.link = link
        self.peer_id = peer_id
        self.future = future
        self.timer = timer


class Routes:
    """The dials of one worker, its routes to peers by id, and its waits for members.

    ``apply`` carries out membership effects (the shell's); ``changed`` is set whenever
    membership changes (a member joins or is lost, the worker closes); ``check_running``
    raises ``WorkerClosed`` once the worker no longer runs."""

    def __init__(
        self,
        table: PeerTable,
        outbound: Outbound,
        discovery: Discovery | None,
        handshake_timeout: float,
        check_running: Callable[[], None],
        apply: Callable[[Iterable[ms.Effect]], None],
    ) -> None:
        self._table = table
        self._outbound = outbound
        self._discovery: Final = discovery
        self.handshake_timeout = handshake_timeout
        self._check_running = check_running
        self._apply = apply
        self.changed = asyncio.Event()
        self._dials: dict[int, _Dial] = {}  # by token
        self._joins: dict[str, asyncio.Future[int]] = {}  # connect() by address
        self._refreshing = False

    # -- dialing ----------------------------------------------------------------------------

    def dial(self, dial: ms.Dial) -> asyncio.Future[int]:
        """Carry out a dial of the membership table: its future ends with the peer's worker
        id, or :class:`PeerUnreachable` after ``handshake_timeout``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        future.add_done_callback(_retrieve)
        token, now = dial.hello.token, time.monotonic()
        # A verification dial goes to the address a newcomer named, which may be anyone's:
        # its link is not the newcomer's until the answer is taken (Shell.message).
        verify = dial.hello.flags & p.HelloFlags.VERIFY
        try:
            link = self._outbound.dial(
                dial.address, dial.peer_id, now, handshake=True, adopt=not verify
            )
        except PeerUnreachable as error:
            future.set_exception(error)
            self._apply(self._table.dial_failed(token, time.monotonic()))
            return future
        timer = loop.call_later(self.handshake_timeout, self._expire, token)
        self._dials[token] = _Dial(dial.address, link, future, timer, dial.peer_id)
        self._outbound.send_on(link, dial.hello)
        return future

    def dial_link(self, token: int, peer_id: int, address: str) -> LinkId | None:
        """The link of this worker's dial ``token`` in flight, if it was made to ``peer_id``,
        or to ``address`` (the peer's own) while its worker was not known (a join): a dial to
        any other address may reach a stranger that passes on what it is told."""
        dial = self._dials.get(token)
        if dial is None or dial.peer_id not in (None, peer_id):
            return None
        if dial.peer_id is None and dial.address != address:
            return None
        return dial.link

    def _end(self, token: int) -> _Dial | None:
        dial = self._dials.pop(token, None)
        if dial is not None:
            dial.timer.cancel()
            self._outbound.dial_ended(dial.link, release=True)  # unanswered: no use for it
        return dial

    def _expire(self, token: int) -> None:
        dial = self._dials.get(token)
        if dial is None:
            return
        self._fail(
            token,
            PeerUnreachable(
                f"no handshake answer from {dial.address} within {self.handshake_timeout} s"
            ),
        )

    def _fail(self, token: int, error: Exception) -> None:
        dial = self._end(token)
        if dial is not None and not dial.future.done():
            dial.future.set_exception(error)
        self._apply(self._table.dial_failed(token, time.monotonic()))

    def answered(self, token: int, peer_id: int, *, keep: bool = True) -> None:
        dial = self._dials.pop(token, None)
        if dial is not None:
            dial.timer.cancel()
            self._outbound.dial_ended(dial.link, release=not keep)
            if not dial.future.done():
                dial.future.set_result(peer_id)

    def refused(self, token: int, why: str) -> None:
        dial = self._dials.get(token)
        if dial is not None:
            self._fail(token, PeerUnreachable(f"{dial.address} {why}"))

    def link_failed(self, link: LinkId, why: str, *, refused: bool = False) -> None:
        """A link opened for dials went down before anyone answered on it (``refused``: the
        peer refused this worker's credentials)."""
        for token, dial in list(self._dials.items()):
            if dial.link == link:
                error = AuthenticationRefused(why) if refused else None
                self._fail(token, error or PeerUnreachable(f"cannot reach {dial.address}: {why}"))

    async def connect(self, address: str) -> int:
        """Handshake with ``address``; the peer's worker id. Raises
        :class:`PeerUnreachable` if it does not answer within ``handshake_timeout``."""
        self._check_running()
        future = self._joins.get(address)
        if future is None or future.done():
            dial = self._table.start_dial(address, ms.Purpose.JOIN, time.monotonic())
            future = self.dial(dial)
            self._joins[address] = future
            future.add_done_callback(lambda _: self._joins.pop(address, None))
        return await asyncio.shield(future)

    async def join(self, seeds: Sequence[str], timeout: float | None) -> None:
        """Join the mesh through any of ``seeds`` (those that turn out to be this worker
        aside), tried in order, retrying with back-off until one answers or ``timeout``
        seconds have passed (``None``: forever). Raises :class:`PeerUnreachable` naming the
        seeds and why each failed last, :class:`AuthenticationRefused` at once when every
        seed refused this worker's key (one that refuses it does not stop the others)."""

        async def listed() -> list[str]:
            return list(seeds)

        await self._join(listed, ", ".join(seeds), timeout, at_once=1)

    async def join_through_discovery(self, timeout: float | None) -> None:
        """Join the mesh through the seeds discovery lists, asked again at each attempt (a
        few at once, at random), retrying with back-off until one answers or ``timeout``
        seconds have passed (``None``: forever; ``0``: one attempt). If discovery lists no
        one but this worker, it is the mesh's first member. Raises :class:`PeerUnreachable`
        naming the discovery and what went wrong last, :class:`AuthenticationRefused` when
        every seed listed refused this worker's key."""
        if self._discovery is None:
            return
        discovery = self._discovery

        async def listed() -> list[str]:
            return await self._ask(discovery.seeds())

        await self._join(listed, f"discovery {discovery!r}", timeout, at_once=3)

    async def _join(
        self,
        listed: Callable[[], Awaitable[list[str]]],
        what: str,
        timeout: float | None,
        at_once: int,
    ) -> None:
        started = time.monotonic()
        deadline = math.inf if timeout is None else started + timeout
        delay, attempt, logged = 0.25, 0, started - _LOG_WAITING_EVERY  # the first wait is logged
        last = ""
        while True:
            attempt += 1
            try:
                seeds = await listed()
            except OSError as error:
                seeds, last = [], str(error)
            else:
                if not seeds:
                    last = "no seeds listed yet"
            own = self._table.address
            others = [s for s in seeds if s != own and not self._table.is_own_address(s)]
            if seeds and not others:
                return  # every seed is this worker: it is the mesh's first member
            if at_once > 1:  # a few at random: newcomers spread over the mesh
                batches = [random.sample(others, min(at_once, len(others)))] if others else []
            else:
                batches = [[seed] for seed in others]
            failures: dict[str, Exception] = {}
            for batch in batches:
                failed = await self._connect_any(batch)
                if failed is None:
                    return
                failures.update(failed)
            if failures:
                last = "; ".join(str(error) for error in failures.values())
                refusals = [failures.get(seed) for seed in others]
                if all(isinstance(error, AuthenticationRefused) for error in refusals):
                    raise failures[others[0]]  # every seed refused: retrying cannot help
            now = time.monotonic()
            if now >= deadline:
                raise PeerUnreachable(f"no seed answered within {timeout} s ({what}): {last}")
            if now - logged >= _LOG_WAITING_EVERY:
                logged = now
                logger.info(
                    "worker %#x waiting for its seeds (%s) for %.0f s, attempt %d: %s",
                    self._table.worker_id,
                    what,
                    now - started,
                    attempt,
                    last,
                )
            await asyncio.sleep(min(delay, max(deadline - now, 0.0)))
            delay = min(delay * 2, _MAX_JOIN_DELAY)

    async def _connect_any(self, addresses: Sequence[str]) -> dict[str, Exception] | None:
        """Handshake with ``addresses`` at once until one answers: ``None`` then, else why
        each failed (a seed that refused this worker's key among them: another may not)."""
        dials = {asyncio.ensure_future(self.connect(address)): address for address in addresses}
        pending, failures = set(dials), dict[str, Exception]()
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for dial in done:
                    error = dial.exception()
                    if error is None:
                        return None
                    if not isinstance(error, PeerUnreachable):
                        raise error  # retrying cannot help
                    failures[dials[dial]] = error
            return failures
        finally:
            for dial in pending:  # no longer awaited; their handshakes go on (shielded)
                dial.cancel()

    def close(self) -> None:
        """The worker closes: every handshake in progress fails."""
        for token in list(self._dials):
            dial = self._end(token)
            if dial is not None and not dial.future.done():
                dial.future.set_exception(WorkerClosed("worker closed during handshake"))

    # -- routes -----------------------------------------------------------------------------

    async def route(self, worker_id: int) -> ms.Member:
        """The peer ``worker_id``, reachable: wait for a join in progress, shake hands again
        with a lost peer, ask discovery. Raises :class:`PeerUnreachable`."""
        self._check_running()
        table = self._table
        peer = table.get(worker_id)
        deadline = time.monotonic() + self.handshake_timeout
        while peer is None and self._joins and time.monotonic() < deadline:
            # A join may be in progress: wait for it, then look again.
            await asyncio.wait(
                set(self._joins.values()),
                timeout=deadline - time.monotonic(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            peer = table.get(worker_id)
        if peer is not None and peer.state is ms.PeerState.LOST:
            with contextlib.suppress(PeerUnreachable):  # maybe it is back: one handshake
                await self.connect(peer.address)
            peer = table.get(worker_id) or peer
        missing = "no discovery"
        if (peer is None or not table.is_connected(worker_id)) and self._discovery is not None:
            entry, missing = await self._find(worker_id)
            if entry is not None:
                with contextlib.suppress(PeerUnreachable):
                    await self.connect(entry.address)
                peer = table.get(worker_id)
        if peer is None:
            raise PeerUnreachable(f"unknown worker {worker_id:#x}: no route, {missing}")
        if peer.state is ms.PeerState.LOST:
            raise PeerUnreachable(f"{peer.describe()} was lost (no answer within the window)")
        if peer.state is ms.PeerState.CLOSED:
            raise PeerUnreachable(f"{peer.describe()} has closed")
        return peer

    async def live(self, worker_id: int) -> ms.Member:
        """:meth:`route` for a call or a send (their slow path): a peer that began closing
        takes none, :class:`PeerDraining`."""
        peer = await self.route(worker_id)
        if peer.state is ms.PeerState.DRAINING:
            raise PeerDraining(f"{peer.describe()} is shutting down")
        return peer

    # -- discovery --------------------------------------------------------------------------

    async def _ask(self, call: Awaitable[T]) -> T:
        """A discovery call's answer within ``handshake_timeout``; ``OSError`` if it fails
        or takes longer (a hung file system, a resolver that does not answer)."""
        try:
            async with asyncio.timeout(self.handshake_timeout):
                return await call
        except TimeoutError:
            raise TimeoutError(
                f"discovery {self._discovery!r} did not answer within {self.handshake_timeout} s"
            ) from None

    async def _find(self, worker_id: int) -> tuple[DiscoveryEntry | None, str]:
        """Discovery's entry for ``worker_id`` (``None``: none), and why there is none."""
        if self._discovery is None:
            return None, "no discovery"
        try:
            entry = await self._ask(self._discovery.find(worker_id))
        except OSError as error:
            logger.warning("cannot look up worker %#x in discovery: %s", worker_id, error)
            return None, f"discovery failed: {error}"
        return entry, "no discovery entry"

    async def publish(self, address: str) -> None:
        """Create or refresh this worker's discovery entry (a failure is logged); an observer
        has none."""
        table = self._table
        if self._discovery is None or table.observer:
            return
        entry = DiscoveryEntry(
            table.worker_id, address, os.getpid(), table.incarnation, time.time(), this_host()
        )
        try:
            await self._ask(self._discovery.publish(entry))
        except OSError as error:
            logger.warning("cannot register worker %#x in discovery: %s", table.worker_id, error)

    async def refresh(self, address: str, *, rejoin: bool) -> None:
        """Refresh this worker's discovery entry; with ``rejoin`` (it has no seeds and no
        live member), try once to join through discovery again. Does nothing while an
        earlier refresh still runs (discovery is slow: refreshes must not pile up)."""
        if self._refreshing:
            return
        self._refreshing = True
        try:
            await self.publish(address)
            if rejoin:
                with contextlib.suppress(PeerUnreachable, WorkerClosed):
                    await self.join_through_discovery(timeout=0)
        finally:
            self._refreshing = False

    async def withdraw(self) -> None:
        """Remove this worker's discovery entry (the worker closes), within
        ``handshake_timeout``."""
        if self._discovery is not None and not self._table.observer:
            withdrawal = self._discovery.withdraw(self._table.worker_id, self._table.incarnation)
            with contextlib.suppress(OSError):
                await self._ask(withdrawal)

    # -- waiting for members ----------------------------------------------------------------

    async def wait_for_peers(self, count: int, timeout: float | None) -> None:
        """Until at least ``count`` members are reachable; on timeout, ``TimeoutError``
        saying which are and which are not."""
        table = self._table
        try:
            async with asyncio.timeout(timeout):
                while table.connected_count() < count:
                    self._check_running()
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            statuses = table.statuses(time.monotonic())
            alive = sorted(pid for pid, status in statuses.items() if status.state.connected)
            gone = sorted(pid for pid, status in statuses.items() if not status.state.connected)
            raise TimeoutError(
                f"{len(alive)} of {count} peers reachable after {timeout} s"
                f" (reachable: {_ids(alive)}; lost or closed: {_ids(gone)})"
            ) from None

    async def wait_for_peer(self, worker_id: int, timeout: float) -> ms.PeerStatus:
        """Until ``worker_id`` is reachable (joined, or found in discovery and dialed): its
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
                entry, _ = await self._find(worker_id)
                if entry is not None:
                    self.dial(
                        self._table.start_dial(entry.address, ms.Purpose.JOIN, time.monotonic())
                    )
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


def _ids(ids: list[int]) -> str:
    if not ids:
        return "none"
    shown = ", ".join(f"{i:#x}" for i in ids[:20])
    return shown if len(ids) <= 20 else f"{shown} and {len(ids) - 20} more"


def _retrieve(future: asyncio.Future[int]) -> None:
    if not future.cancelled():
        future.exception()  # nobody may be waiting (a background dial)
