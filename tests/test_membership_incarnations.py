"""A link speaks for one incarnation of an id, at one address; news never brings back an
incarnation this worker saw replaced (the rules alone; the whole sequence, on the fake
network, is tests/test_incarnation_links_fake.py)."""

from __future__ import annotations

from test_membership import ALIVE, address, admit, of, table

from velo_am import _protocol as p
from velo_am._membership import PeerTable
from velo_am._peers import Dial, Forgotten, Joined, PeerState

NEW = "tcp://w2:2"  # where 0x2's next incarnation listens


def test_a_link_to_another_address_does_not_watch_the_member() -> None:
    """A link opened for id 0x2 that leads elsewhere reaches another process (the id's next
    incarnation, say): its heartbeats say nothing of the member at ``address(2)``."""
    peers = table()
    admit(peers, 2)
    peers.on_link_up(2, address=NEW)
    assert 2 not in peers.watched
    peers.on_link_up(2, address=address(2))
    assert 2 in peers.watched


def _verified(peers: PeerTable, src: int, inc: int, at: str, now: float) -> None:
    """Incarnation ``inc`` of ``src`` says hello from ``at`` and its address answers."""
    hello = p.Hello(src, inc, 0, 7, at, 0, 1, ())
    (verify,) = of(Dial, peers.on_hello(hello, b"L", now))
    peers.on_hello_ack(p.HelloAck(src, inc, 0x1111, verify.hello.token, at, 0, 1, ()), now)


def _replaced_then_lost() -> PeerTable:
    """0x22, lost, replaced by 0x99 on 0x99's own word; then 0x99 is lost too."""
    peers = table()
    admit(peers, 2)
    peers.on_link_down(2, "silent", now=2.0)
    _verified(peers, 2, 0x99, NEW, now=3.0)
    assert peers.statuses(3.0)[2].incarnation == 0x99
    peers.on_link_down(2, "silent", now=4.0)  # this worker froze, say
    return peers


def test_gossip_never_brings_back_an_incarnation_this_worker_saw_replaced() -> None:
    peers = _replaced_then_lost()
    stale = p.PeerInfo(2, 0x22, address(2), 1000, ALIVE)  # a lagging worker's view
    effects = peers.on_peers([stale], sender=3, now=5.0)
    assert not of(Joined, effects) and not of(Forgotten, effects)
    status = peers.statuses(5.0)[2]
    assert (status.incarnation, status.state) == (0x99, PeerState.LOST)
    # The newer one's news still counts.
    peers.on_peers([p.PeerInfo(2, 0x99, NEW, 5, ALIVE)], sender=3, now=6.0)
    assert peers.statuses(6.0)[2].state is PeerState.ALIVE


def test_hearsay_that_replaced_an_incarnation_does_not_bar_it() -> None:
    """Hearsay proves nothing ended: 0x22, lost (this worker froze), is displaced by a
    lagging worker's news of the dead 0x99, which is lost in turn (its address never
    answers); news of 0x22 alive brings it back at once, as before incarnations were
    remembered, not after ``forget_after``."""
    peers = table()
    admit(peers, 2)
    peers.on_link_down(2, "silent", now=2.0)
    dead = p.PeerInfo(2, 0x99, NEW, 1000, ALIVE)
    assert of(Forgotten, peers.on_peers([dead], sender=3, now=3.0))
    peers.on_link_down(2, "no connection", now=4.0)
    effects = peers.on_peers([p.PeerInfo(2, 0x22, address(2), 5, ALIVE)], sender=3, now=5.0)
    assert of(Joined, effects)
    status = peers.statuses(5.0)[2]
    assert (status.incarnation, status.state) == (0x22, PeerState.ALIVE)


def test_a_replaced_incarnation_may_come_back_by_its_own_word() -> None:
    """Only hearsay is refused: a handshake whose address answers is direct word."""
    peers = _replaced_then_lost()
    hello = p.Hello(2, 0x22, 0, 7, address(2), int(p.HelloFlags.JOIN), 1, ())
    (verify,) = of(Dial, peers.on_hello(hello, b"L", now=5.0))
    answer = p.HelloAck(2, 0x22, 0x1111, verify.hello.token, address(2), 0, 1, ())
    peers.on_hello_ack(answer, now=5.1)
    status = peers.statuses(5.1)[2]
    assert (status.incarnation, status.state) == (0x22, PeerState.ALIVE)


def test_hearsay_that_replaced_an_incarnation_bars_it_once_its_successor_answers() -> None:
    """The successor hearsay brought answers at its own address (a link of this worker's is
    up): the incarnation it displaced has ended, and a lagging worker's news of it is
    refused after the successor is lost in turn."""
    peers = table()
    admit(peers, 2)
    peers.on_link_down(2, "silent", now=2.0)
    peers.on_peers([p.PeerInfo(2, 0x99, NEW, 1000, ALIVE)], sender=3, now=3.0)
    peers.on_link_up(2, address=NEW)
    peers.on_link_down(2, "silent", now=4.0)
    effects = peers.on_peers([p.PeerInfo(2, 0x22, address(2), 2000, ALIVE)], sender=3, now=5.0)
    assert not of(Joined, effects)
    assert peers.statuses(5.0)[2].incarnation == 0x99


def test_the_last_four_ended_incarnations_are_remembered_until_the_id_is_forgotten() -> None:
    """An id replaced again and again: the four incarnations that ended last are refused
    as hearsay (an older one is not: the record is bounded), one that came back by its own
    word is no longer counted ended, and once the id is forgotten nothing is remembered."""
    peers = table()
    admit(peers, 2)  # 0x22
    now = 2.0
    for inc in (0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA2):  # 0xA2 comes back by its own word
        peers.on_link_down(2, "silent", now=now)
        _verified(peers, 2, inc, f"tcp://w2:{inc}", now=now + 0.5)
        now += 1.0
    peers.on_link_down(2, "silent", now=now)

    def heard_alive(inc: int, at: float) -> bool:
        info = p.PeerInfo(2, inc, f"tcp://w2:{inc}", 1000, ALIVE)
        return bool(of(Joined, peers.on_peers([info], sender=3, now=at)))

    assert not any(heard_alive(inc, now) for inc in (0xA1, 0xA3, 0xA4, 0xA5))
    assert peers.statuses(now)[2].incarnation == 0xA2
    assert heard_alive(0x22, now), "the fifth one back fell out of the record"
    peers.on_link_down(2, "silent", now=now + 1.0)  # 0x22 lost, never proven
    assert heard_alive(0xA2, now + 2.0), "0xA2 came back by its own word: not ended"
    peers.on_link_down(2, "silent", now=now + 3.0)
    peers.tick(now + 100.0)  # lost for longer than forget_after: forgotten
    assert 2 not in peers.statuses(now + 100.0)
    assert heard_alive(0xA3, now + 101.0)
    peers.on_link_down(2, "silent", now=now + 102.0)
    assert heard_alive(0xA4, now + 103.0), "a forgotten id's record goes with it"
