"""The pure Finesse tracker: hand-written Dialog snapshots in, CallEvents out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

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
    TransferKind,
)
from bridge.pbx.cisco.dialog import ApiError, Dialog, Participant, Update
from bridge.pbx.cisco.tracker import FinesseTracker, PendingOriginate

T0 = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)
AGENTS = {"agent1": "1001", "agent2": "1002", "agent3": "1003"}
CALLER = "+15557654321"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def leg(address: str, state: str, changed: float, *, cause: str | None = None, start: float = 0) -> Participant:
    kind = "AGENT_DEVICE" if address in AGENTS.values() else None
    return Participant(address, state, kind, cause, at(start), at(changed))


def dialog(legs: list[Participant], *, state: str = "ACTIVE", did: str = "100", src: str = CALLER,
           dst: str = "5551000", call_type: str = "ACD_IN", **extra: object) -> Dialog:
    return Dialog(id=did, state=state, from_address=src, to_address=dst, media_type="Voice", call_type=call_type,
                  dnis=dst if call_type == "ACD_IN" else None, dialed_number=dst, participants=tuple(legs),
                  **extra)  # type: ignore[arg-type]


def post(*dialogs: Dialog) -> Update:
    return Update("POST", "/finesse/api/User/x/Dialogs", None, dialogs)


def put(d: Dialog) -> Update:
    return Update("PUT", f"/finesse/api/Dialog/{d.id}", None, (d,))


def delete(d: Dialog) -> Update:
    return Update("DELETE", "/finesse/api/User/x/Dialogs", None, (d,))


def kinds(events: list[CallEvent]) -> list[str]:
    return [e.kind for e in events]


def ended(events: list[CallEvent]) -> CallEnded:
    (end,) = [e for e in events if isinstance(e, CallEnded)]
    return end


@pytest.fixture
def tracker() -> FinesseTracker:
    return FinesseTracker(agents=AGENTS, orphan_grace=5.0, crm_call_id_variable="callVariable10")


def test_inbound_answered(tracker: FinesseTracker) -> None:
    ev = tracker.apply("agent1", post(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "ALERTING", 0)],
                                             state="ALERTING")), at(0.1))
    assert kinds(ev) == ["started", "ringing"]
    started = ev[0]
    assert isinstance(started, CallStarted)
    assert (started.call_id, started.direction, started.external_number, started.line, started.at) == (
        "100", Direction.INBOUND, CALLER, "5551000", T0)
    ev = tracker.apply("agent1", put(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "ACTIVE", 4)])), at(4.1))
    assert ev == [CallAnswered(call_id="100", at=at(4), agent="1001")]
    final = dialog([leg(CALLER, "DROPPED", 34), leg("1001", "DROPPED", 34)], state="DROPPED")
    ev = tracker.apply("agent1", put(final), at(34.1))
    record = ended(ev).call
    assert (record.disposition, record.agent, record.agents_rung, record.talk_seconds) == (
        Disposition.ANSWERED, "1001", ("1001",), 30)
    assert (record.started_at, record.answered_at, record.ended_at) == (T0, at(4), at(34))
    # The DELETE that follows, and any late copy, is ignored: one call, one end.
    assert tracker.apply("agent1", delete(final), at(34.2)) == []
    assert tracker.apply("agent1", put(final), at(34.3)) == []
    assert tracker.live_calls == 0


def test_two_observers_ringing_then_caller_gives_up_is_one_missed_call(tracker: FinesseTracker) -> None:
    legs = [leg(CALLER, "ACTIVE", 0), leg("1001", "ALERTING", 0), leg("1002", "ALERTING", 0)]
    ev = tracker.apply("agent1", post(dialog(legs, state="ALERTING")), at(0))
    ev += tracker.apply("agent2", post(dialog(legs, state="ALERTING")), at(0))
    assert kinds(ev) == ["started", "ringing"]
    assert isinstance(ev[1], AgentsRinging) and ev[1].agents == ("1001", "1002")
    gone = dialog([leg(CALLER, "DROPPED", 12), leg("1001", "DROPPED", 12), leg("1002", "DROPPED", 12)],
                  state="DROPPED")
    ev = tracker.apply("agent2", delete(gone), at(12))
    assert kinds(ev) == ["ring_stopped", "ring_stopped", "ended"]
    assert {e.reason for e in ev if isinstance(e, RingStopped)} == {RingStopReason.CALLER_GONE}
    record = ended(ev).call
    assert (record.disposition, record.agent, record.agents_rung) == (Disposition.MISSED, None, ("1001", "1002"))
    assert tracker.apply("agent1", delete(gone), at(12.1)) == []


def test_answer_by_one_agent_stops_the_other(tracker: FinesseTracker) -> None:
    legs = [leg(CALLER, "ACTIVE", 0), leg("1001", "ALERTING", 0), leg("1002", "ALERTING", 0)]
    tracker.apply("agent1", post(dialog(legs, state="ALERTING")), at(0))
    ev = tracker.apply("agent2", put(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "DROPPED", 3),
                                             leg("1002", "ACTIVE", 3)])), at(3))
    assert ev == [CallAnswered(call_id="100", at=at(3), agent="1002"),
                  RingStopped(call_id="100", at=at(3), agent="1001", reason=RingStopReason.ANSWERED_ELSEWHERE)]


def test_an_older_snapshot_arriving_late_does_not_undo_newer_state(tracker: FinesseTracker) -> None:
    ringing = dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "ALERTING", 0)], state="ALERTING")
    answered = dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "ACTIVE", 4)])
    tracker.apply("agent1", post(ringing), at(0))
    tracker.apply("agent1", put(answered), at(4))
    # The same dialog through another agent's session, older than what we know: no ringing again, no events.
    assert tracker.apply("agent2", post(ringing), at(5)) == []


def test_event_times_never_go_backwards_within_a_call(tracker: FinesseTracker) -> None:
    tracker.apply("agent1", post(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "ACTIVE", 10)])), at(10))
    ev = tracker.apply("agent1", put(dialog([leg(CALLER, "DROPPED", 5), leg("1001", "DROPPED", 5)],
                                            state="DROPPED")), at(11))
    assert ended(ev).at >= at(10)


@pytest.mark.parametrize(("final_cause", "answer", "disposition", "reason"), [
    (None, True, Disposition.ANSWERED, None),
    (None, False, Disposition.NO_ANSWER, None),
    ("BUSY", False, Disposition.BUSY, "BUSY"),
    ("BAD_DESTINATION", False, Disposition.FAILED, "BAD_DESTINATION"),
])
def test_outbound_dispositions(tracker: FinesseTracker, final_cause: str | None, answer: bool,
                               disposition: Disposition, reason: str | None) -> None:
    number = "5553334444"

    def out(legs: list[Participant], state: str) -> Dialog:
        return dialog(legs, state=state, src="1001", dst=number, call_type="AGENT_OUT")

    ev = tracker.apply("agent1", post(out([leg("1001", "INITIATED", 0)], "INITIATED")), at(0))
    assert kinds(ev) == ["started"]
    assert isinstance(ev[0], CallStarted)
    assert (ev[0].direction, ev[0].external_number, ev[0].agent) == (Direction.OUTBOUND, number, "1001")
    ev = tracker.apply("agent1", put(out([leg("1001", "ACTIVE", 1), leg(number, "ALERTING", 1)], "ALERTING")), at(1))
    assert ev == []  # the customer's phone ringing is not an agent ringing, and not yet an answer
    if answer:
        ev = tracker.apply("agent1", put(out([leg("1001", "ACTIVE", 1), leg(number, "ACTIVE", 6)], "ACTIVE")), at(6))
        assert ev == [CallAnswered(call_id="100", at=at(6), agent="1001")]
    state = "FAILED" if final_cause == "BAD_DESTINATION" else "DROPPED"
    far = "FAILED" if final_cause else "DROPPED"
    ev = tracker.apply("agent1", delete(out([leg("1001", "DROPPED", 9), leg(number, far, 9, cause=final_cause)],
                                            state)), at(9))
    record = ended(ev).call
    assert (record.disposition, record.failure_reason, record.agent) == (disposition, reason, "1001")
    assert record.agents_rung == ()  # the dialling agent was not rung
    assert record.talk_seconds == (3 if answer else 0)


def test_internal_call(tracker: FinesseTracker) -> None:
    d = dialog([leg("1001", "ACTIVE", 0), leg("1002", "ALERTING", 0)], state="ALERTING", src="1001", dst="1002",
               call_type="AGENT_INSIDE")
    ev = tracker.apply("agent1", post(d), at(0)) + tracker.apply("agent2", post(d), at(0))
    assert kinds(ev) == ["started", "ringing"]
    assert isinstance(ev[0], CallStarted) and ev[0].direction is Direction.INTERNAL
    assert isinstance(ev[1], AgentsRinging) and ev[1].agents == ("1002",)
    ev = tracker.apply("agent2", put(dialog([leg("1001", "ACTIVE", 0), leg("1002", "ACTIVE", 2)], src="1001",
                                            dst="1002", call_type="AGENT_INSIDE")), at(2))
    assert ev == [CallAnswered(call_id="100", at=at(2), agent="1002")]


def test_blind_transfer_across_two_observers_in_either_order(tracker: FinesseTracker) -> None:
    tracker.apply("agent1", post(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "ACTIVE", 2)])), at(2))
    left = dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "DROPPED", 10), leg("1002", "ALERTING", 10)])
    offered = dialog([leg(CALLER, "ACTIVE", 0), leg("1002", "ALERTING", 10)])
    # agent2's POST may overtake agent1's DELETE: they come over separate XMPP sessions.
    ev = tracker.apply("agent2", post(offered), at(10))
    ev += tracker.apply("agent1", delete(left), at(10))
    assert kinds(ev) == ["ringing"]
    ev = tracker.apply("agent2", put(dialog([leg(CALLER, "ACTIVE", 0), leg("1002", "ACTIVE", 14)])), at(14))
    assert ev == [CallTransferred(call_id="100", at=at(14), from_agent="1001", to_agent="1002",
                                  transfer_kind=TransferKind.BLIND)]
    ev = tracker.apply("agent2", put(dialog([leg(CALLER, "DROPPED", 30), leg("1002", "DROPPED", 30)],
                                            state="DROPPED")), at(30))
    record = ended(ev).call
    assert (record.agent, record.agents_rung, record.talk_seconds) == ("1002", ("1001", "1002"), 28)
    assert [t.to_json() for t in record.transfers] == [{"from": "1001", "to": "1002", "kind": "blind"}]


def test_consult_transfer_is_attended_and_the_consult_is_not_a_call(tracker: FinesseTracker) -> None:
    tracker.apply("agent1", post(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "ACTIVE", 2)])), at(2))
    tracker.apply("agent1", put(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "HELD", 10)])), at(10))
    consult: dict[str, Any] = {"did": "200", "src": "1001", "dst": "1002", "call_type": "CONSULT",
                                  "associated_dialog_id": "100"}
    ev = tracker.apply("agent1", post(dialog([leg("1001", "ACTIVE", 10), leg("1002", "ALERTING", 10)],
                                             state="ALERTING", **consult)), at(10))
    assert kinds(ev) == ["ringing"] and ev[0].call_id == "100"
    ev = tracker.apply("agent2", post(dialog([leg("1001", "ACTIVE", 10), leg("1002", "ACTIVE", 12)], **consult)),
                       at(12))
    assert ev == []  # talking to the consulting agent is not talking to the caller
    over = dialog([leg("1001", "DROPPED", 15), leg("1002", "DROPPED", 15)], state="DROPPED", **consult)
    ev = tracker.apply("agent1", delete(over), at(15)) + tracker.apply("agent2", delete(over), at(15))
    ev += tracker.apply("agent2", post(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "HELD", 10),
                                               leg("1002", "ACTIVE", 15)], secondary_id="200")), at(15))
    ev += tracker.apply("agent1", delete(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "DROPPED", 16),
                                                 leg("1002", "ACTIVE", 15)])), at(16))
    assert ev == [CallTransferred(call_id="100", at=at(16), from_agent="1001", to_agent="1002",
                                  transfer_kind=TransferKind.ATTENDED)]
    assert tracker.live_calls == 1


def test_lost_from_sight_call_ends_after_the_grace_unless_picked_up(tracker: FinesseTracker) -> None:
    tracker.apply("agent1", post(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "ACTIVE", 2)])), at(2))
    # Transferred to a phone nobody watches: agent1 loses the dialog, the caller is still connected.
    ev = tracker.apply("agent1", delete(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "DROPPED", 20)])), at(20))
    assert ev == []
    assert tracker.tick(at(24)) == []
    ev = tracker.tick(at(25.5))
    record = ended(ev).call
    assert (record.ended_at, record.disposition, record.talk_seconds) == (at(20), Disposition.ANSWERED, 18)


def test_requeued_call_picked_up_by_another_agent_within_the_grace(tracker: FinesseTracker) -> None:
    tracker.apply("agent1", post(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "ALERTING", 0)],
                                        state="ALERTING")), at(0))
    # Ring-no-answer: the dialog is taken from agent1 (its leg simply vanishes) and offered to agent3 later.
    ev = tracker.apply("agent1", delete(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "ALERTING", 0)],
                                               state="ALERTING")), at(15))
    assert ev == [RingStopped(call_id="100", at=at(15), agent="1001", reason=RingStopReason.NO_ANSWER)]
    ev = tracker.apply("agent3", post(dialog([leg(CALLER, "ACTIVE", 0), leg("1003", "ALERTING", 18)],
                                             state="ALERTING")), at(18))
    assert ev == [AgentsRinging(call_id="100", at=at(18), agents=("1003",))]
    assert tracker.tick(at(60)) == []  # observed again: no longer orphaned


def test_reopened_after_a_lost_call_expired(tracker: FinesseTracker) -> None:
    tracker.apply("agent1", post(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "ALERTING", 0)])), at(0))
    tracker.apply("agent1", delete(dialog([leg(CALLER, "ACTIVE", 0)])), at(15))
    assert kinds(tracker.tick(at(21))) == ["ended"]
    ev = tracker.apply("agent3", post(dialog([leg(CALLER, "ACTIVE", 0), leg("1003", "ALERTING", 40)])), at(40))
    assert kinds(ev) == ["started", "ringing"] and ev[0].call_id == "100.1"


def test_resync_closes_what_ended_and_adds_what_started_during_an_outage(tracker: FinesseTracker) -> None:
    tracker.apply("agent1", post(dialog([leg(CALLER, "ACTIVE", 0), leg("1001", "ACTIVE", 2)])), at(2))
    fresh = dialog([leg("+15550000001", "ACTIVE", 50, start=50), leg("1001", "ACTIVE", 55, start=50)], did="101",
                   src="+15550000001")
    ev = tracker.resync("agent1", [fresh], at(60))
    assert kinds(ev) == ["started", "answered"]
    assert ev[0].call_id == "101" and ev[0].at == at(50)
    record = ended(tracker.tick(at(66))).call
    assert (record.call_id, record.ended_at, record.disposition) == ("100", at(60), Disposition.ANSWERED)
    assert tracker.resync("agent1", [fresh], at(70)) == []  # nothing new


def test_resync_ignores_dialogs_that_are_already_over(tracker: FinesseTracker) -> None:
    done = dialog([leg(CALLER, "DROPPED", 5), leg("1001", "WRAP_UP", 5)], state="DROPPED")
    assert tracker.resync("agent1", [done], at(10)) == []
    assert tracker.live_calls == 0


def _pending(request_id: str = "r1", number: str = "+15553334444", crm: str | None = "CRM-1") -> PendingOriginate:
    return PendingOriginate(request_id=request_id, extension="1001", number=number, dialed=number.lstrip("+"),
                            crm_call_id=crm, at=at(0), deadline=at(30))


def test_click_to_call_gets_its_crm_call_id_from_the_pending_request(tracker: FinesseTracker) -> None:
    tracker.expect_originate(_pending())
    d = dialog([leg("1001", "INITIATED", 1)], state="INITIATED", src="1001", dst="915553334444",
               call_type="AGENT_OUT")
    ev = tracker.apply("agent1", post(d), at(1))
    assert isinstance(ev[0], CallStarted)
    assert (ev[0].crm_call_id, ev[0].external_number) == ("CRM-1", "+15553334444")
    assert tracker.pending_originates == 0
    assert tracker.tick(at(100)) == []


def test_click_to_call_id_from_the_call_variable(tracker: FinesseTracker) -> None:
    tracker.expect_originate(_pending(crm="CRM-9"))
    d = dialog([leg("1001", "INITIATED", 1)], state="INITIATED", src="1001", dst="0000",
               call_type="AGENT_OUT", call_variables=(("callVariable10", "CRM-9"),))
    ev = tracker.apply("agent1", post(d), at(1))
    assert isinstance(ev[0], CallStarted) and ev[0].crm_call_id == "CRM-9"
    assert tracker.pending_originates == 0


def test_click_to_call_refused_by_cti_finishes_the_crm_call(tracker: FinesseTracker) -> None:
    tracker.expect_originate(_pending())
    error = Update("PUT", "/finesse/api/Dialog/999", None, (), (ApiError("Call Operation Failure",
                                                                         "CF_RESOURCE_OUT_OF_SERVICE", "34"),))
    ev = tracker.apply("agent1", error, at(2))
    assert kinds(ev) == ["started", "ended"]
    record = ended(ev).call
    assert (record.call_id, record.crm_call_id, record.disposition, record.failure_reason, record.agent) == (
        "c2c-r1", "CRM-1", Disposition.FAILED, "CF_RESOURCE_OUT_OF_SERVICE", "1001")
    assert tracker.apply("agent1", error, at(3)) == []  # nothing pending any more


def test_click_to_call_without_any_dialog_fails_at_its_deadline(tracker: FinesseTracker) -> None:
    tracker.expect_originate(_pending())
    assert tracker.tick(at(29)) == []
    ev = tracker.tick(at(30))
    assert kinds(ev) == ["started", "ended"] and ended(ev).call.disposition is Disposition.FAILED


def test_click_to_call_dialog_failing_at_once_is_still_reported(tracker: FinesseTracker) -> None:
    tracker.expect_originate(_pending())
    d = dialog([leg("1001", "FAILED", 1, cause="BAD_DESTINATION")], state="FAILED", src="1001",
               dst="15553334444", call_type="AGENT_OUT")
    ev = tracker.apply("agent1", post(d), at(1))
    assert kinds(ev) == ["started", "ended"]
    assert ended(ev).call.crm_call_id == "CRM-1"


def test_cancelled_originate_claims_nothing(tracker: FinesseTracker) -> None:
    tracker.expect_originate(_pending())
    tracker.cancel_originate("r1")
    d = dialog([leg("1001", "INITIATED", 1)], state="INITIATED", src="1001", dst="15553334444",
               call_type="AGENT_OUT")
    ev = tracker.apply("agent1", post(d), at(1))
    assert isinstance(ev[0], CallStarted) and ev[0].crm_call_id is None


def test_cti_error_on_a_known_call_becomes_its_failure_reason(tracker: FinesseTracker) -> None:
    d = dialog([leg("1001", "ACTIVE", 1), leg("555", "ALERTING", 1)], src="1001", dst="555", call_type="AGENT_OUT",
               state="ALERTING")
    tracker.apply("agent1", post(d), at(1))
    error = Update("PUT", "/finesse/api/Dialog/100", None, (), (ApiError("Call Operation Failure", "CF_BUSY"),))
    assert tracker.apply("agent1", error, at(2)) == []
    ev = tracker.apply("agent1", delete(dialog([leg("1001", "DROPPED", 3), leg("555", "DROPPED", 3)], src="1001",
                                               dst="555", call_type="AGENT_OUT", state="DROPPED")), at(3))
    assert (ended(ev).call.disposition, ended(ev).call.failure_reason) == (Disposition.FAILED, "CF_BUSY")


def test_non_voice_and_unknown_events_are_ignored(tracker: FinesseTracker) -> None:
    chat = Dialog(id="c1", state="OFFERED", media_type="Cisco_Chat_MRD",
                  participants=(leg("1001", "OFFERED", 0),))
    assert tracker.apply("agent1", post(chat), at(0)) == []
    strange = Update("PATCH", None, None, (dialog([leg(CALLER, "ACTIVE", 0)]),))
    assert tracker.apply("agent1", strange, at(0)) == []
    assert tracker.apply("agent1", delete(dialog([leg(CALLER, "ACTIVE", 0)], did="404")), at(0)) == []
    assert tracker.live_calls == 0
