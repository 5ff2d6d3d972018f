"""Fifty overlapping calls through a bridge talking to a portal at the standard cloud limits (2 req/s, burst 50).

What must hold: every call is registered once and finished once; a 503 from the portal is retried, never a dead
letter; one call's operations keep their order; and when a newer call's card (register/show) and an older call's
finish wait at the same time, the card goes first. Timings come from the simulator's record of what it executed and
from the outbox's record of when each operation was written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bridge.app import Bridge
from bridge.model import CallEnded, CallEvent, Direction
from bridge.sim.bitrix24 import Bitrix24Simulator
from tests.e2e.conftest import Simulators, dead_letters, executed, running_bridge, settle, simulators

CALLS = 50
TEMPLATES = ("inbound_answered", "inbound_queue", "inbound_missed", "outbound_answered", "inbound_busy")
RATE, BURST = 2.0, 50
CARDS = ("register", "show")
METHOD_KINDS = {f"telephony.externalcall.{kind}": kind for kind in ("register", "show", "hide", "finish")}


@dataclass(frozen=True)
class SentOp:
    call_key: str
    kind: str
    created: float  # written to the outbox
    sent: float  # executed by the portal
    request: int  # index of the HTTP request (in the portal's record) that carried it


def sent_ops(portal: Bitrix24Simulator, bridge: Bridge) -> list[SentOp]:
    """Each op the bridge wrote, with when and in which request the portal executed it.

    Batch commands are keyed `op<outbox id>`; an op sent alone is matched to its call's ops of that kind in order.
    """
    assert bridge.outbox is not None
    rows = {row.id: row for row in bridge.outbox.list_rows("all", limit=100_000)}
    key_of = {call_id: call.external_call_id or call_id for call_id, call in portal.calls.items()}
    carried: dict[str, list[int]] = defaultdict(list)  # batch key -> indexes of the 200 batch requests holding it
    for index, request in enumerate(portal.requests):
        if request.method == "batch" and request.http_status == 200:
            for key in request.params.get("cmd", {}):
                carried[key].append(index)
    ops: list[SentOp] = []
    matched: set[int] = set()
    for command in portal.commands:
        if command.error is None and command.method in METHOD_KINDS and command.key.startswith("op"):
            row = rows[int(command.key[2:])]
            carrier = min(i for i in carried[command.key] if portal.requests[i].t >= command.t)
            ops.append(SentOp(row.call_key, row.kind, row.created_at, command.t, carrier))
            matched.add(row.id)
    alone: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for index, request in enumerate(portal.requests):
        kind = METHOD_KINDS.get(request.method)
        if kind is not None and request.http_status == 200 and request.error is None:
            params = request.params
            key = str(params["EXTERNAL_CALL_ID"]) if kind == "register" else key_of[str(params["CALL_ID"])]
            alone[(key, kind)].append((request.t, index))
    for (key, kind), executions in alone.items():
        waiting = sorted((r for r in rows.values() if r.call_key == key and r.kind == kind and r.id not in matched),
                         key=lambda r: r.id)
        assert len(waiting) == len(executions), f"{key} {kind}: {len(waiting)} written, {len(executions)} sent"
        ops += [SentOp(key, kind, row.created_at, t, index) for row, (t, index) in zip(waiting, executions,
                                                                                        strict=True)]
    assert len(ops) == len(rows), "every op the bridge wrote was executed exactly once"
    return ops


def card_order(ops: list[SentOp], margin: float) -> tuple[int, list[tuple[SentOp, SentOp]]]:
    """(contested pairs, violations): a card and another call's finish that both waited `margin` s or more before
    either was sent were both on hand when the dispatcher chose; the card must not have gone in a later request."""
    cards = [op for op in ops if op.kind in CARDS]
    finishes = [op for op in ops if op.kind == "finish"]
    contested = 0
    violations = []
    for finish in finishes:
        for card in cards:
            if card.call_key == finish.call_key:
                continue
            if max(card.created, finish.created) < min(card.sent, finish.sent) - margin:
                contested += 1
                if card.request > finish.request:
                    violations.append((card, finish))
    return contested, violations


def order_per_call(ops: list[SentOp]) -> dict[str, list[str]]:
    """Calls whose ops the portal executed in a different order than the bridge wrote them."""
    by_call: dict[str, list[SentOp]] = defaultdict(list)
    for op in ops:
        by_call[op.call_key].append(op)
    wrong = {}
    for key, items in by_call.items():
        written = [op.kind for op in sorted(items, key=lambda op: op.created)]
        executed_order = [op.kind for op in sorted(items, key=lambda op: op.sent)]
        if written != executed_order:
            wrong[key] = executed_order
    return wrong


def synced_calls(events: list[CallEvent]) -> set[str]:
    return {e.call_id for e in events if isinstance(e, CallEnded) and e.call.direction is not Direction.INTERNAL}


def assert_each_call_once(portal: Bitrix24Simulator, call_ids: set[str]) -> None:
    registers = Counter(str(p["EXTERNAL_CALL_ID"]) for _, p in executed(portal, "telephony.externalcall.register"))
    assert registers == Counter(dict.fromkeys(call_ids, 1))
    finishes = Counter(str(p["CALL_ID"]) for _, p in executed(portal, "telephony.externalcall.finish"))
    assert finishes == Counter(dict.fromkeys(portal.calls, 1))
    assert all(call.finish is not None for call in portal.calls.values())


@contextlib.asynccontextmanager
async def loaded_bridge(tmp_path: Path, *, latency: float) -> AsyncIterator[tuple[Simulators, Bridge, list[CallEvent]]]:
    async with simulators(rate=RATE, burst=BURST, latency=latency) as sims:
        events: list[CallEvent] = []
        async with running_bridge(sims.settings(tmp_path), observers=[events.append]) as bridge:
            yield sims, bridge, events


async def neighbour_burst(portal: Bitrix24Simulator, requests: int) -> None:
    """Another program behind the same public address spends the portal's shared budget (docs §14)."""
    async def one(session: aiohttp.ClientSession) -> None:
        async with session.post(f"{portal.webhook_url}user.get", json={}) as response:
            await response.read()

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session) for _ in range(requests)))


async def test_fifty_overlapping_calls_at_the_standard_limits(tmp_path: Path) -> None:
    latency = 0.6  # a slow portal: the dispatcher's single lane cannot send each op as it comes
    async with loaded_bridge(tmp_path, latency=latency) as (sims, bridge, events):
        load = asyncio.create_task(sims.ami.run_load(calls=CALLS, rate=40.0, templates=TEMPLATES, speed=4.0))
        await asyncio.sleep(0.5)
        await neighbour_burst(sims.portal, BURST)  # the next requests of the bridge meet 503s
        await load
        await settle(bridge, timeout=40)
        ops = sent_ops(sims.portal, bridge)
        letters = dead_letters(bridge)
    portal = sims.portal

    throttled = [r for r in portal.requests if r.http_status == 503 and r.method != "user.get"]
    assert throttled, "the portal never answered the bridge 503: the test did not test the retry"
    assert letters == []
    call_ids = synced_calls(events)
    assert len(call_ids) == CALLS
    assert_each_call_once(portal, call_ids)
    assert order_per_call(ops) == {}
    contested, violations = card_order(ops, margin=latency + 2 / RATE + 0.25)
    assert contested > 0, "no card ever waited alongside another call's finish: the ordering was not exercised"
    assert violations == []


async def portal_outage(tmp_path: Path, outage: float) -> None:
    async with loaded_bridge(tmp_path, latency=0.05) as (sims, bridge, events):
        load = asyncio.create_task(sims.ami.run_load(calls=CALLS, rate=CALLS / (outage * 0.8), templates=TEMPLATES,
                                                     speed=4.0))
        await asyncio.sleep(0.3)
        sims.portal.go_down(outage)
        await load
        await settle(bridge, timeout=outage + 45)
        ops = sent_ops(sims.portal, bridge)
        letters = dead_letters(bridge)
    portal = sims.portal

    assert any(r.error == "connection_reset" for r in portal.requests)
    assert letters == []
    call_ids = synced_calls(events)
    assert len(call_ids) == CALLS
    assert_each_call_once(portal, call_ids)
    assert order_per_call(ops) == {}
    contested, violations = card_order(ops, margin=0.05 + 2 / RATE + 0.25)
    assert contested > 0
    assert violations == []


async def test_portal_down_for_ten_seconds_during_fifty_calls(tmp_path: Path) -> None:
    await portal_outage(tmp_path, 10.0)


@pytest.mark.soak
async def test_portal_down_for_thirty_seconds_during_fifty_calls(tmp_path: Path) -> None:
    await portal_outage(tmp_path, 30.0)
