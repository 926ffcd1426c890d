"""The membership rules (velo_am._membership), alone: events in, effects out, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from velo_am import _protocol as p
from velo_am._membership import (
    STALE,
    UNKNOWN,
    Connect,
    Dial,
    DialAnswered,
    DialRefused,
    Effect,
    Joined,
    Lost,
    Note,
    Peer,
    PeerState,
    PeerTable,
    Rejected,
    Send,
)

ME, MY_INC = 1, 0x1111
TIMEOUT, FORGET = 5.0, 60.0


def table(**options: Any) -> PeerTable:
    made = PeerTable(ME, MY_INC, heartbeat_timeout=TIMEOUT, forget_after=FORGET, **options)
    made.bind("tcp://me:1")
    return made


def hello(src: int, inc: int, peers: Sequence[p.PeerInfo] = (), token: int = 7) -> p.Hello:
    return p.Hello(src, inc, 0, token, f"tcp://w{src}:1", tuple(peers))


def ack(src: int, inc: int, peers: Sequence[p.PeerInfo] = (), token: int = 7) -> p.HelloAck:
    return p.HelloAck(src, inc, MY_INC, token, f"tcp://w{src}:1", tuple(peers))


def of(kind: type, effects: Sequence[Effect]) -> list[Any]:
    return [effect for effect in effects if isinstance(effect, kind)]


def sends(effects: Sequence[Effect], kind: type) -> list[Send]:
    return [e for e in of(Send, effects) if isinstance(e.message, kind)]


def test_a_hello_admits_its_sender_and_is_answered_with_what_we_know() -> None:
    peers = table()
    peers.on_hello(hello(2, 0x22), now=0.0)
    effects = peers.on_hello(hello(3, 0x33), now=1.0)
    assert of(Connect, effects) == [Connect(3)]
    (answer,) = sends(effects, p.HelloAck)
    assert answer.peer_id == 3 and answer.message.token == 7
    assert answer.message.dst_incarnation == 0x33
    assert {info.worker_id for info in answer.message.peers} == {2, 3}
    assert of(Joined, effects) == [Joined(3, "worker 0x3 at tcp://w3:1")]
    # The others hear of the newcomer, once each.
    (gossip,) = sends(effects, p.Peers)
    assert gossip.peer_id == 2
    status = peers.statuses(now=1.5)[3]
    assert (status.state, status.incarnation, status.silent_for) == ("alive", 0x33, 0.5)
    assert status.state is PeerState.ALIVE


def test_a_hello_ack_answers_our_dial_and_dials_the_members_it_lists() -> None:
    peers = table()
    listed = [p.PeerInfo(5, 0x55, "tcp://w5:1"), p.PeerInfo(ME, MY_INC, "tcp://me:1")]
    effects = peers.on_hello(ack(2, 0x22, listed, token=99), now=0.0)
    assert of(DialAnswered, effects) == [DialAnswered(99, 2)]
    assert of(Dial, effects) == [Dial("tcp://w5:1")], "never ourselves"
    assert not sends(effects, p.HelloAck), "an answer is not answered"
    assert peers.is_dialing("tcp://w5:1")
    assert of(Dial, peers.on_peers(listed)) == [], "a dial in progress is not repeated"


def test_a_repeated_hello_is_answered_but_joins_nothing() -> None:
    peers = table()
    peers.on_hello(hello(2, 0x22), now=0.0)
    assert not peers.needs_link(hello(2, 0x22))
    effects = peers.on_hello(hello(2, 0x22), now=3.0)
    assert not of(Connect, effects) and not of(Joined, effects)
    assert len(sends(effects, p.HelloAck)) == 1
    assert peers.statuses(now=3.0)[2].silent_for == 0.0


def test_a_new_incarnation_replaces_the_old_one_which_is_lost() -> None:
    peers = table()
    peers.on_hello(hello(2, 0x22), now=0.0)
    assert peers.needs_link(hello(2, 0x23))
    effects = peers.on_hello(hello(2, 0x23), now=1.0)
    (lost,) = of(Lost, effects)
    assert lost.peer_id == 2 and "restarted as a new incarnation" in lost.text and not lost.closed
    assert effects.index(lost) < effects.index(Connect(2)), "the old link goes before the new"
    assert peers.get(2) is not None and peers.get(2).incarnation == 0x23  # type: ignore[union-attr]
    assert peers.admit(2, 0x22, MY_INC, now=1.0) is UNKNOWN, "the predecessor is not heard"


def test_our_own_hello_refuses_the_dial_and_another_live_twin_is_an_error() -> None:
    peers = table()
    assert of(DialRefused, peers.on_hello(hello(ME, MY_INC, token=5), 0.0)) == [
        DialRefused(5, f"is this worker ({ME:#x}) itself")
    ]
    effects = peers.on_hello(hello(ME, 0x999), 0.0)
    assert of(Note, effects)[0].error and not of(DialRefused, effects)
    assert peers.statuses(0.0) == {}


def test_admission_rejects_stale_unknown_and_lost_senders() -> None:
    peers = table()
    peers.on_hello(hello(2, 0x22), now=0.0)
    assert peers.admit(2, 0x22, MY_INC ^ 1, now=0.0) is STALE
    assert peers.admit(9, 0x99, 0, now=0.0) is UNKNOWN
    admitted = peers.admit(2, 0x22, 0, now=2.0)
    assert isinstance(admitted, Peer) and admitted.last_seen == 2.0
    peers.tick(now=2.0 + TIMEOUT + 0.1)  # silent too long: lost
    rejected = peers.admit(2, 0x22, MY_INC, now=8.0)
    assert isinstance(rejected, Rejected) and rejected.effects == (Dial("tcp://w2:1"),)
    again = peers.admit(2, 0x22, MY_INC, now=8.0)
    assert isinstance(again, Rejected) and again.effects == (), "one redial at a time"


def test_time_heartbeats_the_live_loses_the_silent_and_forgets_the_old() -> None:
    peers = table()
    peers.on_hello(hello(2, 0x22), now=0.0)
    peers.on_hello(hello(3, 0x33), now=0.0)
    effects = peers.tick(now=4.0)
    assert {e.peer_id for e in sends(effects, p.Heartbeat)} == {2, 3}
    peers.admit(3, 0x33, MY_INC, now=4.0)
    effects = peers.tick(now=5.5)
    assert [lost.peer_id for lost in of(Lost, effects)] == [2]
    assert "silent for 5.0 s" in of(Lost, effects)[0].text
    assert [e.peer_id for e in sends(effects, p.Heartbeat)] == [3]
    assert peers.tick(now=5.6) == [Send(3, p.Heartbeat(ME, MY_INC, 0x33))], "lost once"
    peers.tick(now=5.5 + FORGET + 1)
    assert 2 not in peers.statuses(now=70.0)


def test_draining_and_goodbye() -> None:
    peers = table()
    peers.on_hello(hello(2, 0x22), now=0.0)
    peer = peers.get(2)
    assert peer is not None
    peers.on_draining(peer)
    assert peers.statuses(0.0)[2].state == "draining" and peers.is_connected(2)
    assert peers.alive(2) is None, "calls do not start to a draining peer"
    effects = peers.on_goodbye(peer)
    assert effects[0] == Send(2, p.Heartbeat(ME, MY_INC, 0x22)), "the goodbye is acknowledged"
    assert effects[1] == Lost(2, "worker 0x2 at tcp://w2:1 closed", closed=True)
    assert peers.admit(2, 0x22, MY_INC, now=0.0) is UNKNOWN, "nothing follows a goodbye"
    # A closed member gossiped again under the same incarnation is not redialed.
    assert of(Dial, peers.on_peers([p.PeerInfo(2, 0x22, "tcp://w2:1")])) == []


def test_a_draining_worker_answers_no_hello_and_dials_nobody() -> None:
    peers = table()
    peers.on_hello(hello(2, 0x22), now=0.0)
    effects = peers.begin_drain()
    assert [e.peer_id for e in sends(effects, p.Draining)] == [2]
    effects = peers.on_hello(hello(3, 0x33, [p.PeerInfo(4, 0x44, "tcp://w4:1")]), now=0.0)
    assert not sends(effects, p.HelloAck) and not of(Dial, effects)


def test_goodbyes_are_acknowledged_by_any_message() -> None:
    peers = table()
    for peer_id in (2, 3):
        peers.on_hello(hello(peer_id, peer_id * 0x11), now=0.0)
    effects = peers.begin_goodbye()
    assert {e.peer_id for e in sends(effects, p.Goodbye)} == {2, 3}
    assert not peers.goodbyes_acknowledged
    peers.admit(2, 0x22, MY_INC, now=0.1)
    assert not peers.goodbyes_acknowledged
    peers.admit(3, 0x33, MY_INC, now=0.1)
    assert peers.goodbyes_acknowledged


def test_gossip_dials_at_most_the_cap() -> None:
    peers = table(max_dials=3)
    listed = [p.PeerInfo(10 + i, 1, f"tcp://w{10 + i}:1") for i in range(5)]
    effects = peers.on_peers(listed)
    assert len(of(Dial, effects)) == 3
    assert of(Note, effects) == [Note("dials", "too many handshakes in progress; not dialing more")]
    peers.dial_ended("tcp://w10:1")
    assert of(Dial, peers.on_peers(listed)) == [Dial("tcp://w10:1")]


# -- the state machine against a model ----------------------------------------------------------

PEER_IDS = st.sampled_from([2, 3, 4, 5])
INCARNATIONS = st.sampled_from([0x10, 0x20, 0x30])
CONNECTED = ("alive", "draining")


@dataclass
class ModelPeer:
    incarnation: int
    state: str
    last_seen: float
    address: str


@dataclass
class Model:
    peers: dict[int, ModelPeer] = field(default_factory=dict)
    dialing: set[str] = field(default_factory=set)
    accepting: bool = True
    awaiting_acks: set[int] = field(default_factory=set)

    def connected(self) -> set[int]:
        return {pid for pid, peer in self.peers.items() if peer.state in CONNECTED}

    def lose(self, peer_id: int, state: str) -> bool:
        peer = self.peers[peer_id]
        if peer.state not in CONNECTED:
            return False
        peer.state = state
        self.awaiting_acks.discard(peer_id)
        return True


class MembershipMachine(RuleBasedStateMachine):
    """Every event the table takes, checked against a model of the same rules: the effects
    say exactly what changed, and the table's view always equals the model's."""

    @initialize()
    def start(self) -> None:
        self.table = table(max_dials=3)
        self.model = Model()
        self.now = 0.0

    def check_effects(self, effects: list[Effect], connected_before: set[int]) -> None:
        connected_after = self.model.connected()
        for effect in effects:
            if isinstance(effect, Send):
                assert effect.peer_id in connected_before | connected_after, effect
                peer = self.model.peers[effect.peer_id]
                assert effect.message.dst_incarnation in (0, peer.incarnation), effect
                assert (effect.message.src, effect.message.src_incarnation) == (ME, MY_INC)
        lost = [effect.peer_id for effect in of(Lost, effects)]
        assert len(lost) == len(set(lost)), "each loss is reported once"
        assert set(lost) <= connected_before, "only a connected peer is lost"

    @rule(
        peer_id=PEER_IDS,
        inc=INCARNATIONS,
        answer=st.booleans(),
        listed=st.lists(st.tuples(PEER_IDS, INCARNATIONS), max_size=4),
    )
    def handshake(
        self, peer_id: int, inc: int, answer: bool, listed: list[tuple[int, int]]
    ) -> None:
        infos = [p.PeerInfo(pid, pinc, f"tcp://w{pid}:1") for pid, pinc in listed]
        msg = ack(peer_id, inc, infos) if answer else hello(peer_id, inc, infos)
        model = self.model
        before = model.connected()
        known = model.peers.get(peer_id)
        joined = known is None or known.incarnation != inc or known.state not in CONNECTED
        assert self.table.needs_link(msg) == joined
        effects = self.table.on_hello(msg, self.now)
        replaced = joined and known is not None and known.state in CONNECTED
        if replaced:
            model.lose(peer_id, "lost")
        if joined:
            model.peers[peer_id] = ModelPeer(inc, "alive", self.now, msg.address)
        else:
            model.peers[peer_id].last_seen = self.now
        assert bool(of(Connect, effects)) == joined
        assert bool(of(Joined, effects)) == joined
        assert [e.peer_id for e in of(Lost, effects)] == ([peer_id] if replaced else [])
        assert len(sends(effects, p.HelloAck)) == (0 if answer or not model.accepting else 1)
        assert len(of(DialAnswered, effects)) == (1 if answer else 0)
        gossiped = {e.peer_id for e in sends(effects, p.Peers)}
        assert gossiped == ((model.connected() - {peer_id}) if joined else set())
        self.learn(infos, effects)
        self.check_effects(effects, before)

    def learn(self, infos: list[p.PeerInfo], effects: list[Effect]) -> None:
        expected = []
        model = self.model
        if model.accepting:
            for info in infos:
                known = model.peers.get(info.worker_id)
                if known is not None and (
                    known.state in CONNECTED
                    or (known.state == "closed" and known.incarnation == info.incarnation)
                ):
                    continue
                if len(model.dialing) >= 3:
                    break
                if info.address not in model.dialing:
                    model.dialing.add(info.address)
                    expected.append(Dial(info.address))
        assert of(Dial, effects) == expected

    @rule(peer_id=PEER_IDS, inc=INCARNATIONS, stale=st.booleans())
    def message(self, peer_id: int, inc: int, stale: bool) -> None:
        model = self.model
        outcome = self.table.admit(peer_id, inc, MY_INC + 1 if stale else MY_INC, self.now)
        known = model.peers.get(peer_id)
        if stale:
            assert outcome is STALE
        elif known is None or known.incarnation != inc:
            assert outcome is UNKNOWN
        elif known.state == "lost":
            assert isinstance(outcome, Rejected) and outcome.counter == "dropped_unknown_peer"
            redial = model.accepting and known.address not in model.dialing
            assert outcome.effects == ((Dial(known.address),) if redial else ())
            if redial:
                model.dialing.add(known.address)
        elif known.state == "closed":
            assert outcome is UNKNOWN
        else:
            assert isinstance(outcome, Peer) and outcome.worker_id == peer_id
            known.last_seen = self.now
            model.awaiting_acks.discard(peer_id)

    @precondition(lambda self: self.model.connected())
    @rule(data=st.data(), goodbye=st.booleans())
    def leaving(self, data: st.DataObject, goodbye: bool) -> None:
        peer_id = data.draw(st.sampled_from(sorted(self.model.connected())))
        peer = self.table.get(peer_id)
        assert peer is not None
        before = self.model.connected()
        if goodbye:
            effects = self.table.on_goodbye(peer)
            assert self.model.lose(peer_id, "closed")
            assert [e.peer_id for e in sends(effects, p.Heartbeat)] == [peer_id]
            assert [(e.peer_id, e.closed) for e in of(Lost, effects)] == [(peer_id, True)]
            self.check_effects(effects, before)
        else:
            self.table.on_draining(peer)
            model_peer = self.model.peers[peer_id]
            if model_peer.state == "alive":
                model_peer.state = "draining"

    @rule(seconds=st.sampled_from([0.5, 2.0, 4.9, 5.1, 30.0, 61.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        model = self.model
        before = model.connected()
        effects = self.table.tick(self.now)
        lost = set()
        for peer_id, peer in list(model.peers.items()):
            if peer.state not in CONNECTED:
                if self.now - peer.last_seen > FORGET:
                    del model.peers[peer_id]
            elif self.now - peer.last_seen > TIMEOUT:
                model.lose(peer_id, "lost")
                lost.add(peer_id)
        assert {e.peer_id for e in of(Lost, effects)} == lost
        assert {e.peer_id for e in sends(effects, p.Heartbeat)} == before - lost
        self.check_effects(effects, before)

    @rule(address=st.sampled_from(["tcp://w2:1", "tcp://w3:1", "tcp://w4:1", "tcp://w5:1"]))
    def dial_ends(self, address: str) -> None:
        self.table.dial_ended(address)
        self.model.dialing.discard(address)

    @precondition(lambda self: self.model.accepting)
    @rule()
    def drain(self) -> None:
        before = self.model.connected()
        effects = self.table.begin_drain()
        self.model.accepting = False
        assert {e.peer_id for e in sends(effects, p.Draining)} == before

    @rule()
    def goodbye_to_all(self) -> None:
        effects = self.table.begin_goodbye()
        self.model.awaiting_acks = self.model.connected()
        assert {e.peer_id for e in sends(effects, p.Goodbye)} == self.model.awaiting_acks

    @invariant()
    def the_table_agrees_with_the_model(self) -> None:
        statuses = self.table.statuses(self.now)
        assert {pid: (s.incarnation, str(s.state)) for pid, s in statuses.items()} == {
            pid: (peer.incarnation, peer.state) for pid, peer in self.model.peers.items()
        }
        assert self.table.connected_count() == len(self.model.connected())
        assert {info.worker_id for info in self.table.known_peers()} == self.model.connected()
        assert self.table.goodbyes_acknowledged == (not self.model.awaiting_acks)
        assert self.table.dials_in_progress == len(self.model.dialing)
        for peer_id in self.model.peers:
            alive = self.table.alive(peer_id)
            assert (alive is not None) == (self.model.peers[peer_id].state == "alive")


MembershipMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
test_membership_state_machine = MembershipMachine.TestCase


@pytest.mark.parametrize("state", list(PeerState))
def test_peer_states_read_as_their_names(state: PeerState) -> None:
    assert state == state.value and str(state) == state.value
    assert state.connected == (state in ("alive", "draining"))
