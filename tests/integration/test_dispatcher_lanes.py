"""The dispatcher's two lanes against the in-memory portal: cards lead every batch, a recording that is not ready
waits alone (never a lane backoff, never a dead letter), and the attach lane wakes as soon as a finish goes through."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest

from bridge.model import CallAnswered, CallTransferred, Direction, Disposition, TransferKind
from bridge.sync.operations import CrmOp
from bridge.sync.outbox import Outbox
from bridge.sync.policy import CallPolicy, PolicySettings
from bridge.sync.ports import AttachNotReady
from tests.integration.fake_b24_portal import FakeDirectory, FakePortal
from tests.integration.test_dispatcher import (
    FINISH,
    HIDE,
    REGISTER,
    SHOW,
    Clock,
    at,
    clock,
    directory,
    dispatcher,
    ended,
    executed_for,
    feed,
    inbound_answered,
    outbox,
    portal,
    until,
)

__all__ = ["clock", "directory", "outbox", "portal"]  # the shared fixtures, imported for pytest

SLEEPY = 60.0  # an idle poll no test may wait for: whatever wakes a lane must be an event


class AnsweringLater:
    """The same portal, answering only after the event loop had a turn, as a real one does: while the send lane waits
    for an answer the attach lane runs, finds nothing ready yet, and goes to sleep."""

    def __init__(self, portal: FakePortal) -> None:
        self._portal = portal

    async def call(self, method: str, params: Mapping[str, Any]) -> Any:
        await asyncio.sleep(0.005)
        return await self._portal.call(method, params)

    async def batch(self, commands: Mapping[str, tuple[str, Mapping[str, Any]]], *, halt: bool = False) -> Any:
        await asyncio.sleep(0.005)
        return await self._portal.batch(commands, halt=halt)


# --- cards first -------------------------------------------------------------------------------------------------

async def test_a_calls_own_hide_and_finish_do_not_push_other_calls_cards_to_a_later_batch(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    feed(outbox, policy, inbound_answered("a", "+15550001", ("101",), "101")[:2])
    async with dispatcher(outbox, portal, directory, clock) as sender:
        assert await sender.drain(5)
    # a is transferred and ends (a show, a hide and a finish with a stored CALL_ID: all may ride together), and
    # meanwhile two new calls start ringing
    feed(outbox, policy, [
        CallAnswered(call_id="a", at=at(4), agent="101"),
        CallTransferred(call_id="a", at=at(10), from_agent="101", to_agent="102", transfer_kind=TransferKind.BLIND),
        ended("a", Direction.INBOUND, Disposition.ANSWERED, "+15550001", "102", ("101",), answered=4, talk=20),
    ])
    for key in ("n1", "n2"):
        feed(outbox, policy, inbound_answered(key, "+15550002", ("103",), "103")[:2])
    portal.requests.clear()
    async with dispatcher(outbox, portal, directory, clock, max_batch=4) as sender:
        assert await sender.drain(5)
    batches = [[method for method, _ in commands] for _, commands in portal.requests]
    assert batches == [[SHOW, REGISTER, SHOW, REGISTER], [SHOW, HIDE, FINISH]]
    assert executed_for(portal, outbox.crm_call_id("a") or "")[-3:] == ["show", "hide", "finish"]
    assert outbox.dead_count() == 0


# --- recordings that are not ready yet ---------------------------------------------------------------------------

@pytest.mark.parametrize("retry_after", [SLEEPY, math.nan, math.inf, -5.0, 1e300])
async def test_a_recording_that_is_not_ready_waits_alone_while_later_ones_go(
        retry_after: float, outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    feed(outbox, policy, inbound_answered("r1", "+15550010", ("101",), "101", recording="/rec/late.wav"))
    feed(outbox, policy, inbound_answered("r2", "+15550011", ("102",), "102", recording="/rec/ready.wav"))
    tries: Counter[str] = Counter()

    async def handler(op: CrmOp, call_id: str, created_at: float) -> Any:
        tries[op.record_path or ""] += 1
        if op.record_path == "/rec/late.wav":
            raise AttachNotReady("late.wav does not exist yet", retry_after=retry_after)
        return await portal.attach(op, call_id)

    async with dispatcher(outbox, portal, directory, clock, attach_handler=handler) as sender:
        await until(lambda: bool(portal.records))
        health = sender.health()
    assert portal.records == {outbox.crm_call_id("r2"): ["/rec/ready.wav"]}
    assert tries["/rec/ready.wav"] == 1
    if retry_after == SLEEPY:
        assert tries["/rec/late.wav"] == 1  # held for the time it asked for, not retried meanwhile
    assert not health.backing_off and health.dead == 0  # the lane never paused; waiting is no failure
    [late] = outbox.list_rows("pending")
    assert (late.call_key, late.kind, late.attempted) == ("r1", "attach_record", True)


async def test_a_recording_not_ready_many_times_is_never_a_dead_letter_and_goes_once_ready(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    feed(outbox, policy, inbound_answered("r", "+15550010", ("101",), "101", recording="/rec/r.wav"))
    not_ready_answers = 5  # more than the failures that make a misbehaving op a dead letter

    async def handler(op: CrmOp, call_id: str, created_at: float) -> Any:
        nonlocal not_ready_answers
        if not_ready_answers:
            not_ready_answers -= 1
            raise AttachNotReady("r.wav still growing", retry_after=0.0)
        return await portal.attach(op, call_id)

    later: Any = AnsweringLater(portal)  # the helper is typed for the plain fake
    async with dispatcher(outbox, later, directory, clock, attach_handler=handler, idle_poll=SLEEPY) as sender:
        assert await sender.drain(5)  # the finish, then each hold's end, wakes the lane; no poll is needed
        health = sender.health()
    assert portal.records == {outbox.crm_call_id("r"): ["/rec/r.wav"]}
    assert health.dead == 0 and not_ready_answers == 0
    [row] = [r for r in outbox.list_rows("done") if r.kind == "attach_record"]
    assert row.attempts == 6


# --- waking ------------------------------------------------------------------------------------------------------

async def test_the_attach_lane_wakes_when_the_finish_before_it_goes_through(
        outbox: Outbox, portal: FakePortal, directory: FakeDirectory, clock: Clock) -> None:
    policy = CallPolicy(PolicySettings(default_user_id=9))
    feed(outbox, policy, inbound_answered("r", "+15550010", ("101",), "101", recording="/rec/r.wav"))

    async def handler(op: CrmOp, call_id: str, created_at: float) -> Any:
        return await portal.attach(op, call_id)

    later: Any = AnsweringLater(portal)  # the helper is typed for the plain fake
    async with dispatcher(outbox, later, directory, clock, attach_handler=handler, idle_poll=SLEEPY) as sender:
        assert await sender.drain(5)  # the attach lane found nothing ready at first and went to sleep
    assert portal.records == {outbox.crm_call_id("r"): ["/rec/r.wav"]}
    assert portal.methods()[-2:] == ["finish", "attachrecord"]
