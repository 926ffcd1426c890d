"""What the shell drops or refuses of the traffic it gets, counted and logged (rate-limited):
messages a link does not speak for, past what a claim may hold, of a refuted claim,
oversized; inbound connections that ended or were cut."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ._links import Claim, Speaker, Verdict
from ._log import RateLimitedLog, fields
from ._outbound import Outbound
from ._select import protocol as p
from .transport import LinkId

__all__ = ["Drops"]

logger = logging.getLogger(__name__)

_WHY: dict[Verdict, str] = {
    Verdict.SPOOFED: "the link speaks for another worker",
    Verdict.UNBOUND: "no handshake on its link",
}


class Drops:
    """The dropped traffic of worker ``worker_id`` (incarnation ``incarnation``);
    ``closing()``: whether it is saying goodbye (late words are then expected, not counted)."""

    def __init__(
        self,
        worker_id: int,
        incarnation: int,
        outbound: Outbound,
        counters: dict[str, int],
        log: RateLimitedLog,
        closing: Callable[[], bool],
    ) -> None:
        self._worker_id = worker_id
        self._incarnation = incarnation
        self._outbound = outbound
        self._counters = counters
        self._log = log
        self._closing = closing

    def spoofed(self, msg: p.Message, verdict: Verdict) -> None:
        if self._closing():  # late words to a worker saying goodbye
            logger.debug("dropping %s after goodbye", type(msg).__name__)
            return
        self._counters["messages_spoofed"] += 1
        self._log.warning(
            "spoofed",
            "dropping %s naming worker %#x: %s",
            type(msg).__name__,
            msg.src,
            _WHY[verdict],
            peer=msg.src,
        )

    def not_held(self, msg: p.Message, link: LinkId, speaker: Speaker) -> None:
        """A message past what a claim may hold while it is proven (its sender's receive
        budget): a request is refused as the budget refuses it, answered ``BUSY`` on its link
        (only whoever spoke there hears it); anything else is dropped. Both are counted."""
        why = "past what its link may hold while its claim to be that worker is proven"
        if isinstance(msg, p.Request):
            self._counters["refused_busy"] += 1
            text = f"worker {self._worker_id:#x} holds too much of this link's traffic: {why}"
            me, inc, busy = self._worker_id, self._incarnation, p.ErrorCode.BUSY
            # On that link only, never by another: the real member's calls are not the
            # business of a stranger that claimed its link.
            answer = p.ErrorResponse(
                me, inc, speaker.incarnation, msg.msg_id, busy, "PeerBusy", text, ""
            )
            self._outbound.send_on(link, answer)
        else:
            self._counters["dropped_held"] += 1
        what = f"{type(msg).__name__} naming worker {msg.src:#x}"
        self._log.warning("held", "dropping %s: %s", what, why, peer=msg.src)

    def refuted(self, claim: Claim[p.Message], why: str) -> None:
        self._counters["messages_spoofed"] += len(claim.held)
        self._log.warning(
            "spoofed",
            "dropping %d message(s) naming worker %#x: their link's claim was refuted (%s)",
            len(claim.held),
            claim.speaker.worker_id,
            why,
            peer=claim.speaker.worker_id,
        )

    def oversized(self, link: LinkId, what: str) -> None:
        self._counters["dropped_oversized"] += 1
        self._log.warning(
            "oversized",
            "dropping a message of %s on link %s: a message has at most 2 frames and %d bytes",
            what,
            link.hex(),
            self._outbound.max_message_size,
        )

    def inbound_ended(self, peer: str, cut: str | None) -> None:
        if cut is None:
            self._counters["connections_ended"] += 1
            logger.debug("inbound connection from %s ended", peer, extra=fields(self._worker_id))
            return
        self._counters["connections_cut"] += 1
        self._log.warning("cut", "cut the connection from %s: %s", peer, cut)
