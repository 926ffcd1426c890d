"""The receiving side of flow control (see :mod:`._flow`): per sender, the sends received and
those unfinished, and the ``Credit`` owed (docs/protocol.md §10.1). On every received send's
path (``received`` when it arrives, ``finished`` when its handler is done): one of the
compiled build's hot modules. Runs on the worker's loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _protocol as p
from ._budget import REQUEST_COST, ReceiveBudget

if TYPE_CHECKING:
    from ._outbound import Addressee, Outbound

__all__ = ["Ledger", "ReceiveWindows"]


class Ledger:
    """What this worker received of one sender incarnation's sends: the highest msg id, how
    many are unfinished, how many finished since the last credit, and both numbers as of
    the last clock tick (kept up to date by :class:`ReceiveWindows`, on every send's path)."""

    __slots__ = ("incarnation", "last_received", "since_credit", "ticked", "unfinished")

    def __init__(self, incarnation: int) -> None:
        self.incarnation = incarnation
        self.last_received = 0
        self.unfinished = 0
        self.since_credit = 0
        self.ticked = (0, 0)


class ReceiveWindows:
    """The sends this worker received, per sender, and the credits it owes them. ``window``
    is its own ``send_window``: a credit goes out every quarter of it. ``budget`` bounds what
    each sender's unfinished requests, calls and sends, hold: two messages of the largest
    size, and a window of sends at :data:`~velo_am._budget.REQUEST_COST` each."""

    def __init__(self, window: int, outbound: Outbound) -> None:
        self._batch = max(1, window // 4)
        least = window * REQUEST_COST  # the limit, whatever max_message_size becomes
        self.budget = ReceiveBudget(lambda: 2 * outbound.max_message_size + least, least)
        self._outbound = outbound
        self._ledgers: dict[int, Ledger] = {}

    # The two methods below run for every send: kept to plain attribute arithmetic.

    def received(self, peer: Addressee, msg_id: int) -> None:
        """A send (``reply`` false) from ``peer`` arrived and goes to its handler."""
        ledger = self._ledgers.get(peer.worker_id)
        if ledger is None or ledger.incarnation != peer.incarnation:
            ledger = self._ledgers[peer.worker_id] = Ledger(peer.incarnation)
        if msg_id > ledger.last_received:  # noqa: PLR1730 - cheaper than max() on this path
            ledger.last_received = msg_id
        ledger.unfinished += 1

    def finished(self, peer: Addressee, sends: int = 1) -> None:
        """``sends`` sends from ``peer`` finished (ran, failed, or were refused). Its sender is
        owed a credit after every batch, and when none of its sends is left unfinished."""
        ledger = self._ledgers.get(peer.worker_id)
        if ledger is None or ledger.incarnation != peer.incarnation or not ledger.unfinished:
            return  # a predecessor's, or its sender was forgotten meanwhile
        done = sends if sends < ledger.unfinished else ledger.unfinished
        ledger.unfinished -= done
        ledger.since_credit += done
        if ledger.since_credit >= self._batch or not ledger.unfinished:
            self._credit(peer.worker_id, ledger)

    def due(self, peer: Addressee) -> int:
        """How many of ``peer``'s sends may finish before a credit falls due (at least 1)."""
        ledger = self._ledgers.get(peer.worker_id)
        if ledger is None or ledger.incarnation != peer.incarnation or not ledger.unfinished:
            return 1
        return min(self._batch - ledger.since_credit, ledger.unfinished)

    def _credit(self, peer_id: int, ledger: Ledger) -> None:
        ledger.since_credit = 0
        out = self._outbound
        if out.has_link(peer_id):  # else it was lost: its credit goes when it is back
            credit = p.Credit(
                out.worker_id,
                out.incarnation,
                ledger.incarnation,
                ledger.last_received,
                ledger.unfinished,
            )
            out.send_quietly(peer_id, credit)

    def tick(self) -> None:
        """The clock's tick: senders whose sends arrived or finished since the last tick get
        a credit again (the last one may have been lost with its link)."""
        for peer_id, ledger in self._ledgers.items():
            now = (ledger.last_received, ledger.unfinished)
            if now != ledger.ticked:
                ledger.ticked = now
                self._credit(peer_id, ledger)

    def on_joined(self, peer_id: int) -> None:
        """A sender is back (or new): what it may have missed while it was lost."""
        ledger = self._ledgers.get(peer_id)
        if ledger is not None:
            self._credit(peer_id, ledger)

    def flush(self) -> None:
        """Before the goodbye: every sender learns what was done, so it counts exactly what
        was not."""
        for peer_id, ledger in self._ledgers.items():
            self._credit(peer_id, ledger)

    def forget(self, peer_id: int) -> None:
        """The sender left the table (forgotten, or a new incarnation took its place)."""
        self._ledgers.pop(peer_id, None)

    def unfinished(self) -> int:
        return sum(ledger.unfinished for ledger in self._ledgers.values())
