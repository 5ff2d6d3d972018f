"""Two sites, end to end: one Bitrix24 portal, two Asterisks (AMI simulators), two bridges and a real mosquitto.

Extension 102 lives on site B. A click for its user reaches bridge A (the portal posts to one bridge); bridge A sends
the originate over MQTT, bridge B dials it on its own Asterisk and finishes the portal's CALL_ID. Each bridge
publishes its calls under its own pbx id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt

from bridge.app import Bridge
from bridge.bus.commands import decode_ack, encode_command, new_command
from bridge.config import MqttSettings, PbxSettings, Settings
from bridge.model import OriginateRequest
from bridge.sim.bitrix24 import Bitrix24Simulator
from tests.e2e.conftest import (
    Simulators,
    ami_simulator,
    dead_letters,
    running_bridge,
    settle,
    simulators,
    until,
    user_for,
)
from tests.e2e.test_click_to_call_e2e import NUMBER, click, event_form, finish_of, originates, post_event
from tests.mqtt_broker import MosquittoBroker

REMOTE = "102"  # hosted by site B
PREFIX = "b24bridge"


def site_settings(sims: Simulators, tmp: Path, site: str, broker: MosquittoBroker, *,
                  deadline: float = 10.0) -> Settings:
    mqtt = MqttSettings(host=broker.host, port=broker.port, prefix=PREFIX, sites={"site-b": (REMOTE,)},
                        command_deadline_seconds=deadline, command_retry_seconds=0.2, reconnect_min=0.05,
                        reconnect_max=0.2)
    return sims.settings(tmp / site, pbx=PbxSettings(id=site), mqtt=mqtt)


async def on_mqtt(*bridges: Bridge) -> None:
    await until(lambda: all(b.bus is not None and b.bus.health().ok for b in bridges))


class Listener:
    """A plain MQTT client that records every message on `topics` (what a third-party consumer would see)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def calls(self, site: str) -> list[dict[str, Any]]:
        return [body for topic, body in self.messages if topic.startswith(f"{PREFIX}/{site}/calls/")]


@contextlib.asynccontextmanager
async def listening(broker: MosquittoBroker, *topics: str) -> AsyncIterator[Listener]:
    listener = Listener()
    async with aiomqtt.Client(broker.host, broker.port, identifier="e2e-listener") as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)

        async def read() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                listener.messages.append((message.topic.value, json.loads(message.payload)))

        reader = asyncio.create_task(read())
        try:
            yield listener
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def crm_call_of(body: dict[str, Any]) -> str | None:
    call = body.get("call")
    return call.get("crm_call_id") if isinstance(call, dict) else body.get("crm_call_id")


def finishes_of(portal: Bitrix24Simulator, call_id: str) -> int:
    """Finish requests the portal got for `call_id` (answered or not), single and in batches."""
    sent = [*((r.method, r.params) for r in portal.requests), *((c.method, c.params) for c in portal.commands)]
    return sum(1 for method, params in sent
               if method == "telephony.externalcall.finish" and params.get("CALL_ID") == call_id)


async def test_a_click_for_another_sites_extension_is_dialled_there_and_finished_once(
        tmp_path: Path, mqtt_broker: MosquittoBroker) -> None:
    async with simulators() as sims, ami_simulator() as ami_b:
        site_b = Simulators(ami_b, sims.portal)
        async with listening(mqtt_broker, f"{PREFIX}/+/calls/#", f"{PREFIX}/tester/commands/ack") as heard, \
                running_bridge(site_settings(sims, tmp_path, "site-a", mqtt_broker)) as bridge_a, \
                running_bridge(site_settings(site_b, tmp_path, "site-b", mqtt_broker)) as bridge_b:
            await on_mqtt(bridge_a, bridge_b)
            call_id = await click(sims.portal, user_for(REMOTE))
            status, body = await post_event(bridge_a, event_form(call_id, user_for(REMOTE)))
            action = await ami_b.wait_for_action("Originate", timeout=5)
            await until(lambda: sims.portal.calls[call_id].finish is not None)
            # Meanwhile a call on site A's own PBX.
            await sims.ami.play_trace("inbound_answered", speed=200)

            # The same command delivered twice (as a resend after a lost receipt would): dialled once.
            again = await click(sims.portal, user_for(REMOTE), "+79165550199")
            command = new_command(OriginateRequest(request_id="e2e-repeat", extension=REMOTE, number="+79165550199",
                                                   crm_call_id=again), origin="tester", now=time.time(), ttl=60)
            async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port, identifier="e2e-tester") as tester:
                for _ in range(2):
                    await tester.publish(f"{PREFIX}/site-b/commands/originate", encode_command(command), qos=1)
            await until(lambda: sims.portal.calls[again].finish is not None)
            await settle(bridge_a)
            await settle(bridge_b)
            assert bridge_b.bus is not None
            counters_b = bridge_b.bus.counters
            letters = dead_letters(bridge_a) + dead_letters(bridge_b)

    assert (status, body["status"]) == (200, "accepted")
    assert originates(sims.ami) == []  # never dialled on site A
    assert dict(action.headers)["Channel"] == f"Local/{REMOTE}@from-internal"
    assert f"B24_CALL_ID={call_id}" in [v for k, v in action.headers if k == "Variable"]
    assert dict(action.headers)["Exten"] == NUMBER.removeprefix("+")
    finish = finish_of(sims.portal, call_id)
    assert (str(finish["STATUS_CODE"]), str(finish["USER_ID"])) == ("200", str(user_for(REMOTE)))
    assert finishes_of(sims.portal, call_id) == 1
    assert sims.portal.calls[call_id].registrations == 1

    assert len(originates(ami_b)) == 2  # the click, and the repeated command once
    assert finishes_of(sims.portal, again) == 1
    assert counters_b.commands_duplicate == 1
    acks = [decode_ack(json.dumps(b).encode()) for t, b in heard.messages if t.endswith("/commands/ack")]
    assert [(a.id, a.site, a.status) for a in acks] == [(command.id, "site-b", "accepted")] * 2

    site_a_calls, site_b_calls = heard.calls("site-a"), heard.calls("site-b")
    assert any(e["kind"] == "ended" and e["call"]["external_number"] for e in site_a_calls)
    assert all(crm_call_of(e) is None for e in site_a_calls)  # site A only carried its own inbound call
    assert {crm_call_of(e) for e in site_b_calls if e["kind"] in ("started", "ended")} == {call_id, again}
    assert [e["call"]["disposition"] for e in site_b_calls if e["kind"] == "ended"] == ["answered", "answered"]
    assert letters == []


async def test_a_click_for_a_site_that_is_down_is_finished_as_failed_after_the_deadline(
        tmp_path: Path, mqtt_broker: MosquittoBroker) -> None:
    async with simulators() as sims, ami_simulator() as ami_b:
        settings_a = site_settings(sims, tmp_path, "site-a", mqtt_broker, deadline=1.0)
        async with running_bridge(settings_a) as bridge_a:
            await on_mqtt(bridge_a)
            call_id = await click(sims.portal, user_for(REMOTE))
            status, _ = await post_event(bridge_a, event_form(call_id, user_for(REMOTE)))
            await until(lambda: sims.portal.calls[call_id].finish is not None)
            await settle(bridge_a)
            assert bridge_a.bus is not None
            failed = bridge_a.bus.counters.commands_failed
            # Site B comes up afterwards: the command it never confirmed is not dialled late.
            site_b = Simulators(ami_b, sims.portal)
            async with running_bridge(site_settings(site_b, tmp_path, "site-b", mqtt_broker)) as bridge_b:
                await on_mqtt(bridge_b)
                await asyncio.sleep(0.5)  # A resent unconfirmed commands every 0.2 s; none is left to resend
            letters = dead_letters(bridge_a)

    assert status == 200
    finish = finish_of(sims.portal, call_id)
    assert str(finish["STATUS_CODE"]) not in ("200", "304")
    assert "site-b" in str(finish.get("FAILED_REASON"))
    assert str(finish["USER_ID"]) == str(user_for(REMOTE))
    assert failed == 1
    assert originates(sims.ami) == [] and originates(ami_b) == []
    assert finishes_of(sims.portal, call_id) == 1
    assert letters == []


async def test_a_click_site_b_cannot_dial_is_finished_as_failed_by_site_b(
        tmp_path: Path, mqtt_broker: MosquittoBroker) -> None:
    async with simulators() as sims, ami_simulator() as ami_b:
        site_b = Simulators(ami_b, sims.portal)
        async with running_bridge(site_settings(sims, tmp_path, "site-a", mqtt_broker)) as bridge_a, \
                running_bridge(site_settings(site_b, tmp_path, "site-b", mqtt_broker)) as bridge_b:
            await on_mqtt(bridge_a, bridge_b)
            bridge_b.remote_pbx_wait = 0.2  # how long site B waits for its Asterisk before it gives the click up
            ami_b.refuse_logins = True
            await ami_b.drop_connections()
            assert bridge_b.adapter is not None
            adapter_b = bridge_b.adapter
            await until(lambda: not adapter_b.health().ok)
            call_id = await click(sims.portal, user_for(REMOTE))
            status, _ = await post_event(bridge_a, event_form(call_id, user_for(REMOTE)))
            await until(lambda: sims.portal.calls[call_id].finish is not None)
            await settle(bridge_a)
            await settle(bridge_b)
            assert bridge_a.bus is not None and bridge_b.bus is not None
            delivered, failed = bridge_a.bus.counters.commands_delivered, bridge_a.bus.counters.commands_failed
            letters = dead_letters(bridge_a) + dead_letters(bridge_b)

    assert status == 200
    assert (delivered, failed) == (1, 0)  # site B got the command; it is site B's PBX that could not dial
    assert originates(sims.ami) == [] and originates(ami_b) == []
    finish = finish_of(sims.portal, call_id)
    assert str(finish["STATUS_CODE"]) == "503" and "not connected" in str(finish.get("FAILED_REASON"))
    assert str(finish["USER_ID"]) == str(user_for(REMOTE))
    assert finishes_of(sims.portal, call_id) == 1
    assert letters == []
