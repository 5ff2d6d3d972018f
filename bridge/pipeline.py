"""Where every CallEvent goes, whichever PBX or web request produced it: log, metrics, MQTT, policy, outbox.

The outbox write is the commit point: once `handle` returns, the Bitrix24 operations the event implies are on disk
and will be sent exactly once, whatever happens to the portal or to this process. One event that trips a bug
anywhere on this path is logged and skipped; it never stops the events behind it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import structlog

from bridge.card_timer import CardTimer
from bridge.errors import StoreBusy, StoreError
from bridge.metrics import Metrics
from bridge.model import AgentsRinging, CallEnded, CallEvent, event_to_json
from bridge.sync.operations import OpenCallState, PolicyStep
from bridge.sync.outbox import Outbox
from bridge.sync.policy import CallPolicy

__all__ = ["EventPublisher", "Pipeline"]

log = structlog.get_logger("bridge.calls")

RECENT_CALLS = 20
# While another process holds the store's write lock, steps wait in memory (in order) and are retried this often.
BUSY_RETRY_SECONDS = 0.1
# Beyond this many waiting steps the lock is treated as a store failure (something is badly wrong).
MAX_WAITING_STEPS = 100_000


class EventPublisher(Protocol):
    def publish_event(self, event: CallEvent) -> None: ...


class Pipeline:
    def __init__(self, policy: CallPolicy, outbox: Outbox, *, metrics: Metrics | None = None,
                 bus: EventPublisher | None = None, on_event: Callable[[CallEvent], None] | None = None,
                 card_timer: CardTimer | None = None) -> None:
        self._policy = policy
        self._outbox = outbox
        self._metrics = metrics
        self._bus = bus
        self._on_event = on_event
        self._card_timer = card_timer
        self.events_seen = 0
        self.store_failures = 0
        self.last_store_error: str | None = None
        self.policy_failures = 0
        self.store_waits = 0
        self.recent_ended: deque[dict[str, object]] = deque(maxlen=RECENT_CALLS)
        # Steps not yet on disk because the store was locked by another process; written first, in order.
        self._waiting: deque[tuple[str, str, PolicyStep]] = deque()
        self._waiting_since: float | None = None
        self._retry: asyncio.TimerHandle | None = None

    @property
    def active_calls(self) -> int:
        """Calls started and not yet ended, as the policy sees them."""
        return self._policy.active_calls

    async def submit(self, event: CallEvent) -> None:
        """The web layer's EventSink: synthetic events (failed click-to-call) take the same path."""
        self.handle(event)

    def handle(self, event: CallEvent) -> None:
        self.events_seen += 1
        _log_event(event)
        if isinstance(event, CallEnded):
            self.recent_ended.append(event.call.to_json())
        if self._bus is not None:
            try:
                self._bus.publish_event(event)
            except Exception:
                log.exception("event_publish_failed", call_id=event.call_id, kind=event.kind)
        try:
            step = self._policy.step(event)
        except Exception:
            self.policy_failures += 1
            log.exception("policy_failed", call_id=event.call_id, kind=event.kind)
        else:
            self._time_card(event, step.call_key)
            self._write(event, step)
        if self._metrics is not None:
            self._metrics.active_calls(self._policy.active_calls)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("event_observer_failed", call_id=event.call_id, kind=event.kind)

    def close_orphan(self, state: OpenCallState, at: datetime) -> int:
        """Finish a call that was live before a restart and whose channels are gone; returns the ops written."""
        ops = self._policy.close_orphan(state, at)
        self._outbox.enqueue(ops, close=[state.call_key])
        return len(ops)

    def _time_card(self, event: CallEvent, call_key: str | None) -> None:
        """Ring-to-card: the clock starts before the ops are written, so the dispatcher cannot beat it."""
        timer = self._card_timer
        if timer is None or call_key is None:
            return
        if isinstance(event, AgentsRinging):
            timer.ringing(call_key)
        elif isinstance(event, CallEnded):
            timer.ended(call_key)

    @property
    def waiting_steps(self) -> int:
        """Steps held in memory while the store is locked by another process."""
        return len(self._waiting)

    def _write(self, event: CallEvent, step: PolicyStep) -> None:
        if step.note:
            log.info("call_not_synced", call_id=event.call_id, reason=step.note)
        self._waiting.append((event.call_id, event.kind, step))
        self._flush()

    def _flush(self) -> None:
        """Write waiting steps in order. A locked store (StoreBusy) is retried shortly from the event loop, never
        waited for in place: the AMI reader and the HTTP server must keep going meanwhile."""
        while self._waiting:
            call_id, kind, step = self._waiting[0]
            try:
                self._outbox.write(step)
            except StoreBusy as exc:
                if len(self._waiting) <= MAX_WAITING_STEPS:
                    self._retry_later(str(exc))
                    return
                self._fail(call_id, kind, exc)
            except StoreError as exc:
                self._fail(call_id, kind, exc)
            self._waiting.popleft()
        if self._waiting_since is not None:
            log.info("outbox_unlocked", waited_seconds=round(time.monotonic() - self._waiting_since, 3))
            self._waiting_since = None

    def _fail(self, call_id: str, kind: str, exc: StoreError) -> None:
        # Nothing else can keep the record: make it loud (readiness fails, systemd restarts us).
        self.store_failures += 1
        self.last_store_error = str(exc)
        log.critical("outbox_write_failed", call_id=call_id, kind=kind, error=str(exc))

    def _retry_later(self, error: str) -> None:
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
            self.store_waits += 1
            log.warning("outbox_locked", error=error, waiting_steps=len(self._waiting))
        if self._retry is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the next event flushes
            return
        self._retry = loop.call_later(BUSY_RETRY_SECONDS, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._flush()

    async def flush(self, timeout: float) -> bool:
        """At shutdown: keep trying to write what waits for a locked store, up to `timeout`; True when all is on
        disk."""
        deadline = time.monotonic() + timeout
        while self._waiting and time.monotonic() < deadline:
            self._flush()
            if self._waiting:
                await asyncio.sleep(BUSY_RETRY_SECONDS)
        if self._waiting:
            log.critical("outbox_steps_lost_at_shutdown", steps=len(self._waiting),
                         reason="the store stayed locked by another process")
        return not self._waiting


def _log_event(event: CallEvent) -> None:
    """One JSON line per call state change, with the ids operators search for."""
    fields = event_to_json(event)
    fields.pop("kind")
    if isinstance(event, CallEnded):
        call = fields.pop("call")
        assert isinstance(call, dict)
        fields.update({k: call[k] for k in ("direction", "disposition", "agent", "external_number", "line",
                                            "talk_seconds", "crm_call_id", "hangup_cause", "failure_reason")})
    log.info(f"call_{event.kind}", **fields)
