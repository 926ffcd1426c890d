"""Which worker a link speaks for (velo_am._links), the pure rule alone."""

from __future__ import annotations

from velo_am._budget import REQUEST_COST
from velo_am._links import (
    MAX_BOUND_PER_WORKER,
    MAX_CLAIMS,
    MAX_HELD_BYTES,
    LinkTrust,
    Speaker,
    Verdict,
)

B = Speaker(0xB, 11)
#: What one claim may hold (the receive budget's limit): 100 messages of 1 KiB.
LIMIT = 100 * (1024 + REQUEST_COST)


def trusting(limit: int = LIMIT) -> LinkTrust[int]:
    return LinkTrust(lambda: limit)


LINK, OTHER = b"wlink", b"wother"


def test_a_link_without_a_handshake_speaks_for_nobody() -> None:
    trust: LinkTrust[str] = LinkTrust(lambda: LIMIT)
    assert trust.verdict(LINK, B) is Verdict.UNBOUND


def test_a_members_message_on_a_link_that_speaks_for_nobody_claims_it() -> None:
    """As an introduction would: held, proven on that link, then the link speaks for it; a
    message naming anyone else (not a member, or not as known) is still dropped."""
    trust = trusting()
    assert trust.on_message(LINK, B, member=False, now=0) is Verdict.UNBOUND
    assert trust.on_message(LINK, B, member=True, now=0) is Verdict.CHALLENGE
    claim = trust.claim_of(LINK)
    assert claim is not None and claim.hello_token == 0 and trust.hold(LINK, 1, 10)
    assert trust.on_message(LINK, B, member=True, now=0) is Verdict.HOLD
    assert trust.on_message(LINK, Speaker(0xC, 1), member=True, now=0) is Verdict.SPOOFED
    assert trust.on_proof(claim.token, B, LINK, inbound=True) == (claim, True)
    assert claim.held == [1]
    assert trust.on_message(LINK, B, member=True, now=1) is Verdict.PASS
    assert trust.on_message(OTHER, B, member=True, now=1) is Verdict.CHALLENGE
    refuted = trust.claim_of(OTHER)
    assert refuted is not None
    assert trust.on_proof(refuted.token, B, LINK, inbound=True) == (refuted, False)
    assert trust.verdict(OTHER, B) is Verdict.UNBOUND


def test_a_newcomers_hello_binds_the_link_to_it_and_only_it() -> None:
    trust: LinkTrust[str] = LinkTrust(lambda: LIMIT)
    assert trust.on_hello(LINK, B, needs_proof=False, hello_token=0, now=0) is Verdict.PASS
    assert trust.verdict(LINK, B) is Verdict.PASS
    assert trust.verdict(LINK, Speaker(0xC, 11)) is Verdict.SPOOFED  # another worker
    assert trust.verdict(LINK, Speaker(0xB, 12)) is Verdict.SPOOFED  # another incarnation
    assert trust.on_hello(LINK, Speaker(0xC, 1), needs_proof=False, hello_token=0, now=0) is (
        Verdict.SPOOFED
    )
    assert trust.verdict(OTHER, B) is Verdict.UNBOUND  # binding one link binds no other


def test_a_claim_holds_messages_until_proven_on_its_own_link() -> None:
    trust: LinkTrust[str] = LinkTrust(lambda: LIMIT)
    assert trust.on_hello(LINK, B, needs_proof=True, hello_token=5, now=0) is Verdict.CHALLENGE
    claim = trust.claim_of(LINK)
    assert claim is not None and claim.hello_token == 5 and claim.token
    assert trust.hold(LINK, "hello", 80) and trust.verdict(LINK, B) is Verdict.HOLD
    assert trust.hold(LINK, "request", 1024)
    assert trust.verdict(LINK, Speaker(0xC, 1)) is Verdict.SPOOFED
    ended, proven = trust.on_proof(claim.token, B, LINK, inbound=True)
    assert ended is claim and proven and claim.held == ["hello", "request"]
    assert trust.verdict(LINK, B) is Verdict.PASS
    assert trust.on_proof(claim.token, B, LINK, inbound=True) == (None, False)  # used once


def test_a_claim_answered_elsewhere_or_by_another_is_refuted() -> None:
    for speaker, link, inbound in (
        (B, OTHER, True),
        (B, LINK, False),
        (Speaker(0xB, 3), LINK, True),
    ):
        trust: LinkTrust[str] = LinkTrust(lambda: LIMIT)
        trust.on_hello(LINK, B, needs_proof=True, hello_token=0, now=0)
        claim = trust.claim_of(LINK)
        assert claim is not None
        assert trust.on_proof(claim.token, speaker, link, inbound=inbound) == (claim, False)
        assert trust.verdict(LINK, B) is Verdict.UNBOUND
        assert trust.verdict(OTHER, B) is Verdict.UNBOUND


def test_an_unanswered_claim_expires_and_a_full_one_holds_no_more() -> None:
    trust = trusting()
    trust.on_hello(LINK, B, needs_proof=True, hello_token=0, now=10.0)
    for i in range(100):
        assert trust.hold(LINK, i, 1024)
    assert not trust.hold(LINK, 100, 1024)  # past the limit, in bytes
    assert not trust.hold(OTHER, 0, 0)  # no claim there
    assert trust.expire(now=11.0, timeout=2.0) == []
    (expired,) = trust.expire(now=12.5, timeout=2.0)
    assert expired.link == LINK and expired.held == list(range(100))
    assert trust.verdict(LINK, B) is Verdict.UNBOUND and len(trust) == 0


def test_a_claim_holds_a_sends_window_of_small_messages_and_bytes_not_counts() -> None:
    """The default budget (2 x 64 MiB + 4096 x REQUEST_COST) holds a whole send window of
    small sends, and few big ones."""
    trust = trusting(2 * (64 << 20) + 4096 * REQUEST_COST)
    trust.on_hello(LINK, B, needs_proof=True, hello_token=0, now=0)
    for i in range(4096 + 1000):
        assert trust.hold(LINK, i, 100)
    trust.on_hello(OTHER, B, needs_proof=True, hello_token=0, now=0)
    assert trust.hold(OTHER, 0, 64 << 20) and trust.hold(OTHER, 1, 64 << 20)
    assert not trust.hold(OTHER, 2, 64 << 20)


def test_a_claim_holding_nothing_takes_one_message_of_any_size() -> None:
    trust = trusting(limit=10)
    trust.on_hello(LINK, B, needs_proof=True, hello_token=0, now=0)
    assert trust.hold(LINK, 0, 1 << 20)
    assert not trust.hold(LINK, 1, 0)


def test_links_of_workers_gone_are_forgotten() -> None:
    trust: LinkTrust[str] = LinkTrust(lambda: LIMIT)
    trust.on_hello(LINK, B, needs_proof=False, hello_token=0, now=0)
    trust.on_hello(OTHER, Speaker(0xC, 1), needs_proof=False, hello_token=0, now=0)
    trust.retain(lambda worker_id: worker_id == 0xC, now=10, grace=5)
    assert trust.verdict(LINK, B) is Verdict.UNBOUND
    assert trust.verdict(OTHER, Speaker(0xC, 1)) is Verdict.PASS


def test_a_link_bound_before_its_sender_is_known_is_kept_for_a_handshakes_time() -> None:
    """A worker this one joins through verifies this one's address on a link of its own,
    bound by its ``Hello`` before the answer to this worker's own makes it known: that link
    is not forgotten within ``grace`` of its binding (it was, at the next tick), and is
    forgotten after it if its sender stays unknown."""
    trust: LinkTrust[str] = LinkTrust(lambda: LIMIT)
    trust.on_hello(LINK, B, needs_proof=False, hello_token=7, now=100)
    trust.retain(lambda worker_id: False, now=100.2, grace=5)
    assert trust.verdict(LINK, B) is Verdict.PASS
    trust.on_hello(OTHER, B, needs_proof=False, hello_token=8, now=104)  # its newest binding
    trust.retain(lambda worker_id: False, now=108, grace=5)
    assert trust.verdict(LINK, B) is trust.verdict(OTHER, B) is Verdict.PASS
    trust.retain(lambda worker_id: worker_id == B.worker_id, now=200, grace=5)  # known
    assert trust.verdict(LINK, B) is Verdict.PASS
    trust.retain(lambda worker_id: False, now=201, grace=5)
    assert trust.verdict(LINK, B) is trust.verdict(OTHER, B) is Verdict.UNBOUND
    assert len(trust) == 0


def test_claims_are_capped() -> None:
    trust: LinkTrust[str] = LinkTrust(lambda: LIMIT)
    for i in range(MAX_CLAIMS):
        verdict = trust.on_hello(b"w%d" % i, B, needs_proof=True, hello_token=0, now=0)
        assert verdict is Verdict.CHALLENGE
    assert trust.on_hello(LINK, B, needs_proof=True, hello_token=0, now=0) is Verdict.SPOOFED
    assert trust.on_hello(LINK, Speaker(0xC, 1), needs_proof=False, hello_token=0, now=0) is (
        Verdict.PASS
    )  # newcomers do not wait for a proof


def test_what_all_claims_hold_together_is_capped_in_bytes() -> None:
    each = MAX_HELD_BYTES // 4  # a claim's limit: four fill the cap
    trust = trusting(each)
    links = [b"w%d" % i for i in range(5)]
    for link in links:
        trust.on_hello(link, B, needs_proof=True, hello_token=0, now=0)
    for link in links[:-1]:
        assert trust.hold(link, 0, each - REQUEST_COST)
    assert not trust.hold(links[-1], 0, 0)
    trust.expire(now=10, timeout=1)  # refuted: what they held is let go
    trust.on_hello(LINK, B, needs_proof=True, hello_token=0, now=10)
    assert trust.hold(LINK, 0, each - REQUEST_COST)


def test_the_cap_on_all_claims_is_at_least_twice_one_claims_limit() -> None:
    trust = trusting(MAX_HELD_BYTES)
    for link in (LINK, OTHER):
        trust.on_hello(link, B, needs_proof=True, hello_token=0, now=0)
        assert trust.hold(link, 0, MAX_HELD_BYTES - REQUEST_COST)


def test_only_the_newest_bound_links_of_a_worker_are_kept() -> None:
    """Each connection a member opens is a new link: the old ones do not pile up."""
    trust: LinkTrust[str] = LinkTrust(lambda: LIMIT)
    links = [b"w%d" % i for i in range(MAX_BOUND_PER_WORKER + 5)]
    for link in links[:-1]:
        trust.on_hello(link, B, needs_proof=False, hello_token=0, now=0)
    trust.on_hello(links[-1], B, needs_proof=True, hello_token=0, now=0)  # a proven claim
    claim = trust.claim_of(links[-1])
    assert claim is not None and trust.on_proof(claim.token, B, links[-1], inbound=True)[1]
    trust.on_hello(OTHER, Speaker(0xC, 1), needs_proof=False, hello_token=0, now=0)
    kept = [link for link in links if trust.verdict(link, B) is Verdict.PASS]
    assert kept == links[-MAX_BOUND_PER_WORKER:]
    assert len(trust) == MAX_BOUND_PER_WORKER + 1
    assert trust.verdict(OTHER, Speaker(0xC, 1)) is Verdict.PASS  # another worker's stay
    trust.retain(lambda worker_id: worker_id == 0xC, now=10, grace=5)
    assert len(trust) == 1
