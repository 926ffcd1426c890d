"""The layers built from velo_am's hot set (handler execution, the receiving side of flow
control, the events layer's subscriptions), from the build :mod:`._select` chose: the
compiled classes where it chose the compiled build. Apart from ``_select`` so that the
codec's users (the outbound path among them) import no layer above them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._select import COMPILED

__all__ = ["HandlerExecution", "ReceiveWindows", "RemoteEvents", "Serving"]

if TYPE_CHECKING or not COMPILED:
    from ._execution import HandlerExecution, Serving
    from ._receipts import ReceiveWindows
    from ._remote import RemoteEvents
else:
    from ._compiled._execution import HandlerExecution, Serving
    from ._compiled._receipts import ReceiveWindows
    from ._compiled._remote import RemoteEvents
