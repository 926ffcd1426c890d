"""A newcomer that leaves before it is admitted: what waited on it fails, never hangs.

A newcomer is reachable while its address is verified (a pending newcomer counts as connected:
calls and subscriptions go to it). The soak (seed 3506240920) left merges waiting forever on a
restarted worker's events. One path there: a new incarnation of an id nobody else holds was
subscribed to while pending, then dropped (its address did not answer, it said goodbye, its
link went down) with no loss declared: nobody was left to answer the subscription, and no
loss to fail it. A dropped newcomer is now lost (and forgotten) like any member."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from support import wait_until

from velo_am import PeerLost, Worker
from velo_am import _protocol as p
from velo_am._membership import PeerTable
from velo_am._peers import Dial, Effect, Forgotten, Lost, Member
from velo_am.transport import FakeNetwork
from velo_event import OutcomeUnknown


async def _pending_at(
    subscriber: Worker, newcomer: Worker, network: FakeNetwork
) -> asyncio.Future[Any]:
    """``newcomer`` dials ``subscriber``, whose check of the newcomer's address gets no
    answer (nothing sent to that address arrives: the verifying Hello, nor a call or a
    subscription on the subscriber's own link): the newcomer stays pending there."""

    def address_silent(address: str, frames: list[bytes]) -> bool:
        return address != newcomer.address or frames[0].startswith(b"\x00")  # fake heartbeat

    network.filter = address_silent
    joining = asyncio.ensure_future(newcomer.connect(subscriber.address))
    await wait_until(lambda: subscriber.is_connected(newcomer.worker_id))
    assert newcomer.worker_id not in subscriber.peers  # pending: not a member yet
    return joining


@pytest.mark.timeout(20)
async def test_a_newcomer_whose_address_never_answers_fails_its_subscribers(
    make_worker: Callable[..., Any], network: FakeNetwork
) -> None:
    subscriber = await make_worker(1)
    owner = await make_worker(2)
    joining = await _pending_at(subscriber, owner, network)
    handle = owner.events.new_event().handle
    waiting = asyncio.ensure_future(subscriber.events.awaiter(handle))
    # Its verification runs out (handshake_timeout): not admitted, and nobody will answer.
    with pytest.raises(OutcomeUnknown, match="owner lost"):
        await asyncio.wait_for(waiting, 5.0)
    assert not subscriber.is_connected(owner.worker_id)
    assert subscriber.events.remote_waiters() == []
    joining.cancel()
    await asyncio.gather(joining, return_exceptions=True)


@pytest.mark.timeout(20)
async def test_a_call_to_a_newcomer_never_admitted_fails_before_its_timeout(
    make_worker: Callable[..., Any], network: FakeNetwork
) -> None:
    subscriber = await make_worker(1)
    owner = await make_worker(2)
    joining = await _pending_at(subscriber, owner, network)
    calling = asyncio.ensure_future(subscriber.call(owner.worker_id, "anything", None, timeout=60))
    with pytest.raises(PeerLost, match="never admitted"):
        await asyncio.wait_for(calling, 5.0)
    joining.cancel()
    await asyncio.gather(joining, return_exceptions=True)


# -- the rule alone (PeerTable): every way a pending newcomer leaves --------------------------


def _table() -> PeerTable:
    made = PeerTable(1, 0x1111, handshake_timeout=5.0, forget_after=60.0, rng=random.Random(7))
    made.bind("tcp://me:1", 0.0)
    return made


def _hello(src: int, inc: int, address: str) -> p.Hello:
    return p.Hello(src, inc, 0, 7, address, int(p.HelloFlags.JOIN), 1, ())


def _gone(effects: list[Effect]) -> list[Effect]:
    return [effect for effect in effects if isinstance(effect, Lost | Forgotten)]


def test_a_pending_newcomers_goodbye_is_its_loss() -> None:
    table = _table()
    table.on_hello(_hello(2, 0x22, "tcp://w2:1"), b"L2", now=1.0)
    newcomer = table.admit(2, 0x22, 0x1111, 1.0)
    assert isinstance(newcomer, Member)
    (lost, forgotten) = _gone(table.on_goodbye(newcomer, b"L2"))
    assert isinstance(lost, Lost) and lost.peer_id == 2 and lost.closed
    assert "closed before it was admitted" in lost.text and forgotten == Forgotten(2)
    assert not table.is_connected(2)


def test_a_pending_newcomer_replaced_by_a_newer_incarnation_is_lost() -> None:
    table = _table()
    table.on_hello(_hello(2, 0x22, "tcp://w2:1"), b"L2", now=1.0)
    effects = table.on_hello(_hello(2, 0x23, "tcp://w2:2"), b"L3", now=1.5)
    (lost, _) = _gone(effects)
    assert isinstance(lost, Lost) and "tcp://w2:1 was replaced" in lost.text
    assert table.is_connected(2), "the newer one is pending"


def test_a_pending_newcomers_link_down_is_its_loss() -> None:
    table = _table()
    table.on_hello(_hello(2, 0x22, "tcp://w2:1"), b"L2", now=1.0)
    (lost, _) = _gone(table.on_link_down(2, "connection refused", now=1.5))
    assert isinstance(lost, Lost) and "connection refused" in lost.text


def test_a_newcomer_dropped_while_a_member_holds_its_id_loses_nothing() -> None:
    """Calls and subscriptions to that id go to the member: failing them would be wrong."""
    table = _table()
    (verify,) = table.on_hello(_hello(2, 0x21, "tcp://w2:0"), b"L1", now=0.5)
    assert isinstance(verify, Dial)
    answer = p.HelloAck(2, 0x21, 0x1111, verify.hello.token, "tcp://w2:0", 0, 1, ())
    table.on_hello_ack(answer, now=0.7)
    assert table.member(2) is not None
    table.on_hello(_hello(2, 0x22, "tcp://w2:1"), b"L2", now=1.0)
    effects = table.tick(now=20.0)  # its verification runs out
    assert table.pending_count == 0 and _gone(effects) == []
    assert table.is_connected(2), "the member is untouched"
