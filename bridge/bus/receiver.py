"""Incoming originate commands: check them, drop stale ones and repeats, send a receipt, run the handler.

The receipt goes out before the handler finishes (it confirms delivery, not the call): the sender stops resending,
and this bridge reports a PBX refusal itself, as for a local click-to-call. No broker I/O here: the bus passes a
`publish(topic, payload)` coroutine function, so this is tested without a broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from bridge.bus.commands import CommandAck, OriginateCommand, RecentIds, decode_command, encode_ack
from bridge.bus.counters import BusCounters
from bridge.bus.errors import CommandFormatError
from bridge.bus.topics import ack_topic
from bridge.model import OriginateRequest

__all__ = ["CommandReceiver", "OnOriginate", "Publish"]

log = structlog.get_logger(__name__)

OnOriginate = Callable[[OriginateRequest], Awaitable[None]]
Publish = Callable[[str, bytes], Awaitable[None]]


class CommandReceiver:
    """Handles the payloads of `{prefix}/{pbx_id}/commands/originate`; `aclose()` cancels handlers still running."""

    def __init__(self, *, prefix: str, pbx_id: str, on_originate: OnOriginate, counters: BusCounters,
                 dedup_seconds: float, wall_clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._prefix, self._pbx_id = prefix, pbx_id
        self._on_originate = on_originate
        self._counters = counters
        self._recent = RecentIds(ttl=dedup_seconds)
        self._wall_clock, self._monotonic = wall_clock, monotonic
        self._handlers: set[asyncio.Task[None]] = set()

    async def handle(self, payload: bytes, *, retained: bool, publish: Publish) -> None:
        self._counters.commands_received += 1
        try:
            if retained:
                raise CommandFormatError("retained commands are refused (they would replay on every connect)")
            command = decode_command(payload)
        except CommandFormatError as exc:
            self._counters.commands_malformed += 1
            log.warning("mqtt_command_malformed", reason=str(exc), command_id=exc.command_id, origin=exc.origin)
            if exc.command_id is not None and exc.origin is not None and exc.origin != self._pbx_id:
                await self._ack(publish, exc.origin, exc.command_id, reason=str(exc))
            return
        fields = {"command_id": command.id, "origin": command.origin, "request_id": command.request.request_id}
        if command.expired(self._wall_clock()):
            self._counters.commands_expired += 1
            log.warning("mqtt_command_expired", expires_at=command.expires_at, **fields)
            await self._ack(publish, command.origin, command.id, reason="expired before it arrived")
            return
        if self._recent.seen_before(command.id, self._monotonic()):
            self._counters.commands_duplicate += 1
            log.info("mqtt_command_duplicate", **fields)
            await self._ack(publish, command.origin, command.id)
            return
        log.info("mqtt_command_received", extension=command.request.extension, **fields)
        self._start_handler(command)
        await self._ack(publish, command.origin, command.id)

    async def aclose(self) -> None:
        tasks = list(self._handlers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _ack(self, publish: Publish, origin: str, command_id: str, *, reason: str | None = None) -> None:
        ack = CommandAck(id=command_id, site=self._pbx_id, status="accepted" if reason is None else "rejected",
                         reason=reason)
        await publish(ack_topic(self._prefix, origin), encode_ack(ack))

    def _start_handler(self, command: OriginateCommand) -> None:
        task = asyncio.create_task(self._run_handler(command), name=f"mqtt[{self._pbx_id}].originate.{command.id}")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _run_handler(self, command: OriginateCommand) -> None:
        try:
            await self._on_originate(command.request)
        except Exception:
            log.exception("mqtt_originate_handler_failed", command_id=command.id,
                          request_id=command.request.request_id)
