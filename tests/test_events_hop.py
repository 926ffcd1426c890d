"""The remote event ping-pong's hop (issue 13): each hop's work on the loop asks
``asyncio.get_running_loop()`` (a ``getpid()`` system call on CPython 3.11) only once per
worker, not twice per hop. (Waiters added from other threads, which still go through the loop, are
``tests/test_sync_worker.py``'s.)"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import pytest

from velo_am import Worker
from velo_am._layers import RemoteEvents

ROUNDS = 50


async def pair(make_worker: Callable[..., Any]) -> tuple[Worker, Worker]:
    a = await make_worker(1)
    b = await make_worker(2)
    await b.connect(a.address)
    return a, b


async def ping_pong(a: Worker, b: Worker, rounds: int) -> None:
    """``rounds`` hops each way: each side triggers its event, then awaits the other's."""
    pings = [a.events.new_event() for _ in range(rounds)]
    pongs = [b.events.new_event() for _ in range(rounds)]

    async def respond() -> None:
        for ping, pong in zip(pings, pongs, strict=True):
            await b.events.awaiter(ping.handle)
            pong.trigger()

    responder = asyncio.ensure_future(respond())
    for ping, pong in zip(pings, pongs, strict=True):
        ping.trigger()
        await a.events.awaiter(pong.handle)
    await responder


async def test_a_hop_asks_for_the_running_loop_once_per_worker_not_per_hop(
    make_worker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await pair(make_worker)
    await asyncio.wait_for(ping_pong(a, b, 2), 10)  # connected both ways, loops seen
    asked = 0
    remote = sys.modules[RemoteEvents.__module__]  # the build in use: pure, or compiled
    running_loop = remote.running_loop

    def counted() -> asyncio.AbstractEventLoop | None:
        nonlocal asked
        asked += 1
        return running_loop()

    monkeypatch.setattr(remote, "running_loop", counted)
    await asyncio.wait_for(ping_pong(a, b, ROUNDS), 20)
    # Two per hop before (the trigger's done item, the await's subscription): 4 * ROUNDS.
    assert asked == 0, f"asked {asked} times in {ROUNDS} round trips"
    assert a.events.stats()["updates_received"] >= ROUNDS + 2
