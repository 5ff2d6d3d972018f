"""Click-to-call: from the ONEXTERNALCALLSTART POST leaving the client to the AMI Originate arriving at the simulator.

The portal registers each call first (one `batch` of registers, as Bitrix24 does before it sends the event), then
clicks are POSTed one at a time, paced, with distinct CALL_IDs and agents. Times: the client's clock just before the
POST is written, and the AMI simulator's arrival stamp of the Originate carrying that CALL_ID (same host, same
clock). This is an outside view, so it includes the HTTP request and the AMI write on top of the bridge's own work.
The bridge's per-address HTTP rate limit is raised to 200/s for this run so the pacing (40 clicks/s) is not refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime

import aiohttp

from bench.result import BenchResult, Check
from bench.rig import AGENT_EXTENSIONS, BridgeOptions, Rig, poll_until
from bench.stats import summary

NAME = "click_to_call"
TITLE = "Click-to-call: event POST to AMI Originate"
TARGET_P99_MS = 20.0
PACE = 1 / 40
_B24_VAR = "B24_CALL_ID="


async def _register(session: aiohttp.ClientSession, webhook_url: str, count: int) -> list[tuple[int, str, str]]:
    """(user id, phone, CALL_ID) for `count` calls registered through the portal's batch."""
    out: list[tuple[int, str, str]] = []
    for first in range(0, count, 50):
        cmd = {}
        wanted = {}
        for n in range(first, min(count, first + 50)):
            user = 1000 + int(AGENT_EXTENSIONS[n % len(AGENT_EXTENSIONS)])
            phone = f"+7916{n:07d}"
            cmd[f"c{n}"] = f"telephony.externalcall.register?USER_ID={user}&PHONE_NUMBER=%2B{phone[1:]}&TYPE=1&SHOW=0"
            wanted[f"c{n}"] = (user, phone)
        async with session.post(webhook_url + "batch", json={"halt": 0, "cmd": cmd}) as response:
            body = await response.json()
        results = body["result"]["result"]
        out.extend((user, phone, results[key]["CALL_ID"]) for key, (user, phone) in wanted.items() if key in results)
    return out


async def run(smoke: bool) -> BenchResult:
    clicks = 20 if smoke else 200
    result = BenchResult(NAME, TITLE)
    async with Rig(BridgeOptions(rate_limit_per_ip=200.0)) as rig, aiohttp.ClientSession() as session:
        calls = await _register(session, rig.portal.webhook_url, clicks)
        url = f"{rig.bridge.base_url}/bitrix24/events"
        posted: dict[str, float] = {}
        answers: list[float] = []
        statuses: dict[int, int] = {}
        for user, phone, call_id in calls:
            form = {"event": "ONEXTERNALCALLSTART", "data[USER_ID]": str(user), "data[CALL_ID]": call_id,
                    "data[PHONE_NUMBER]": phone, "data[PHONE_NUMBER_INTERNATIONAL]": phone,
                    "data[CRM_ENTITY_TYPE]": "CONTACT", "data[CRM_ENTITY_ID]": "42", "data[CALL_LIST_ID]": "0",
                    "data[LINE_NUMBER]": "", "data[IS_MOBILE]": "0", "auth[application_token]": rig.bridge.app_token,
                    "auth[domain]": "bench.bitrix24.com", "auth[member_id]": "bench"}
            started = time.time()
            posted[call_id] = started
            async with session.post(url, data=form) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            answers.append(time.time() - started)
            await asyncio.sleep(max(0.0, PACE - (time.time() - started)))
        await poll_until(lambda: len(_originates(rig)) >= len(posted), 10, 0.1)
        arrived = _originates(rig)
        accepted = _accepted(rig)
    latencies = [arrived[cid] - at for cid, at in posted.items() if cid in arrived]
    stats = summary(latencies, scale=1000, digits=2)
    # Where the time goes, from the bridge's own log stamps (same clock): HTTP in, then originate out.
    http_in = [accepted[cid] - at for cid, at in posted.items() if cid in accepted]
    out = [arrived[cid] - accepted[cid] for cid in posted if cid in accepted and cid in arrived]
    result.data = {"clicks": len(posted), "originates_seen": len(latencies), "http_statuses": statuses,
                   "post_to_originate_ms": stats, "post_answer_ms": summary(answers, scale=1000, digits=2),
                   "post_to_accepted_log_ms": summary(http_in, scale=1000, digits=2),
                   "accepted_log_to_originate_ms": summary(out, scale=1000, digits=2)}
    result.checks.append(Check(
        f"POST -> Originate over {len(posted)} clicks", f"p99 < {TARGET_P99_MS:.0f} ms",
        f"p50 {stats['p50']} ms, p99 {stats['p99']} ms, max {stats['max']} ms ({len(latencies)}/{len(posted)})",
        None if smoke else (len(latencies) == len(posted) and stats["p99"] < TARGET_P99_MS)))
    return result


def _originates(rig: Rig) -> dict[str, float]:
    """CRM CALL_ID -> arrival time of the Originate that carries it."""
    out: dict[str, float] = {}
    for action in rig.ami.actions:
        if action.name.lower() != "originate":
            continue
        for value in action.get_all("Variable"):
            for item in value.split(","):
                name, _, call_id = item.strip().lstrip("_").partition("=")
                if name == _B24_VAR[:-1] and call_id and call_id not in out:
                    out[call_id] = action.at
    return out


def _accepted(rig: Rig) -> dict[str, float]:
    """CRM CALL_ID -> when the bridge logged `click_to_call_accepted` for it."""
    out: dict[str, float] = {}
    for item in rig.bridge.log_events("click_to_call_accepted"):
        call_id, stamp = item.get("crm_call_id"), item.get("timestamp")
        if isinstance(call_id, str) and isinstance(stamp, str):
            with contextlib.suppress(ValueError):
                out.setdefault(call_id, datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    return out
