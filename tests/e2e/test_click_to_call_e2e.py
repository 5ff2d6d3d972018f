"""Click-to-call end to end: ONEXTERNALCALLSTART over real HTTP -> bridge -> Originate over a real AMI session ->
the simulator plays the outcome -> the bridge finishes the portal's CALL_ID. Hostile events never reach Asterisk.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.app import Bridge
from bridge.model import CallEnded, CallEvent
from bridge.sim.ami import AmiSimulator
from bridge.sim.bitrix24 import Bitrix24Simulator
from bridge.sim.bitrix24_portal import SimCall
from tests.e2e.conftest import (
    EVENT_TOKEN,
    USERS,
    dead_letters,
    running_bridge,
    settle,
    simulators,
    until,
    user_for,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ami"
AGENT = "101"
NUMBER = "+79165550123"
NO_PHONE_USER = 77
ORIGINATE_HEADERS = {"Action", "ActionID", "Channel", "Context", "Exten", "Priority", "CallerID", "Timeout", "Async",
                     "Variable"}
# docs/call-model.md: disposition -> finish STATUS_CODE for an outbound call (failed without a known cause: 503).
STATUS_OF = {"answered": "200", "busy": "486", "no_answer": "603-S", "missed": "304", "declined": "603",
             "failed": "503"}


async def click(portal: Bitrix24Simulator, user_id: int, number: str = NUMBER) -> str:
    """What Bitrix24 does when the user clicks a number: register an outgoing call, before it sends the event."""
    async with aiohttp.ClientSession() as session, session.post(
            f"{portal.webhook_url}telephony.externalcall.register",
            json={"USER_ID": user_id, "PHONE_NUMBER": number, "TYPE": 1, "SHOW": 0}) as response:
        body = await response.json()
    call_id: str = body["result"]["CALL_ID"]
    return call_id


def event_form(call_id: str, user_id: int, number: str = NUMBER, *, token: str = EVENT_TOKEN) -> dict[str, str]:
    return {"event": "ONEXTERNALCALLSTART", "event_handler_id": "7", "data[USER_ID]": str(user_id),
            "data[CALL_ID]": call_id, "data[PHONE_NUMBER]": number, "data[PHONE_NUMBER_INTERNATIONAL]": number,
            "data[EXTENSION]": "", "data[CRM_ENTITY_TYPE]": "CONTACT", "data[CRM_ENTITY_ID]": "42",
            "data[CALL_LIST_ID]": "0", "data[LINE_NUMBER]": "", "data[IS_MOBILE]": "0", "ts": "1795900000",
            "auth[application_token]": token, "auth[domain]": "e2e.bitrix24.test", "auth[member_id]": "e2e"}


async def post_event(bridge: Bridge, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{bridge.web_port}{bridge.settings.http.events_path}", data=form) as response:
        return response.status, await response.json(content_type=None)


def originates(ami: AmiSimulator) -> list[Any]:
    return [action for action in ami.actions if action.name.lower() == "originate"]


def finish_of(portal: Bitrix24Simulator, call_id: str) -> dict[str, Any]:
    call: SimCall = portal.calls[call_id]
    assert call.finish is not None, f"{call_id} was not finished"
    params: dict[str, Any] = call.finish["_params"]
    return params


def recorded_talk_seconds() -> float:
    expected = json.loads((FIXTURES / "c2c_local_answered.expected.json").read_text("utf-8"))
    return float(expected["calls"][0]["talk_seconds"])


async def test_originate_carries_the_call_id_and_the_answered_call_finishes_it(tmp_path: Path) -> None:
    async with simulators() as sims, running_bridge(sims.settings(tmp_path)) as bridge:
        call_id = await click(sims.portal, user_for(AGENT))
        status, body = await post_event(bridge, event_form(call_id, user_for(AGENT)))
        assert (status, body["status"]) == (200, "accepted")
        action = await sims.ami.wait_for_action("Originate", timeout=5)
        await until(lambda: sims.portal.calls[call_id].finish is not None)
        await settle(bridge)
        letters = dead_letters(bridge)

    names = [key for key, _ in action.headers]
    assert set(names) == ORIGINATE_HEADERS
    one = {key: value for key, value in action.headers if key != "Variable"}
    assert one["Channel"] == f"Local/{AGENT}@from-internal"
    assert one["Context"] == "from-internal"
    assert one["Exten"] == NUMBER.removeprefix("+") and one["Exten"].isdigit()
    assert one["Priority"] == "1"
    assert one["CallerID"] == f'"{NUMBER}" <{AGENT}>'
    assert one["Timeout"] == str(bridge.settings.originate.timeout_seconds * 1000)
    assert one["Async"] == "true"
    assert [v for k, v in action.headers if k == "Variable"] == [f"B24_CALL_ID={call_id}", f"__B24_CALL_ID={call_id}"]

    finish = finish_of(sims.portal, call_id)
    assert finish["CALL_ID"] == call_id
    assert (str(finish["STATUS_CODE"]), str(finish["USER_ID"])) == ("200", str(user_for(AGENT)))
    assert abs(int(finish["DURATION"]) - recorded_talk_seconds()) <= 1
    assert len(sims.portal.calls) == 1 and sims.portal.calls[call_id].registrations == 1  # never registered again
    assert letters == []


@pytest.mark.parametrize("outcome", ["agent_no_answer", "customer_busy", "failed"])
async def test_every_originate_outcome_finishes_the_crm_call(outcome: str, tmp_path: Path) -> None:
    async with simulators() as sims:
        sims.ami.originate_outcome = outcome  # type: ignore[assignment]
        ended: list[CallEnded] = []

        def observe(event: CallEvent) -> None:
            if isinstance(event, CallEnded):
                ended.append(event)

        async with running_bridge(sims.settings(tmp_path), observers=[observe]) as bridge:
            call_id = await click(sims.portal, user_for(AGENT))
            status, _ = await post_event(bridge, event_form(call_id, user_for(AGENT)))
            assert status == 200
            await until(lambda: sims.portal.calls[call_id].finish is not None, timeout=15)
            await settle(bridge)
            letters = dead_letters(bridge)

    assert len(originates(sims.ami)) == 1
    assert [e.call.crm_call_id for e in ended] == [call_id]
    record = ended[0].call
    finish = finish_of(sims.portal, call_id)
    assert str(finish["STATUS_CODE"]) == STATUS_OF[record.disposition.value]
    assert str(finish["USER_ID"]) == str(user_for(AGENT))
    assert int(finish["DURATION"]) == 0
    if outcome == "customer_busy":
        assert str(finish["STATUS_CODE"]) == "486"
    else:
        assert str(finish["STATUS_CODE"]) != "200"
    if outcome == "failed":
        assert record.disposition.value == "failed"
        assert finish.get("FAILED_REASON"), "a failed originate must say why"
    assert letters == []


async def test_user_without_an_extension_gets_the_call_finished_with_the_reason(tmp_path: Path) -> None:
    users = [*USERS, {"ID": NO_PHONE_USER, "NAME": "No", "LAST_NAME": "Phone", "UF_PHONE_INNER": "",
                      "ACTIVE": True}]
    async with simulators(users=users) as sims, running_bridge(sims.settings(tmp_path)) as bridge:
        call_id = await click(sims.portal, NO_PHONE_USER)
        status, _ = await post_event(bridge, event_form(call_id, NO_PHONE_USER))
        assert status == 200
        await until(lambda: sims.portal.calls[call_id].finish is not None)
        await settle(bridge)
        letters = dead_letters(bridge)

    assert originates(sims.ami) == []
    finish = finish_of(sims.portal, call_id)
    assert str(NO_PHONE_USER) in str(finish.get("FAILED_REASON"))
    assert "extension" in str(finish.get("FAILED_REASON"))
    assert str(finish["STATUS_CODE"]) not in ("200", "304")
    assert str(finish["USER_ID"]) == str(NO_PHONE_USER)  # it stays the clicking user's call
    assert letters == []


async def test_a_repeated_event_within_thirty_seconds_originates_once(tmp_path: Path) -> None:
    async with simulators() as sims, running_bridge(sims.settings(tmp_path)) as bridge:
        call_id = await click(sims.portal, user_for(AGENT))
        form = event_form(call_id, user_for(AGENT))
        answers = [await post_event(bridge, form) for _ in range(3)]
        await until(lambda: sims.portal.calls[call_id].finish is not None)
        await settle(bridge)

    assert [(status, body["status"]) for status, body in answers] == [(200, "accepted"), (200, "duplicate"),
                                                                      (200, "duplicate")]
    assert len(originates(sims.ami)) == 1
    assert sims.portal.calls[call_id].registrations == 1


HOSTILE_NUMBERS = [
    "+7916555\r\nAction: Originate\r\nChannel: PJSIP/666",
    "+79165550123\nExten: 666",
    "79165550123,1,Hangup()",
    "7916555&PJSIP/999",
    "79165550123@evil-context",
    "${SHELL(id)}",
    "7916;5550123",
    "79165550123/n",
    "+7916555 0123|9",
]


async def test_hostile_events_are_refused_and_never_reach_asterisk(tmp_path: Path) -> None:
    async with simulators() as sims, running_bridge(sims.settings(tmp_path)) as bridge:
        refused: list[tuple[str, int]] = []
        hostile_calls = []
        # Each click its own number: the portal would merge same-user same-number registrations (docs §5 de-dup).
        for n, number in enumerate(HOSTILE_NUMBERS):
            call_id = await click(sims.portal, user_for(AGENT), f"+7916555{n:04d}")
            hostile_calls.append(call_id)
            status, _ = await post_event(bridge, event_form(call_id, user_for(AGENT), number))
            refused.append((number, status))
        forged = await click(sims.portal, user_for(AGENT), "+79160000001")
        for token in ("wrong-token-0123456789", ""):
            status, _ = await post_event(bridge, event_form(forged, user_for(AGENT), token=token))
            refused.append((f"token {token!r}", status))
        hostile_call_id = event_form("x\r\nAction: Originate", user_for(AGENT))
        status, _ = await post_event(bridge, hostile_call_id)
        refused.append(("CR/LF in CALL_ID", status))
        await until(lambda: all(sims.portal.calls[c].finish is not None for c in hostile_calls))
        await asyncio.sleep(0.3)  # anything that was going to reach the PBX would have by now
        reached = originates(sims.ami)
        # Control: the same path does originate a well-formed event, so silence above was not a dead setup.
        good = await click(sims.portal, user_for(AGENT), "+79160000002")
        status, _ = await post_event(bridge, event_form(good, user_for(AGENT)))
        await sims.ami.wait_for_action("Originate", timeout=5)
        await settle(bridge)

    assert [(what, status) for what, status in refused if not 400 <= status < 500] == []
    assert reached == []
    assert len(originates(sims.ami)) == 1
    assert len(set(hostile_calls)) == len(HOSTILE_NUMBERS)
    # The CRM calls Bitrix24 opened for hostile (but authenticated) events are closed as failed; forged ones are not
    # acted upon at all.
    for call_id in hostile_calls:
        finish = finish_of(sims.portal, call_id)
        assert str(finish["STATUS_CODE"]) not in ("200", "304") and finish.get("FAILED_REASON")
    assert sims.portal.calls[forged].finish is None


async def test_a_call_live_when_the_bridge_stops_is_finished_after_the_restart(tmp_path: Path) -> None:
    async with simulators() as sims:
        sims.ami.originate_speed = 4.0  # the call lasts a couple of seconds: long enough to stop the bridge in it
        settings = sims.settings(tmp_path)
        started: list[CallEvent] = []
        async with running_bridge(settings, observers=[started.append], drain_seconds=0.2) as bridge:
            call_id = await click(sims.portal, user_for(AGENT))
            await post_event(bridge, event_form(call_id, user_for(AGENT)))
            await until(lambda: any(e.kind == "answered" for e in started), timeout=10)
        assert sims.portal.calls[call_id].finish is None  # stopped mid-call
        await sims.ami.wait_idle(timeout=15)  # the call ends while nobody watches
        async with running_bridge(settings) as bridge:
            await until(lambda: sims.portal.calls[call_id].finish is not None)
            await settle(bridge)
            letters = dead_letters(bridge)
    finish = finish_of(sims.portal, call_id)
    assert (str(finish["STATUS_CODE"]), str(finish["USER_ID"])) == ("200", str(user_for(AGENT)))
    finishes = [r for r in sims.portal.requests if r.method == "telephony.externalcall.finish"]
    assert len(finishes) == 1 and sims.portal.calls[call_id].registrations == 1
    assert letters == []


async def test_a_click_while_asterisk_is_unreachable_is_finished_as_failed(tmp_path: Path) -> None:
    async with simulators() as sims, running_bridge(sims.settings(tmp_path)) as bridge:
        sims.ami.refuse_logins = True
        await sims.ami.drop_connections()
        assert bridge.adapter is not None
        adapter = bridge.adapter
        await until(lambda: not adapter.health().ok)
        call_id = await click(sims.portal, user_for(AGENT))
        status, _ = await post_event(bridge, event_form(call_id, user_for(AGENT)))
        await until(lambda: sims.portal.calls[call_id].finish is not None)
        letters = dead_letters(bridge)
    assert status == 200  # accepted: Bitrix24 never redelivers, so the bridge owns the outcome
    assert originates(sims.ami) == []
    finish = finish_of(sims.portal, call_id)
    assert str(finish["STATUS_CODE"]) == "503" and "not connected" in str(finish.get("FAILED_REASON"))
    assert letters == []
