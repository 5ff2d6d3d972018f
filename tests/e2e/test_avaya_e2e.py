"""End to end: AES DMCC simulator -> AvayaAdapter -> policy -> outbox -> dispatcher -> Bitrix24 simulator (HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.crm.bitrix24 import Bitrix24Client, Directory, LeakyBucket
from bridge.model import OriginateRequest
from bridge.pbx.avaya.adapter import AvayaAdapter
from bridge.pbx.avaya.session import SessionConfig
from bridge.sim.avaya import AvayaSimulator
from bridge.sim.bitrix24 import Bitrix24Simulator
from bridge.sim.bitrix24_portal import SimCall
from bridge.sync.dispatcher import Dispatcher
from bridge.sync.outbox import Outbox
from bridge.sync.policy import CallPolicy, PolicySettings

CUSTOMER = "5557654321"
USERS: list[dict[str, Any]] = [
    {"ID": 1, "NAME": "Anna", "LAST_NAME": "Admin", "UF_PHONE_INNER": "100", "ACTIVE": True},
    {"ID": 5, "NAME": "Boris", "LAST_NAME": "Sales", "UF_PHONE_INNER": "201", "ACTIVE": True},
    {"ID": 7, "NAME": "Vera", "LAST_NAME": "Sales", "UF_PHONE_INNER": "202", "ACTIVE": True},
]


@dataclass
class Bridge:
    aes: AvayaSimulator
    portal: Bitrix24Simulator
    adapter: AvayaAdapter
    client: Bitrix24Client


async def until(predicate: Callable[[], bool], timeout: float = 8.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def _pump(adapter: AvayaAdapter, policy: CallPolicy, outbox: Outbox) -> None:
    async for event in adapter.events():
        outbox.write(policy.step(event))


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    async with contextlib.AsyncExitStack() as stack:
        aes = await stack.enter_async_context(AvayaSimulator(stations=("201", "202")))
        portal = await stack.enter_async_context(Bitrix24Simulator(users=USERS, rate=1000, burst=1000))
        client = await stack.enter_async_context(
            Bitrix24Client(base_url=portal.webhook_url, auth=None, bucket=LeakyBucket(1000, 1000)))
        directory = Directory(client, default_user_id=1, cache_path=None)
        await directory.refresh()
        outbox = await stack.enter_async_context(Outbox(tmp_path / "bridge.sqlite3"))
        await stack.enter_async_context(Dispatcher(outbox, client, directory, backoff_base=0.001, backoff_cap=0.01,
                                                   idle_poll=0.05))
        session = SessionConfig(application_id="e2e", username="bridge", password="secret",
                                protocol_version=aes.protocol, session_duration=60, cleanup_delay=30,
                                switch_name="CM")
        adapter = await stack.enter_async_context(AvayaAdapter(
            host="127.0.0.1", port=aes.port, session=session, stations=("201", "202"), reconnect_min=0.01,
            reconnect_max=0.05, tick_interval=0.02))
        await asyncio.wait_for(adapter.connected(), 5)
        pump = asyncio.create_task(_pump(adapter, CallPolicy(PolicySettings(default_user_id=1)), outbox))
        try:
            yield Bridge(aes, portal, adapter, client)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


def finished(portal: Bitrix24Simulator) -> list[SimCall]:
    return [c for c in portal.calls.values() if c.finish is not None]


async def test_inbound_answered_and_missed_reach_the_portal(bridge: Bridge) -> None:
    aes = bridge.aes
    answered = aes.new_call()
    await aes.ring(answered, "201", calling=CUSTOMER, called="5551000")
    await aes.ring(answered, "202", calling=CUSTOMER, called="5551000")
    await aes.answer(answered, "202", calling=CUSTOMER, called="5551000")
    await aes.clear(answered, "201")
    await aes.clear(answered, CUSTOMER)
    missed = aes.new_call()
    await aes.ring(missed, "201", calling="5550001111", called="5551000")
    await aes.clear(missed, "5550001111")
    await until(lambda: len(finished(bridge.portal)) == 2)

    by_number = {c.phone_number: c for c in finished(bridge.portal)}
    talk, lost = by_number[CUSTOMER], by_number["5550001111"]
    assert talk.call_type == 2 and lost.call_type == 2  # inbound
    assert talk.external_call_id == answered.ucid
    assert talk.finish is not None and lost.finish is not None
    assert (talk.finish["PORTAL_USER_ID"], talk.finish["CALL_FAILED_CODE"]) == ("7", "200")
    assert (lost.finish["PORTAL_USER_ID"], lost.finish["CALL_FAILED_CODE"]) == ("5", "304")


async def test_click_to_call_finishes_the_portal_call(bridge: Bridge) -> None:
    # The portal created the call when the user clicked; the bridge only places it and finishes that CALL_ID.
    registered = await bridge.client.call("telephony.externalcall.register", {
        "USER_ID": 5, "PHONE_NUMBER": "+15551234567", "TYPE": 1, "SHOW": 0})
    crm_call_id = registered["CALL_ID"]
    await bridge.adapter.originate(OriginateRequest(request_id="c2c-1", extension="201", number="+15551234567",
                                                    crm_call_id=crm_call_id))
    live = next(iter(bridge.aes.calls.values()))
    await bridge.aes.clear(live, "15551234567")
    await until(lambda: bridge.portal.calls[crm_call_id].finish is not None)
    finish = bridge.portal.calls[crm_call_id].finish
    assert finish is not None
    assert (finish["PORTAL_USER_ID"], finish["CALL_FAILED_CODE"]) == ("5", "200")
    assert len(bridge.portal.calls) == 1  # no second registration for the click-to-call
