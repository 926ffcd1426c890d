"""A worker's own stall (velo_am._stall), alone: a late tick is this worker's silence."""

from __future__ import annotations

from velo_am._stall import StallWatch


def test_a_loss_seen_on_waking_from_a_stall_names_this_worker() -> None:
    watch = StallWatch(0x2, window=1.0)
    for now in (0.0, 0.2, 0.4):
        watch.ran(now)
    assert watch.explain("lost: silent", 0.5) == "lost: silent", "no stall: the peer's word"
    # Frozen from 0.4 to 3.0: the loss arrives before the next tick, then right after it.
    text = watch.explain("lost: silent", 3.0)
    assert "suspect this worker, not the peer: worker 0x2 was itself stalled for 2.6 s" in text
    watch.ran(3.0)
    for now in (3.2, 3.4, 3.6, 3.8, 4.0):
        watch.ran(now)
    assert "stalled for 2.6 s" in watch.explain("lost: no connection", 4.0), "settling"
    for now in (4.2, 4.4, 4.6, 4.8, 5.0, 5.2):
        watch.ran(now)
    assert watch.explain("lost: silent", 5.3) == "lost: silent", "long after: the peer's"
