"""Asterisk behind the PBX adapter interface: AMI session(s) + the pure tracker + safe originates.

One task pumps the event session in order: every `Received` event goes through the tracker; every `Reconnected`
triggers a resync first (`FullyBooted` with an `Uptime` shorter than the outage means Asterisk restarted, so every
call it held is closed; otherwise `CoreShowChannels` tells which calls survived). Originates go over a second session
with `Events: off` when configured, so the event session is never held up by an action.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

import structlog

from bridge.config import Settings
from bridge.errors import AmiError, OriginateError
from bridge.model import CallEvent, OriginateRequest
from bridge.pbx.asterisk.classify import Classifier
from bridge.pbx.asterisk.connection import AmiConnection
from bridge.pbx.asterisk.items import Disconnected, Received, Reconnected
from bridge.pbx.asterisk.originate import build_originate
from bridge.pbx.asterisk.tracker import CallTracker
from bridge.pbx.base import Health

log = structlog.get_logger(__name__)



class AsteriskAdapter:
    kind = "asterisk"

    def __init__(self, events: AmiConnection, tracker: CallTracker, settings: Settings, *,
                 actions: AmiConnection | None = None) -> None:
        self._events = events
        self._actions = actions
        self._tracker = tracker
        self._settings = settings
        self._queue: asyncio.Queue[CallEvent | None] = asyncio.Queue()  # None ends events()
        self._pump: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._disconnected_at: float | None = None
        self._resyncs = 0
        self._last_problem = ""
        self._snapshot_ids: set[str] = set()
        self._first_resync = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: Settings) -> AsteriskAdapter:
        tracker = CallTracker(Classifier(settings.asterisk), pbx="asterisk")
        events = AmiConnection.from_settings(settings.ami, name="ami.events", frame_filter=tracker.frame_filter())
        actions = (AmiConnection.from_settings(settings.ami, events="off", name="ami.actions")
                   if settings.ami.action_session else None)
        return cls(events, tracker, settings, actions=actions)

    @property
    def tracker(self) -> CallTracker:
        return self._tracker

    @property
    def connection(self) -> AmiConnection:
        return self._events

    async def __aenter__(self) -> AsteriskAdapter:
        await self._events.__aenter__()
        if self._actions is not None:
            await self._actions.__aenter__()
        self._pump = asyncio.create_task(self._run_pump(), name="asterisk.pump")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self._actions is not None:
            await self._actions.aclose()
        await self._events.aclose()
        self._queue.put_nowait(None)

    async def wait_connected(self, timeout: float | None = None) -> None:
        await self._events.wait_connected(timeout)

    async def events(self) -> AsyncIterator[CallEvent]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    def _emit(self, events: list[CallEvent]) -> None:
        for event in events:
            self._queue.put_nowait(event)

    async def _run_pump(self) -> None:
        async for item in self._events.messages():
            match item:
                case Received(message=message, at=at):
                    try:
                        self._emit(self._tracker.feed(message, at))
                    except Exception:  # the tracker must never stop the pump; log and go on
                        log.exception("tracker_failed", ami_event=message.event)
                case Reconnected():
                    await self._resync(item)
                case Disconnected(reason=reason, at=at):
                    self._disconnected_at = at
                    self._last_problem = reason

    async def _resync(self, marker: Reconnected) -> None:
        now = marker.at
        booted = marker.fully_booted
        uptime = _int(booted.get("Uptime")) if booted is not None else None
        outage = now - self._disconnected_at if self._disconnected_at is not None else None
        # Asterisk that was up before the link dropped has been up longer than the outage; less means it restarted.
        if uptime is not None and outage is not None and uptime < outage:
            closed = self._tracker.restart(now)
            log.warning("asterisk_restarted", uptime=uptime, outage_seconds=round(outage, 1),
                        calls_closed=sum(1 for e in closed if e.kind == "ended"))
            self._emit(closed)
            self._snapshot_done(set())
            return
        try:
            items = await self._events.send_list_action("CoreShowChannels", {})
        except AmiError as exc:
            # The link went again; the next Reconnected resyncs.
            log.warning("ami_resync_failed", error=str(exc))
            return
        channels = [m for m in items if m.event == "CoreShowChannel"]
        events = self._tracker.resync(channels, now)
        self._resyncs += 1
        log.info("ami_resynced", live_channels=len(channels), calls_closed=sum(1 for e in events if e.kind == "ended"),
                 calls_tracked=len(self._tracker))
        self._emit(events)
        self._snapshot_done({m.get("Linkedid") or "" for m in channels} | {m.get("Uniqueid") or "" for m in channels})

    def _snapshot_done(self, ids: set[str]) -> None:
        self._snapshot_ids = ids
        self._first_resync.set()

    async def live_call_ids(self) -> set[str]:
        """Call ids with live channels at the first resync (after a daemon restart: which open CRM calls survive)."""
        await self._first_resync.wait()
        return set(self._snapshot_ids)

    async def originate(self, request: OriginateRequest) -> None:
        headers = build_originate(request, self._settings.originate,
                                  call_id_variable=self._settings.asterisk.crm_call_id_variable)
        action_id = f"b24-originate-{next(self._ids)}-{request.request_id}"[:100]
        conn = self._actions if self._actions is not None and self._actions.connected() else self._events
        # Noted before sending, so the tracker can pair the OriginateResponse with the CRM call whatever comes first.
        self._tracker.note_originate(action_id, request, time.time())
        try:
            await conn.send_action("Originate", [("ActionID", action_id), *headers])
        except AmiError as exc:
            raise OriginateError(f"Asterisk refused the originate: {exc}", reason=str(exc)) from exc
        log.info("originate_sent", crm_call_id=request.crm_call_id, extension=request.extension, action_id=action_id)

    def health(self) -> Health:
        conn = self._events.health()
        return Health(ok=conn.ok, detail=conn.detail or self._last_problem,
                      extra={**conn.extra, "calls_tracked": len(self._tracker), "resyncs": self._resyncs})


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
