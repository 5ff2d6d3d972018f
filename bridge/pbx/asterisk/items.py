"""What `AmiConnection.messages()` yields, and the bounded drop-oldest queue that carries it.

The reader must never wait for the consumer (Asterisk closes a session whose writes block for 100 ms), so the queue
never blocks a producer: when full it drops the oldest *event* and counts it. Markers are kept, because the adapter
needs every `Reconnected` to run a resync.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from bridge.pbx.asterisk.protocol import AmiMessage

__all__ = ["AmiItem", "Disconnected", "DropOldestQueue", "QueueClosedError", "Received", "Reconnected"]


@dataclass(frozen=True, slots=True)
class Received:
    """One AMI event and its arrival time (`time.time()`), in the order Asterisk sent it."""

    message: AmiMessage
    at: float


@dataclass(frozen=True, slots=True)
class Reconnected:
    """A (re)login succeeded; comes before any event of the new session, so the consumer can resync first.

    `fully_booted` is the session's `FullyBooted` event when it arrived within the login wait (its `Uptime` tells
    whether Asterisk restarted during the outage); it is not repeated as a `Received` item.
    """

    banner: str | None
    fully_booted: AmiMessage | None
    at: float


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The logged-in session was lost; events between now and the next `Reconnected` are gone for good."""

    reason: str
    at: float


AmiItem = Received | Reconnected | Disconnected


class QueueClosedError(Exception):
    """The connection was closed and every queued item has been taken."""


class DropOldestQueue:
    """Single-consumer FIFO of `AmiItem`s that drops the oldest `Received` when full instead of blocking."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("queue maxsize must be at least 1")
        self._maxsize = maxsize
        self._items: deque[AmiItem] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def put(self, item: AmiItem) -> bool:
        """Append an item; return True when an older event had to be dropped to make room."""
        dropped = False
        if len(self._items) >= self._maxsize:
            self._drop_oldest_event()
            dropped = True
        self._items.append(item)
        self._wakeup.set()
        return dropped

    def _drop_oldest_event(self) -> None:
        items = self._items
        for index, item in enumerate(items):
            if isinstance(item, Received):
                del items[index]
                break
        else:
            items.popleft()
        self.dropped += 1

    def close(self) -> None:
        """Let the consumer finish what is queued, then stop."""
        self._closed = True
        self._wakeup.set()

    async def get(self) -> AmiItem:
        while not self._items:
            if self._closed:
                raise QueueClosedError
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft()
