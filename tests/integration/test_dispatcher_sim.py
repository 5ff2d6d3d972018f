"""The whole CRM path over real HTTP: policy -> outbox -> dispatcher -> Bitrix24Client -> portal simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bridge.crm.bitrix24 import Bitrix24Client, LeakyBucket
from bridge.crm.bitrix24.directory import Directory
from bridge.model import (
    AgentsRinging,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallRecord,
    CallStarted,
    Direction,
    Disposition,
    RingStopped,
    RingStopReason,
)
from bridge.sim.bitrix24 import Bitrix24Simulator
from bridge.sync.dispatcher import Dispatcher
from bridge.sync.outbox import Outbox
from bridge.sync.policy import CallPolicy, PolicySettings

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone(timedelta(hours=3)))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def queue_call(call_id: str, number: str, answerer: str | None) -> list[CallEvent]:
    """Simulator users: 101 -> 5, 102 -> 7 (100 -> 1 is the default user)."""
    events: list[CallEvent] = [
        CallStarted(call_id=call_id, at=at(0), direction=Direction.INBOUND, external_number=number, line="5551000"),
        AgentsRinging(call_id=call_id, at=at(1), agents=("101", "102")),
    ]
    if answerer:
        loser = "101" if answerer == "102" else "102"
        events += [CallAnswered(call_id=call_id, at=at(3), agent=answerer),
                   RingStopped(call_id=call_id, at=at(3), agent=loser, reason=RingStopReason.ANSWERED_ELSEWHERE)]
    record = CallRecord(call_id=call_id, pbx="asterisk", direction=Direction.INBOUND, external_number=number,
                        line="5551000", agent=answerer, agents_rung=("101", "102"),
                        disposition=Disposition.ANSWERED if answerer else Disposition.MISSED, started_at=at(0),
                        answered_at=at(3) if answerer else None, ended_at=at(20), talk_seconds=17 if answerer else 0,
                        hangup_cause=16)
    return [*events, CallEnded(call_id=call_id, at=at(20), call=record)]


@pytest.fixture
async def sim() -> AsyncIterator[Bitrix24Simulator]:
    async with Bitrix24Simulator(rate=1000.0, burst=1000) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Bitrix24Simulator) -> AsyncIterator[Bitrix24Client]:
    bucket = LeakyBucket(rate=1000.0, burst=1000)
    async with Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=bucket, timeout=5.0) as b24:
        yield b24


@pytest.mark.parametrize("batching", [True, False])
async def test_calls_reach_the_simulated_portal_exactly_once(
        tmp_path: Path, sim: Bitrix24Simulator, client: Bitrix24Client, batching: bool) -> None:
    directory = Directory(client, default_user_id=1, cache_path=None)
    await directory.refresh()
    policy = CallPolicy(PolicySettings(default_user_id=1))
    calls = {"a": ("+79161110001", "102"), "b": ("+79161110002", None), "c": ("+79161110003", "101")}
    async with Outbox(tmp_path / "outbox.sqlite3") as outbox:
        for call_id, (number, answerer) in calls.items():
            for event in queue_call(call_id, number, answerer):
                outbox.write(policy.step(event))
        sim.fail_next(2, 503, error="QUERY_LIMIT_EXCEEDED")  # a short rate-limit storm first
        async with Dispatcher(outbox, client, directory, batching=batching, backoff_base=0.005,
                              backoff_cap=0.05) as dispatcher:
            assert await dispatcher.drain(10)
        assert outbox.dead_count() == 0
        crm_ids = {key: outbox.crm_call_id(key) for key in calls}
    assert len(sim.calls) == 3  # refused attempts (the 503s) created nothing
    assert all(call.registrations == 1 for call in sim.calls.values())
    for key, (_, answerer) in calls.items():
        call = sim.calls[crm_ids[key] or ""]
        assert call.external_call_id == key
        assert call.user_id == 5  # registered for the first agent rung (101)
        assert call.shows and sorted(call.shows[0]) == [5, 7]
        assert call.finish is not None
        expected_user = {"101": 5, "102": 7, None: 5}[answerer]  # missed: the first agent rung
        assert int(call.finish["PORTAL_USER_ID"]) == expected_user
        assert call.finish["CALL_FAILED_CODE"] == ("200" if answerer else "304")
        assert call.finish["CALL_DURATION"] == ("17" if answerer else "0")
    if batching:
        assert any(r.method == "batch" for r in sim.requests)
