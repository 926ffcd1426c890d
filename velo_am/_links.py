"""Which worker a link speaks for (pure): ``src`` and incarnation bound to the link that
completed the handshake.

Anyone can open a connection to a worker and write any ``src`` in a header, so the header is
believed only on a link that speaks for that worker. The links this worker opened speak for
whoever answers at the address it dialed (the shell checks them against the outbound path's
owner); this module decides for the links others opened to it:

* A link speaks for nobody until a ``Hello`` on it names a worker (and incarnation); every
  other message on it is dropped, but for a member's (below).
* A ``Hello`` from a newcomer (an id this worker does not know, or a new incarnation, whose
  address membership verifies before admitting it) or from an observer binds the link at
  once.
* A ``Hello`` in the name of a member this worker already knows, with the incarnation it
  knows, is a *claim*: incarnations are public, so anyone could send it. The claim is proven
  by a challenge sent on this worker's own link to the member's known address (a secret
  token); the member answers it on its own link to this worker. The claim holds while the
  answer is on its way, and is refuted if the answer comes on another link or not within the
  longer of the handshake and heartbeat timeouts. What arrives on the link meanwhile waits,
  in order, charged like a request to the per-peer receive budget (its bytes plus
  ``REQUEST_COST``): up to that budget's limit per claim (a member's burst within its send
  window and budget fits), and ``MAX_HELD_BYTES`` (or twice the limit, if larger) on all
  claims together; the shell answers or counts what does not fit. At most ``MAX_CLAIMS`` are
  proven at once.
* Once bound, a link speaks for that worker and incarnation only: a message naming any other
  is dropped. A worker keeps at most ``MAX_BOUND_PER_WORKER`` bound links, the newest (each
  connection it opens has a routing id of its own, and the transport does not say when an
  inbound connection that ended was which link).
* The links of a worker membership does not know are forgotten, but not within a handshake's
  time of their last binding: a link may be bound before its sender is known (a worker this
  one joins through verifies this one's address first, on a link of its own that it goes on
  using, while the answer to this worker's own ``Hello`` is still on its way).
* A message naming a member (as the incarnation this worker knows) on a link that speaks for
  nobody makes a claim, as an introduction (a ``Hello`` of token 0) would: the link's
  binding may have been lost (its sender unknown for longer than that, or more than
  ``MAX_BOUND_PER_WORKER`` links bound in the member's name since, by anyone) while the
  member goes on using it. A stranger's such message gains nothing: the member proves only
  its own links.

The shell counts what is dropped in ``messages_spoofed``.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Generic, NamedTuple, TypeVar

from ._budget import REQUEST_COST
from .transport import LinkId

__all__ = ["MAX_BOUND_PER_WORKER", "MAX_CLAIMS", "MAX_HELD_BYTES", "Claim", "LinkTrust"]
__all__ += ["Speaker", "Verdict"]

#: Bytes held on all claims together (or twice the per-claim limit, if larger); more are not.
MAX_HELD_BYTES: Final = 1 << 30
#: Bound links kept per worker, the newest: older ones speak for nobody any more.
MAX_BOUND_PER_WORKER: Final = 8
#: Claims being proven at once (a server that thousands of members dial at once proves each
#: link); a claim past it is refused.
MAX_CLAIMS: Final = 65_536

T = TypeVar("T")


class Speaker(NamedTuple):
    """The worker (and incarnation) a link speaks for (a tuple: made and compared once per
    message)."""

    worker_id: int
    incarnation: int


class Verdict(enum.Enum):
    PASS = "pass"  # the link speaks for this sender: handle the message
    HOLD = "hold"  # a claim is being proven: keep the message until it is
    CHALLENGE = "challenge"  # a new claim: hold the message and challenge the member
    SPOOFED = "spoofed"  # the link speaks for another worker or incarnation
    UNBOUND = "unbound"  # the link never carried a handshake


@dataclass(slots=True)
class Claim(Generic[T]):
    """A link's claim to speak for a member, being proven: ``token`` is the challenge's
    secret, ``hello_token`` the token of the ``Hello`` that made the claim."""

    link: LinkId
    speaker: Speaker
    token: int
    hello_token: int
    started: float
    held: list[T] = field(default_factory=list)
    held_bytes: int = 0


class LinkTrust(Generic[T]):
    """The links others opened to this worker, and whom each speaks for. ``T``: what is held
    while a claim is proven (decoded messages); ``limit()``: the bytes one claim may hold (the
    per-peer receive budget's limit, read at each message)."""

    def __init__(self, limit: Callable[[], int]) -> None:
        #: The bound links and whom each speaks for (read on every message: see
        #: :meth:`verdict` for the rule).
        self.bound: dict[LinkId, Speaker] = {}
        self._limit = limit
        self._links_of: dict[int, list[LinkId]] = {}  # bound links per worker, oldest first
        self._bound_at: dict[int, float] = {}  # per worker: when its newest link was bound
        self._claims: dict[LinkId, Claim[T]] = {}
        self._by_token: dict[int, Claim[T]] = {}
        self._held_bytes = 0  # on all claims

    def __len__(self) -> int:
        return len(self.bound) + len(self._claims)

    def on_hello(
        self, link: LinkId, speaker: Speaker, *, needs_proof: bool, hello_token: int, now: float
    ) -> Verdict:
        """A ``Hello`` on ``link`` from ``speaker``; ``needs_proof``: it names a member this
        worker knows, with the incarnation it knows (and is no observer). A ``CHALLENGE``
        verdict made a claim: send :meth:`claim_of`'s token to the member."""
        verdict = self.verdict(link, speaker)
        if verdict is not Verdict.UNBOUND:  # the link speaks for someone, or is being proven
            return verdict
        if not needs_proof:
            self._bind(link, speaker, now)
            return Verdict.PASS
        if len(self._claims) >= MAX_CLAIMS:
            return Verdict.SPOOFED
        claim: Claim[T] = Claim(link, speaker, secrets.randbits(64) or 1, hello_token, now)
        self._claims[link] = claim
        self._by_token[claim.token] = claim
        return Verdict.CHALLENGE

    def verdict(self, link: LinkId, speaker: Speaker) -> Verdict:
        """Any other message on ``link``, naming ``speaker``."""
        bound = self.bound.get(link)
        if bound is not None:
            return Verdict.PASS if bound == speaker else Verdict.SPOOFED
        claim = self._claims.get(link)
        if claim is not None:
            return Verdict.HOLD if claim.speaker == speaker else Verdict.SPOOFED
        return Verdict.UNBOUND

    def on_message(self, link: LinkId, speaker: Speaker, *, member: bool, now: float) -> Verdict:
        """Any other message on ``link``, naming ``speaker``; ``member``: a member this
        worker knows, with the incarnation it knows. On a link that speaks for nobody, such a
        message makes a claim as an introduction would (``CHALLENGE``): the link's binding
        was lost (forgotten, or past ``MAX_BOUND_PER_WORKER``) while its sender goes on
        using it."""
        verdict = self.verdict(link, speaker)
        if verdict is Verdict.UNBOUND and member:
            return self.on_hello(link, speaker, needs_proof=True, hello_token=0, now=now)
        return verdict

    def claim_of(self, link: LinkId) -> Claim[T] | None:
        return self._claims.get(link)

    def hold(self, link: LinkId, item: T, size: int) -> bool:
        """Keep ``item`` (of ``size`` bytes) until the claim on ``link`` is proven; False if
        there is no claim or it would take the claim past ``limit()`` (a claim holding
        nothing takes any message) or all claims past ``MAX_HELD_BYTES``."""
        claim = self._claims.get(link)
        if claim is None:
            return False
        cost, limit = size + REQUEST_COST, self._limit()
        if claim.held_bytes and claim.held_bytes + cost > limit:
            return False
        if self._held_bytes + cost > max(MAX_HELD_BYTES, 2 * limit):
            return False
        claim.held.append(item)
        claim.held_bytes += cost
        self._held_bytes += cost
        return True

    def on_proof(
        self, token: int, speaker: Speaker, link: LinkId, *, inbound: bool
    ) -> tuple[Claim[T] | None, bool]:
        """The answer to challenge ``token`` arrived on ``link`` (``inbound``: a link
        another worker opened) from ``speaker``: the claim it answers (``None``: no such
        challenge) and whether it is proven (the answer came on the claimed link, from the
        claimed speaker). Either way the claim ends; a proven link is bound."""
        claim = self._by_token.pop(token, None)
        if claim is None:
            return None, False
        del self._claims[claim.link]
        self._held_bytes -= claim.held_bytes
        proven = inbound and link == claim.link and speaker == claim.speaker
        if proven:
            self._bind(link, speaker, claim.started)
        return claim, proven

    def expire(self, now: float, timeout: float) -> list[Claim[T]]:
        """The claims not proven within ``timeout`` seconds: refuted."""
        expired = [claim for claim in self._claims.values() if now - claim.started > timeout]
        for claim in expired:
            del self._claims[claim.link]
            del self._by_token[claim.token]
            self._held_bytes -= claim.held_bytes
        return expired

    def _bind(self, link: LinkId, speaker: Speaker, now: float) -> None:
        self.bound[link] = speaker
        self._bound_at[speaker.worker_id] = max(now, self._bound_at.get(speaker.worker_id, now))
        links = self._links_of.setdefault(speaker.worker_id, [])
        links.append(link)
        if len(links) > MAX_BOUND_PER_WORKER:
            del self.bound[links.pop(0)]

    def retain(self, known: Callable[[int], bool], now: float, grace: float) -> None:
        """Forget the links of workers for whom ``known`` is false (forgotten, gone, or never
        known) and that bound none within ``grace`` seconds (a handshake's time: see the
        module's doc)."""
        bound_at = self._bound_at
        gone = [w for w in self._links_of if now - bound_at[w] > grace and not known(w)]
        for worker_id in gone:
            del bound_at[worker_id]
            for link in self._links_of.pop(worker_id):
                del self.bound[link]
