"""Newcomers waiting to be members, and a new incarnation that claims a live member's id
(pure, part of :class:`~velo_am._membership.PeerTable`). A ``Hello`` never evicts a live
member: the member is dialed at *its* address, keeps its place if it answers there as
itself, and gives it up to its successor if it does not (a restarted worker, at a new
address, rejoins within a handshake timeout; a stranger cannot evict a member that answers)."""

from __future__ import annotations

from dataclasses import dataclass

from . import _messages as m
from ._dials import Dialed, Dials
from ._peers import DialAnswered, DialRefused, Effect, Member, Note, PeerState, Purpose
from .transport import LinkId

__all__ = ["Pending", "Successors"]


@dataclass(slots=True)
class Pending:
    """A newcomer whose address is being checked, and its handshakes waiting for answers."""

    member: Member
    waiting: list[tuple[LinkId, m.Hello]]
    token: int
    predecessor_check: int = 0  # the dial to the live member of its id, while one runs


class Successors(Dials):
    """Dials, plus the pending newcomers and the check of a live predecessor."""

    _pending: dict[int, Pending]

    def _check_predecessor(self, old: Member, pending: Pending | None, now: float) -> list[Effect]:
        """Another incarnation of live member ``old``'s id answers elsewhere (``pending``
        when it is a newcomer: it waits, its handshakes queued): ``old`` is dialed at its
        own address. A member whose link of ours is up is alive (its heartbeats are
        answered, below the application): no dial, the newcomer is refused."""
        claim = f"another live worker uses id {old.worker_id:#x}"
        if old.worker_id in self.watched:
            if pending is None:
                return []
            return [Note("identity", f"{claim} ({pending.member.address})", error=True)]
        if pending is not None:
            self._pending[old.worker_id] = pending
            if pending.predecessor_check:
                return []
        elif any(
            dial.purpose is Purpose.PREDECESSOR and dial.address == old.address
            for dial in self._dials.values()
        ):
            return []  # checked already
        dial = self.start_dial(old.address, Purpose.PREDECESSOR, now, old.worker_id)
        if pending is None:
            return [dial]
        pending.predecessor_check = dial.hello.token
        text = f"{claim}: {pending.member.address} waits while {old.describe()} is checked"
        return [Note("identity", text), dial]

    def _predecessor_verdict(
        self, dial: Dialed, token: int, answer: m.HelloAck | None, now: float
    ) -> tuple[list[Effect], Pending | None, bool]:
        """The dial of :meth:`_check_predecessor` ended with ``answer`` (``None``: none in
        time). Returns the effects, the newcomer it held (no longer pending; the caller
        admits it unless the predecessor is alive) and whether the predecessor is alive."""
        peer_id = dial.peer_id if dial.peer_id is not None else -1
        old = self._members.get(peer_id)
        pending = self._pending.get(peer_id)
        if pending is None or pending.predecessor_check != token:
            pending = None
        effects: list[Effect] = []
        alive = False
        if old is None or not old.state.connected or old.address != dial.address:
            pass  # lost or replaced meanwhile: nothing left to check
        elif answer is not None and (answer.src, answer.src_incarnation) == (
            old.worker_id,
            old.incarnation,
        ):
            alive = True
            effects += self._heard_from(old, old.address, answer.seq, now)
            effects.append(DialAnswered(token, old.worker_id, keep=old.worker_id in self.neighbors))
        else:
            what = "answered as another worker" if answer is not None else "did not answer"
            text = f"lost: {what} at its address, and a new incarnation of its id is elsewhere"
            effects += self._lose(old, text, PeerState.LOST)
            if answer is not None:
                effects.append(DialRefused(token, f"is not {old.describe()}"))
        if pending is None:
            return effects, None, alive
        del self._pending[peer_id]
        pending.predecessor_check = 0
        if alive:
            claim = f"another live worker uses id {peer_id:#x} ({pending.member.address})"
            effects.append(Note("identity", f"{claim}: it answered at its address", error=True))
        return effects, pending, alive
