"""Offline mode: fetch queued Bitrix24 events (`event.offline.get`) every few seconds instead of receiving POSTs.

For a bridge without a public address. The events go through the same `EventDispatcher` as POSTed ones (minus the
token check: we fetched them ourselves over an authenticated call). A failed fetch is logged and retried at the next
tick; one bad event never stops the others.
"""

from __future__ import annotations

import asyncio
import enum
from types import TracebackType

import structlog

from bridge.web.dispatch import EventDispatcher
from bridge.web.errors import HttpError
from bridge.web.ports import OfflineEventSource

log = structlog.get_logger(__name__)


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class OfflineEventPoller:
    def __init__(self, dispatcher: EventDispatcher, source: OfflineEventSource, *, interval_seconds: float,
                 fetch_timeout: float = 30.0) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be > 0 (http.offline_poll_seconds = 0 turns offline mode off)")
        self._dispatcher = dispatcher
        self._source = source
        self._interval = interval_seconds
        self._fetch_timeout = fetch_timeout
        self._task: asyncio.Task[None] | None = None
        self._state = _State.NEW
        self.polls = 0

    async def __aenter__(self) -> OfflineEventPoller:
        if self._state is not _State.NEW:
            raise RuntimeError(f"OfflineEventPoller is {self._state.value}; create a new one")
        self._state = _State.RUNNING
        self._task = asyncio.get_running_loop().create_task(self._run(), name="web.offline_poller")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._state = _State.CLOSED
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self._interval)

    async def poll_once(self) -> int:
        """Fetch and dispatch one batch; return how many events were accepted."""
        self.polls += 1
        try:
            async with asyncio.timeout(self._fetch_timeout):
                items = await self._source.fetch_offline_events()
        except TimeoutError:
            log.warning("offline_fetch_failed", error="timeout")
            return 0
        except Exception as exc:
            log.warning("offline_fetch_failed", error=type(exc).__name__)
            return 0
        accepted = 0
        for item in items:
            try:
                result = self._dispatcher.accept(list(item.items()), source="offline")
            except HttpError as exc:
                log.warning("offline_event_rejected", error_id=exc.error_id, reason=exc.message)
                continue
            except Exception as exc:
                log.error("offline_event_failed", error=type(exc).__name__, exc_info=True)
                continue
            accepted += result.status == "accepted"
        return accepted
