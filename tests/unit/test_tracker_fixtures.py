"""Every recorded Asterisk trace replays to the calls its driver measured (`NAME.expected.json`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from bridge.model import (
    AgentsRinging,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallRecord,
    CallStarted,
    CallTransferred,
    Direction,
    RingStopped,
)
from bridge.pbx.asterisk.classify import Classifier
from bridge.pbx.asterisk.replay import iter_trace, replay
from bridge.pbx.asterisk.tracker import CallTracker

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ami"
NAMES = sorted(p.name.removesuffix(".expected.json") for p in FIXTURES.glob("*.expected.json"))
# The driver writes `noanswer`; the call model says `no_answer`.
STATUS = {"noanswer": "no_answer"}


def trace(name: str) -> tuple[Path, Path]:
    return FIXTURES / f"{name}.ami", FIXTURES / f"{name}.timing.jsonl"


def expected_calls(name: str) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = json.loads((FIXTURES / f"{name}.expected.json").read_text())["calls"]
    return calls


def events_of(name: str) -> tuple[list[CallEvent], CallTracker]:
    tracker = CallTracker(Classifier())
    events: list[CallEvent] = []
    for message, at in iter_trace(*trace(name)):
        events.extend(tracker.feed(message, at))
    return events, tracker


def test_fixtures_are_there() -> None:
    assert len(NAMES) >= 10


@pytest.mark.parametrize("name", NAMES)
def test_replay_matches_expected(name: str) -> None:
    records = {r.call_id: r for r in replay(*trace(name), Classifier())}
    calls = expected_calls(name)
    assert len(records) == len(calls)
    for call in calls:
        details = call["details"]
        record = records[details["linkedid"]]
        assert_matches(record, call)


def assert_matches(record: CallRecord, call: dict[str, Any]) -> None:
    details = call["details"]
    assert record.direction.value == call["direction"]
    assert record.external_number == call["customer_number"]
    if call["direction"] == "inbound":
        assert record.line == call["did"]
    elif call["direction"] == "outbound":
        # Outbound: the line is the trunk used (the endpoint of the customer's channel).
        assert record.line == details["customer_channel"].split("/", 1)[1].rsplit("-", 1)[0]
    else:
        assert record.line is None
    assert record.agent == call["agent"]
    assert list(record.agents_rung) == call["agents_rung"]
    assert record.disposition.value == STATUS.get(call["status"], call["status"])
    assert abs(record.talk_seconds - call["talk_seconds"]) <= 1
    # Every file MixMonitor was told to write, also the 44-byte ones of unanswered calls (filtered later by size).
    assert list(record.recordings) == ([details["recording_path_set"]] if details.get("recording_path_set") else [])
    assert record.crm_call_id == call["crm_call_id"]
    transfers = [(t.from_agent, t.to_agent, t.kind.value) for t in record.transfers]
    assert transfers == [(t["transferer"], t["target_agent"], t["type"]) for t in call["transfers"]]
    assert record.hangup_cause == details["hangup_cause"]
    assert (record.answered_at is None) == (call["status"] != "answered")
    assert record.started_at <= record.ended_at


@pytest.mark.parametrize("name", NAMES)
def test_event_sequences(name: str) -> None:
    """Per call: `started` first, `ended` last, one of each; ringing before answered; stops follow ringing."""
    events, tracker = events_of(name)
    assert tracker.stats.handler_errors == 0
    per_call: dict[str, list[CallEvent]] = defaultdict(list)
    for event in events:
        per_call[event.call_id].append(event)
    assert len(per_call) == len(expected_calls(name))
    for seq in per_call.values():
        kinds = [e.kind for e in seq]
        assert kinds[0] == "started" and kinds[-1] == "ended"
        assert kinds.count("started") == 1 and kinds.count("ended") == 1
        ends = [e for e in seq if isinstance(e, CallEnded)]
        assert [e.at for e in seq if isinstance(e, CallStarted)] == [ends[0].call.started_at]
        ringing: set[str] = set()
        answered_at = None
        for event in seq:
            if isinstance(event, AgentsRinging):
                ringing.update(event.agents)
            elif isinstance(event, RingStopped):
                assert event.agent in ringing
                ringing.discard(event.agent)
            elif isinstance(event, CallTransferred) and event.to_agent is not None:
                ringing.discard(event.to_agent)  # the new agent took it: no ring_stopped
            elif isinstance(event, CallAnswered):
                ringing.discard(event.agent)  # answering ends the ringing without a ring_stopped
                answered_at = event.at
                record = ends[0].call
                if record.direction is not Direction.INTERNAL:
                    assert event.agent == (record.transfers[0].from_agent if record.transfers else record.agent)
        if answered_at is not None and "ringing" in kinds:
            assert kinds.index("ringing") < kinds.index("answered")
        assert not ringing, "every ringing agent stops ringing (answers or gets ring_stopped) by the end"
    assert len(tracker) == 0
    assert tracker.sizes() == dict.fromkeys(tracker.sizes(), 0), "finished calls leave no state behind"


@pytest.mark.parametrize("name", [n for n in NAMES if "queue" in n])
def test_losing_queue_members_are_answered_elsewhere(name: str) -> None:
    events, _ = events_of(name)
    (call,) = expected_calls(name)
    stops = {e.agent: e.reason.value for e in events if isinstance(e, RingStopped)}
    losers = [a for a in call["agents_rung"] if a != call["agent"]]
    assert losers
    assert stops == dict.fromkeys(losers, "answered_elsewhere")
    answered = [e for e in events if isinstance(e, CallAnswered)]
    assert [e.agent for e in answered] == [call["agent"]]


def test_blind_transfer_events() -> None:
    events, _ = events_of("blind_transfer")
    kinds = [e.kind for e in events]
    assert kinds.index("answered") < kinds.index("transferred") < kinds.index("ended")
    assert kinds.count("answered") == 1


def test_restart_closes_the_call_open_at_the_restart() -> None:
    """Asterisk restarts mid-call and the Hangups are lost: the next session's FullyBooted (Uptime 0) closes it."""
    tracker = CallTracker(Classifier())
    events: list[CallEvent] = []
    for message, at in iter_trace(*trace("asterisk_restart")):
        if message.event in ("Hangup", "Shutdown"):
            break  # the link died before Asterisk reported the hangups
        events.extend(tracker.feed(message, at))
    assert len(tracker) == 1
    assert not any(isinstance(e, CallEnded) for e in events)
    after = list(iter_trace(FIXTURES / "asterisk_restart.after.ami", FIXTURES / "asterisk_restart.after.timing.jsonl"))
    booted, at = after[0]
    assert booted.event == "FullyBooted" and booted.get("Uptime") == "0"
    ended = [e for e in tracker.feed(booted, at) if isinstance(e, CallEnded)]
    assert len(ended) == 1 and len(tracker) == 0
    record = ended[0].call
    (call,) = expected_calls("asterisk_restart")
    assert (record.call_id, record.disposition.value, record.agent, record.line) == (
        call["details"]["linkedid"], "answered", call["agent"], call["did"])
    assert record.ended_at.timestamp() == pytest.approx(at)


def test_fully_booted_of_a_running_asterisk_closes_nothing() -> None:
    tracker = CallTracker(Classifier())
    for message, at in iter_trace(*trace("asterisk_restart")):
        if message.event == "Hangup":
            break
        tracker.feed(message, at)
    booted, _ = next(iter_trace(*trace("asterisk_restart")))  # Uptime 23: Asterisk was up all along
    assert booted.event == "FullyBooted"
    assert tracker.feed(booted, at + 5) == []
    assert len(tracker) == 1


def test_shutdown_ends_open_calls_once() -> None:
    tracker = CallTracker(Classifier())
    ended: list[CallEnded] = []
    for message, at in iter_trace(*trace("asterisk_restart")):
        if message.event == "Hangup":
            continue  # lost
        ended.extend(e for e in tracker.feed(message, at) if isinstance(e, CallEnded))
    assert len(ended) == 1 and len(tracker) == 0
    assert tracker.restart(at + 1) == []


def test_trace_without_timing_gets_increasing_synthetic_times() -> None:
    ami, timing = trace("inbound_queue")
    timed = list(iter_trace(ami, timing))
    synthetic = list(iter_trace(ami, None))
    assert [m.headers for m, _ in timed] == [m.headers for m, _ in synthetic]
    assert len(timed) == len(timing.read_text().splitlines())
    times = [t for _, t in synthetic]
    assert times == sorted(times) and len(set(times)) == len(times)
    (record,) = replay(ami, None, Classifier())
    assert (record.direction.value, record.agent, record.disposition.value) == ("inbound", "102", "answered")


def test_replay_leaves_out_calls_open_at_the_end(tmp_path: Path) -> None:
    ami, timing = trace("inbound_answered")
    data = ami.read_bytes()
    cut = data.index(b"Event: Hangup")
    short = tmp_path / "cut.ami"
    short.write_bytes(data[:cut])
    assert replay(short, None, Classifier()) == []
    assert replay(short, timing, Classifier()) == []
