"""What a waiter is told: a generation's outcome, or that none could be learned.

A waiter is a ``(key, callback)`` pair; the callback gets ``(key, reason)``: ``None`` for a
trigger, the poison reason for a poison, both *outcomes*, final for that generation; or, from
a runtime that serves other systems' handles, :class:`Unanswered` when the outcome could not
be learned (a remote owner lost), which is no outcome at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_REASON_LENGTH",
    "PENDING",
    "Answer",
    "Held",
    "Outcome",
    "Unanswered",
    "Wake",
    "WakeCallback",
    "Waiters",
    "cap_reason",
    "holding",
    "waiter_keys",
    "wake_waiters",
    "without",
]

logger = logging.getLogger(__name__)


#: Longest poison reason stored, in characters; longer ones keep their head and say what was cut.
MAX_REASON_LENGTH: Final = 16 * 1024


def cap_reason(reason: str) -> str:
    """Bound a reason's size: keep its head and say how much was cut."""
    if len(reason) <= MAX_REASON_LENGTH:
        return reason
    cut = len(reason) - MAX_REASON_LENGTH
    return f"{reason[:MAX_REASON_LENGTH]}… [{cut} more characters cut]"


class _Pending:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


#: Returned by :meth:`EventCore.add_waiter` when the waiter was registered.
PENDING: Final = _Pending()

#: ``None`` for a triggered generation, the reason for a poisoned one, or :data:`PENDING`.
Outcome = str | None | _Pending


@dataclass(frozen=True, slots=True)
class Unanswered:
    """A wake-up without an outcome: whoever answers for the generation could not (a remote
    owner was lost, closed or is unreachable). It is no verdict: an await raises
    :class:`~velo_event.OutcomeUnknown` with ``reason``, a merge counts the input as failed,
    and nothing records it as the generation's outcome. A core answers a handle of an earlier
    incarnation of its system with one (:attr:`~velo_event.lowlevel.EventCore.stale`): that
    incarnation's outcomes died with it."""

    reason: str


#: What a source answers for a handle now: an :data:`Outcome`, or :class:`Unanswered`.
Answer = str | None | _Pending | Unanswered


#: What a waiter is woken with: ``None`` (triggered), the poison reason, or :class:`Unanswered`.
Wake = str | None | Unanswered
WakeCallback = Callable[[Hashable, Wake], None]


#: A generation's waiters: a ``key -> callback`` mapping, or one ``(key, callback)`` pair (a
#: core's slot keeps its one waiter so: the common case, without a dict).
Waiters = Mapping[Hashable, WakeCallback] | tuple[Hashable, WakeCallback]


#: What a core's slot holds (under its lock): its one waiter as a pair (the common case,
#: without a dict), more in a dict.
Held = dict[Hashable, WakeCallback] | tuple[Hashable, WakeCallback]


def holding(held: Held | None, key: Hashable, callback: WakeCallback) -> Held:
    """``held`` with the waiter added (a waiter of an equal key replaced, as in a dict)."""
    if held is None:
        return (key, callback)
    if isinstance(held, tuple):
        return {held[0]: held[1], key: callback}  # equal keys: the later callback stays
    held[key] = callback
    return held


def without(held: Held | None, key: Hashable) -> Held | None:
    """``held`` without the waiter of ``key`` (harmless if it has none)."""
    if isinstance(held, tuple):
        kept = held[0]  # compared as a dict compares keys: identity, else hash, then equality
        return None if kept is key or (hash(kept) == hash(key) and kept == key) else held
    if held is not None:
        held.pop(key, None)
    return held


def waiter_keys(held: Held | None) -> list[Hashable]:
    return [held[0]] if isinstance(held, tuple) else list(held or ())


def wake_waiters(waiters: Waiters, reason: Wake) -> None:
    """Run wake callbacks ``callback(key, reason)``, outside any lock. A failing callback is
    logged and never stops the others."""
    if isinstance(waiters, tuple):  # one waiter: the hot path of every wake-up
        key, callback = waiters
        try:
            callback(key, reason)
        except Exception:
            logger.exception("event wake-up callback %r failed", callback)
    elif isinstance(waiters, dict):  # the core's: a compiled build iterates a dict natively
        for key, callback in waiters.items():
            _wake(key, callback, reason)
    else:
        for key, callback in waiters.items():
            _wake(key, callback, reason)


def _wake(key: Hashable, callback: WakeCallback, reason: Wake) -> None:
    try:
        callback(key, reason)
    except Exception:
        logger.exception("event wake-up callback %r failed", callback)
