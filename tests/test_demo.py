"""The demo's live progress (velo_am._demo): completions shown in causal order, an event after
what it waited on, whatever order the coordinator hears of them in. (The demo end to end, as
a user runs it, is in test_cli.py.)"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from support import wait_until

from velo_am._demo import CausalProgress, DemoNode, _Demo, progress_line
from velo_event import EventHandle

_indexes = itertools.count(1)


def node(label: str, *inputs: DemoNode, fail_fast: bool = False) -> DemoNode:
    handle = EventHandle.from_parts(7, next(_indexes), 1)
    return DemoNode(label, handle, 7, list(inputs), fail_fast=fail_fast)


def heard(progress: CausalProgress, *observations: tuple[DemoNode, float, str | None]) -> list[str]:
    """Feed what the coordinator heard of, in this order: the labels shown, in order."""
    shown = []
    for item, at, reason in observations:
        item.finished, item.reason = at, reason
        shown += [done.label for done in progress.seen(item)]
    return shown


def test_a_merge_heard_of_first_is_shown_after_its_inputs() -> None:
    # Completions of different owners travel on different links: the merge's news can win.
    shard1, shard2 = node("shard 1"), node("shard 2")
    weights = node("all weights loaded", shard1, shard2)
    progress = CausalProgress()
    assert heard(progress, (shard1, 0.50, None), (weights, 0.76, None)) == ["shard 1"]
    assert heard(progress, (shard2, 0.77, None)) == ["shard 2", "all weights loaded"]
    assert progress.held() == []
    assert "0.76 s  ✔ all weights loaded" in progress_line(weights), "its own time, truthfully"


def test_a_chain_heard_of_backwards_is_shown_forwards() -> None:
    cache = node("KV cache")
    model = node("model ready", cache)
    server = node("server ready", model)
    shown = heard(CausalProgress(), (server, 1.1, None), (model, 1.1, None), (cache, 1.1, None))
    assert shown == ["KV cache", "model ready", "server ready"]


def test_a_fail_fast_merge_needs_only_its_poisoned_input() -> None:
    model, draft = node("model ready"), node("draft model")
    speculative = node("speculative decoding", model, draft, fail_fast=True)
    progress = CausalProgress()
    assert heard(progress, (speculative, 0.37, "draft failed")) == []
    assert heard(progress, (draft, 0.37, "draft failed")) == ["draft model", "speculative decoding"]
    assert heard(progress, (model, 1.1, None)) == ["model ready"]
    assert "← an input failed" in progress_line(speculative)


def test_a_poisoned_merge_that_waits_for_all_is_shown_after_all() -> None:
    ok, failed = node("ok"), node("failed")
    merged = node("merged", ok, failed)  # not fail-fast: it completed when both had
    progress = CausalProgress()
    assert heard(progress, (failed, 0.3, "disk full"), (merged, 0.5, "disk full")) == ["failed"]
    assert heard(progress, (ok, 0.5, None)) == ["ok", "merged"]


def test_what_never_got_its_cause_is_shown_at_the_end_in_the_order_heard() -> None:
    # A merge poisoned by its owner's loss, say: its inputs are never heard of.
    lost, other = node("input"), node("input 2")
    first, second = node("merge 1", lost), node("merge 2", other)
    progress = CausalProgress()
    assert heard(progress, (second, 1.0, "owner lost"), (first, 1.2, "owner lost")) == []
    assert [item.label for item in progress.held()] == ["merge 2", "merge 1"]
    assert progress.held() == [], "then forgotten"


def _demo_graph() -> list[DemoNode]:
    shards = [node(f"shard {index}") for index in range(3)]
    caches = [node(f"cache {index}") for index in range(3)]
    tokenizer, draft = node("tokenizer"), node("draft")
    weights = node("weights", *shards)
    model = node("model", weights, *caches)
    server = node("server", model, tokenizer)
    speculative = node("speculative", model, draft, fail_fast=True)
    return [*shards, *caches, tokenizer, draft, weights, model, server, speculative]


@given(st.data())
def test_any_order_heard_is_shown_in_causal_order(data: st.DataObject) -> None:
    graph = _demo_graph()
    progress = CausalProgress()
    shown: list[DemoNode] = []
    for item in data.draw(st.permutations(graph)):
        reason = "draft failed" if item.label in ("draft", "speculative") else None
        item.finished, item.reason = 1.0, reason
        shown += progress.seen(item)
    assert sorted(item.label for item in shown) == sorted(item.label for item in graph)
    position = {item.label: at for at, item in enumerate(shown)}
    for item in graph:
        if item.fail_fast:
            assert position["draft"] < position[item.label]
        else:
            assert all(position[cause.label] < position[item.label] for cause in item.inputs)


async def test_the_demo_shows_a_merge_after_the_remote_input_it_waited_on(
    make_worker: Any,
) -> None:
    # The case: "server ready" was printed before the "KV cache" it waited on. The
    # coordinator's merge subscribed to the cache before the demo's watcher did, so it is
    # woken first and completes before the watcher of its input resumes.
    coordinator, owner = await make_worker(0xC0), await make_worker(2)
    await coordinator.connect(owner.address)
    lines: list[str] = []
    demo = _Demo(1, lines.append)
    demo.started = time.monotonic()
    cache = owner.events.new_event(label="KV cache")
    kv = DemoNode("KV cache on worker 0x2", cache.handle, 2)
    merged = coordinator.events.merge_events([cache.handle], label="server ready")
    demo.nodes += [kv, DemoNode("server ready", merged, 0xC0, [kv])]
    watchers = [asyncio.ensure_future(demo.watch(coordinator, item)) for item in demo.nodes]

    def both_wait() -> bool:
        return len(dict(coordinator.events.remote_waiters()).get(cache.handle, [])) == 2

    await wait_until(both_wait)  # the merge and the demo's watcher
    cache.trigger()
    await asyncio.gather(*watchers)
    assert [line.split("✔")[1].split("(")[0].strip() for line in lines] == [
        "KV cache on worker 0x2",
        "server ready",
    ], lines
