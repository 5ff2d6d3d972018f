"""CRM "call me back" end to end: ONEXTERNALCALLBACKSTART over real HTTP -> the bridge registers a TYPE 4 call in the
portal (with the CRM entity and line of the form) -> Originate to `http.callback_target` over a real AMI session,
carrying the registered CALL_ID -> the simulator plays the call -> the bridge finishes that CALL_ID once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bridge.config import HttpSettings
from bridge.sim.bitrix24_portal import SimCall
from tests.e2e.conftest import (
    DEFAULT_USER_ID,
    EVENT_TOKEN,
    dead_letters,
    running_bridge,
    settle,
    simulators,
    until,
    user_for,
)
from tests.e2e.test_click_to_call_e2e import finish_of, originates, post_event

TARGET = "101"  # the sales queue's first agent, say
CUSTOMER = "+79165550177"
LINE = "5552001"
TYPE_CALLBACK = 4


def callback_form(number: str = CUSTOMER, *, ts: str = "1795900100", entity_id: str = "42",
                  token: str = EVENT_TOKEN) -> dict[str, str]:
    return {"event": "ONEXTERNALCALLBACKSTART", "event_handler_id": "9", "data[PHONE_NUMBER]": number,
            "data[LINE_NUMBER]": LINE, "data[CRM_ENTITY_TYPE]": "CONTACT", "data[CRM_ENTITY_ID]": entity_id,
            "data[TEXT]": "please call back after 5 pm", "ts": ts,
            "auth[application_token]": token, "auth[domain]": "e2e.bitrix24.test", "auth[member_id]": "e2e"}


def callbacks(calls: dict[str, SimCall]) -> list[SimCall]:
    return [call for call in calls.values() if call.call_type == TYPE_CALLBACK]


async def test_a_callback_is_registered_dialled_through_the_target_and_finished_once(tmp_path: Path) -> None:
    http = HttpSettings(port=0, application_token=EVENT_TOKEN, callback_target=TARGET)
    async with simulators() as sims, running_bridge(sims.settings(tmp_path, http=http)) as bridge:
        answers = [await post_event(bridge, callback_form()) for _ in range(2)]
        action = await sims.ami.wait_for_action("Originate", timeout=5)
        await until(lambda: any(c.finish is not None for c in callbacks(sims.portal.calls)))
        await settle(bridge)
        letters = dead_letters(bridge)

    assert [(status, body["status"]) for status, body in answers] == [(200, "accepted"), (200, "duplicate")]
    [call] = callbacks(sims.portal.calls)
    assert call.registrations == 1 and len(sims.portal.calls) == 1
    assert (call.crm_entity_type, call.crm_entity_id) == ("CONTACT", 42)
    assert call.line_number == LINE and call.phone_number.endswith(CUSTOMER.removeprefix("+"))
    assert call.user_id == DEFAULT_USER_ID  # the form named nobody: the default user is responsible
    headers: dict[str, Any] = dict(action.headers)
    assert headers["Channel"] == f"Local/{TARGET}@from-internal"
    assert headers["Exten"] == CUSTOMER.removeprefix("+")
    assert f"B24_CALL_ID={call.call_id}" in [v for k, v in action.headers if k == "Variable"]
    assert len(originates(sims.ami)) == 1
    finish = finish_of(sims.portal, call.call_id)
    assert (str(finish["STATUS_CODE"]), str(finish["USER_ID"])) == ("200", str(user_for(TARGET)))
    sent = [r.method for r in sims.portal.requests] + [c.method for c in sims.portal.commands]
    assert sent.count("telephony.externalcall.finish") == 1
    assert letters == []


async def test_a_callback_the_pbx_cannot_place_is_finished_as_failed(tmp_path: Path) -> None:
    http = HttpSettings(port=0, application_token=EVENT_TOKEN, callback_target=TARGET)
    async with simulators() as sims:
        sims.ami.originate_outcome = "failed"
        async with running_bridge(sims.settings(tmp_path, http=http)) as bridge:
            status, _ = await post_event(bridge, callback_form())
            await until(lambda: any(c.finish is not None for c in callbacks(sims.portal.calls)))
            await settle(bridge)
            letters = dead_letters(bridge)

    assert status == 200
    [call] = callbacks(sims.portal.calls)
    finish = finish_of(sims.portal, call.call_id)
    assert str(finish["STATUS_CODE"]) not in ("200", "304") and finish.get("FAILED_REASON")
    assert letters == []


async def test_hostile_or_forged_callbacks_register_nothing_and_dial_nothing(tmp_path: Path) -> None:
    http = HttpSettings(port=0, application_token=EVENT_TOKEN, callback_target=TARGET)
    async with simulators() as sims, running_bridge(sims.settings(tmp_path, http=http)) as bridge:
        refused = [
            await post_event(bridge, callback_form("+7916555\r\nAction: Originate\r\nChannel: PJSIP/666")),
            await post_event(bridge, callback_form("${SHELL(id)}")),
            await post_event(bridge, callback_form(entity_id="42; DROP TABLE")),
            await post_event(bridge, callback_form(token="wrong-token-0123456789")),
        ]
        # Control: a well-formed callback on the same bridge does go through.
        good, _ = await post_event(bridge, callback_form(ts="1795900200"))
        await sims.ami.wait_for_action("Originate", timeout=5)
        await settle(bridge)

    assert [status for status, _ in refused if not 400 <= status < 500] == []
    assert good == 200
    assert len(callbacks(sims.portal.calls)) == 1
    assert len(originates(sims.ami)) == 1
