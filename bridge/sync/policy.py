"""CallEvents -> CRM operations, one call at a time. Pure: no I/O and no clock (every time comes from an event).

What a call becomes in Bitrix24 (see docs/bitrix24-api.md §4-§8, §13):

- inbound: `register` (TYPE 2, SHOW=0) for the first agent rung when agents first ring, then one `show` to every
  ringing agent; `hide` for agents who stop ringing or lose to the one who answers; `finish` on the answering agent
  (after transfers: the last one). A call that ends without ringing anyone is still registered and finished as missed.
  Missed calls finish on `missed_call_user`: the first agent rung, the fixed `default_user_id`, or the owner of the
  CRM entity the portal bound the call to (`owner`: the dispatcher reads it from the register result when it sends
  the finish, and falls back to the first agent rung, then to the default user).
- outbound from a phone (and internal calls when `sync_internal_calls`): `register` (TYPE 1) for the dialling agent
  at start, `finish` at the end.
- click-to-call (the call carries the portal's CALL_ID): never registered; show/hide/finish/attach use that CALL_ID.
- transfers: `show` to the new agent, `hide` from the old. `transfer_records=per_agent` finishes the leg at the
  transfer and registers a new CRM call (TYPE 3 inbound, TYPE 1 outbound) for the next agent; click-to-call calls
  always behave as `single` (they cannot be registered).
- recordings: one `attach_record` per file after the finish, on the CRM call (leg) during which the recording
  started, and only for legs somebody answered (unanswered calls leave header-only files behind); none at all when
  `attach_recordings` is off (recordings.enabled), so a disabled feature never turns into dead letters.
- calls without a usable caller number are not sent at all: the portal refuses to register them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, assert_never

from bridge.config import Bitrix24Settings, RecordingsSettings
from bridge.model import (
    AgentsRinging,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallRecord,
    CallStarted,
    CallTransferred,
    Direction,
    Disposition,
    RecordingStarted,
    RingStopped,
    TransferKind,
)
from bridge.sync.operations import CrmOp, OpenCallState, OpKind, PolicyStep
from bridge.sync.status import status_code

__all__ = ["ORPHAN_REASON", "CallPolicy", "PolicySettings"]

TYPE_OUTGOING = 1
TYPE_INCOMING = 2
TYPE_INCOMING_REDIRECTED = 3
ORPHAN_REASON = "the bridge restarted and did not see this call end"

MissedCallUser = Literal["first_rung", "fixed", "owner"]
TransferRecords = Literal["single", "per_agent"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySettings:
    crm_create: bool = True
    crm_source: str | None = None
    show_cards: bool = True
    missed_call_user: MissedCallUser = "first_rung"
    default_user_id: int | None = None
    transfer_records: TransferRecords = "single"
    sync_internal_calls: bool = False
    attach_recordings: bool = True

    @classmethod
    def from_config(cls, settings: Bitrix24Settings, *,
                    recordings: RecordingsSettings | None = None) -> PolicySettings:
        """`recordings` None: recordings are attached (the policy's default)."""
        return cls(
            crm_create=settings.crm_create,
            crm_source=settings.crm_source,
            show_cards=settings.show_cards,
            missed_call_user=settings.missed_call_user,
            default_user_id=settings.default_user_id,
            transfer_records=settings.transfer_records,
            sync_internal_calls=settings.sync_internal_calls,
            attach_recordings=True if recordings is None else recordings.enabled,
        )


@dataclass(slots=True, kw_only=True)
class _Call:
    """Mutable per-call state; `OpenCallState` is its frozen, storable twin."""

    call_id: str
    key: str
    direction: Direction
    external_number: str | None
    line: str | None
    started_at: datetime
    dialler: str | None = None
    crm_call_id: str | None = None
    registered: bool = False
    leg: int = 0
    leg_started_at: datetime | None = None
    leg_answered_at: datetime | None = None
    answered_at: datetime | None = None
    answered_legs: set[int] = field(default_factory=set)
    first_rung: str | None = None
    ringing: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)
    current_agent: str | None = None
    recordings: list[tuple[str, int]] = field(default_factory=list)

    def to_state(self) -> OpenCallState:
        return OpenCallState(
            call_id=self.call_id, call_key=self.key, direction=self.direction,
            external_number=self.external_number, line=self.line, started_at=self.started_at,
            dialler=self.dialler, crm_call_id=self.crm_call_id, registered=self.registered, leg=self.leg,
            leg_started_at=self.leg_started_at, leg_answered_at=self.leg_answered_at, answered_at=self.answered_at,
            answered_legs=tuple(sorted(self.answered_legs)), first_rung=self.first_rung, ringing=tuple(self.ringing),
            shown=tuple(self.shown), current_agent=self.current_agent, recordings=tuple(self.recordings),
        )

    @classmethod
    def from_state(cls, state: OpenCallState) -> _Call:
        return cls(
            call_id=state.call_id, key=state.call_key, direction=state.direction,
            external_number=state.external_number, line=state.line, started_at=state.started_at,
            dialler=state.dialler, crm_call_id=state.crm_call_id, registered=state.registered, leg=state.leg,
            leg_started_at=state.leg_started_at, leg_answered_at=state.leg_answered_at,
            answered_at=state.answered_at, answered_legs=set(state.answered_legs), first_rung=state.first_rung,
            ringing=list(state.ringing), shown=list(state.shown), current_agent=state.current_agent,
            recordings=list(state.recordings),
        )


class CallPolicy:
    """Keeps per-call state between events and forgets it when the call ends."""

    def __init__(self, settings: PolicySettings) -> None:
        self._settings = settings
        self._calls: dict[str, _Call] = {}
        self._ignored: dict[str, str] = {}

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def on_event(self, event: CallEvent) -> list[CrmOp]:
        return list(self.step(event).ops)

    def step(self, event: CallEvent) -> PolicyStep:
        """The ops for `event` plus the state to persist with them (see `Outbox.write`)."""
        reason = self._ignored.get(event.call_id)
        if reason is not None:
            if isinstance(event, CallEnded):
                del self._ignored[event.call_id]
            return PolicyStep(None, note=reason)
        if isinstance(event, CallStarted):
            return self._started(event)
        if isinstance(event, CallEnded):
            return self._ended(event)
        call = self._calls.get(event.call_id)
        if call is None:
            return PolicyStep(None, note=f"{event.kind} for a call that never started here")
        match event:
            case AgentsRinging():
                ops = self._ringing(call, event)
            case RingStopped():
                ops = self._ring_stopped(call, event)
            case CallAnswered():
                ops = self._answered(call, event)
            case CallTransferred():
                ops = self._transferred(call, event)
            case RecordingStarted():
                ops = self._recording(call, event)
            case _:
                assert_never(event)
        return PolicyStep(call.key, tuple(ops), call.to_state())

    def snapshot(self, call_id: str) -> OpenCallState | None:
        call = self._calls.get(call_id)
        return None if call is None else call.to_state()

    def restore(self, state: OpenCallState) -> None:
        """Take a call back after a restart when its channels are still up (the tracker keeps sending its events)."""
        self._calls[state.call_id] = _Call.from_state(state)

    def close_orphan(self, state: OpenCallState, at: datetime) -> list[CrmOp]:
        """Finish a call that was live before a restart and whose channels are gone.

        The real end is unknown: `at` stands in for it (pass the best time known, e.g. when the PBX link came back).
        An answered call finishes as answered with the talk time up to `at`; otherwise as missed (inbound) or not
        answered (outbound), with FAILED_REASON saying why the end was not observed.
        """
        self._calls.pop(state.call_id, None)
        call = _Call.from_state(state)
        answered = state.answered_at is not None
        inbound = state.direction is Direction.INBOUND
        disposition = Disposition.ANSWERED if answered else (Disposition.MISSED if inbound else Disposition.NO_ANSWER)
        record = CallRecord(
            call_id=state.call_id, pbx="", direction=state.direction, external_number=state.external_number,
            line=state.line, agent=state.current_agent or state.dialler,
            agents_rung=() if state.first_rung is None else (state.first_rung,), disposition=disposition,
            started_at=state.started_at, answered_at=state.answered_at, ended_at=at,
            talk_seconds=_seconds(at - state.answered_at) if state.answered_at else 0,
            crm_call_id=state.crm_call_id, failure_reason=None if answered else ORPHAN_REASON,
        )
        return self._finish_ops(call, record)

    # --- events ------------------------------------------------------------------------------------------------

    def _started(self, event: CallStarted) -> PolicyStep:
        known = self._calls.get(event.call_id)
        if known is not None:
            return PolicyStep(known.key, (), known.to_state(), note="duplicate start")
        reason = self._ignore_reason(event.direction, event.external_number, event.crm_call_id)
        if reason is not None:
            self._ignored[event.call_id] = reason
            return PolicyStep(None, note=reason)
        call = _Call(
            call_id=event.call_id, key=event.crm_call_id or event.call_id, direction=event.direction,
            external_number=event.external_number, line=event.line, started_at=event.at, dialler=event.agent or None,
            crm_call_id=event.crm_call_id, registered=event.crm_call_id is not None, leg_started_at=event.at,
        )
        self._calls[event.call_id] = call
        ops: list[CrmOp] = []
        if not call.registered and call.direction is not Direction.INBOUND:
            show = self._settings.show_cards
            ops.append(self._register(call, TYPE_OUTGOING, call.dialler, event.at, show=show))
            if show and call.dialler:
                call.shown.append(call.dialler)
        return PolicyStep(call.key, tuple(ops), call.to_state())

    def _ringing(self, call: _Call, event: AgentsRinging) -> list[CrmOp]:
        agents = [a for a in dict.fromkeys(event.agents) if a]
        if not agents:
            return []
        ops: list[CrmOp] = []
        call.ringing.extend(a for a in agents if a not in call.ringing)
        if call.first_rung is None:
            call.first_rung = agents[0]
        if not call.registered:
            ops.append(self._register(call, TYPE_INCOMING, agents[0], call.started_at, show=False))
        if self._settings.show_cards:
            fresh = [a for a in agents if a not in call.shown]
            if fresh:
                ops.append(self._op(call, OpKind.SHOW, agents=tuple(fresh), at=event.at))
                call.shown.extend(fresh)
        return ops

    def _ring_stopped(self, call: _Call, event: RingStopped) -> list[CrmOp]:
        if event.agent in call.ringing:
            call.ringing.remove(event.agent)
        if event.agent in call.shown and event.agent not in (call.current_agent, call.dialler):
            call.shown.remove(event.agent)
            return [self._op(call, OpKind.HIDE, agents=(event.agent,), at=event.at)]
        return []

    def _answered(self, call: _Call, event: CallAnswered) -> list[CrmOp]:
        agent = event.agent
        ops: list[CrmOp] = []
        if not call.registered and agent:
            call.first_rung = call.first_rung or agent
            ops.append(self._register(call, TYPE_INCOMING, agent, call.started_at, show=False))
        call.current_agent = agent or call.current_agent
        call.answered_at = call.answered_at or event.at
        call.leg_answered_at = call.leg_answered_at or event.at
        call.answered_legs.add(call.leg)
        if agent in call.ringing:
            call.ringing.remove(agent)
        losers = [a for a in call.shown if a not in (agent, call.dialler)]
        if losers:
            ops.append(self._op(call, OpKind.HIDE, agents=tuple(losers), at=event.at))
            call.shown = [a for a in call.shown if a not in losers]
        if self._settings.show_cards and agent and agent not in call.shown and call.registered:
            ops.append(self._op(call, OpKind.SHOW, agents=(agent,), at=event.at))
            call.shown.append(agent)
        return ops

    def _transferred(self, call: _Call, event: CallTransferred) -> list[CrmOp]:
        source = event.from_agent or call.current_agent
        target = event.to_agent or None
        attended = event.transfer_kind is TransferKind.ATTENDED
        per_agent = self._settings.transfer_records == "per_agent" and call.crm_call_id is None
        if per_agent and call.registered and target and target != source:
            return self._new_leg(call, source, target, event.at, attended=attended)
        ops: list[CrmOp] = []
        if self._settings.show_cards and target and call.registered and target not in call.shown:
            ops.append(self._op(call, OpKind.SHOW, agents=(target,), at=event.at))
            call.shown.append(target)
        if source and source != target and source in call.shown:
            ops.append(self._op(call, OpKind.HIDE, agents=(source,), at=event.at))
            call.shown.remove(source)
        if target:
            call.current_agent = target
        return ops

    def _new_leg(self, call: _Call, source: str | None, target: str, at: datetime, *, attended: bool) -> list[CrmOp]:
        """per_agent: close the source's CRM call now and open one for the target."""
        if call.leg_answered_at is not None:
            duration, status = _seconds(at - call.leg_answered_at), "200"
        else:
            duration, status = 0, status_code(call.direction, Disposition.NO_ANSWER, None)
        ops = self._leg_finish(call, source, duration, status, failed_reason=None, at=at)
        call.leg += 1
        call.leg_started_at = at
        call.leg_answered_at = at if attended else None
        if attended:
            call.answered_legs.add(call.leg)
        call.shown = []
        call.current_agent = target
        call_type = TYPE_INCOMING_REDIRECTED if call.direction is Direction.INBOUND else TYPE_OUTGOING
        show = self._settings.show_cards
        ops.append(self._register(call, call_type, target, at, show=show))
        if show:
            call.shown.append(target)
        return ops

    def _recording(self, call: _Call, event: RecordingStarted) -> list[CrmOp]:
        if event.path and all(path != event.path for path, _ in call.recordings):
            call.recordings.append((event.path, call.leg))
        return []

    def _ended(self, event: CallEnded) -> PolicyStep:
        record = event.call
        call = self._calls.pop(event.call_id, None)
        if call is None:
            reason = self._ignore_reason(record.direction, record.external_number, record.crm_call_id)
            if reason is not None:
                return PolicyStep(None, note=reason)
            call = self._call_from_record(record)
        return PolicyStep(call.key, tuple(self._finish_ops(call, record)), None, closed=True)

    # --- building ops ------------------------------------------------------------------------------------------

    def _finish_ops(self, call: _Call, record: CallRecord) -> list[CrmOp]:
        """Register if nobody did yet, hide stale cards, finish, then attach the recordings."""
        ops: list[CrmOp] = []
        inbound = call.direction is Direction.INBOUND
        answered = record.disposition is Disposition.ANSWERED
        if not call.registered:
            if inbound:
                agent = call.first_rung or next(iter(record.agents_rung), None) or (record.agent if answered else None)
                call.first_rung = call.first_rung or agent
            else:
                agent = call.dialler or record.agent
            call_type = TYPE_INCOMING if inbound else TYPE_OUTGOING
            ops.append(self._register(call, call_type, agent, call.started_at, show=False))
        if call.leg > 0:
            if answered and call.leg_answered_at is None and record.agent in (None, call.current_agent):
                call.leg_answered_at = call.leg_started_at  # a blind transfer whose answer the tracker did not report
            if call.leg_answered_at is not None:
                call.answered_legs.add(call.leg)
                duration, status = _seconds(record.ended_at - call.leg_answered_at), "200"
            else:
                duration, status = 0, status_code(call.direction, Disposition.NO_ANSWER, None)
            ops.extend(self._leg_finish(call, call.current_agent, duration, status,
                                        failed_reason=record.failure_reason, at=record.ended_at))
        else:
            status = status_code(call.direction, record.disposition, record.hangup_cause)
            duration = record.talk_seconds if answered else 0
            if answered:
                call.answered_legs.add(call.leg)
            if inbound and not answered:
                ops.extend(self._missed_finish(call, record, status))
            else:
                agent = record.agent or call.current_agent or call.dialler
                ops.extend(self._leg_finish(call, agent, duration, status, failed_reason=record.failure_reason,
                                            at=record.ended_at, fallback_user=record.crm_user_id))
        if not self._settings.attach_recordings:
            return ops
        seen = {path for path, _ in call.recordings}
        recordings = call.recordings + [(p, call.leg) for p in dict.fromkeys(record.recordings) if p and p not in seen]
        for path, leg in recordings:
            if leg in call.answered_legs:
                ops.append(self._op(call, OpKind.ATTACH_RECORD, leg=leg, record_path=path, at=record.ended_at))
        return ops

    def _leg_finish(self, call: _Call, agent: str | None, duration: int, status: str, *,
                    failed_reason: str | None, at: datetime, fallback_user: int | None = None) -> list[CrmOp]:
        """Hide every other card still shown on this CRM call, then finish it on `agent` (or, with no agent, on
        `fallback_user`: the Bitrix24 user who clicked a click-to-call that never reached the PBX)."""
        ops: list[CrmOp] = []
        stale = tuple(a for a in call.shown if a != agent)
        if stale:
            ops.append(self._op(call, OpKind.HIDE, agents=stale, at=at))
        call.shown = []
        agents, user_id = self._user_args(agent)
        if not agents and fallback_user is not None:
            user_id = fallback_user
        ops.append(self._op(call, OpKind.FINISH, _finish_params(duration, status, failed_reason), agents=agents,
                            user_id=user_id, at=at))
        return ops

    def _missed_finish(self, call: _Call, record: CallRecord, status: str) -> list[CrmOp]:
        """An inbound call nobody answered finishes on the responsible user (`missed_call_user`)."""
        settings = self._settings
        first = call.first_rung or next(iter(record.agents_rung), None)
        agents, user_id = self._user_args(first)
        owner_first = settings.missed_call_user == "owner"
        if settings.missed_call_user == "fixed" and settings.default_user_id is not None:
            user_id = settings.default_user_id
        ops: list[CrmOp] = []
        keeps_card = first if (user_id is None and not owner_first) else None
        stale = tuple(a for a in call.shown if a != keeps_card)
        if stale:
            ops.append(self._op(call, OpKind.HIDE, agents=stale, at=record.ended_at))
        call.shown = []
        params = _finish_params(0, status, record.failure_reason)
        ops.append(self._op(call, OpKind.FINISH, params, agents=agents, user_id=user_id, owner_first=owner_first,
                            at=record.ended_at))
        return ops

    def _register(self, call: _Call, call_type: int, agent: str | None, at: datetime, *, show: bool) -> CrmOp:
        settings = self._settings
        call.registered = True
        external_id = call.call_id if call.leg == 0 else f"{call.call_id}/{call.leg + 1}"
        params: dict[str, Any] = {
            "PHONE_NUMBER": call.external_number or "",
            "TYPE": call_type,
            "CALL_START_DATE": _iso(at),
            "CRM_CREATE": int(settings.crm_create),
            "SHOW": int(show),
            "EXTERNAL_CALL_ID": external_id,
        }
        if call.line:
            params["LINE_NUMBER"] = call.line
        if settings.crm_source:
            params["CRM_SOURCE"] = settings.crm_source
        agents, user_id = self._user_args(agent)
        return self._op(call, OpKind.REGISTER, params, agents=agents, user_id=user_id, at=at)

    def _op(self, call: _Call, kind: OpKind, params: dict[str, Any] | None = None, *, agents: tuple[str, ...] = (),
            user_id: int | None = None, owner_first: bool = False, leg: int | None = None,
            record_path: str | None = None, at: datetime | None = None) -> CrmOp:
        return CrmOp(
            call_key=call.key, kind=kind, params=params or {}, agents=agents, user_id=user_id,
            owner_first=owner_first, crm_call_id=call.crm_call_id, leg=call.leg if leg is None else leg,
            record_path=record_path, at=at,
        )

    def _user_args(self, agent: str | None) -> tuple[tuple[str, ...], int | None]:
        """An agent resolves at send time (the directory falls back to the default user); nobody -> default user."""
        return ((agent,), None) if agent else ((), self._settings.default_user_id)

    def _ignore_reason(self, direction: Direction, number: str | None, crm_call_id: str | None) -> str | None:
        if direction is Direction.INTERNAL and not self._settings.sync_internal_calls:
            return "internal call (bitrix24.sync_internal_calls is off)"
        if crm_call_id is None and not _dialable(number):
            return "no usable external number (Bitrix24 refuses to register such calls)"
        return None

    def _call_from_record(self, record: CallRecord) -> _Call:
        """A call whose only event is `ended` (the bridge started mid-call, or the tracker saw it late)."""
        answered = record.disposition is Disposition.ANSWERED
        inbound = record.direction is Direction.INBOUND
        return _Call(
            call_id=record.call_id, key=record.crm_call_id or record.call_id, direction=record.direction,
            external_number=record.external_number, line=record.line, started_at=record.started_at,
            dialler=None if inbound else record.agent, crm_call_id=record.crm_call_id,
            registered=record.crm_call_id is not None, leg_started_at=record.started_at,
            leg_answered_at=record.answered_at, answered_at=record.answered_at,
            first_rung=next(iter(record.agents_rung), None), current_agent=record.agent if answered else None,
        )


def _finish_params(duration: int, status: str, failed_reason: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"DURATION": max(0, duration), "STATUS_CODE": status}
    if failed_reason:
        params["FAILED_REASON"] = failed_reason
    return params


def _seconds(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds()))


def _iso(at: datetime) -> str:
    """ISO-8601 with an offset, as the portal demands; a naive time is taken as UTC."""
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).isoformat(timespec="seconds")


def _dialable(number: str | None) -> bool:
    return number is not None and any(ch.isdigit() for ch in number)
