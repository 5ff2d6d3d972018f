"""Finesse simulator -> FinesseAdapter -> policy -> outbox -> dispatcher -> Bitrix24 portal simulator, all real I/O."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.crm.bitrix24.bucket import LeakyBucket
from bridge.crm.bitrix24.client import Bitrix24Client
from bridge.crm.bitrix24.directory import Directory
from bridge.model import OriginateRequest
from bridge.pbx.cisco.adapter import FinesseAdapter, FinesseAgent
from bridge.pbx.cisco.xmpp import XmppConfig
from bridge.sim import finesse_scenarios as scenario
from bridge.sim.bitrix24 import Bitrix24Simulator
from bridge.sim.bitrix24_portal import SimCall
from bridge.sim.finesse import FinesseSim, SimUser
from bridge.sync.dispatcher import Dispatcher
from bridge.sync.outbox import Outbox
from bridge.sync.policy import CallPolicy, PolicySettings

# Finesse agents on the extensions the portal simulator's employees have (101 -> user 5, 102 -> user 7).
AGENTS = [("boris", "pw-b", "101"), ("vera", "pw-v", "102")]
CALLER = "+15557654321"


@dataclass
class Stack:
    finesse: FinesseSim
    portal: Bitrix24Simulator
    adapter: FinesseAdapter
    dispatcher: Dispatcher

    def calls_to(self, phone: str) -> list[SimCall]:
        return [c for c in self.portal.calls.values() if c.phone_number.lstrip("+") == phone.lstrip("+")]


async def _until(predicate: Callable[[], bool], timeout: float = 8.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def _pump(adapter: FinesseAdapter, policy: CallPolicy, outbox: Outbox) -> None:
    async for event in adapter.events():
        outbox.write(policy.step(event))


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    users = [SimUser(u, p, e) for u, p, e in AGENTS]
    async with FinesseSim(users=users) as finesse, Bitrix24Simulator(rate=1000, burst=1000) as portal, \
            Bitrix24Client(base_url=portal.webhook_url, auth=None, bucket=LeakyBucket(1000, 1000)) as client, \
            Outbox(tmp_path / "bridge.sqlite3") as outbox:
        directory = Directory(client, default_user_id=1, cache_path=None)
        await directory.refresh()
        xmpp = XmppConfig(host="127.0.0.1", port=finesse.xmpp_port, domain=finesse.domain,
                          pubsub_domain=f"pubsub.{finesse.domain}", tls="off", ping_interval=1.0, ping_timeout=1.0,
                          reconnect_min=0.02, reconnect_max=0.1)
        adapter = FinesseAdapter(finesse_url=finesse.rest_url, agents=[FinesseAgent(u, e, p) for u, p, e in AGENTS],
                                 xmpp=xmpp, orphan_grace=0.3, tick_interval=0.02)
        dispatcher = Dispatcher(outbox, client, directory, backoff_base=0.01, backoff_cap=0.05, idle_poll=0.05)
        async with adapter, dispatcher:
            async with asyncio.timeout(5):
                while not adapter.health().ok:
                    await asyncio.sleep(0.01)
            pump = asyncio.create_task(_pump(adapter, CallPolicy(PolicySettings(default_user_id=1)), outbox))
            yield Stack(finesse, portal, adapter, dispatcher)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


async def test_inbound_answered_reaches_the_portal(stack: Stack) -> None:
    await scenario.inbound_answered(stack.finesse, caller=CALLER, dnis="5551000", agent="102", ring=4, talk=30)
    await _until(lambda: any(c.finish for c in stack.calls_to(CALLER)))
    (call,) = stack.calls_to(CALLER)
    assert (call.user_id, call.call_type, call.line_number) == (7, 2, "5551000")
    assert [7] in call.shows
    assert call.finish is not None
    assert (call.finish["PORTAL_USER_ID"], call.finish["CALL_DURATION"], call.finish["CALL_FAILED_CODE"]) == (
        "7", "30", "200")


async def test_missed_call_rung_on_two_agents(stack: Stack) -> None:
    await scenario.inbound_missed(stack.finesse, caller=CALLER, dnis="5551000", agents=["101", "102"], ring=10)
    await _until(lambda: any(c.finish for c in stack.calls_to(CALLER)))
    (call,) = stack.calls_to(CALLER)
    assert call.finish is not None and call.finish["CALL_FAILED_CODE"] == "304"
    assert {u for shown in call.shows for u in shown} == {5, 7}


async def test_click_to_call_finishes_the_portals_call(stack: Stack) -> None:
    # The portal's own call (as created when a user clicks a number), then the bridge dials it through Finesse.
    async with Bitrix24Client(base_url=stack.portal.webhook_url, auth=None, bucket=LeakyBucket(1000, 1000)) as b24:
        made = await b24.call("telephony.externalcall.register",
                              {"USER_ID": 5, "PHONE_NUMBER": "+15553334444", "TYPE": 1, "SHOW": 0})
    crm_call_id = made["CALL_ID"]
    await stack.adapter.originate(OriginateRequest(request_id="c2c-1", extension="101", number="+15553334444",
                                                   crm_call_id=crm_call_id))
    dialog_id = await asyncio.wait_for(stack.finesse.made_calls.get(), 5)
    await scenario.connect_made_call(stack.finesse, dialog_id, number="15553334444", ring=3, talk=12)
    await _until(lambda: stack.portal.calls[crm_call_id].finish is not None)
    finish = stack.portal.calls[crm_call_id].finish
    assert finish is not None
    assert (finish["CALL_DURATION"], finish["CALL_FAILED_CODE"], finish["PORTAL_USER_ID"]) == ("12", "200", "5")
    assert len(stack.calls_to("+15553334444")) == 1  # finished, not registered a second time
