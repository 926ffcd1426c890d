"""Which worker a link speaks for (velo_am._links), the pure rule alone."""

from __future__ import annotations

from velo_am._links import MAX_CLAIMS, MAX_HELD, MAX_HELD_TOTAL, LinkTrust, Speaker, Verdict

B = Speaker(0xB, 11)
LINK, OTHER = b"wlink", b"wother"


def test_a_link_without_a_handshake_speaks_for_nobody() -> None:
    trust: LinkTrust[str] = LinkTrust()
    assert trust.verdict(LINK, B) is Verdict.UNBOUND


def test_a_newcomers_hello_binds_the_link_to_it_and_only_it() -> None:
    trust: LinkTrust[str] = LinkTrust()
    assert trust.on_hello(LINK, B, needs_proof=False, hello_token=0, now=0) is Verdict.PASS
    assert trust.verdict(LINK, B) is Verdict.PASS
    assert trust.verdict(LINK, Speaker(0xC, 11)) is Verdict.SPOOFED  # another worker
    assert trust.verdict(LINK, Speaker(0xB, 12)) is Verdict.SPOOFED  # another incarnation
    assert trust.on_hello(LINK, Speaker(0xC, 1), needs_proof=False, hello_token=0, now=0) is (
        Verdict.SPOOFED
    )
    assert trust.verdict(OTHER, B) is Verdict.UNBOUND  # binding one link binds no other


def test_a_claim_holds_messages_until_proven_on_its_own_link() -> None:
    trust: LinkTrust[str] = LinkTrust()
    assert trust.on_hello(LINK, B, needs_proof=True, hello_token=5, now=0) is Verdict.CHALLENGE
    claim = trust.claim_of(LINK)
    assert claim is not None and claim.hello_token == 5 and claim.token
    assert trust.hold(LINK, "hello") and trust.verdict(LINK, B) is Verdict.HOLD
    assert trust.hold(LINK, "request")
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
        trust: LinkTrust[str] = LinkTrust()
        trust.on_hello(LINK, B, needs_proof=True, hello_token=0, now=0)
        claim = trust.claim_of(LINK)
        assert claim is not None
        assert trust.on_proof(claim.token, speaker, link, inbound=inbound) == (claim, False)
        assert trust.verdict(LINK, B) is Verdict.UNBOUND
        assert trust.verdict(OTHER, B) is Verdict.UNBOUND


def test_an_unanswered_claim_expires_and_a_full_one_holds_no_more() -> None:
    trust: LinkTrust[int] = LinkTrust()
    trust.on_hello(LINK, B, needs_proof=True, hello_token=0, now=10.0)
    for i in range(MAX_HELD):
        assert trust.hold(LINK, i)
    assert not trust.hold(LINK, MAX_HELD)
    assert not trust.hold(OTHER, 0)  # no claim there
    assert trust.expire(now=11.0, timeout=2.0) == []
    (expired,) = trust.expire(now=12.5, timeout=2.0)
    assert expired.link == LINK and len(expired.held) == MAX_HELD
    assert trust.verdict(LINK, B) is Verdict.UNBOUND and len(trust) == 0


def test_links_of_workers_gone_are_forgotten() -> None:
    trust: LinkTrust[str] = LinkTrust()
    trust.on_hello(LINK, B, needs_proof=False, hello_token=0, now=0)
    trust.on_hello(OTHER, Speaker(0xC, 1), needs_proof=False, hello_token=0, now=0)
    trust.retain(lambda worker_id: worker_id == 0xC)
    assert trust.verdict(LINK, B) is Verdict.UNBOUND
    assert trust.verdict(OTHER, Speaker(0xC, 1)) is Verdict.PASS


def test_claims_are_capped() -> None:
    trust: LinkTrust[str] = LinkTrust()
    for i in range(MAX_CLAIMS):
        verdict = trust.on_hello(b"w%d" % i, B, needs_proof=True, hello_token=0, now=0)
        assert verdict is Verdict.CHALLENGE
    assert trust.on_hello(LINK, B, needs_proof=True, hello_token=0, now=0) is Verdict.SPOOFED
    assert trust.on_hello(LINK, Speaker(0xC, 1), needs_proof=False, hello_token=0, now=0) is (
        Verdict.PASS
    )  # newcomers do not wait for a proof


def test_what_all_claims_hold_together_is_capped() -> None:
    trust: LinkTrust[int] = LinkTrust()
    links = [b"w%d" % i for i in range(MAX_HELD_TOTAL // MAX_HELD + 1)]
    for link in links:
        trust.on_hello(link, B, needs_proof=True, hello_token=0, now=0)
    for link in links[:-1]:
        for i in range(MAX_HELD):
            assert trust.hold(link, i)
    assert not trust.hold(links[-1], 0)
    trust.expire(now=10, timeout=1)  # refuted: what they held is let go
    trust.on_hello(LINK, B, needs_proof=True, hello_token=0, now=10)
    assert trust.hold(LINK, 0)
