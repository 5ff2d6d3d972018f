"""Every recorded Asterisk trace, replayed over TCP into a running bridge, must reach the portal as it really happened.

What the portal should hold is computed from each trace's `expected.json` (measured by the driver that placed the
calls) and the mapping rules of docs/call-model.md and docs/bitrix24-api.md §5-§7, never hard-coded per trace.
Replays are many times faster than real time; `Timestamp:` headers carry the recorded timeline, so talk durations
must still match.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bridge.sim.bitrix24 import Bitrix24Simulator
from bridge.sim.bitrix24_portal import SimCall
from tests.e2e.conftest import dead_letters, executed, running_bridge, settle, simulators, user_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ami"
NAMES = sorted(p.name.removesuffix(".expected.json") for p in FIXTURES.glob("*.expected.json"))
SPEED = 200.0
TYPE_OUTGOING, TYPE_INCOMING = "1", "2"


def load_expected(name: str) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = json.loads((FIXTURES / f"{name}.expected.json").read_text("utf-8"))["calls"]
    return calls


def digits(value: object) -> str:
    return re.sub(r"\D", "", str(value or ""))


def status_code(direction: str, status: str, cause: int | None) -> str:
    """docs/call-model.md, "Mapping to Bitrix24 finish STATUS_CODE"."""
    if status == "failed":
        return "404" if cause == 1 else "480" if cause in (18, 19, 20) else "503"
    if status in ("noanswer", "no_answer"):
        return "304" if direction == "inbound" else "603-S"
    return {"answered": "200", "missed": "304", "busy": "486", "declined": "603"}.get(status, "OTHER")


def trunk_of(channel: str | None) -> str | None:
    """`PJSIP/provider-00000051` -> `provider`: the line an outbound call left through."""
    match = re.fullmatch(r"[^/]+/(.+)-[0-9a-f]{8}", channel or "")
    return match.group(1) if match else None


def preregister(portal: Bitrix24Simulator, call: dict[str, Any]) -> None:
    """What Bitrix24 did before the click-to-call event: the call exists under the CALL_ID the trace carries."""
    crm_call_id = call["crm_call_id"]
    portal.calls[crm_call_id] = SimCall(
        call_id=crm_call_id, user_id=user_for(call["agent"]), phone_number=digits(call["customer_number"]),
        call_type=int(TYPE_OUTGOING), line_number=None, external_call_id=None,
        caller=f"webhook:{portal.webhook_user}", registered_at=time.time(), start_date="", params={})


def check_call(portal: Bitrix24Simulator, call: dict[str, Any]) -> list[str]:
    """Differences between what the portal holds for one expected call and what it should hold."""
    details = call["details"]
    inbound = call["direction"] == "inbound"
    answered = call["status"] == "answered"
    rung = [str(a) for a in call.get("agents_rung") or []]
    problems: list[str] = []

    if call["crm_call_id"]:
        crm = portal.calls.get(call["crm_call_id"])
        if crm is None or crm.registrations != 1:
            return [f"click-to-call {call['crm_call_id']} should stay the portal's one registration"]
    else:
        mine = [c for c in portal.calls.values() if c.external_call_id == details["linkedid"]]
        if len(mine) != 1 or mine[0].registrations != 1:
            return [f"expected one registration with EXTERNAL_CALL_ID {details['linkedid']}, got "
                    f"{[(c.call_id, c.registrations) for c in mine]}"]
        crm = mine[0]
        register_agent = rung[0] if inbound and rung else call["agent"]
        want = {
            "TYPE": TYPE_INCOMING if inbound else TYPE_OUTGOING,
            "USER_ID": str(user_for(register_agent)),
            "PHONE_NUMBER": digits(call["customer_number"]),
            "LINE_NUMBER": call["did"] if inbound else trunk_of(details.get("customer_channel")),
        }
        got = {"TYPE": str(crm.params.get("TYPE")), "USER_ID": str(crm.params.get("USER_ID")),
               "PHONE_NUMBER": digits(crm.params.get("PHONE_NUMBER")), "LINE_NUMBER": crm.params.get("LINE_NUMBER")}
        if got != want:
            problems.append(f"register {got} != {want}")

    finish = crm.finish
    if finish is None:
        return [*problems, f"{crm.call_id} never finished"]
    params = finish["_params"]
    final = call["agent"] if answered or not inbound else (rung[0] if rung else None)
    want_finish = {
        "STATUS_CODE": status_code(call["direction"], call["status"], details.get("hangup_cause")),
        "USER_ID": str(user_for(final)),
    }
    got_finish = {"STATUS_CODE": str(params.get("STATUS_CODE")), "USER_ID": str(params.get("USER_ID"))}
    if got_finish != want_finish:
        problems.append(f"finish {got_finish} != {want_finish}")
    duration = int(params.get("DURATION") or 0)
    talk = float(call["talk_seconds"] or 0)
    if abs(duration - talk) > 1.0:
        problems.append(f"finish DURATION {duration} is not {talk} +-1 s")

    shown = {user for users in crm.shows for user in users}
    hidden = {user for users in crm.hides for user in users}
    finisher = user_for(final)
    if inbound:
        want_shown = {user_for(a) for a in rung} | ({finisher} if answered else set())
        if shown != want_shown:
            problems.append(f"cards shown to {sorted(shown)}, expected {sorted(want_shown)}")
    elif not call["crm_call_id"] and shown != {finisher}:
        problems.append(f"outbound card shown to {sorted(shown)}, expected the dialling agent {finisher}")
    if not (shown - {finisher}) <= hidden:
        problems.append(f"cards of {sorted(shown - {finisher} - hidden)} were never hidden")
    if answered and finisher in hidden:
        problems.append(f"the card of {finisher}, who talked to the customer, was hidden")
    return problems


@pytest.mark.parametrize("name", NAMES)
async def test_recorded_trace_reaches_the_portal_as_it_happened(name: str, tmp_path: Path) -> None:
    expected = load_expected(name)
    synced = [c for c in expected if c["direction"] != "internal"]
    async with simulators() as sims:
        for call in expected:
            if call["crm_call_id"]:
                preregister(sims.portal, call)
        async with running_bridge(sims.settings(tmp_path)) as bridge:
            await sims.ami.play_trace(name, speed=SPEED)
            await settle(bridge)
            problems = {f"{c['customer_number']}->{c['agent']}": p for c in synced if (p := check_call(sims.portal, c))}
            letters = dead_letters(bridge)
        portal = sims.portal

    assert problems == {}
    assert letters == []
    # Nothing but the expected calls: internal calls send nothing, click-to-call calls are never registered.
    assert len(portal.calls) == len(synced)
    registered = executed(portal, "telephony.externalcall.register")
    assert len(registered) == sum(1 for c in synced if not c["crm_call_id"])
    finishes = Counter(str(params["CALL_ID"]) for _, params in executed(portal, "telephony.externalcall.finish"))
    assert finishes == Counter(dict.fromkeys(portal.calls, 1))
    failed = [r for r in portal.requests if r.http_status != 200] + [c for c in portal.commands if c.error]
    assert failed == []


async def test_internal_call_sends_nothing_at_all(tmp_path: Path) -> None:
    async with simulators() as sims, running_bridge(sims.settings(tmp_path)) as bridge:
        await sims.ami.play_trace("internal_call", speed=SPEED)
        await settle(bridge)
        assert bridge.pipeline is not None and bridge.pipeline.events_seen > 0  # the call was seen...
    telephony = [r.method for r in sims.portal.requests if r.method.startswith("telephony.") or r.method == "batch"]
    assert telephony == []  # ...and nothing about it went to the portal
