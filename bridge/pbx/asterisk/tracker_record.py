"""Turning a finished `Call` into the CRM record: disposition, agent, talk time, hangup cause.

The rules (asterisk-ami.md 1.12, call-model.md), first match wins:
answered - an agent was connected to the customer (bridge based, so FreePBX `vmret` answering the caller is not);
inbound  - busy when every dial to an agent phone came back BUSY (or the customer leg ended with cause 17), else missed;
outbound and internal - declined on cause 21; busy on dial status BUSY or cause 17; failed on CHANUNAVAIL, CONGESTION,
a failure cause or a failed originate without channels; otherwise no_answer.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from bridge.model import CallRecord, Direction, Disposition, RingStopReason
from bridge.pbx.asterisk.tracker_state import Call, Leg

__all__ = ["FAILURE_CAUSES", "build_record", "disposition", "ring_stop_for_cause", "to_datetime"]

# Q.850 causes that mean the number or the network failed (asterisk-ami.md 1.9).
FAILURE_CAUSES = frozenset({1, 3, 20, 22, 27, 28, 34, 38, 41, 42, 44, 58, 102})
_FAILED_STATUSES = frozenset({"CHANUNAVAIL", "CONGESTION"})
# OriginateResponse Reason (last control frame): 1 hung up, 3 rang out, 5 busy, 8 congestion, 0 no channel.
_ORIGINATE_REASONS = {0: Disposition.FAILED, 1: Disposition.NO_ANSWER, 3: Disposition.NO_ANSWER,
                      5: Disposition.BUSY, 8: Disposition.FAILED}


def to_datetime(at: float) -> datetime:
    return datetime.fromtimestamp(at, tz=UTC)


def disposition(call: Call) -> tuple[Disposition, str | None]:
    """The call's disposition and, for failures, a short reason in the PBX's words."""
    if call.answered_at is not None:
        return Disposition.ANSWERED, None
    ext = call.external_leg()
    if call.direction is Direction.INBOUND:
        outcomes = call.device_outcomes or call.local_outcomes
        cause = ext.cause if ext is not None else None
        if (outcomes and all(s == "BUSY" for s in outcomes)) or (not outcomes and cause == 17):
            return Disposition.BUSY, None
        return Disposition.MISSED, None
    # Outbound and internal: the customer's leg tells; without one (internal, or a click-to-call that never reached
    # a trunk) the caller's own leg and the dials to agents do.
    no_trunk = call.direction is not Direction.OUTBOUND or ext is None
    party = call.first if no_trunk else ext
    status = None if no_trunk else call.trunk_outcome
    if no_trunk:
        if call.direction is Direction.OUTBOUND and call.originate_reason is not None:
            result = _ORIGINATE_REASONS.get(call.originate_reason, Disposition.FAILED)
            why = f"originate failed (reason {call.originate_reason})" if result is Disposition.FAILED else None
            return result, why
        outcomes = call.device_outcomes or call.local_outcomes
        status = outcomes[-1] if outcomes else None
    cause = party.cause if party is not None else None
    if cause == 21:
        return Disposition.DECLINED, _cause_text(party, cause)
    if status == "BUSY" or cause == 17:
        return Disposition.BUSY, None
    if status in _FAILED_STATUSES:
        return Disposition.FAILED, f"dial status {status}"
    if cause in FAILURE_CAUSES:
        return Disposition.FAILED, _cause_text(party, cause)
    if call.dialstatus in _FAILED_STATUSES:
        return Disposition.FAILED, f"dial status {call.dialstatus}"
    if call.dialstatus == "BUSY":
        return Disposition.BUSY, None
    return Disposition.NO_ANSWER, None


def _cause_text(leg: Leg | None, cause: int | None) -> str:
    txt = leg.cause_txt if leg is not None else None
    return f"hangup cause {cause} ({txt})" if txt else f"hangup cause {cause}"


def hangup_cause(call: Call) -> int | None:
    """Q.850 cause of the customer's leg (internal calls: the caller's leg)."""
    ext = call.external_leg() if call.direction is not Direction.INTERNAL else None
    if ext is not None and ext.cause is not None:
        return ext.cause
    if call.first is not None:
        return call.first.cause
    return None


def record_agent(call: Call) -> str | None:
    """Inbound: who talked last. Outbound: who talked last, else who dialled. Internal: who dialled."""
    if call.direction is Direction.INBOUND:
        return call.agent
    if call.direction is Direction.INTERNAL:
        return call.originator or call.agent
    return call.agent or call.originator


def build_record(call: Call, ended_at: float, *, pbx: str) -> CallRecord:
    result, why = disposition(call)
    answered = call.answered_at
    talk = 0
    if answered is not None:
        talk = max(0, math.floor(ended_at - answered + 0.5))
    direction = call.direction or Direction.INTERNAL
    return CallRecord(
        call_id=call.call_id,
        pbx=pbx,
        direction=direction,
        external_number=None if direction is Direction.INTERNAL else call.external_number,
        line=None if direction is Direction.INTERNAL else call.line,
        agent=record_agent(call),
        agents_rung=tuple(call.agents_rung),
        disposition=result,
        started_at=to_datetime(call.started_at),
        answered_at=None if answered is None else to_datetime(answered),
        ended_at=to_datetime(max(ended_at, call.started_at)),
        talk_seconds=talk,
        hangup_cause=hangup_cause(call),
        transfers=tuple(call.transfers),
        recordings=tuple(call.recordings),
        crm_call_id=call.crm_call_id,
        failure_reason=why,
    )


def ring_stop_for_cause(cause: int | None) -> RingStopReason | None:
    """What a ringing phone's hangup cause says about why it stopped (None: the cause does not tell)."""
    return _RING_CAUSES.get(cause) if cause is not None else None


_RING_CAUSES = {17: RingStopReason.BUSY, 21: RingStopReason.REJECTED, 26: RingStopReason.ANSWERED_ELSEWHERE,
                18: RingStopReason.NO_ANSWER, 19: RingStopReason.NO_ANSWER}
