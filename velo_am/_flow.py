"""Flow control of fire-and-forget sends: at most ``send_window`` unfinished ones per peer.

Without it, ``send`` returned as soon as the transport took a message: a peer slower than its
senders queued without limit, and what was queued when it was lost vanished uncounted.

**The sender** (:class:`SendWindows`) keeps a *window* per peer: its sends that the peer has
not confirmed finished. A send that would make it larger than ``send_window`` waits for room
(first come, first served), up to its timeout, then raises :class:`~velo_am.PeerBusy`: it was
not made. Runtime sends (handler names starting with ``_``: the events layer's triggers and
poisons, which must neither wait nor be lost) are made at once and count like any other.
Calls are not counted: each is answered, and its caller waits for the answer.

**The receiver** (:class:`~velo_am._receipts.ReceiveWindows`, a module of its own: it is on
every received send's path, in the compiled build's hot set) counts, per sender, the sends it
received and those whose handler has not finished (returned or raised; a send refused or for
no handler finishes at once), and tells the sender in a ``Credit`` (docs/protocol.md §10.1):
the highest msg_id received, and how many of those received are unfinished. It sends one
after every quarter window of finished sends, when it has finished all of a sender's sends,
at the next clock tick after any change (a Credit lost with its link is repeated), when it
hears from a sender it had lost, and before its Goodbye.

Both numbers are absolute, not increments: a Credit lost, repeated or overtaken does no harm,
and a send lost on its way (its link dropped) stops counting once a later one arrives. The
sender's estimate, its sends after ``last_received`` plus ``unfinished``, is never below what
the peer holds, so a receiver holds at most ``send_window`` unfinished sends of each sender.
When a peer is lost or closes, its unconfirmed sends are counted in ``sends_lost`` and logged
once: they may not have run. Runs on the worker's loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Final, cast

from . import _protocol as p
from ._errors import AMError, PeerBusy, PeerDraining, PeerLost
from ._layers import ReceiveWindows
from ._log import fields

if TYPE_CHECKING:
    from ._calls import CallTable
    from ._outbound import Addressee, Outbound

__all__ = ["FlowControl", "SendWindow", "SendWindows"]

logger = logging.getLogger(__name__)


# An exhausted iterator: awaiting through it returns at once.
_DONE: Final = cast("Generator[Any, None, None]", iter(()))


class _Sent:
    """What :meth:`SendWindows.send` returns for a send made at once: awaiting it is done."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return _DONE


_SENT: Final = _Sent()


class _Expired(Exception):
    """Set on a waiting send's future by its timer; :meth:`SendWindows.send` raises PeerBusy."""


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(_Expired())


class SendWindow:
    """One peer's window as this worker sees it: ``sent``, the msg ids of its sends after the
    peer's last credit (in order); ``unfinished``, what that credit said; ``granted``, waiting
    sends given room that have not gone out yet."""

    __slots__ = ("granted", "incarnation", "last_received", "lost", "sent", "unfinished", "waiters")

    def __init__(self, incarnation: int) -> None:
        self.incarnation = incarnation
        self.sent: deque[int] = deque()
        self.last_received = 0
        self.unfinished = 0
        self.granted = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        #: Why the peer was lost (its waiting sends fail), once it is.
        self.lost: str | None = None

    @property
    def unconfirmed(self) -> int:
        """Sends the peer may still hold: those after its last credit, and its unfinished."""
        return len(self.sent) + self.unfinished

    @property
    def used(self) -> int:
        """The room taken: unconfirmed sends, and waiting sends granted room."""
        return len(self.sent) + self.unfinished + self.granted

    def credit(self, last_received: int, unfinished: int) -> None:
        """The peer's ``Credit``. One with an older ``last_received`` is stale; at the same one
        (nothing arrived in between) the peer's unfinished count only goes down."""
        if last_received > self.last_received:
            self.last_received, self.unfinished = last_received, unfinished
            sent = self.sent
            while sent and sent[0] <= last_received:
                sent.popleft()
        elif last_received == self.last_received:
            self.unfinished = min(self.unfinished, unfinished)


class SendWindows:
    """The windows of this worker's sends, per peer; ``size`` is ``send_window``."""

    def __init__(
        self,
        size: int,
        outbound: Outbound,
        next_id: Callable[[], int],
        counters: dict[str, int],
    ) -> None:
        self.size = size
        self._outbound = outbound
        self._next_id = next_id
        self._counters = counters
        self._windows: dict[int, SendWindow] = {}

    def _window(self, peer: Addressee) -> SendWindow:
        window = self._windows.get(peer.worker_id)
        if window is None or window.incarnation != peer.incarnation:
            if window is not None:  # its loss should have come first: count it all the same
                self.on_lost(peer.worker_id, f"worker {peer.worker_id:#x} restarted")
            window = self._windows[peer.worker_id] = SendWindow(peer.incarnation)
        return window

    def send(
        self, peer: Addressee, name: str, payload: Any, timeout: float | None, default: float
    ) -> Awaitable[None]:
        """Send when the window has room, waiting for it (first come, first served) up to
        ``timeout`` seconds (``None``: ``default``). What it returns is awaited at once; it
        raises :class:`PeerBusy` (timed out: not sent), :class:`PeerLost` or
        :class:`PeerDraining` (the peer was lost or began closing meanwhile: not sent), and
        what :meth:`send_now` raises. A send with room goes out now, and costs no coroutine."""
        window = self._windows.get(peer.worker_id)  # _window's common case, inlined
        if window is None or window.incarnation != peer.incarnation:
            window = self._window(peer)
        # No send waits while there is room (see _wake). ``used``, inlined: every send asks.
        if len(window.sent) + window.unfinished + window.granted < self.size:
            msg_id = self._next_id()  # _send, inlined
            self._outbound.request(peer, msg_id, name, payload, reply=False)
            window.sent.append(msg_id)
            return _SENT
        return self._send_with_room(window, peer, name, payload, default, timeout)

    async def _send_with_room(
        self,
        window: SendWindow,
        peer: Addressee,
        name: str,
        payload: Any,
        default: float,
        timeout: float | None,
    ) -> None:
        await self._room(window, peer, default if timeout is None else timeout)
        window.granted -= 1
        try:
            if window.lost is not None:
                raise PeerLost(f"{window.lost}; the send was not made")
            self._send(window, peer, name, payload)
        finally:
            self._wake(window)  # if this send failed, its room goes to the next

    def send_now(self, peer: Addressee, name: str, payload: Any) -> None:
        """Send without waiting. Raises :class:`PeerBusy` if the window is full (runtime sends
        go anyway), ``TypeError``/``ValueError`` for the payload, :class:`PeerUnreachable`."""
        window = self._window(peer)
        if window.used >= self.size and not name.startswith("_"):
            raise PeerBusy(
                f"worker {peer.worker_id:#x} has not finished {window.unconfirmed} sends of "
                f"this worker (send_window is {self.size}); the send was not made"
            )
        self._send(window, peer, name, payload)

    def _send(self, window: SendWindow, peer: Addressee, name: str, payload: Any) -> None:
        msg_id = self._next_id()
        self._outbound.request(peer, msg_id, name, payload, reply=False)
        window.sent.append(msg_id)

    async def _room(self, window: SendWindow, peer: Addressee, timeout: float) -> None:
        """Wait in line until :meth:`_wake` grants this send room."""
        self._counters["sends_waited"] += 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        window.waiters.append(future)
        timer = loop.call_later(timeout, _expire, future)
        try:
            await future
        except _Expired:
            window.waiters.remove(future)
            raise PeerBusy(
                f"worker {peer.worker_id:#x} has not finished {window.unconfirmed} sends of "
                f"this worker within {timeout} s (send_window is {self.size}: it handles "
                "them slower than they come); the send was not made"
            ) from None
        except asyncio.CancelledError:
            if future in window.waiters:
                window.waiters.remove(future)
            elif future.done() and not future.cancelled() and future.exception() is None:
                window.granted -= 1  # granted room, then cancelled: the room goes on
                self._wake(window)
            raise
        finally:
            timer.cancel()

    def _wake(self, window: SendWindow) -> None:
        """Grant room to the sends waiting for it, in order. Called whenever room appears (a
        credit, a granted send that failed or was cancelled), so that a waiting send never
        sees a later one take its room."""
        waiters = window.waiters
        while waiters and window.used < self.size:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)
                window.granted += 1

    def on_credit(self, peer: Addressee, credit: p.Credit) -> None:
        window = self._windows.get(peer.worker_id)
        if window is not None and window.incarnation == peer.incarnation:
            window.credit(credit.last_received, credit.unfinished)
            if window.waiters:
                self._wake(window)

    def on_lost(self, peer_id: int, why: str) -> None:
        """The peer was lost, closed or restarted (``why``): its unconfirmed sends are counted
        lost, and the sends waiting for room fail with :class:`PeerLost`."""
        window = self._windows.pop(peer_id, None)
        if window is None:
            return
        window.lost = why
        if window.unconfirmed:
            self._counters["sends_lost"] += window.unconfirmed
            logger.warning(
                "%d sends to worker %#x were not confirmed handled (counted in sends_lost): %s",
                window.unconfirmed,
                peer_id,
                why,
                extra=fields(self._outbound.worker_id, peer_id),
            )
        self._fail(window, PeerLost(f"{why}; the send was not made"))

    def on_draining(self, peer_id: int, peer: str) -> None:
        """The peer (described as ``peer``) began closing: sends waiting for room fail."""
        window = self._windows.get(peer_id)
        if window is not None:
            self._fail(window, PeerDraining(f"{peer} is shutting down; the send was not made"))

    def fail_all(self, error: AMError) -> None:
        """This worker is closing: every waiting send fails with ``error``."""
        for window in self._windows.values():
            self._fail(window, error)

    @staticmethod
    def _fail(window: SendWindow, error: AMError) -> None:
        for future in window.waiters:
            if not future.done():
                future.set_exception(type(error)(*error.args))
        window.waiters.clear()

    def peers(self) -> set[int]:
        """The peers this worker has unconfirmed or waiting sends to (watched as business)."""
        return {peer_id for peer_id, w in self._windows.items() if w.unconfirmed or w.waiters}

    def unconfirmed(self) -> int:
        return sum(window.unconfirmed for window in self._windows.values())


class FlowControl:
    """Both sides of one worker's flow control, for the layers that wire them."""

    def __init__(
        self, window: int, outbound: Outbound, calls: CallTable, counters: dict[str, int]
    ) -> None:
        self.sends = SendWindows(window, outbound, calls.next_id, counters)
        self.receipts = ReceiveWindows(window, outbound)

    def stats(self) -> dict[str, int]:
        """The gauges: sends of this worker unconfirmed, sends received here unfinished."""
        return {
            "sends_unconfirmed": self.sends.unconfirmed(),
            "sends_unfinished": self.receipts.unfinished(),
        }
