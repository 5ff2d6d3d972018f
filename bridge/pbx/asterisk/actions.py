"""Matching AMI replies to the actions that asked for them, by ActionID only (never by arrival order).

A plain action completes with its `Response:`; a list action (CoreShowChannels, Status...) starts with
`EventList: start` and collects the events carrying its ActionID until the `*Complete` event. Events that merely
share an ActionID after the action is done (an Originate's `OriginateResponse`) are not consumed here: they are
ordinary events for the queue. No I/O: the connection writes, this module only keeps the books.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bridge.errors import AmiActionError, AmiConnectionError
from bridge.pbx.asterisk.protocol import AmiMessage

__all__ = ["PendingActions", "Reply"]

Reply = tuple[AmiMessage, list[AmiMessage]]
_TRUE = frozenset({"true", "yes", "1", "on", "y", "t"})


@dataclass(slots=True)
class _Pending:
    action: str
    future: asyncio.Future[Reply]
    collect: bool
    response: AmiMessage | None = None
    items: list[AmiMessage] = field(default_factory=list)


class PendingActions:
    """ActionID bookkeeping for one connection; ids are `<prefix>-<counter>`."""

    def __init__(self, id_prefix: str) -> None:
        self._prefix = id_prefix
        self._counter = itertools.count(1)
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def prepare(
        self, action: str, headers: Mapping[str, str] | Iterable[tuple[str, str]]
    ) -> tuple[str, list[tuple[str, str]]]:
        """Headers ready to encode, `ActionID` first (the caller's, if it gave a unique one)."""
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        name = action.strip().lower()
        if name in ("login", "challenge"):
            raise ValueError("Login and Challenge are sent by the connection itself")
        action_id: str | None = None
        pairs: list[tuple[str, str]] = []
        for key, value in items:
            if key.lower() == "actionid":
                action_id = value
            else:
                pairs.append((key, value))
        if action_id is None:
            action_id = f"{self._prefix}-{next(self._counter)}"
        elif action_id in self._pending:
            raise ValueError(f"ActionID {action_id!r} is already pending")
        if name == "originate":
            async_values = [value.strip().lower() for key, value in pairs if key.lower() == "async"]
            if not async_values:
                pairs.append(("Async", "true"))
            elif any(value not in _TRUE for value in async_values):
                raise ValueError("Originate must be asynchronous (Async: true): a synchronous one stops events")
        return action_id, [("ActionID", action_id), *pairs]

    def register(self, action_id: str, action: str, *, collect: bool) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[action_id] = _Pending(action, future, collect)
        return future

    def discard(self, action_id: str) -> None:
        self._pending.pop(action_id, None)

    def fail_all(self, reason: str) -> None:
        """Link lost: every waiting action fails; none is re-sent (the caller decides)."""
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(AmiConnectionError(f"{pending.action}: {reason} before the reply"))

    def route(self, message: AmiMessage) -> bool:
        """Give a message to the action it answers; False means it is an ordinary event (or an orphan reply)."""
        action_id = message.action_id
        pending = self._pending.get(action_id) if action_id is not None else None
        if pending is None:
            return False
        future = pending.future
        if future.done():
            return message.event is None
        if message.response is not None:
            if message.response.lower() == "error":
                future.set_exception(AmiActionError(message.get("Message") or "error", action=pending.action,
                                                    response=message.response))
            elif pending.collect and _starts_list(message):
                pending.response = message
            else:
                future.set_result((message, []))
            return True
        if not pending.collect or pending.response is None or message.event is None:
            return False
        event_list = (message.get("EventList") or "").lower()
        if event_list == "complete" or message.event.endswith("Complete"):
            future.set_result((pending.response, pending.items))
        elif event_list == "cancelled":
            future.set_exception(AmiActionError(f"{pending.action} list was cancelled", action=pending.action))
        else:
            pending.items.append(message)
        return True


def _starts_list(message: AmiMessage) -> bool:
    if (message.get("EventList") or "").lower() == "start":
        return True
    # Some old actions only say "... will follow".
    return "will follow" in (message.get("Message") or "").lower()
