"""Originate commands waiting for the other site's receipt: bounded, each with a deadline and a future to await.

The bus resends what is due on every connection and every `retry` seconds; a receipt (ack) or the deadline settles
the command. Nothing here touches the network; the deadline timers run on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.bus.commands import CommandAck, OriginateCommand
from bridge.bus.errors import RemoteOriginateError

__all__ = ["PendingCommand", "PendingCommands"]


@dataclass(slots=True, eq=False)
class PendingCommand:
    command: OriginateCommand
    site: str
    topic: str
    payload: bytes
    future: asyncio.Future[None]
    timer: asyncio.TimerHandle | None = None
    # Loop time of the last send on the current connection; None: not yet sent on it.
    last_sent: float | None = None
    sends: int = field(default=0)


class PendingCommands:
    """At most `max_size` commands; `on_failed(pending, reason)` is told of every command that fails."""

    def __init__(self, *, max_size: int, deadline: float,
                 on_failed: Callable[[PendingCommand, str], None]) -> None:
        self._max_size = max_size
        self._deadline = deadline
        self._on_failed = on_failed
        self._items: dict[str, PendingCommand] = {}
        self.changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, command: OriginateCommand, *, site: str, topic: str, payload: bytes) -> asyncio.Future[None]:
        """Queue `command`; raise RemoteOriginateError at once when the queue is full."""
        if len(self._items) >= self._max_size:
            raise RemoteOriginateError(
                f"originate for site {site} not queued: {len(self._items)} commands already wait for delivery",
                site=site, command_id=command.id, reason="command queue full")
        loop = asyncio.get_running_loop()
        pending = PendingCommand(command=command, site=site, topic=topic, payload=payload, future=loop.create_future())
        pending.timer = loop.call_later(self._deadline, self._expire, command.id)
        self._items[command.id] = pending
        self.changed.set()
        return pending.future

    def due(self, now: float, retry: float) -> list[PendingCommand]:
        """Commands never sent on this connection, or sent more than `retry` seconds ago, oldest first."""
        return [p for p in self._items.values()
                if not p.future.done() and (p.last_sent is None or now - p.last_sent >= retry)]

    def next_due_in(self, now: float, retry: float) -> float | None:
        """Seconds until the next resend is due (None: nothing waits)."""
        times = [p.last_sent + retry - now for p in self._items.values() if p.last_sent is not None]
        return max(0.0, min(times)) if times else None

    def connection_lost(self) -> None:
        """Everything unacknowledged goes out again on the next connection."""
        for pending in self._items.values():
            pending.last_sent = None

    def settle(self, ack: CommandAck) -> PendingCommand | None:
        """Apply a receipt; returns the settled command (None: unknown id, already settled, or the wrong site)."""
        pending = self._items.get(ack.id)
        if pending is None or pending.site != ack.site:
            return None
        self._remove(ack.id)
        if pending.future.done():
            return None
        if ack.status == "accepted":
            pending.future.set_result(None)
        else:
            reason = ack.reason or "rejected"
            self._fail(pending, f"site {pending.site} rejected the command: {reason}", reason)
        return pending

    def forget(self, command_id: str) -> None:
        """The caller stopped waiting (cancelled): never send it again."""
        self._remove(command_id)

    def fail_all(self, reason: str) -> None:
        for command_id in list(self._items):
            pending = self._remove(command_id)
            if pending is not None and not pending.future.done():
                self._fail(pending, f"originate for site {pending.site} not delivered: {reason}", reason)

    def _expire(self, command_id: str) -> None:
        pending = self._remove(command_id)
        if pending is not None and not pending.future.done():
            reason = f"no receipt from site {pending.site} within {self._deadline:g}s"
            self._fail(pending, f"originate not delivered: {reason}", reason)

    def _fail(self, pending: PendingCommand, message: str, reason: str) -> None:
        pending.future.set_exception(RemoteOriginateError(message, site=pending.site,
                                                          command_id=pending.command.id, reason=reason))
        self._on_failed(pending, reason)

    def _remove(self, command_id: str) -> PendingCommand | None:
        pending = self._items.pop(command_id, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()
        return pending
