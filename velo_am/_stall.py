"""This worker's own stalls, seen on its clock (pure): a tick that comes later than the
liveness window means this process did not run meanwhile (SIGSTOP, a suspended VM, a blocked
loop). A peer lost during or right after such a stall was most likely silent because this
worker was, not because the peer failed: the loss's reason says so, naming this worker."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["StallWatch"]


@dataclass(slots=True)
class StallWatch:
    """The gaps between the clock ticks of worker ``worker_id``. ``window``: the liveness
    window (a peer silent this long is lost); a longer gap between two ticks is a stall, and
    a loss seen within ``window`` after it (``settle``: how many windows) is suspect."""

    worker_id: int
    window: float
    settle: float = 2.0
    _last_tick: float | None = None
    _stall_ended: float = -math.inf
    _stall: float = 0.0

    def ran(self, now: float) -> None:
        """The worker's loop ran at ``now``: its clock ticked (or a handshake arrived, as
        at its start, before the first tick)."""
        last, self._last_tick = self._last_tick, now
        if last is not None and now - last > self.window:
            self._stall, self._stall_ended = now - last, now

    def stalled_for(self, now: float) -> float | None:
        """Seconds this worker was stalled, if a loss seen at ``now`` may be due to it: it
        has not ticked for longer than the window (the loss arrived first on waking), or it
        woke less than ``settle`` windows ago."""
        if self._last_tick is not None and now - self._last_tick > self.window:
            return now - self._last_tick
        if now - self._stall_ended <= self.settle * self.window:
            return self._stall
        return None

    def explain(self, text: str, now: float) -> str:
        """A loss's reason ``text``, with this worker's own stall as the suspect if any."""
        stalled = self.stalled_for(now)
        if stalled is None:
            return text
        return (
            f"{text}; suspect this worker, not the peer: worker {self.worker_id:#x} was itself "
            f"stalled for {stalled:.1f} s (its clock jumped), so the silence may be its own"
        )
