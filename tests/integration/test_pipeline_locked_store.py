"""A store locked by another process (a sqlite3 shell, a backup) never blocks the event loop and loses nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bridge.model import (
    AgentsRinging,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallRecord,
    CallStarted,
    Direction,
    Disposition,
)
from bridge.pipeline import Pipeline
from bridge.sync.outbox import Outbox
from bridge.sync.policy import CallPolicy, PolicySettings

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def inbound(call_id: str) -> list[CallEvent]:
    record = CallRecord(call_id=call_id, pbx="asterisk", direction=Direction.INBOUND, external_number="+79161110001",
                        line="5551000", agent="101", agents_rung=("101",), disposition=Disposition.ANSWERED,
                        started_at=T0, answered_at=T0 + timedelta(seconds=2), ended_at=T0 + timedelta(seconds=9),
                        talk_seconds=7, hangup_cause=16)
    return [CallStarted(call_id=call_id, at=T0, direction=Direction.INBOUND, external_number="+79161110001",
                        line="5551000"),
            AgentsRinging(call_id=call_id, at=T0, agents=("101",)),
            CallAnswered(call_id=call_id, at=T0 + timedelta(seconds=2), agent="101"),
            CallEnded(call_id=call_id, at=T0 + timedelta(seconds=9), call=record)]


async def test_events_wait_in_memory_while_locked_and_land_in_order(tmp_path: Path) -> None:
    path = tmp_path / "state" / "bridge.sqlite3"
    async with Outbox(path) as outbox:
        pipeline = Pipeline(CallPolicy(PolicySettings(default_user_id=1)), outbox)
        pipeline.handle(inbound("c0")[0])  # the store works: written at once
        assert pipeline.waiting_steps == 0
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        for event in inbound("c1"):
            pipeline.handle(event)  # handed back without waiting for the lock
        assert pipeline.waiting_steps == 4
        assert pipeline.store_failures == 0
        heartbeat = 0

        async def beat() -> None:
            nonlocal heartbeat
            while True:
                heartbeat += 1
                await asyncio.sleep(0.01)

        beating = asyncio.create_task(beat())
        await asyncio.sleep(0.3)
        assert heartbeat > 5  # the loop kept running while the store was locked
        locker.execute("ROLLBACK")
        locker.close()
        async with asyncio.timeout(5):
            while pipeline.waiting_steps:
                await asyncio.sleep(0.02)
        beating.cancel()
        kinds = [row.kind for row in outbox.list_rows("all", call_key="c1")]
        assert kinds[0] == "register" and kinds[-1] == "finish"
        assert pipeline.store_failures == 0


async def test_flush_at_shutdown_reports_what_it_could_not_write(tmp_path: Path) -> None:
    path = tmp_path / "state" / "bridge.sqlite3"
    async with Outbox(path) as outbox:
        pipeline = Pipeline(CallPolicy(PolicySettings(default_user_id=1)), outbox)
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        pipeline.handle(inbound("c1")[0])
        assert await pipeline.flush(0.3) is False
        locker.execute("ROLLBACK")
        locker.close()
        assert await pipeline.flush(2.0) is True
        assert pipeline.waiting_steps == 0
