"""Finesse Dialog updates -> normalized CallEvents (pure: data in, data out; time only from its arguments).

Keys: a call is keyed by the first dialog id seen for it (Finesse's dialog id is the CTI call id), so the same call
seen by two agents' notification nodes is one call. A consult dialog joins the call it is associated with
(`associatedDialogUri`, or `secondaryId` after a transfer). Observers are the agents whose Dialogs node reported the
dialog; when the last observer loses a dialog that was not seen to end (transfer to an unmonitored phone, requeue,
link outage), the call is orphaned and ends `orphan_grace` seconds later at the time it was lost, unless an agent
picks it up again first.

Click-to-call: `expect_originate` notes the request before MAKE_CALL is sent; the first outbound dialog from that
extension to that number (or carrying the configured call variable) takes its `crm_call_id`. If Finesse reports a
CTI error instead, or no dialog shows up in time, a started+ended pair with disposition `failed` finishes the CRM call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from bridge.model import CallEnded, CallEvent, CallRecord, CallStarted, Direction, Disposition
from bridge.pbx.cisco.calls import DIALOG_OVER, DialogView, TrackedCall, classify
from bridge.pbx.cisco.dialog import Dialog, Update, dialog_id_from_uri

__all__ = ["FinesseTracker", "PendingOriginate"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PendingOriginate:
    request_id: str
    extension: str
    number: str  # as the CRM gave it (E.164)
    dialed: str  # as sent in toAddress
    crm_call_id: str | None
    at: datetime  # local time the request was made
    deadline: datetime  # local time after which a missing dialog means failure


@dataclass(slots=True)
class _Tombstone:
    call_id: str
    ended_local: datetime
    reopenable: bool
    reopened: int = 0


def _digits(value: str | None) -> str:
    return "".join(ch for ch in value or "" if ch.isdigit())


class FinesseTracker:
    """Feed it notifications, resync snapshots and clock ticks; it returns the CallEvents they imply."""

    def __init__(self, *, agents: Mapping[str, str], pbx: str = "cisco", crm_call_id_variable: str | None = None,
                 orphan_grace: float = 30.0, tombstone_seconds: float = 3600.0) -> None:
        # agents: Finesse user id -> extension
        self._agents = dict(agents)
        self._exts = frozenset(agents.values())
        self._pbx = pbx
        self._variable = crm_call_id_variable
        self._grace = timedelta(seconds=orphan_grace)
        self._tomb_ttl = timedelta(seconds=tombstone_seconds)
        self._calls: dict[str, TrackedCall] = {}
        self._alias: dict[str, str] = {}  # dialog id -> call id
        self._tombstones: dict[str, _Tombstone] = {}  # dialog id -> how its call ended
        self._pending: list[PendingOriginate] = []
        # Smallest (local receive time - PBX event time) seen: turns a local time into an estimate of PBX time.
        self._offset: timedelta | None = None

    @property
    def live_calls(self) -> int:
        return len(self._calls)

    @property
    def pending_originates(self) -> int:
        return len(self._pending)

    def _observe_clock(self, dialog: Dialog, received_at: datetime) -> None:
        latest = dialog.latest_change
        if latest is not None:
            delay = received_at - latest
            self._offset = delay if self._offset is None else min(self._offset, delay)

    def _pbx_now(self, received_at: datetime) -> datetime:
        """When something is noticed without a PBX time of its own (a loss), estimate it on the PBX clock."""
        return received_at - (self._offset or timedelta(0))

    # ---- inputs --------------------------------------------------------------------------------------------------

    def apply(self, user_id: str, update: Update, received_at: datetime) -> list[CallEvent]:
        """One notification from the Dialogs node of `user_id`."""
        events: list[CallEvent] = []
        if update.errors:
            events += self._on_errors(user_id, update, received_at)
        for dialog in update.dialogs:
            if not _is_voice(dialog):
                continue
            self._observe_clock(dialog, received_at)
            if update.event == "DELETE":
                events += self._removed(user_id, dialog, received_at)
            elif update.event in ("POST", "PUT"):
                events += self._seen(user_id, dialog, received_at)
        return events

    def resync(self, user_id: str, dialogs: Sequence[Dialog], received_at: datetime) -> list[CallEvent]:
        """The full current Dialogs list of `user_id` (GET after a (re)connect): adds, updates, and losses."""
        events: list[CallEvent] = []
        present = set()
        for dialog in dialogs:
            if _is_voice(dialog):
                self._observe_clock(dialog, received_at)
                present.add(dialog.id)
                events += self._seen(user_id, dialog, received_at)
        ext = self._agents.get(user_id)
        for call in list(self._calls.values()):
            lost = [v for v in call.views.values() if user_id in v.observers and v.id not in present]
            if not lost:
                continue
            at = call.stamp(self._pbx_now(received_at))
            for view in lost:
                view.observers.discard(user_id)
                if ext is not None:
                    call.drop_agent_legs(view, ext, at)
            events += call.derive(at)
            events += self._settle(call, at, received_at)
        return events

    def expect_originate(self, pending: PendingOriginate) -> None:
        self._pending.append(pending)

    def cancel_originate(self, request_id: str) -> None:
        self._pending = [p for p in self._pending if p.request_id != request_id]

    def tick(self, now: datetime) -> list[CallEvent]:
        """Time passes (local clock): expire orphaned calls, overdue click-to-calls and old tombstones."""
        events: list[CallEvent] = []
        for call in list(self._calls.values()):
            if call.orphan_deadline is not None and now >= call.orphan_deadline and call.orphan_since is not None:
                log.info("finesse_call_lost", call_id=call.call_id)
                events += self._end(call, call.orphan_since, now, reopenable=True)
        for pending in [p for p in self._pending if now >= p.deadline]:
            self._pending.remove(pending)
            events += self._failed_originate(pending, "no Finesse dialog appeared for the click-to-call", now)
        for dialog_id in [d for d, t in self._tombstones.items() if now - t.ended_local > self._tomb_ttl]:
            del self._tombstones[dialog_id]
        return events

    # ---- dialogs -------------------------------------------------------------------------------------------------

    def _find(self, dialog: Dialog) -> TrackedCall | None:
        call_id = self._alias.get(dialog.id)
        if call_id is not None:
            return self._calls[call_id]
        for link in (dialog.associated_dialog_id, dialog.secondary_id):
            if link and link in self._alias:
                call = self._calls[self._alias[link]]
                self._alias[dialog.id] = call.call_id
                call.consulted = True
                return call
        return None

    def _seen(self, user_id: str, dialog: Dialog, received_at: datetime) -> list[CallEvent]:
        events: list[CallEvent] = []
        call = self._find(dialog)
        if call is None:
            tomb = self._tombstones.get(dialog.id)
            if tomb is not None and not (tomb.reopenable and _has_live_leg(dialog)):
                return []
            if _is_over(dialog) and self._peek_originate(dialog) is None:
                return []  # a finished dialog we never saw live (e.g. listed by GET during wrap-up)
            call = self._start(dialog, received_at, tomb)
            events.append(CallStarted(call_id=call.call_id, at=call.started_at, direction=call.direction,
                                      external_number=call.external_number, line=call.line,
                                      agent=call.caller_agent, crm_call_id=call.crm_call_id))
        view = self._view(call, dialog)
        view.observers.add(user_id)
        call.orphan_since = call.orphan_deadline = None
        at = call.merge(view, dialog, received_at)
        if call.crm_call_id is None and self._variable:
            call.crm_call_id = dialog.variable(self._variable) or None
        events += call.derive(at)
        events += self._settle(call, at, received_at)
        return events

    def _removed(self, user_id: str, dialog: Dialog, received_at: datetime) -> list[CallEvent]:
        call = self._find(dialog)
        if call is None:
            return []
        view = self._view(call, dialog)
        at = call.merge(view, dialog, received_at)
        view.observers.discard(user_id)
        if not view.over:
            at = call.stamp(max(at, self._pbx_now(received_at)))  # a loss, not a hang-up: it happened about now
        ext = self._agents.get(user_id)
        if ext is not None:
            call.drop_agent_legs(view, ext, at)
        events = call.derive(at)
        events += self._settle(call, at, received_at)
        return events

    @staticmethod
    def _view(call: TrackedCall, dialog: Dialog) -> DialogView:
        view = call.views.get(dialog.id)
        if view is None:
            view = call.views[dialog.id] = DialogView(dialog.id, dialog.state, consult=dialog.id != call.primary_dialog)
        return view

    def _start(self, dialog: Dialog, received_at: datetime, tomb: _Tombstone | None) -> TrackedCall:
        direction, external, line, caller = classify(dialog, self._exts)
        starts = [p.start_time for p in dialog.participants if p.start_time is not None]
        call_id = dialog.id
        if tomb is not None:
            tomb.reopened += 1
            call_id = f"{dialog.id}.{tomb.reopened}"
            del self._tombstones[dialog.id]
        crm = dialog.variable(self._variable) if self._variable else None
        pending = self._claim_originate(dialog, caller, crm)
        if pending is not None:
            crm = crm or pending.crm_call_id
            external = pending.number
        call = TrackedCall(call_id=call_id, pbx=self._pbx, direction=direction, external_number=external,
                           line=line, caller_agent=caller, crm_call_id=crm or None,
                           started_at=min(starts) if starts else (dialog.latest_change or received_at),
                           agent_exts=self._exts, primary_dialog=dialog.id)
        self._calls[call_id] = call
        self._alias[dialog.id] = call_id
        log.debug("finesse_call_started", call_id=call_id, direction=direction.value)
        return call

    def _peek_originate(self, dialog: Dialog) -> PendingOriginate | None:
        _, _, _, caller = classify(dialog, self._exts)
        crm = dialog.variable(self._variable) if self._variable else None
        return self._match_originate(dialog, caller, crm)

    def _claim_originate(self, dialog: Dialog, caller: str | None, crm: str | None) -> PendingOriginate | None:
        pending = self._match_originate(dialog, caller, crm)
        if pending is not None:
            self._pending.remove(pending)
        return pending

    def _match_originate(self, dialog: Dialog, caller: str | None, crm: str | None) -> PendingOriginate | None:
        target = _digits(dialog.to_address or dialog.dialed_number)
        for pending in self._pending:
            if crm and pending.crm_call_id == crm:
                return pending
            if caller != pending.extension or not target:
                continue
            wanted = [w for w in (_digits(pending.dialed), _digits(pending.number)) if w]
            if any(target == w or target.endswith(w) or w.endswith(target) for w in wanted):
                return pending
        return None

    def _settle(self, call: TrackedCall, at: datetime, received_at: datetime) -> list[CallEvent]:
        """End the call if every dialog is over; orphan it if nobody observes it any more."""
        if call.over:
            return self._end(call, at, received_at, reopenable=False)
        if call.unobserved:
            if call.orphan_since is None:
                call.orphan_since = at
                call.orphan_deadline = received_at + self._grace
        else:
            call.orphan_since = call.orphan_deadline = None
        return []

    def _end(self, call: TrackedCall, at: datetime, local: datetime, *, reopenable: bool) -> list[CallEvent]:
        del self._calls[call.call_id]
        for dialog_id in [d for d, c in self._alias.items() if c == call.call_id]:
            del self._alias[dialog_id]
            self._tombstones[dialog_id] = _Tombstone(call.call_id, local, reopenable)
        return call.finish(at)

    # ---- errors and click-to-call failures -----------------------------------------------------------------------

    def _on_errors(self, user_id: str, update: Update, received_at: datetime) -> list[CallEvent]:
        first = update.errors[0]
        reason = first.error_message or first.error_type or "CTI error"
        dialog_id = dialog_id_from_uri(update.source)
        if dialog_id is not None and dialog_id in self._alias:
            self._calls[self._alias[dialog_id]].failure_reason = reason
            return []
        ext = self._agents.get(user_id)
        pending = next((p for p in self._pending if p.extension == ext), None)
        if pending is None:
            log.warning("finesse_api_error_unmatched", user_id=user_id, error=reason[:200])
            return []
        self._pending.remove(pending)
        return self._failed_originate(pending, reason, received_at)

    def _failed_originate(self, pending: PendingOriginate, reason: str, at: datetime) -> list[CallEvent]:
        call_id = f"c2c-{pending.request_id}"
        record = CallRecord(call_id=call_id, pbx=self._pbx, direction=Direction.OUTBOUND,
                            external_number=pending.number, line=None, agent=pending.extension, agents_rung=(),
                            disposition=Disposition.FAILED, started_at=pending.at, answered_at=None,
                            ended_at=max(at, pending.at), talk_seconds=0, crm_call_id=pending.crm_call_id,
                            failure_reason=reason)
        return [
            CallStarted(call_id=call_id, at=pending.at, direction=Direction.OUTBOUND,
                        external_number=pending.number, line=None, agent=pending.extension,
                        crm_call_id=pending.crm_call_id),
            CallEnded(call_id=call_id, at=record.ended_at, call=record),
        ]


def _is_voice(dialog: Dialog) -> bool:
    return dialog.media_type is None or dialog.media_type.lower() == "voice"


def _is_over(dialog: Dialog) -> bool:
    return dialog.state in DIALOG_OVER or (bool(dialog.participants) and not _has_live_leg(dialog))


def _has_live_leg(dialog: Dialog) -> bool:
    return any(p.state not in ("DROPPED", "FAILED", "WRAP_UP") for p in dialog.participants)
