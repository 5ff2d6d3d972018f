"""Ring-to-card latency: from a call's agents first ringing to the portal accepting the op that shows its card.

The pipeline calls `ringing(call_key)` when it handles a call's first `ringing` event and `ended(call_key)` when the
call ends; the dispatcher's `on_done` hook calls `accepted(op)` for every op the portal accepted. The first accepted
op that puts a card on screen (a `show`, or a `register` with SHOW=1) is measured once, then the call is forgotten.
Times come from the monotonic clock of this process, never from the PBX. Memory is bounded: past `max_calls` calls
waiting for a card, the oldest is forgotten (not measured).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from bridge.sync.operations import CrmOp, OpKind

__all__ = ["MAX_CALLS", "CardTimer"]

MAX_CALLS = 10_000


class CardTimer:
    def __init__(self, observe: Callable[[float], None], *, clock: Callable[[], float] = time.monotonic,
                 max_calls: int = MAX_CALLS) -> None:
        if max_calls < 1:
            raise ValueError("max_calls must be at least 1")
        self._observe = observe
        self._clock = clock
        self._max_calls = max_calls
        self._rang_at: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rang_at)

    def ringing(self, call_key: str) -> None:
        """An agent's phone rings for `call_key`; only the first ring of a call starts the clock."""
        if call_key in self._rang_at:
            return
        self._rang_at[call_key] = self._clock()
        while len(self._rang_at) > self._max_calls:
            self._rang_at.popitem(last=False)

    def ended(self, call_key: str) -> None:
        self._rang_at.pop(call_key, None)

    def accepted(self, op: CrmOp) -> None:
        """The dispatcher's `on_done`: record the elapsed time for the first card-showing op of a timed call."""
        if not _shows_card(op):
            return
        started = self._rang_at.pop(op.call_key, None)
        if started is not None:
            self._observe(max(self._clock() - started, 0.0))


def _shows_card(op: CrmOp) -> bool:
    if op.kind is OpKind.SHOW:
        return True
    if op.kind is OpKind.REGISTER:
        try:
            return int(op.params.get("SHOW", 1)) != 0
        except (TypeError, ValueError):
            return False
    return False
