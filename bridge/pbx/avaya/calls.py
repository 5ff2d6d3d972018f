"""The tracker's per-call state: parties and their states, and how a finished call becomes a `CallRecord`. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from bridge.model import CallRecord, CallStarted, Direction, Disposition, Transfer
from bridge.pbx.avaya.numbers import NumberPlan, Role, failed_disposition, q850

UNKNOWN_CALLER = "?caller"
# Stands for the far end of a click-to-call until AES names it (the dialled string may differ from the request).
UNKNOWN_CALLEE = "?callee"


class PartyState(StrEnum):
    DIALING = "dialing"
    ALERTING = "alerting"
    QUEUED = "queued"
    CONNECTED = "connected"
    HELD = "held"
    GONE = "gone"


@dataclass(slots=True)
class Party:
    role: Role
    state: PartyState

    @property
    def active(self) -> bool:
        return self.state is not PartyState.GONE


@dataclass(eq=False, slots=True)
class TrackedCall:
    call_id: str
    direction: Direction
    started_at: datetime
    external_number: str | None
    line: str | None
    originator: str | None
    agent: str | None
    crm_call_id: str | None
    keys: set[str] = field(default_factory=set)
    parties: dict[str, Party] = field(default_factory=dict)
    rung: list[str] = field(default_factory=list)
    answered_at: datetime | None = None
    transfers: list[Transfer] = field(default_factory=list)
    fail_cause: str | None = None
    last_cause: str | None = None
    orphaned_at: datetime | None = None

    def add(self, number: str, role: Role, state: PartyState) -> None:
        if role is Role.EXTERNAL:
            self.parties.pop(UNKNOWN_CALLEE, None)
        self.parties[number] = Party(role, state)

    def active_count(self) -> int:
        return sum(1 for p in self.parties.values() if p.active)

    def watched(self) -> bool:
        """Is a monitored station or VDN still on the call (so we will hear how it ends)?"""
        return any(p.active and p.role in (Role.AGENT, Role.VDN) for p in self.parties.values())

    def has_external(self) -> bool:
        return any(p.role is Role.EXTERNAL for p in self.parties.values())

    def started(self) -> CallStarted:
        return CallStarted(call_id=self.call_id, at=self.started_at, direction=self.direction,
                           external_number=self.external_number, line=self.line,
                           agent=self.originator if self.direction is not Direction.INBOUND else None,
                           crm_call_id=self.crm_call_id)

    def disposition(self) -> Disposition:
        if self.answered_at is not None:
            return Disposition.ANSWERED
        if self.direction is Direction.INBOUND:
            return Disposition.MISSED
        if self.fail_cause is not None:
            return failed_disposition(self.fail_cause)
        return Disposition.NO_ANSWER

    def record(self, ended_at: datetime, pbx: str) -> CallRecord:
        answered = self.answered_at
        # An unanswered call that failed is described by the failure (busy = 17), not by the caller hanging up.
        cause = self.fail_cause if answered is None and self.fail_cause else self.last_cause
        return CallRecord(
            call_id=self.call_id, pbx=pbx, direction=self.direction, external_number=self.external_number,
            line=self.line, agent=self.agent, agents_rung=tuple(self.rung), disposition=self.disposition(),
            started_at=self.started_at, answered_at=answered, ended_at=ended_at,
            talk_seconds=max(0, int((ended_at - answered).total_seconds())) if answered else 0,
            hangup_cause=q850(cause), transfers=tuple(self.transfers), crm_call_id=self.crm_call_id,
            failure_reason=self.fail_cause if answered is None else None)


def new_call(plan: NumberPlan, key: str, at: datetime, *, calling: str | None, called: str | None, ucid: str | None,
             vdn: str | None, originated: bool) -> TrackedCall:
    """A call seen for the first time: direction from who calls whom, the caller already on it."""
    rc = plan.role(calling) if calling else None
    rd = plan.role(called) if called else None
    call_id = ucid or f"{int(at.timestamp())}.{key}"
    if rc is Role.EXTERNAL or (calling is None and not originated):
        line = vdn or (called if rd is not Role.AGENT else None)
        call = TrackedCall(call_id=call_id, direction=Direction.INBOUND, started_at=at,
                           external_number=plan.external_number(calling), line=line, originator=None, agent=None,
                           crm_call_id=None)
    elif rd is Role.EXTERNAL:
        call = TrackedCall(call_id=call_id, direction=Direction.OUTBOUND, started_at=at,
                           external_number=plan.external_number(called), line=None, originator=calling,
                           agent=calling if rc is Role.AGENT else None, crm_call_id=None)
    else:
        other = called if rc is Role.AGENT else calling
        call = TrackedCall(call_id=call_id, direction=Direction.INTERNAL, started_at=at, external_number=other,
                           line=None, originator=calling, agent=calling if rc is Role.AGENT else None,
                           crm_call_id=None)
    call.parties[calling or UNKNOWN_CALLER] = Party(rc or Role.EXTERNAL, PartyState.CONNECTED)
    if called and call.direction is not Direction.INBOUND and called != calling:
        call.parties[called] = Party(rd or Role.INTERNAL, PartyState.DIALING)
    return call
