"""DmccTracker: DMCC events per monitored device -> normalized CallEvents, fed with hand-written event lists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.model import (
    AgentsRinging,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallStarted,
    CallTransferred,
    Direction,
    Disposition,
    RingStopped,
    RingStopReason,
    Transfer,
    TransferKind,
)
from bridge.pbx.avaya.messages import (
    ConnectionClearedEvent,
    DeliveredEvent,
    DivertedEvent,
    DmccEvent,
    EstablishedEvent,
    FailedEvent,
    HeldEvent,
    OriginatedEvent,
    RetrievedEvent,
    TransferredEvent,
)
from bridge.pbx.avaya.numbers import NumberPlan, Role
from bridge.pbx.avaya.tracker import DmccTracker

T0 = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)
CUSTOMER = "5557654321"
PLAN = NumberPlan.of(["201", "202", "203"], ["5001"], dial_prefix="9")


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def d(number: str) -> str:
    return f"{number}:CM:10.0.0.1:0"


def delivered(call: str, alerting: str, calling: str, called: str = "5551000", *, mon: str = "m",
              ucid: str | None = None, vdn: str | None = None) -> DeliveredEvent:
    return DeliveredEvent(monitor_id=mon, call_id=call, connection_device=d(alerting), alerting=d(alerting),
                          calling=d(calling), called=d(called), ucid=ucid, vdn=d(vdn) if vdn else None)


def established(call: str, answering: str, calling: str, called: str, *, mon: str = "m") -> EstablishedEvent:
    return EstablishedEvent(monitor_id=mon, call_id=call, connection_device=d(answering), answering=d(answering),
                            calling=d(calling), called=d(called))


def cleared(call: str, who: str, cause: str = "normalClearing", *, mon: str = "m") -> ConnectionClearedEvent:
    return ConnectionClearedEvent(monitor_id=mon, call_id=call, connection_device=d(who), releasing=d(who),
                                  cause=cause)


def originated(call: str, calling: str, called: str) -> OriginatedEvent:
    return OriginatedEvent(monitor_id="m", call_id=call, connection_device=d(calling), calling=d(calling),
                           called=d(called))


def feed(tracker: DmccTracker, steps: list[tuple[float, DmccEvent]]) -> list[CallEvent]:
    out: list[CallEvent] = []
    for at, ev in steps:
        out += tracker.on_event(ev, at=t(at))
    return out


def kinds(events: list[CallEvent]) -> list[str]:
    return [e.kind for e in events]


def ended(events: list[CallEvent]) -> CallEnded:
    last = events[-1]
    assert isinstance(last, CallEnded)
    return last


def test_number_plan_roles() -> None:
    assert PLAN.role("201") is Role.AGENT
    assert PLAN.role("5001") is Role.VDN
    assert PLAN.role("3000") is Role.INTERNAL
    assert PLAN.role(CUSTOMER) is Role.EXTERNAL
    assert PLAN.role("+44") is Role.EXTERNAL
    assert PLAN.role("T123#4") is Role.EXTERNAL
    assert PLAN.external_number("95557654321") == CUSTOMER
    assert PLAN.external_number("T123#4") is None


def test_inbound_answered_with_two_agents_ringing() -> None:
    tr = DmccTracker(PLAN)
    out = feed(tr, [
        (0, delivered("10", "201", CUSTOMER, ucid="U10", mon="m201")),
        (0.1, delivered("10", "202", CUSTOMER, ucid="U10", mon="m202")),
        (4.5, established("10", "202", CUSTOMER, "5551000")),
        (4.6, cleared("10", "201")),
        (31.9, cleared("10", CUSTOMER)),
    ])
    assert out[:5] == [
        CallStarted(call_id="U10", at=t(0), direction=Direction.INBOUND, external_number=CUSTOMER, line="5551000"),
        AgentsRinging(call_id="U10", at=t(0), agents=("201",)),
        AgentsRinging(call_id="U10", at=t(0.1), agents=("202",)),
        CallAnswered(call_id="U10", at=t(4.5), agent="202"),
        RingStopped(call_id="U10", at=t(4.5), agent="201", reason=RingStopReason.ANSWERED_ELSEWHERE),
    ]
    rec = ended(out).call
    assert len(out) == 6
    assert (rec.disposition, rec.agent, rec.agents_rung) == (Disposition.ANSWERED, "202", ("201", "202"))
    assert (rec.answered_at, rec.ended_at, rec.talk_seconds) == (t(4.5), t(31.9), 27)
    assert rec.hangup_cause == 16
    assert tr.active_calls == 0


def test_the_same_event_from_several_monitors_is_reported_once() -> None:
    tr = DmccTracker(PLAN)
    ring = delivered("10", "201", CUSTOMER)
    answer = established("10", "201", CUSTOMER, "5551000")
    out = feed(tr, [(0, ring), (0, ring), (1, answer), (1, answer), (9, cleared("10", CUSTOMER)),
                    (9, cleared("10", CUSTOMER)), (9, cleared("10", "201"))])
    assert kinds(out) == ["started", "ringing", "answered", "ended"]


def test_inbound_missed_when_the_caller_gives_up() -> None:
    tr = DmccTracker(PLAN)
    out = feed(tr, [(0, delivered("11", "201", CUSTOMER)), (0, delivered("11", "202", CUSTOMER)),
                    (12, cleared("11", CUSTOMER))])
    assert kinds(out) == ["started", "ringing", "ringing", "ring_stopped", "ring_stopped", "ended"]
    assert {e.reason for e in out if isinstance(e, RingStopped)} == {RingStopReason.CALLER_GONE}
    rec = ended(out).call
    assert (rec.disposition, rec.agent, rec.answered_at, rec.talk_seconds) == (Disposition.MISSED, None, None, 0)


def test_queue_abandon_seen_on_a_vdn_monitor_is_a_missed_call_on_that_line() -> None:
    tr = DmccTracker(PLAN)
    out = feed(tr, [(0, delivered("12", "5001", CUSTOMER, called="5001", vdn="5001")),
                    (30, cleared("12", CUSTOMER))])
    assert kinds(out) == ["started", "ended"]
    rec = ended(out).call
    assert (rec.direction, rec.line, rec.disposition) == (Direction.INBOUND, "5001", Disposition.MISSED)


def test_outbound_answered_then_busy_then_not_answered() -> None:
    tr = DmccTracker(PLAN)
    out = feed(tr, [(0, originated("20", "201", "95551234567")),
                    (1, delivered("20", "95551234567", "201", "95551234567")),
                    (5, established("20", "95551234567", "201", "95551234567")),
                    (65, cleared("20", "201"))])
    assert out[0] == CallStarted(call_id="1795860000.20", at=t(0), direction=Direction.OUTBOUND,
                                 external_number="5551234567", line=None, agent="201")
    assert kinds(out) == ["started", "answered", "ended"]
    assert ended(out).call.talk_seconds == 60

    busy = feed(tr, [(100, originated("21", "201", "5551234567")),
                     (101, FailedEvent(monitor_id="m", call_id="21", connection_device=d("5551234567"),
                                       failing=d("5551234567"), called=d("5551234567"), cause="busy")),
                     (104, cleared("21", "201"))])
    rec = ended(busy).call
    assert (rec.disposition, rec.hangup_cause, rec.failure_reason) == (Disposition.BUSY, 17, "busy")

    unanswered = feed(tr, [(200, originated("22", "202", "5551234567")),
                           (201, delivered("22", "5551234567", "202", "5551234567")),
                           (230, cleared("22", "202"))])
    assert ended(unanswered).call.disposition is Disposition.NO_ANSWER


def test_internal_call_between_two_agents() -> None:
    tr = DmccTracker(PLAN)
    out = feed(tr, [(0, originated("30", "201", "202")), (0.5, delivered("30", "202", "201", "202")),
                    (2, established("30", "202", "201", "202")), (10, cleared("30", "202"))])
    assert kinds(out) == ["started", "ringing", "answered", "ended"]
    rec = ended(out).call
    assert (rec.direction, rec.agent, rec.disposition) == (Direction.INTERNAL, "202", Disposition.ANSWERED)


def test_attended_transfer_moves_the_call_and_closes_the_consultation() -> None:
    tr = DmccTracker(PLAN)
    out = feed(tr, [
        (0, delivered("40", "201", CUSTOMER)), (2, established("40", "201", CUSTOMER, "5551000")),
        (10, HeldEvent(monitor_id="m", call_id="40", connection_device=d("201"), device=d("201"))),
        (11, originated("41", "201", "202")), (12, delivered("41", "202", "201", "202")),
        (15, established("41", "202", "201", "202")),
    ])
    consult_id = next(e.call_id for e in out if isinstance(e, CallStarted) and e.direction is Direction.INTERNAL)
    xfer = TransferredEvent(monitor_id="m", primary_old_call="40", secondary_old_call="41", transferring=d("201"),
                            transferred_to=d("202"), new_call_ids=("40",))
    step = feed(tr, [(20, xfer), (20, xfer)])
    assert step[0] == CallTransferred(call_id="1795860000.40", at=t(20), from_agent="201", to_agent="202",
                                      transfer_kind=TransferKind.ATTENDED)
    assert [e.call_id for e in step if isinstance(e, CallEnded)] == [consult_id]
    assert kinds(step) == ["transferred", "ended"]
    final = feed(tr, [(50, cleared("40", CUSTOMER))])
    rec = ended(final).call
    assert rec.call_id == "1795860000.40"
    assert (rec.agent, rec.disposition, rec.talk_seconds) == ("202", Disposition.ANSWERED, 48)
    assert rec.transfers == (Transfer("201", "202", TransferKind.ATTENDED),)
    assert tr.active_calls == 0


def test_blind_transfer_rings_the_new_agent_without_a_second_answer() -> None:
    tr = DmccTracker(PLAN)
    feed(tr, [(0, delivered("50", "201", CUSTOMER)), (1, established("50", "201", CUSTOMER, "5551000"))])
    out = feed(tr, [
        (5, TransferredEvent(monitor_id="m", primary_old_call="50", secondary_old_call="50", transferring=d("201"),
                             transferred_to=d("203"))),
        (5.1, delivered("50", "203", CUSTOMER)),
        (8, established("50", "203", CUSTOMER, "5551000")),
        (20, cleared("50", "203")),
    ])
    assert kinds(out) == ["transferred", "ringing", "ended"]
    assert isinstance(out[0], CallTransferred) and out[0].transfer_kind is TransferKind.BLIND
    rec = ended(out).call
    assert (rec.agent, rec.agents_rung, rec.answered_at) == ("203", ("201", "203"), t(1))


def test_click_to_call_when_events_come_before_the_make_call_response() -> None:
    tr = DmccTracker(PLAN)
    tr.expect_make_call("201", "+15551234567", "CRM-7", t(0))
    out = feed(tr, [(0.1, originated("60", "201", "915551234567"))])
    out += tr.note_make_call(call_key="60", ucid="U60", extension="201", number="+15551234567",
                             crm_call_id="CRM-7", at=t(0.2))
    assert out == [CallStarted(call_id="1795860000.60", at=t(0.1), direction=Direction.OUTBOUND,
                               external_number="+15551234567", line=None, agent="201", crm_call_id="CRM-7")]
    out = feed(tr, [(3, established("60", "915551234567", "201", "915551234567")), (9, cleared("60", "201"))])
    assert ended(out).call.crm_call_id == "CRM-7"


def test_click_to_call_the_agent_never_answers() -> None:
    tr = DmccTracker(PLAN)
    tr.expect_make_call("202", "+15551234567", "CRM-8", t(0))
    out = tr.note_make_call(call_key="61", ucid="U61", extension="202", number="+15551234567", crm_call_id="CRM-8",
                            at=t(0.1))
    assert out == [CallStarted(call_id="U61", at=t(0.1), direction=Direction.OUTBOUND,
                               external_number="+15551234567", line=None, agent="202", crm_call_id="CRM-8")]
    out = feed(tr, [(30, cleared("61", "202", "callNotAnswered"))])
    rec = ended(out).call
    assert (rec.disposition, rec.crm_call_id, rec.hangup_cause) == (Disposition.NO_ANSWER, "CRM-8", 19)


def test_an_unused_expectation_does_not_leak_into_a_later_manual_call() -> None:
    tr = DmccTracker(PLAN)
    tr.expect_make_call("201", "+1555", "CRM-9", t(0))
    tr.cancel_make_call("201")
    out = feed(tr, [(1, originated("62", "201", "5551234567"))])
    assert isinstance(out[0], CallStarted) and out[0].crm_call_id is None
    tr.expect_make_call("202", "+1555", "CRM-10", t(0))
    tr.expire(t(61))
    out = feed(tr, [(62, originated("63", "202", "5551234567"))])
    assert isinstance(out[0], CallStarted) and out[0].crm_call_id is None


def test_divert_to_voicemail_ends_the_call_as_missed_at_once() -> None:
    tr = DmccTracker(PLAN)
    out = feed(tr, [(0, delivered("70", "201", CUSTOMER)),
                    (20, DivertedEvent(monitor_id="m", call_id="70", connection_device=d("201"), diverting=d("201"),
                                       new_destination=d("7000")))])
    assert kinds(out) == ["started", "ringing", "ring_stopped", "ended"]
    assert isinstance(out[2], RingStopped) and out[2].reason is RingStopReason.NO_ANSWER
    assert ended(out).call.disposition is Disposition.MISSED


def test_divert_to_another_agent_keeps_the_call_and_an_orphan_ends_after_the_grace() -> None:
    tr = DmccTracker(PLAN, orphan_grace=5)
    divert = DivertedEvent(monitor_id="m", call_id="71", connection_device=d("201"), diverting=d("201"),
                           new_destination=d("202"))
    out = feed(tr, [(0, delivered("71", "201", CUSTOMER)), (10, divert), (10.2, delivered("71", "202", CUSTOMER))])
    assert kinds(out) == ["started", "ringing", "ring_stopped", "ringing"]
    assert tr.expire(t(30)) == []  # 202 is ringing: not an orphan

    feed(tr, [(0, delivered("72", "201", CUSTOMER)),
              (1, DivertedEvent(monitor_id="m", call_id="72", connection_device=d("201"), diverting=d("201"),
                                new_destination=None))])
    assert tr.expire(t(3)) == []
    late = tr.expire(t(6.5))
    assert kinds(late) == ["ended"] and ended(late).call.ended_at == t(6.5)


def test_hold_and_retrieve_change_no_call_events() -> None:
    tr = DmccTracker(PLAN)
    feed(tr, [(0, delivered("80", "201", CUSTOMER)), (1, established("80", "201", CUSTOMER, "5551000"))])
    out = feed(tr, [(2, HeldEvent(monitor_id="m", call_id="80", connection_device=d("201"), device=d("201"))),
                    (3, RetrievedEvent(monitor_id="m", call_id="80", connection_device=d("201"), device=d("201")))])
    assert out == []


def test_reconcile_ends_calls_the_station_no_longer_shows() -> None:
    tr = DmccTracker(PLAN)
    feed(tr, [(0, delivered("90", "201", CUSTOMER)), (1, established("90", "201", CUSTOMER, "5551000")),
              (2, delivered("91", "202", CUSTOMER))])
    stale = tr.live_keys()
    assert stale == {"90", "91"}
    feed(tr, [(5, delivered("92", "201", "5559999999"))])  # started after the reconnect: not in `stale`
    out = tr.reconcile("201", {"77"}, t(60), only=stale)
    assert kinds(out) == ["ended"]
    assert ended(out).call.call_id.endswith(".90") and ended(out).call.disposition is Disposition.ANSWERED
    assert tr.reconcile("202", {"91"}, t(60), only=stale) == []  # still ringing there
    assert tr.live_keys() == {"91", "92"}


def test_events_for_unknown_or_just_ended_calls_are_ignored() -> None:
    tr = DmccTracker(PLAN)
    assert tr.on_event(cleared("999", "201"), at=t(0)) == []
    feed(tr, [(0, delivered("93", "201", CUSTOMER)), (1, cleared("93", CUSTOMER))])
    assert tr.on_event(established("93", "201", CUSTOMER, "5551000"), at=t(1.5)) == []
    tr.expire(t(10))
    assert kinds(tr.on_event(delivered("93", "201", CUSTOMER), at=t(11))) == ["started", "ringing"]


# ---- property: any event soup keeps the stream well-formed -------------------------------------------------------

_numbers = st.sampled_from(["201", "202", "203", "5001", "3000", CUSTOMER, "T12#1"])
_calls = st.sampled_from(["1", "2", "3"])


def _event(kind: int, call: str, a: str, b: str, c: str) -> DmccEvent:
    match kind:
        case 0:
            return delivered(call, a, b, c)
        case 1:
            return established(call, a, b, c)
        case 2:
            return cleared(call, a)
        case 3:
            return originated(call, a, b)
        case 4:
            return FailedEvent(monitor_id="m", call_id=call, connection_device=d(a), failing=d(a), called=d(b),
                               cause="busy")
        case 5:
            return DivertedEvent(monitor_id="m", call_id=call, connection_device=d(a), diverting=d(a),
                                 new_destination=d(b))
        case 6:
            return HeldEvent(monitor_id="m", call_id=call, connection_device=d(a), device=d(a))
        case _:
            return TransferredEvent(monitor_id="m", primary_old_call=call, secondary_old_call=c[-1:],
                                    transferring=d(a), transferred_to=d(b))


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 7), _calls, _numbers, _numbers, _numbers), max_size=40))
def test_random_event_sequences_never_raise_and_every_call_ends_once(
        steps: list[tuple[int, str, str, str, str]]) -> None:
    tr = DmccTracker(PLAN, orphan_grace=1)
    out: list[CallEvent] = []
    for n, (kind, call, a, b, c) in enumerate(steps):
        out += tr.on_event(_event(kind, call, a, b, c), at=t(n))
    for key in sorted(tr.live_keys()):
        out += tr.reconcile("201", set(), t(1000), only={key})
        out += tr.reconcile("202", set(), t(1000), only={key})
        out += tr.reconcile("203", set(), t(1000), only={key})
        out += tr.reconcile("5001", set(), t(1000), only={key})
    out += tr.expire(t(2000))
    out += tr.expire(t(3000))
    started = [e.call_id for e in out if isinstance(e, CallStarted)]
    finished = [e.call_id for e in out if isinstance(e, CallEnded)]
    assert len(started) == len(set(started))
    assert sorted(finished) == sorted(started)
    for e in out:
        if isinstance(e, CallEnded):
            assert e.call.talk_seconds >= 0
            assert e.call.started_at <= e.call.ended_at
    closed: set[str] = set()
    for e in out:
        assert e.call_id not in closed, f"event after the end of {e.call_id}"
        if isinstance(e, CallEnded):
            closed.add(e.call_id)
