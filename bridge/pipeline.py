"""Where every CallEvent goes, whichever PBX or web request produced it: log, metrics, MQTT, policy, outbox.

The outbox write is the commit point: once `handle` returns, the Bitrix24 operations the event implies are on disk
and will be sent exactly once, whatever happens to the portal or to this process. One event that trips a bug
anywhere on this path is logged and skipped; it never stops the events behind it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import structlog

from bridge.card_timer import CardTimer
from bridge.errors import StoreError
from bridge.metrics import Metrics
from bridge.model import AgentsRinging, CallEnded, CallEvent, event_to_json
from bridge.sync.operations import OpenCallState, PolicyStep
from bridge.sync.outbox import Outbox
from bridge.sync.policy import CallPolicy

__all__ = ["EventPublisher", "Pipeline"]

log = structlog.get_logger("bridge.calls")

RECENT_CALLS = 20


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
        self.recent_ended: deque[dict[str, object]] = deque(maxlen=RECENT_CALLS)

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

    def _write(self, event: CallEvent, step: PolicyStep) -> None:
        if step.note:
            log.info("call_not_synced", call_id=event.call_id, reason=step.note)
        try:
            self._outbox.write(step)
        except StoreError as exc:
            # Nothing else can keep the record: make it loud (readiness fails, systemd restarts us).
            self.store_failures += 1
            self.last_store_error = str(exc)
            log.critical("outbox_write_failed", call_id=event.call_id, kind=event.kind, error=str(exc))


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
