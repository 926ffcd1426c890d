"""What the subscriptions layer (:mod:`._remote`) shares with the rest of velo_am, pure, so
that both of its builds share it too: :class:`Messenger`, what the layer needs of its worker;
:class:`Subscription`, the owner side's waiter key (inspection recognises it among a core's
waiters); :func:`read_status_reply`, an owner's ``_ev.status`` answer, checked."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from velo_event import EventHandle, EventStatus

from ._select import protocol as p

__all__ = ["Messenger", "Subscription", "read_status_reply"]


@dataclass(frozen=True, slots=True)
class Messenger:
    """What the events layer needs of its worker, and nothing more."""

    #: The worker's event loop, or ``None`` before it starts.
    loop: Callable[[], asyncio.AbstractEventLoop | None]
    is_connected: Callable[[int], bool]
    #: A peer's state as this worker knows it (``"alive"``, ``"lost"``…), ``None`` if unknown.
    peer_state: Callable[[int], str | None]
    #: Whether a worker is a short-lived observer (a ``velo-am`` command), not a member.
    is_observer: Callable[[int], bool]
    #: Send update items to a connected peer now (raises ``AMError``).
    post: Callable[[int, Sequence[EventHandle], Sequence[p.EventDone]], None]
    #: Fire-and-forget a runtime handler on a connected peer now (raises ``AMError``).
    send_now: Callable[[int, str, Any], None]
    #: Connect to a worker by id: mesh, discovery (raises ``AMError``).
    route: Callable[[int], Awaitable[object]]
    #: ``Worker.call`` of a runtime handler.
    call: Callable[[int, str, Any, float | None], Awaitable[Any]]
    #: Run a coroutine in the background, on the loop (cancelled when the worker closes).
    spawn: Callable[[Awaitable[Any]], None]


class Subscription(NamedTuple):
    """The owner side's waiter key: worker ``subscriber`` awaits ``handle``."""

    subscriber: int
    handle: EventHandle


_STATUSES: Final = {
    p.EventStatusCode.PENDING: EventStatus.PENDING,
    p.EventStatusCode.READY: EventStatus.READY,
    p.EventStatusCode.POISONED: EventStatus.POISONED,
    p.EventStatusCode.UNKNOWN: EventStatus.UNKNOWN,
}


def read_status_reply(owner: int, reply: Any) -> tuple[EventStatus, str | None]:
    """An owner's ``_ev.status`` answer, ``[code, reason]``, checked: pending and ready carry
    no reason, poisoned and unknown a str. Raises ``ProtocolError`` otherwise (a verdict read
    wrong would be remembered: a poison cached as ready, or the reverse)."""
    try:
        code, reason = reply
        status = _STATUSES[p.EventStatusCode(code)]
    except (TypeError, ValueError, KeyError):
        raise p.ProtocolError(
            f"worker {owner:#x} answered _ev.status with {reply!r:.200}"
        ) from None
    needs_reason = status in (EventStatus.POISONED, EventStatus.UNKNOWN)
    if not isinstance(reason, str) if needs_reason else reason is not None:
        raise p.ProtocolError(f"worker {owner:#x} answered _ev.status with {reply!r:.200}")
    return status, reason
