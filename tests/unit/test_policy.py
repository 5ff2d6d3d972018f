"""CallPolicy: hand-built CallEvent sequences in, CRM operations out."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    RingStopReason,
    TransferKind,
)
from bridge.sync.operations import CrmOp, OpenCallState, OpKind
from bridge.sync.policy import ORPHAN_REASON, CallPolicy, PolicySettings
from bridge.sync.status import status_code

TZ = timezone(timedelta(hours=3))
T0 = datetime(2026, 11, 28, 10, 0, 0, tzinfo=TZ)
NUMBER = "+15557654321"
DID = "5551000"
REC = "/var/spool/asterisk/monitor/2026/11/28/in-5551000.wav"


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def started(direction: Direction = Direction.INBOUND, *, call_id: str = "c1", number: str | None = NUMBER,
            line: str | None = DID, agent: str | None = None, crm: str | None = None, at: float = 0) -> CallStarted:
    return CallStarted(call_id=call_id, at=t(at), direction=direction, external_number=number, line=line,
                       agent=agent, crm_call_id=crm)


def ringing(*agents: str, at: float, call_id: str = "c1") -> AgentsRinging:
    return AgentsRinging(call_id=call_id, at=t(at), agents=agents)


def stopped(agent: str, at: float, reason: RingStopReason = RingStopReason.NO_ANSWER,
            call_id: str = "c1") -> RingStopped:
    return RingStopped(call_id=call_id, at=t(at), agent=agent, reason=reason)


def answered(agent: str, at: float, call_id: str = "c1") -> CallAnswered:
    return CallAnswered(call_id=call_id, at=t(at), agent=agent)


def transferred(source: str | None, target: str | None, at: float, kind: TransferKind = TransferKind.BLIND,
                call_id: str = "c1") -> CallTransferred:
    return CallTransferred(call_id=call_id, at=t(at), from_agent=source, to_agent=target, transfer_kind=kind)


def recording(path: str, at: float, call_id: str = "c1") -> RecordingStarted:
    return RecordingStarted(call_id=call_id, at=t(at), path=path)


def ended(disposition: Disposition, *, direction: Direction = Direction.INBOUND, call_id: str = "c1",
          agent: str | None = None, rung: tuple[str, ...] = (), answered_at: float | None = None, end: float = 30,
          talk: int = 0, cause: int | None = 16, recordings: tuple[str, ...] = (), crm: str | None = None,
          failure: str | None = None, number: str | None = NUMBER) -> CallEnded:
    record = CallRecord(
        call_id=call_id, pbx="asterisk", direction=direction, external_number=number, line=DID, agent=agent,
        agents_rung=rung, disposition=disposition, started_at=t(0),
        answered_at=None if answered_at is None else t(answered_at), ended_at=t(end), talk_seconds=talk,
        hangup_cause=cause, recordings=recordings, crm_call_id=crm, failure_reason=failure)
    return CallEnded(call_id=call_id, at=t(end), call=record)


def run(events: list[CallEvent], **overrides: Any) -> list[CrmOp]:
    policy = CallPolicy(PolicySettings(**{"default_user_id": 9, **overrides}))
    ops: list[CrmOp] = []
    for event in events:
        ops.extend(policy.on_event(event))
    return ops


def brief(ops: list[CrmOp]) -> list[tuple[str, tuple[str, ...], int]]:
    return [(op.kind.value, op.agents, op.leg) for op in ops]


def only(ops: list[CrmOp], kind: OpKind) -> CrmOp:
    found = [op for op in ops if op.kind is kind]
    assert len(found) == 1, brief(ops)
    return found[0]


# --- inbound -----------------------------------------------------------------------------------------------------

def test_inbound_queue_registers_first_rung_shows_all_hides_losers_and_finishes_on_answerer() -> None:
    ops = run([
        started(),
        recording(REC, at=0.5),
        ringing("101", "102", "103", at=1),
        answered("102", at=5),
        stopped("101", at=5, reason=RingStopReason.ANSWERED_ELSEWHERE),
        stopped("103", at=5, reason=RingStopReason.ANSWERED_ELSEWHERE),
        ended(Disposition.ANSWERED, agent="102", rung=("101", "102", "103"), answered_at=5, end=32, talk=27,
              recordings=(REC,)),
    ])
    assert brief(ops) == [
        ("register", ("101",), 0),
        ("show", ("101", "102", "103"), 0),
        ("hide", ("101", "103"), 0),
        ("finish", ("102",), 0),
        ("attach_record", (), 0),
    ]
    register = ops[0]
    assert register.user_id is None
    assert register.params == {
        "PHONE_NUMBER": NUMBER, "TYPE": 2, "CALL_START_DATE": "2026-11-28T10:00:00+03:00", "CRM_CREATE": 1,
        "SHOW": 0, "EXTERNAL_CALL_ID": "c1", "LINE_NUMBER": DID,
    }
    assert ops[3].params == {"DURATION": 27, "STATUS_CODE": "200"}
    assert ops[4].record_path == REC
    assert all(op.call_key == "c1" and op.crm_call_id is None for op in ops)


def test_crm_settings_are_passed_to_register() -> None:
    ops = run([started(), ringing("101", at=1)], crm_create=False, crm_source="CALL")
    params = only(ops, OpKind.REGISTER).params
    assert params["CRM_CREATE"] == 0
    assert params["CRM_SOURCE"] == "CALL"


def test_show_cards_off_sends_no_show_or_hide() -> None:
    ops = run([
        started(), ringing("101", "102", at=1), answered("102", at=3), stopped("101", at=3),
        ended(Disposition.ANSWERED, agent="102", rung=("101", "102"), answered_at=3, talk=10),
    ], show_cards=False)
    assert [op.kind for op in ops] == [OpKind.REGISTER, OpKind.FINISH]


def test_agent_who_stops_ringing_gets_hide_and_a_new_ring_shows_again() -> None:
    ops = run([
        started(), ringing("101", at=1), stopped("101", at=16), ringing("101", "102", at=20),
        stopped("102", at=30), stopped("102", at=30),
    ])
    assert brief(ops) == [
        ("register", ("101",), 0), ("show", ("101",), 0), ("hide", ("101",), 0),
        ("show", ("101", "102"), 0), ("hide", ("102",), 0),
    ]


def test_missed_call_finishes_on_first_rung_agent_and_hides_the_others() -> None:
    ops = run([
        started(), ringing("101", "102", at=1), stopped("101", at=20), stopped("102", at=20),
        ended(Disposition.MISSED, rung=("101", "102"), end=25),
    ])
    finish = only(ops, OpKind.FINISH)
    assert finish.agents == ("101",)
    assert finish.user_id is None
    assert not finish.owner_first
    assert finish.params == {"DURATION": 0, "STATUS_CODE": "304"}


def test_missed_call_with_cards_still_shown_hides_them_before_finish() -> None:
    ops = run([started(), ringing("101", "102", at=1), ended(Disposition.MISSED, rung=("101", "102"), end=9)])
    assert brief(ops)[-2:] == [("hide", ("102",), 0), ("finish", ("101",), 0)]


def test_missed_call_user_fixed_uses_the_default_user() -> None:
    ops = run([started(), ringing("101", at=1), ended(Disposition.MISSED, rung=("101",))],
              missed_call_user="fixed", default_user_id=42)
    finish = only(ops, OpKind.FINISH)
    assert finish.user_id == 42
    assert brief(ops)[-2] == ("hide", ("101",), 0)  # the finish goes to someone else: 101's card must go


def test_missed_call_user_fixed_without_default_falls_back_to_first_rung() -> None:
    ops = run([started(), ringing("101", at=1), ended(Disposition.MISSED, rung=("101",))],
              missed_call_user="fixed", default_user_id=None)
    finish = only(ops, OpKind.FINISH)
    assert (finish.user_id, finish.agents) == (None, ("101",))


def test_missed_call_user_owner_is_resolved_at_send_time_with_first_rung_fallback() -> None:
    ops = run([started(), ringing("101", at=1), ended(Disposition.MISSED, rung=("101",))], missed_call_user="owner")
    finish = only(ops, OpKind.FINISH)
    assert finish.owner_first
    assert finish.agents == ("101",)
    assert only(ops, OpKind.REGISTER).owner_first is False


def test_inbound_that_never_rang_anyone_is_registered_and_finished_as_missed_on_default_user() -> None:
    ops = run([started(), ended(Disposition.MISSED, end=12)], default_user_id=7)
    assert [op.kind for op in ops] == [OpKind.REGISTER, OpKind.FINISH]
    register, finish = ops
    assert (register.agents, register.user_id) == ((), 7)
    assert register.params["TYPE"] == 2
    assert register.params["SHOW"] == 0
    assert (finish.agents, finish.user_id) == ((), 7)
    assert finish.params["STATUS_CODE"] == "304"


def test_inbound_that_never_rang_without_default_user_leaves_the_user_open() -> None:
    ops = run([started(), ended(Disposition.MISSED)], default_user_id=None)
    assert all(op.user_id is None and op.agents == () for op in ops)


def test_failure_reason_goes_to_failed_reason() -> None:
    ops = run([started(), ringing("101", at=1),
               ended(Disposition.FAILED, rung=("101",), cause=34, failure="Circuit/channel congestion")])
    assert only(ops, OpKind.FINISH).params == {
        "DURATION": 0, "STATUS_CODE": "503", "FAILED_REASON": "Circuit/channel congestion"}


@pytest.mark.parametrize(("direction", "disposition", "cause", "code"), [
    (Direction.INBOUND, Disposition.ANSWERED, 16, "200"),
    (Direction.INBOUND, Disposition.MISSED, 16, "304"),
    (Direction.INBOUND, Disposition.BUSY, 17, "486"),
    (Direction.INBOUND, Disposition.DECLINED, 21, "603"),
    (Direction.INBOUND, Disposition.NO_ANSWER, 19, "304"),
    (Direction.OUTBOUND, Disposition.NO_ANSWER, 19, "603-S"),
    (Direction.OUTBOUND, Disposition.FAILED, 1, "404"),
    (Direction.OUTBOUND, Disposition.FAILED, 18, "480"),
    (Direction.OUTBOUND, Disposition.FAILED, 19, "480"),
    (Direction.OUTBOUND, Disposition.FAILED, 20, "480"),
    (Direction.OUTBOUND, Disposition.FAILED, 34, "503"),
    (Direction.OUTBOUND, Disposition.FAILED, None, "503"),
    (Direction.OUTBOUND, Disposition.BUSY, 17, "486"),
])
def test_status_codes(direction: Direction, disposition: Disposition, cause: int | None, code: str) -> None:
    assert status_code(direction, disposition, cause) == code
    events: list[CallEvent] = [started(direction, agent="101")]
    answered_at = 2 if disposition is Disposition.ANSWERED else None
    events.append(ended(disposition, direction=direction, agent="101", answered_at=answered_at, cause=cause,
                        talk=5 if answered_at else 0))
    finish = only(run(events), OpKind.FINISH)
    assert finish.params["STATUS_CODE"] == code
    assert finish.params["DURATION"] == (5 if disposition is Disposition.ANSWERED else 0)


def test_unknown_disposition_maps_to_other() -> None:
    assert status_code(Direction.INBOUND, "voicemail", None) == "OTHER"  # type: ignore[arg-type]


# --- outbound and click-to-call ---------------------------------------------------------------------------------

def test_outbound_registers_at_start_for_the_dialling_agent_and_finishes_at_end() -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    first = policy.on_event(started(Direction.OUTBOUND, agent="101", line="trunk1", number="+74951234567"))
    assert brief(first) == [("register", ("101",), 0)]
    assert first[0].params["TYPE"] == 1
    assert first[0].params["SHOW"] == 1
    assert first[0].params["PHONE_NUMBER"] == "+74951234567"
    assert first[0].params["LINE_NUMBER"] == "trunk1"
    assert policy.on_event(answered("101", at=4)) == []
    rest = policy.on_event(ended(Disposition.ANSWERED, direction=Direction.OUTBOUND, agent="101", answered_at=4,
                                 talk=20))
    assert brief(rest) == [("finish", ("101",), 0)]
    assert rest[0].params == {"DURATION": 20, "STATUS_CODE": "200"}
    assert policy.active_calls == 0


def test_outbound_not_answered_is_cancelled_603s_on_the_dialler() -> None:
    ops = run([started(Direction.OUTBOUND, agent="102"),
               ended(Disposition.NO_ANSWER, direction=Direction.OUTBOUND, agent="102", cause=19)])
    assert brief(ops) == [("register", ("102",), 0), ("finish", ("102",), 0)]
    assert ops[1].params["STATUS_CODE"] == "603-S"


def test_click_to_call_is_never_registered_and_uses_the_given_call_id() -> None:
    crm = "externalCall.abc.1732812345"
    ops = run([
        started(Direction.OUTBOUND, call_id="pbx9", agent="101", crm=crm, number="+79162220004", line=None),
        ringing("101", at=1, call_id="pbx9"),
        answered("101", at=6, call_id="pbx9"),
        recording("/rec/out.wav", at=6, call_id="pbx9"),
        transferred("101", "102", at=8, call_id="pbx9"),
        ended(Disposition.ANSWERED, direction=Direction.OUTBOUND, call_id="pbx9", agent="102", answered_at=6,
              talk=9, crm=crm, recordings=("/rec/out.wav",)),
    ], transfer_records="per_agent")
    assert OpKind.REGISTER not in [op.kind for op in ops]
    assert all(op.crm_call_id == crm and op.call_key == crm and op.leg == 0 for op in ops)
    assert brief(ops) == [
        ("show", ("101",), 0), ("show", ("102",), 0), ("hide", ("101",), 0), ("finish", ("102",), 0),
        ("attach_record", (), 0),
    ]


def test_click_to_call_known_only_from_the_end_record_still_never_registers() -> None:
    ops = run([ended(Disposition.NO_ANSWER, direction=Direction.OUTBOUND, agent="101", crm="externalCall.x.1",
                     number=None)])
    assert brief(ops) == [("finish", ("101",), 0)]
    assert ops[0].crm_call_id == "externalCall.x.1"
    assert ops[0].params["STATUS_CODE"] == "603-S"


# --- transfers ---------------------------------------------------------------------------------------------------

def blind_transfer_events() -> list[CallEvent]:
    return [
        started(call_id="1795909776.126", number="79161110009", line="5552001", at=0),
        recording(REC, at=0.2, call_id="1795909776.126"),
        ringing("101", at=0.6, call_id="1795909776.126"),
        answered("101", at=2, call_id="1795909776.126"),
        transferred("101", "102", at=5, call_id="1795909776.126"),
        ringing("102", at=5, call_id="1795909776.126"),
        answered("102", at=7, call_id="1795909776.126"),
        ended(Disposition.ANSWERED, call_id="1795909776.126", agent="102", rung=("101", "102"), answered_at=2,
              end=11, talk=9, number="79161110009", recordings=(REC,)),
    ]


def test_transfer_single_shows_new_agent_hides_old_and_finishes_once_on_final_agent() -> None:
    ops = run(blind_transfer_events(), transfer_records="single")
    assert brief(ops) == [
        ("register", ("101",), 0), ("show", ("101",), 0),
        ("show", ("102",), 0), ("hide", ("101",), 0),
        ("finish", ("102",), 0), ("attach_record", (), 0),
    ]
    assert only(ops, OpKind.FINISH).params == {"DURATION": 9, "STATUS_CODE": "200"}


def test_transfer_per_agent_finishes_first_leg_and_registers_type3_for_the_next() -> None:
    ops = run(blind_transfer_events(), transfer_records="per_agent")
    assert brief(ops) == [
        ("register", ("101",), 0), ("show", ("101",), 0),
        ("finish", ("101",), 0), ("register", ("102",), 1),
        ("finish", ("102",), 1), ("attach_record", (), 0),
    ]
    finish0, register1, finish1 = ops[2], ops[3], ops[4]
    assert finish0.params == {"DURATION": 3, "STATUS_CODE": "200"}
    assert register1.params["TYPE"] == 3
    assert register1.params["SHOW"] == 1
    assert register1.params["EXTERNAL_CALL_ID"] == "1795909776.126/2"
    assert register1.params["CALL_START_DATE"] == "2026-11-28T10:00:05+03:00"
    assert finish1.params == {"DURATION": 4, "STATUS_CODE": "200"}  # 102 answered at 7, hung up at 11


def test_transfer_per_agent_attended_leg_counts_from_the_transfer() -> None:
    ops = run([
        started(), ringing("101", at=1), answered("101", at=2),
        transferred("101", "103", at=6, kind=TransferKind.ATTENDED),
        recording("/rec/b.wav", at=6),
        ended(Disposition.ANSWERED, agent="103", rung=("101",), answered_at=2, end=16, talk=14),
    ], transfer_records="per_agent")
    finishes = [op for op in ops if op.kind is OpKind.FINISH]
    assert [(f.leg, f.agents, f.params["DURATION"]) for f in finishes] == [(0, ("101",), 4), (1, ("103",), 10)]
    attach = only(ops, OpKind.ATTACH_RECORD)
    assert attach.leg == 1  # recorded after the transfer: belongs to the second CRM call
    assert [op.kind for op in ops].index(OpKind.ATTACH_RECORD) > [op.kind for op in ops].index(OpKind.FINISH)


def test_transfer_per_agent_blind_target_never_answers_gets_a_missed_leg() -> None:
    ops = run([
        started(), ringing("101", at=1), answered("101", at=2), transferred("101", "102", at=5),
        ringing("102", at=5), ended(Disposition.ANSWERED, agent="101", rung=("101", "102"), answered_at=2,
                                    end=20, talk=3),
    ], transfer_records="per_agent")
    finishes = [op for op in ops if op.kind is OpKind.FINISH]
    assert [(f.leg, f.params["STATUS_CODE"], f.params["DURATION"]) for f in finishes] == [(0, "200", 3),
                                                                                          (1, "304", 0)]


# --- ignored calls -----------------------------------------------------------------------------------------------

def test_internal_calls_are_ignored_by_default() -> None:
    policy = CallPolicy(PolicySettings())
    events: list[CallEvent] = [
        started(Direction.INTERNAL, agent="101", number="102", line=None), ringing("102", at=1),
        answered("102", at=2), ended(Disposition.ANSWERED, direction=Direction.INTERNAL, agent="101",
                                     answered_at=2, talk=5, number="102"),
    ]
    steps = [policy.step(e) for e in events]
    assert all(step.ops == () and step.call_key is None for step in steps)
    assert "internal" in (steps[0].note or "")
    # forgotten on end: a later call reusing the id is handled normally
    assert policy.on_event(started(Direction.OUTBOUND, agent="101")) != []


def test_internal_calls_are_registered_when_configured() -> None:
    ops = run([started(Direction.INTERNAL, agent="101", number="102", line=None),
               ended(Disposition.ANSWERED, direction=Direction.INTERNAL, agent="101", answered_at=1, talk=5,
                     number="102")], sync_internal_calls=True)
    assert brief(ops) == [("register", ("101",), 0), ("finish", ("101",), 0)]
    assert ops[0].params["TYPE"] == 1


def test_anonymous_caller_is_not_sent() -> None:
    policy = CallPolicy(PolicySettings())
    step = policy.step(started(number="anonymous"))
    assert step.ops == () and step.call_key is None
    assert policy.on_event(ringing("101", at=1)) == []
    assert policy.on_event(ended(Disposition.MISSED, number="anonymous")) == []


# --- recordings --------------------------------------------------------------------------------------------------

def test_recordings_are_attached_once_after_finish_and_only_when_answered() -> None:
    ops = run([
        started(), recording("/r/a.wav", at=0), recording("/r/a.wav", at=0), ringing("101", at=1),
        answered("101", at=2), recording("/r/b.wav", at=3),
        ended(Disposition.ANSWERED, agent="101", answered_at=2, talk=5, recordings=("/r/a.wav", "/r/c.wav")),
    ])
    kinds = [op.kind for op in ops]
    attaches = [op.record_path for op in ops if op.kind is OpKind.ATTACH_RECORD]
    assert attaches == ["/r/a.wav", "/r/b.wav", "/r/c.wav"]
    assert kinds.index(OpKind.FINISH) < kinds.index(OpKind.ATTACH_RECORD)

    missed = run([started(), recording("/r/a.wav", at=0), ringing("101", at=1),
                  ended(Disposition.MISSED, rung=("101",), recordings=("/r/a.wav",))])
    assert OpKind.ATTACH_RECORD not in [op.kind for op in missed]


def test_recordings_off_attaches_nothing_and_changes_nothing_else() -> None:
    events: list[CallEvent] = [
        started(), recording("/r/a.wav", at=0), ringing("101", at=1), answered("101", at=2),
        ended(Disposition.ANSWERED, agent="101", answered_at=2, talk=5, recordings=("/r/a.wav", "/r/c.wav")),
    ]
    on = run(events)
    off = run(events, attach_recordings=False)
    assert [op.record_path for op in on if op.kind is OpKind.ATTACH_RECORD] == ["/r/a.wav", "/r/c.wav"]
    assert off == [op for op in on if op.kind is not OpKind.ATTACH_RECORD]


# --- robustness --------------------------------------------------------------------------------------------------

def test_events_for_unknown_calls_and_odd_input_do_not_crash() -> None:
    policy = CallPolicy(PolicySettings())
    step = policy.step(ringing("101", at=1, call_id="nope"))
    assert step.ops == () and step.note
    policy.on_event(started())
    assert policy.on_event(started()) == []  # duplicate start
    assert policy.on_event(ringing(at=1)) == []
    assert policy.on_event(ringing("", at=1)) == []
    assert policy.on_event(stopped("999", at=2)) == []
    assert policy.on_event(transferred(None, None, at=3)) == []
    assert policy.on_event(recording("", at=3)) == []


def test_naive_times_are_sent_as_utc() -> None:
    policy = CallPolicy(PolicySettings())
    policy.on_event(CallStarted(call_id="n", at=datetime(2026, 1, 2, 3, 4, 5), direction=Direction.OUTBOUND,
                                external_number="123", line=None, agent="101"))
    assert policy.on_event(ended(Disposition.MISSED, call_id="n"))  # still closes
    ops = CallPolicy(PolicySettings()).on_event(CallStarted(
        call_id="m", at=datetime(2026, 1, 2, 3, 4, 5), direction=Direction.OUTBOUND,
        external_number="123", line=None, agent="101"))
    assert ops[0].params["CALL_START_DATE"] == "2026-01-02T03:04:05+00:00"


def test_a_call_seen_only_at_its_end_is_registered_and_finished() -> None:
    ops = run([ended(Disposition.ANSWERED, agent="102", rung=("101", "102"), answered_at=3, talk=10)])
    assert brief(ops) == [("register", ("101",), 0), ("finish", ("102",), 0)]
    assert ops[0].params["CALL_START_DATE"] == "2026-11-28T10:00:00+03:00"


def test_steps_carry_the_open_state_until_the_call_ends() -> None:
    policy = CallPolicy(PolicySettings())
    step = policy.step(started())
    assert step.call_key == "c1" and step.open_state is not None and not step.closed
    step = policy.step(ringing("101", at=1))
    assert step.open_state is not None and step.open_state.shown == ("101",) and step.open_state.registered
    step = policy.step(ended(Disposition.MISSED, rung=("101",)))
    assert step.closed and step.open_state is None
    assert policy.snapshot("c1") is None


# --- orphans after a restart -------------------------------------------------------------------------------------

def roundtrip(state: OpenCallState | None) -> OpenCallState:
    assert state is not None
    return OpenCallState.from_json(json.loads(json.dumps(state.to_json())))


def test_close_orphan_answered_call_finishes_answered_up_to_the_given_time() -> None:
    policy = CallPolicy(PolicySettings())
    events: list[CallEvent] = [started(), recording("/r/x.wav", at=0), ringing("101", "102", at=1),
                               answered("102", at=4)]
    for event in events:
        policy.on_event(event)
    state = roundtrip(policy.snapshot("c1"))
    fresh = CallPolicy(PolicySettings())
    ops = fresh.close_orphan(state, t(64))
    assert brief(ops) == [("finish", ("102",), 0), ("attach_record", (), 0)]
    assert ops[0].params == {"DURATION": 60, "STATUS_CODE": "200"}
    without = CallPolicy(PolicySettings(attach_recordings=False)).close_orphan(state, t(64))
    assert without == ops[:1]  # recordings disabled: the same finish, nothing to attach


def test_close_orphan_ringing_call_hides_cards_and_finishes_missed_with_reason() -> None:
    policy = CallPolicy(PolicySettings())
    events: list[CallEvent] = [started(), ringing("101", "102", at=1)]
    for event in events:
        policy.on_event(event)
    ops = CallPolicy(PolicySettings()).close_orphan(roundtrip(policy.snapshot("c1")), t(30))
    assert brief(ops) == [("hide", ("102",), 0), ("finish", ("101",), 0)]
    assert ops[1].params == {"DURATION": 0, "STATUS_CODE": "304", "FAILED_REASON": ORPHAN_REASON}


def test_close_orphan_of_unregistered_inbound_registers_then_finishes() -> None:
    policy = CallPolicy(PolicySettings(default_user_id=5))
    policy.on_event(started())
    ops = policy.close_orphan(roundtrip(policy.snapshot("c1")), t(30))
    assert [op.kind for op in ops] == [OpKind.REGISTER, OpKind.FINISH]
    assert policy.active_calls == 0


def test_restore_continues_a_live_call() -> None:
    policy = CallPolicy(PolicySettings())
    events: list[CallEvent] = [started(), ringing("101", at=1), answered("101", at=2)]
    for event in events:
        policy.on_event(event)
    state = roundtrip(policy.snapshot("c1"))
    fresh = CallPolicy(PolicySettings())
    fresh.restore(state)
    ops = fresh.on_event(ended(Disposition.ANSWERED, agent="101", rung=("101",), answered_at=2, talk=8))
    assert brief(ops) == [("finish", ("101",), 0)]


# --- settings and serialisation ----------------------------------------------------------------------------------

def test_settings_from_config() -> None:
    config = Bitrix24Settings(default_user_id=3, missed_call_user="owner", transfer_records="per_agent",
                              show_cards=False, crm_create=False, crm_source="WEB", sync_internal_calls=True)
    expected = PolicySettings(
        crm_create=False, crm_source="WEB", show_cards=False, missed_call_user="owner", default_user_id=3,
        transfer_records="per_agent", sync_internal_calls=True)
    assert PolicySettings.from_config(config) == expected
    assert expected.attach_recordings
    on = PolicySettings.from_config(config, recordings=RecordingsSettings(enabled=True))
    off = PolicySettings.from_config(config, recordings=RecordingsSettings(enabled=False))
    assert (on, off.attach_recordings) == (expected, False)


def test_ops_survive_a_json_round_trip() -> None:
    ops = run(blind_transfer_events(), transfer_records="per_agent", missed_call_user="owner")
    for op in ops:
        assert CrmOp.from_json(json.loads(json.dumps(op.to_json()))) == op


@pytest.mark.parametrize("data", [{}, {"call_key": "x", "kind": "explode"},
                                  {"call_key": "x", "kind": "show", "params": [1]},
                                  {"call_key": "x", "kind": "show", "user_id": "abc"}])
def test_malformed_op_json_is_rejected(data: dict[str, Any]) -> None:
    with pytest.raises((KeyError, ValueError, TypeError)):
        CrmOp.from_json(data)


# --- properties over random event sequences ----------------------------------------------------------------------

AGENTS = st.sampled_from(["101", "102", "103"])


@st.composite
def call_events(draw: st.DrawFn) -> list[CallEvent]:
    direction = draw(st.sampled_from(list(Direction)))
    crm = draw(st.sampled_from([None, None, "externalCall.q.1"]))
    events: list[CallEvent] = [started(direction, agent=draw(AGENTS), crm=crm)]
    clock = 0.0
    for _ in range(draw(st.integers(0, 12))):
        clock += draw(st.floats(0, 5))
        choice = draw(st.integers(0, 4))
        if choice == 0:
            events.append(ringing(*draw(st.lists(AGENTS, max_size=3)), at=clock))
        elif choice == 1:
            events.append(stopped(draw(AGENTS), at=clock))
        elif choice == 2:
            events.append(answered(draw(AGENTS), at=clock))
        elif choice == 3:
            events.append(transferred(draw(st.none() | AGENTS), draw(st.none() | AGENTS), at=clock,
                                      kind=draw(st.sampled_from(list(TransferKind)))))
        else:
            events.append(recording(f"/r/{draw(st.integers(0, 3))}.wav", at=clock))
    disposition = draw(st.sampled_from(list(Disposition)))
    events.append(ended(disposition, direction=direction, agent=draw(st.none() | AGENTS), crm=crm,
                        answered_at=1 if disposition is Disposition.ANSWERED else None, end=clock + 1,
                        talk=draw(st.integers(0, 100)), recordings=("/r/9.wav",)))
    return events


@settings(max_examples=300, deadline=None)
@given(events=call_events(), per_agent=st.booleans(), show=st.booleans(), internal=st.booleans())
def test_every_crm_call_is_registered_before_use_and_finished_exactly_once(
        events: list[CallEvent], per_agent: bool, show: bool, internal: bool) -> None:
    policy = CallPolicy(PolicySettings(transfer_records="per_agent" if per_agent else "single", show_cards=show,
                                       sync_internal_calls=internal, default_user_id=1))
    ops: list[CrmOp] = []
    for event in events:
        ops.extend(policy.on_event(event))
    assert policy.active_calls == 0
    if not ops:
        assert events[0].direction is Direction.INTERNAL and not internal  # type: ignore[union-attr]
        return
    legs = sorted({op.leg for op in ops})
    assert legs == list(range(len(legs)))
    for leg in legs:
        kinds = [op.kind for op in ops if op.leg == leg]
        registers = kinds.count(OpKind.REGISTER)
        assert registers == (0 if ops[0].crm_call_id else 1)
        if registers:
            assert kinds[0] is OpKind.REGISTER
        assert kinds.count(OpKind.FINISH) == 1
        after_finish = kinds[kinds.index(OpKind.FINISH) + 1:]
        assert set(after_finish) <= {OpKind.ATTACH_RECORD}
    assert not [op for op in ops if op.kind in (OpKind.SHOW, OpKind.HIDE) and not op.agents]


@settings(max_examples=200, deadline=None)
@given(events=call_events(), per_agent=st.booleans())
def test_recordings_off_is_the_same_ops_without_attachments_for_any_call(
        events: list[CallEvent], per_agent: bool) -> None:
    mode = "per_agent" if per_agent else "single"
    on = run(events, transfer_records=mode)
    off = run(events, transfer_records=mode, attach_recordings=False)
    assert off == [op for op in on if op.kind is not OpKind.ATTACH_RECORD]
