"""Policy -> outbox -> dispatcher against an in-memory portal with real telephony behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime, timedelta, timezone
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
    Direction,
    Disposition,
    RecordingStarted,
)
from bridge.sync.dispatcher import Dispatcher, DispatcherState
from bridge.sync.operations import CrmOp, OpKind
from bridge.sync.outbox import Outbox
from bridge.sync.policy import CallPolicy, PolicySettings
from tests.integration.fake_b24_portal import FakeDirectory, FakePortal

TZ = timezone(timedelta(hours=1))
T0 = datetime(2026, 11, 28, 9, 0, tzinfo=TZ)
AGENTS = {"101": 1, "102": 2, "103": 3, "104": 4}
REGISTER, SHOW, HIDE, FINISH = (f"telephony.externalcall.{m}" for m in ("register", "show", "hide", "finish"))


class Clock:
    """Wall time for pause deadlines, moved by the test instead of waited for."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def portal(clock: Clock) -> FakePortal:
    return FakePortal(clock=clock)


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory(AGENTS, default=9)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(tmp_path / "state" / "bridge.sqlite3") as box:
        yield box


def dispatcher(outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock, **kwargs: Any) -> Dispatcher:
    options: dict[str, Any] = {"backoff_base": 0.001, "backoff_cap": 0.01, "idle_poll": 0.05, "clock": clock}
    options.update(kwargs)
    return Dispatcher(outbox, portal, directory, **options)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


def feed(outbox: Outbox, policy: CallPolicy, events: Iterable[CallEvent]) -> None:
    for event in events:
        outbox.write(policy.step(event))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def inbound_answered(call_id: str, number: str, agents: tuple[str, ...], answerer: str,
                     recording: str | None = None) -> list[CallEvent]:
    events: list[CallEvent] = [
        CallStarted(call_id=call_id, at=at(0), direction=Direction.INBOUND, external_number=number, line="5551000"),
        AgentsRinging(call_id=call_id, at=at(1), agents=agents),
    ]
    if recording:
        events.append(RecordingStarted(call_id=call_id, at=at(1), path=recording))
    events += [
        CallAnswered(call_id=call_id, at=at(4), agent=answerer),
        ended(call_id, Direction.INBOUND, Disposition.ANSWERED, number, answerer, agents, answered=4, talk=20,
              recordings=(recording,) if recording else ()),
    ]
    return events


def inbound_missed(call_id: str, number: str, agents: tuple[str, ...]) -> list[CallEvent]:
    return [
        CallStarted(call_id=call_id, at=at(0), direction=Direction.INBOUND, external_number=number, line="5551000"),
        AgentsRinging(call_id=call_id, at=at(1), agents=agents),
        ended(call_id, Direction.INBOUND, Disposition.MISSED, number, None, agents),
    ]


def outbound(call_id: str, number: str, agent: str) -> list[CallEvent]:
    return [
        CallStarted(call_id=call_id, at=at(0), direction=Direction.OUTBOUND, external_number=number, line="trunk",
                    agent=agent),
        ended(call_id, Direction.OUTBOUND, Disposition.ANSWERED, number, agent, (), answered=3, talk=12),
    ]


def ended(call_id: str, direction: Direction, disposition: Disposition, number: str, agent: str | None,
          rung: tuple[str, ...], *, answered: float | None = None, talk: int = 0,
          recordings: tuple[str, ...] = (), crm: str | None = None) -> CallEnded:
    record = CallRecord(call_id=call_id, pbx="asterisk", direction=direction, external_number=number, line="5551000",
                        agent=agent, agents_rung=rung, disposition=disposition, started_at=at(0),
                        answered_at=None if answered is None else at(answered), ended_at=at(30), talk_seconds=talk,
                        hangup_cause=16, recordings=recordings, crm_call_id=crm)
    return CallEnded(call_id=call_id, at=at(30), call=record)


def ops_for(call_key: str, outbox: Outbox) -> list[str]:
    return [row.kind for row in outbox.list_rows("all", call_key=call_key)]


def executed_for(portal: FakePortal, call_id: str) -> list[str]:
    return [m.rsplit(".", 1)[-1].lower() for m, p in portal.executed if p.get("CALL_ID") == call_id]


# --- batching ----------------------------------------------------------------------------------------------------

async def test_batching_packs_register_and_show_with_a_result_reference(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    feed(outbox, policy, inbound_answered("c1", "+15550001", ("101", "102"), "102")[:2])
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
    assert len(portal.requests) == 1
    kind, commands = portal.requests[0]
    assert kind == "batch"
    assert [m for m, _ in commands] == [REGISTER, SHOW]
    register, show = (p for _, p in commands)
    assert register["USER_ID"] == 1 and register["SHOW"] == 0
    assert show["CALL_ID"].startswith("$result[") and show["CALL_ID"].endswith("][CALL_ID]")
    assert show["USER_ID"] == [1, 2]
    call_id = outbox.crm_call_id("c1")
    assert call_id is not None and portal.live[call_id].shown == {1, 2}


async def test_batching_off_sends_one_op_per_request(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    feed(outbox, policy, inbound_answered("c1", "+15550001", ("101", "102"), "102"))
    async with dispatcher(outbox, portal, directory, clock, batching=False) as sender:
        assert await sender.drain(5)
    assert [kind for kind, _ in portal.requests] == ["call"] * 4
    assert [len(commands) for _, commands in portal.requests] == [1] * 4
    call_id = outbox.crm_call_id("c1")
    assert executed_for(portal, call_id or "") == ["show", "hide", "finish"]
    assert portal.finished[call_id or ""]["PORTAL_USER_ID"] == 2
    assert portal.finished[call_id or ""]["shown_at_finish"] == []  # no card left open


# --- priority ----------------------------------------------------------------------------------------------------

async def test_cards_go_before_older_finishes(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    old = [f"old{i}" for i in range(5)]
    for key in old:
        feed(outbox, policy, outbound(key, "+1555100", "103")[:1])
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
    # a burst: five calls end, then a new call starts ringing
    for key in old:
        feed(outbox, policy, outbound(key, "+1555100", "103")[1:])
    feed(outbox, policy, inbound_answered("new", "+15550009", ("101", "104"), "101")[:2])
    portal.requests.clear()
    portal.executed.clear()
    async with dispatcher(outbox, portal, directory, clock, batching=False) as sender:
        assert await sender.drain(5)
    assert portal.methods() == ["register", "show"] + ["finish"] * 5


async def test_cards_lead_a_mixed_batch(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    feed(outbox, policy, outbound("old", "+1555100", "103")[:1])
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
    feed(outbox, policy, outbound("old", "+1555100", "103")[1:])
    feed(outbox, policy, inbound_answered("new", "+15550009", ("101",), "101")[:2])
    portal.requests.clear()
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
    assert [[m for m, _ in commands] for _, commands in portal.requests] == [[REGISTER, SHOW, FINISH]]


# --- outages and limits ------------------------------------------------------------------------------------------

SCENARIO: list[tuple[str, list[CallEvent]]] = [
    ("in1", inbound_answered("in1", "+15550001", ("101", "102", "103"), "102")),
    ("in2", inbound_missed("in2", "+15550002", ("103", "104"))),
    ("out1", outbound("out1", "+15550003", "104")),
    ("in3", inbound_answered("in3", "+15550004", ("101",), "101")),
]


async def test_outage_then_recovery_sends_everything_exactly_once_in_order(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    portal.down = True
    async with dispatcher(outbox, portal, directory, clock) as sender:
        for _, events in SCENARIO:
            feed(outbox, policy, events)
        await until(lambda: portal.refused >= 5)
        assert portal.executed == []
        assert outbox.pending_count() == sum(len(ops_for(k, outbox)) for k, _ in SCENARIO)
        assert not sender.health().ok
        portal.down = False
        assert await sender.drain(5)
        health = sender.health()
    assert health.retries >= 5 and health.dead == 0 and health.backlog == 0
    assert len(portal.executed) == sum(len(ops_for(k, outbox)) for k, _ in SCENARIO)
    for key, _ in SCENARIO:
        call_id = outbox.crm_call_id(key)
        assert call_id in portal.finished
        sent = [m.rsplit(".", 1)[-1].lower() for m, p in portal.executed
                if p.get("CALL_ID") == call_id or (m == REGISTER and p.get("EXTERNAL_CALL_ID") == key)]
        assert sent == ops_for(key, outbox)
    assert portal.live == {}


async def test_rate_limit_backs_off_and_loses_nothing(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    portal.rate_limit_next = 4
    for _, events in SCENARIO:
        feed(outbox, policy, events)
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
        health = sender.health()
    assert portal.rate_limit_next == 0 and portal.refused == 4
    assert health.retries >= 4
    assert len(portal.finished) == len(SCENARIO) and portal.live == {}
    assert sum(1 for m, _ in portal.executed if m == REGISTER) == len(SCENARIO)


async def test_auth_failure_keeps_queuing_until_it_is_fixed(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    portal.auth_broken = True
    async with dispatcher(outbox, portal, directory, clock) as sender:
        feed(outbox, policy, SCENARIO[0][1])
        await until(lambda: portal.refused >= 3)
        assert "invalid_token" in (sender.health().last_error or "")
        portal.auth_broken = False
        assert await sender.drain(5)
    assert len(portal.finished) == 1 and outbox.dead_count() == 0


async def test_method_pause_holds_only_that_method(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    feed(outbox, policy, outbound("a", "+1555100", "101")[:1])
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
    portal.paused[REGISTER] = clock.now + 600
    feed(outbox, policy, inbound_answered("b", "+15550009", ("102",), "102")[:2])  # register + show: held
    feed(outbox, policy, outbound("a", "+1555100", "101")[1:])  # finish: goes
    async with dispatcher(outbox, portal, directory, clock) as sender:
        await until(lambda: len(portal.finished) == 1)
        await asyncio.sleep(0.05)  # give a wrongly unpaused register every chance to slip through
        assert outbox.crm_call_id("b") is None
        assert REGISTER.lower() in sender.health().paused_methods
        assert outbox.pending_count() == 2
        clock.now += 601  # the portal's budget window has passed
        sender.wake()
        assert await sender.drain(5)
    assert outbox.crm_call_id("b") in portal.live
    assert portal.refused == 0  # held on our side after the first refusal inside the batch


async def test_method_pause_without_batching(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    portal.paused[SHOW] = clock.now + 600
    feed(outbox, policy, inbound_answered("b", "+15550009", ("102",), "102")[:2])
    feed(outbox, policy, outbound("c", "+1555100", "101"))
    async with dispatcher(outbox, portal, directory, clock, batching=False) as sender:
        await until(lambda: len(portal.finished) == 1)
        assert portal.refused == 1  # one refusal taught the dispatcher to hold `show`
        assert ops_for("b", outbox) == ["register", "show"]
        clock.now += 601
        sender.wake()
        assert await sender.drain(5)
    assert portal.live[outbox.crm_call_id("b") or ""].shown == {2}


# --- exactly once --------------------------------------------------------------------------------------------------

async def test_lost_answer_to_finish_then_call_not_found_counts_as_done(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    events = outbound("o", "+1555100", "101")
    feed(outbox, policy, events[:1])
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
        portal.lose_next_answers = 1  # the finish runs, but its answer never arrives
        feed(outbox, policy, events[1:])
        assert await sender.drain(5)
        health = sender.health()
    assert outbox.dead_count() == 0
    assert portal.methods().count("finish") == 1
    assert health.sent[FINISH] == {"retry": 1, "already_done": 1}


async def test_lost_answer_to_register_reuses_the_same_crm_call(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    portal.lose_next_answers = 1
    feed(outbox, policy, outbound("o", "+1555100", "101"))
    async with dispatcher(outbox, portal, directory, clock, batching=False) as sender:
        assert await sender.drain(5)
    assert portal.methods() == ["register", "register", "finish"]  # the portal de-duplicated the retry
    assert len(portal.finished) == 1 and portal.live == {}


async def test_lost_batch_answer_with_a_register_never_duplicates_the_call(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    for _, events in SCENARIO:  # whole calls at once: registers, cards and finishes all ready together
        feed(outbox, policy, events)
    portal.lose_next_answers = 1
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
    assert portal.live == {}
    assert len(portal.finished) == len(SCENARIO)
    assert {outbox.crm_call_id(key) for key, _ in SCENARIO} == set(portal.finished)
    for _, commands in portal.requests:
        for method, params in commands:
            if method == FINISH:
                assert not str(params["CALL_ID"]).startswith("$result")


async def test_call_not_found_on_a_first_finish_is_a_dead_letter(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    crm = "externalCall.unknown.1"
    feed(outbox, policy, [
        CallStarted(call_id="p", at=at(0), direction=Direction.OUTBOUND, external_number="+1555",
                    line=None, agent="101", crm_call_id=crm),
        ended("p", Direction.OUTBOUND, Disposition.NO_ANSWER, "+1555", "101", (), crm=crm),
    ])
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
    dead = outbox.list_rows("dead")
    assert [(r.kind, r.reason) for r in dead] == [("finish", "Call is not found (call should be registered prior "
                                                              "to finishing")]


# --- permanent failures ------------------------------------------------------------------------------------------

async def test_permanent_error_dead_letters_the_call_and_retry_replays_it_in_order(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    directory.users["105"] = 55  # a Bitrix24 user that is not active on the portal
    feed(outbox, policy, inbound_answered("bad", "+15550005", ("105",), "105"))
    feed(outbox, policy, SCENARIO[0][1])
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
        dead = outbox.list_rows("dead", call_key="bad")
        assert [r.kind for r in dead] == ["register", "show", "finish"]
        assert dead[0].reason == "User is not found or is not active"
        assert all("register" in (r.reason or "") for r in dead[1:])
        assert len(portal.finished) == 1  # the other call was not held up
        portal.users.add(55)
        assert outbox.retry_call("bad") == 3
        assert await sender.drain(5)
    call_id = outbox.crm_call_id("bad")
    assert executed_for(portal, call_id or "") == ["show", "finish"]
    assert outbox.dead_count() == 0


async def test_unknown_extension_without_default_user_is_a_clear_dead_letter(
        outbox: Outbox, portal: FakePortal, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings())
    feed(outbox, policy, inbound_missed("m", "+15550006", ("999",)))
    async with dispatcher(outbox, portal, FakeDirectory(AGENTS, default=None), clock) as sender:
        assert await sender.drain(5)
    reasons = [r.reason or "" for r in outbox.list_rows("dead")]
    assert "999" in reasons[0] and "default_user_id" in reasons[0]
    assert portal.requests == []


async def test_batch_refused_as_a_whole_falls_back_to_single_requests(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    portal.refuse_batches = 1
    feed(outbox, policy, SCENARIO[0][1])
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
    assert portal.requests[0][0] == "call"
    assert len(portal.finished) == 1 and outbox.dead_count() == 0


async def test_a_client_bug_does_not_stop_the_dispatcher(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    portal.crash_next = 1
    feed(outbox, policy, outbound("o", "+1555100", "101"))
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
        assert "client bug" in (sender.health().last_error or "")
    assert len(portal.finished) == 1


async def test_a_request_that_always_trips_a_client_bug_is_isolated_and_dead_lettered(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    portal.crash_on = lambda method, params: params.get("PHONE_NUMBER") == "+1555666"
    feed(outbox, policy, outbound("poison", "+1555666", "101"))
    for _, events in SCENARIO:
        feed(outbox, policy, events)
    async with dispatcher(outbox, portal, directory, clock) as sender:
        await until(lambda: outbox.pending_count() == 0)
        assert sender.state is DispatcherState.RUNNING
    dead = outbox.list_rows("dead")
    assert [(r.call_key, r.kind) for r in dead] == [("poison", "register"), ("poison", "finish")]
    assert "client bug" in (dead[0].reason or "")
    assert len(portal.finished) == len(SCENARIO)  # everyone else got through


async def test_a_client_bug_hitting_everything_dead_letters_nothing(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    portal.crash_next = 10_000
    feed(outbox, policy, SCENARIO[0][1])
    async with dispatcher(outbox, portal, directory, clock) as sender:
        await until(lambda: sender.health().retries >= 10)
        assert outbox.dead_count() == 0
        portal.crash_next = 0
        assert await sender.drain(5)
    assert len(portal.finished) == 1


# --- users -------------------------------------------------------------------------------------------------------

async def test_missed_call_owner_rule_finishes_on_the_crm_owner(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(missed_call_user="owner", default_user_id=9))
    portal.bindings["15550007"] = ("CONTACT", 77)
    portal.owners[("CONTACT", 77)] = 5
    portal.bindings["15550008"] = ("LEAD", 78)  # a lead nobody owns: fall back to the first agent rung
    feed(outbox, policy, inbound_missed("m1", "+15550007", ("103", "104")))
    feed(outbox, policy, inbound_missed("m2", "+15550008", ("104",)))
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
    assert portal.finished[outbox.crm_call_id("m1") or ""]["PORTAL_USER_ID"] == 5
    assert portal.finished[outbox.crm_call_id("m2") or ""]["PORTAL_USER_ID"] == 4
    assert portal.finished[outbox.crm_call_id("m1") or ""]["shown_at_finish"] == []


async def test_directory_changes_apply_to_queued_work(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    feed(outbox, policy, outbound("o", "+1555100", "104"))
    directory.users["104"] = 3  # re-mapped while the op waited
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
    assert next(iter(portal.finished.values()))["PORTAL_USER_ID"] == 3


# --- recordings --------------------------------------------------------------------------------------------------

async def test_recordings_go_to_the_handler_after_finish(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    feed(outbox, policy, inbound_answered("r", "+15550010", ("101",), "101", recording="/rec/r.wav"))
    seen: list[tuple[CrmOp, str, float]] = []

    async def handler(op: CrmOp, call_id: str, created_at: float) -> Any:
        seen.append((op, call_id, created_at))
        return await portal.attach(op, call_id)

    async with dispatcher(outbox, portal, directory, clock, attach_handler=handler) as sender:
        assert await sender.drain(5)
    call_id = outbox.crm_call_id("r") or ""
    assert [(op.kind, op.record_path, cid) for op, cid, _ in seen] == [(OpKind.ATTACH_RECORD, "/rec/r.wav", call_id)]
    written = [row.created_at for row in outbox.list_rows("all", call_key="r") if row.kind == "attach_record"]
    assert [created for _, _, created in seen] == written  # when the op was written, for the give-up clock
    assert portal.records == {call_id: ["/rec/r.wav"]}
    assert portal.methods()[-2:] == ["finish", "attachrecord"]


async def test_recordings_without_a_handler_are_dead_letters(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    feed(outbox, policy, inbound_answered("r", "+15550010", ("101",), "101", recording="/rec/r.wav"))
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
    assert [(r.kind, r.reason) for r in outbox.list_rows("dead")] == [
        ("attach_record", "recordings disabled: no attach handler is configured")]


async def test_a_slow_upload_does_not_hold_up_cards(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    release = asyncio.Event()

    async def slow(op: CrmOp, call_id: str, created_at: float) -> Any:
        await release.wait()
        return await portal.attach(op, call_id)

    feed(outbox, policy, inbound_answered("r", "+15550010", ("101",), "101", recording="/rec/r.wav"))
    async with dispatcher(outbox, portal, directory, clock, attach_handler=slow) as sender:
        await until(lambda: outbox.pending_count() == 1 and outbox.in_flight_count() == 1)
        feed(outbox, policy, inbound_answered("n", "+15550011", ("102",), "102")[:2])
        await until(lambda: outbox.crm_call_id("n") is not None)
        assert portal.records == {}
        release.set()
        assert await sender.drain(5)
    assert len(portal.records) == 1


# --- lifecycle ---------------------------------------------------------------------------------------------------

async def test_drain_times_out_while_the_portal_is_down_and_work_survives(
        tmp_path: Path, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    path = tmp_path / "b.sqlite3"
    policy = CallPolicy(PolicySettings(default_user_id=9))
    portal.down = True
    async with Outbox(path) as box:
        feed(box, policy, SCENARIO[0][1])
        sender = dispatcher(box, portal, directory, clock)
        async with sender:
            assert await sender.drain(0.1) is False
        assert sender.state is DispatcherState.CLOSED
        with pytest.raises(RuntimeError):
            await sender.__aenter__()
    portal.down = False
    async with Outbox(path) as box, dispatcher(box, portal, directory, clock) as sender:  # after a restart
        assert await sender.drain(5)
    assert len(portal.finished) == 1


async def test_entering_twice_is_refused(outbox: Outbox, portal: FakePortal, directory: FakeDirectory,
                                         clock: Clock) -> None:
    sender = dispatcher(outbox, portal, directory, clock)
    async with sender:
        with pytest.raises(RuntimeError, match="already running"):
            await sender.__aenter__()
        assert sender.health().ok
    with pytest.raises(ValueError, match="max_batch"):
        Dispatcher(outbox, portal, directory, max_batch=51)


async def test_on_done_hears_every_accepted_op_once(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    feed(outbox, policy, inbound_answered("c1", "+15550001", ("101", "102"), "102"))
    heard: list[tuple[str, OpKind]] = []
    async with dispatcher(outbox, portal, directory, clock) as sender:
        sender.on_done = lambda op: heard.append((op.call_key, op.kind))
        assert await sender.drain(5)
    kinds = [kind for _, kind in heard]
    assert {key for key, _ in heard} == {"c1"}
    assert kinds[:2] == [OpKind.REGISTER, OpKind.SHOW]
    assert kinds.count(OpKind.FINISH) == 1
    assert sorted(kinds) == sorted(OpKind(row.kind) for row in outbox.list_rows("all", call_key="c1"))


async def test_retry_cap_comes_from_settings(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory) -> None:
    from bridge.config import Bitrix24Settings

    sender = Dispatcher.from_config(outbox, portal, directory, Bitrix24Settings(retry_max_seconds=3.0))
    delays = [sender._senders["send"].backoff.next_delay() for _ in range(20)]
    assert max(delays) <= 3.0
    assert delays[-1] >= 1.5  # grown to the cap and drawn from its upper half
