"""The Bitrix24 simulator on its own, over raw HTTP: parameter checks, error texts, limits, batch, OAuth, controls."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bridge.sim.bitrix24 import Bitrix24Simulator

CALL_ID = re.compile(r"^externalCall\.[0-9a-f]{32}\.\d{10}$")


@pytest.fixture
async def sim() -> AsyncIterator[Bitrix24Simulator]:
    async with Bitrix24Simulator(rate=1000.0, burst=1000) as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, params: dict[str, Any] | None = None) -> tuple[int, Any]:
    async with http.post(url, json=params or {}, allow_redirects=False) as resp:
        return resp.status, await resp.json(content_type=None)


async def hook(http: aiohttp.ClientSession, sim: Bitrix24Simulator, method: str,
               params: dict[str, Any] | None = None) -> tuple[int, Any]:
    return await post(http, sim.webhook_url + method, params)


REGISTER = "telephony.externalcall.register"
FINISH = "telephony.externalcall.finish"
ATTACH = "telephony.externalCall.attachRecord"


async def register(http: aiohttp.ClientSession, sim: Bitrix24Simulator, **extra: Any) -> str:
    params = {"USER_ID": 5, "PHONE_NUMBER": "+4930123456", "TYPE": 2, **extra}
    status, body = await hook(http, sim, REGISTER, params)
    assert status == 200, body
    return str(body["result"]["CALL_ID"])


@pytest.mark.parametrize(("params", "text"), [
    ({"PHONE_NUMBER": "123", "TYPE": 2}, "USER_ID or USER_PHONE_INNER should be set"),
    ({"USER_PHONE_INNER": "999", "PHONE_NUMBER": "123", "TYPE": 2}, "USER_ID or USER_PHONE_INNER should be set"),
    ({"USER_ID": 9, "PHONE_NUMBER": "123", "TYPE": 2}, "User is not found or is not active"),
    ({"USER_ID": 5, "PHONE_NUMBER": "123", "TYPE": 7}, "Unknown TYPE"),
    ({"USER_ID": 5, "PHONE_NUMBER": "123", "TYPE": "x"}, "Unknown TYPE"),
    ({"USER_ID": 5, "PHONE_NUMBER": "123", "TYPE": 2, "CALL_START_DATE": "2026-03-07 10:20:30"},
     "CALL_START_DATE should be in the ISO-8601 format"),
    ({"USER_ID": 5, "PHONE_NUMBER": "abc", "TYPE": 2}, "Unsupported phone number format"),
])
async def test_register_checks(sim: Bitrix24Simulator, http: aiohttp.ClientSession, params: dict[str, Any],
                               text: str) -> None:
    status, body = await hook(http, sim, REGISTER, params)
    assert (status, body["error"], body["error_description"]) == (400, "", text)
    assert {"operating", "operating_reset_at"} <= set(body["time"])


async def test_register_format_dedup_and_finish(sim: Bitrix24Simulator, http: aiohttp.ClientSession) -> None:
    first = await register(http, sim, EXTERNAL_CALL_ID="1710.1", CALL_START_DATE="2026-03-07T10:20:30+03:00")
    assert CALL_ID.match(first)
    assert await register(http, sim, EXTERNAL_CALL_ID="1710.1") == first  # same key within 30 min
    assert await register(http, sim, EXTERNAL_CALL_ID="1710.2") != first  # another PBX call
    assert await register(http, sim, USER_PHONE_INNER="101", USER_ID=0, EXTERNAL_CALL_ID="1710.1") == first
    assert sim.calls[first].registrations == 3

    status, body = await hook(http, sim, FINISH, {"CALL_ID": first, "USER_ID": 7, "DURATION": 42})
    assert status == 200
    row = body["result"]
    assert (row["CALL_ID"], row["EXTERNAL_CALL_ID"], row["CALL_DURATION"], row["CALL_FAILED_CODE"],
            row["PORTAL_USER_ID"]) == (first, "1710.1", "42", "200", "7")
    status, body = await hook(http, sim, FINISH, {"CALL_ID": first, "USER_ID": 7})
    assert (status, body["error_description"]) == (400, "Call is not found (call should be registered prior to "
                                                        "finishing")
    status, body = await hook(http, sim, FINISH, {"CALL_ID": 12345, "USER_ID": 7})
    assert (status, body["error"]) == (400, "INVALID_ARGUMENT")
    # after finish, the same key registers a new call
    assert await register(http, sim, EXTERNAL_CALL_ID="1710.1") != first


async def test_finish_default_status_code(sim: Bitrix24Simulator, http: aiohttp.ClientSession) -> None:
    call_id = await register(http, sim)
    _, body = await hook(http, sim, FINISH, {"CALL_ID": call_id, "USER_ID": 5})
    assert body["result"]["CALL_FAILED_CODE"] == "304"


async def test_show_hide(sim: Bitrix24Simulator, http: aiohttp.ClientSession) -> None:
    call_id = await register(http, sim, SHOW=0)
    assert (await hook(http, sim, "telephony.externalcall.show", {"CALL_ID": call_id, "USER_ID": [5, 7]}))[1][
        "result"] is True
    assert (await hook(http, sim, "telephony.externalcall.hide", {"CALL_ID": call_id, "USER_ID": 7}))[1][
        "result"] is True
    assert (await hook(http, sim, "telephony.externalcall.show", {"CALL_ID": "externalCall.nope.1"}))[1][
        "result"] is False
    assert sim.calls[call_id].shows == [[5, 7]]
    assert sim.calls[call_id].hides == [[7]]
    await hook(http, sim, FINISH, {"CALL_ID": call_id, "USER_ID": 5})
    assert (await hook(http, sim, "telephony.externalcall.show", {"CALL_ID": call_id}))[1]["result"] is False


async def test_attach_record_modes_and_errors(sim: Bitrix24Simulator, http: aiohttp.ClientSession) -> None:
    call_id = await register(http, sim)
    status, body = await hook(http, sim, ATTACH, {"CALL_ID": call_id, "FILENAME": "a.wav", "FILE_CONTENT": "QQ=="})
    assert (status, body["error_description"]) == (
        400, "Call is not found in the statistic table. Looks like it is not finished yet.")
    await hook(http, sim, FINISH, {"CALL_ID": call_id, "USER_ID": 5, "DURATION": 3})
    for params, text in [
        ({"FILENAME": "a.ogg", "FILE_CONTENT": "QQ=="}, "Wrong file extension. Only wav and mp3 are allowed"),
        ({"FILENAME": "", "FILE_CONTENT": "QQ=="}, "File name is empty"),
        ({"FILENAME": "a.wav", "FILE_CONTENT": ""}, "File content is empty."),
        ({"FILENAME": "a.wav", "FILE_CONTENT": "***"}, "File content is not properly encoded. Base64 encoding is "
                                                       "expected."),
        ({}, "Required parameters are not set. Request should contain or URL or FILENAME parameter"),
    ]:
        status, body = await hook(http, sim, ATTACH, {"CALL_ID": call_id, **params})
        assert (status, body["error_description"]) == (400, text)
    status, body = await hook(http, sim, ATTACH, {"CALL_ID": call_id, "FILENAME": "a.mp3",
                                                  "FILE_CONTENT": base64.b64encode(b"ID3abc").decode()})
    assert status == 200 and isinstance(body["result"]["FILE_ID"], int)
    assert sim.calls[call_id].record_bytes == b"ID3abc"

    status, body = await hook(http, sim, ATTACH, {"CALL_ID": call_id, "FILENAME": "up.wav"})
    upload_url, field = body["result"]["uploadUrl"], body["result"]["fieldName"]
    form = aiohttp.FormData()
    form.add_field(field, b"RIFF0000WAVE", filename="up.wav", content_type="audio/wav")
    async with http.post(upload_url, data=form) as resp:
        assert resp.status == 200
    assert sim.calls[call_id].records == [("up.wav", b"RIFF0000WAVE")]  # attaching again replaced the mp3
    assert sim.calls[call_id].record_uploads == 2
    form = aiohttp.FormData()
    form.add_field(field, b"x", filename="up.wav")
    async with http.post(upload_url, data=form) as resp:
        assert resp.status == 401  # the signed URL is single-use

    status, body = await hook(http, sim, ATTACH, {"CALL_ID": call_id, "RECORD_URL": sim.url + "/_missing.mp3"})
    assert (status, body["error_description"]) == (400, "Server returns HTTP error code 404")


async def test_user_get_paging_and_filters(http: aiohttp.ClientSession) -> None:
    users = [{"ID": i, "NAME": f"U{i}", "LAST_NAME": "", "UF_PHONE_INNER": str(200 + i), "ACTIVE": i % 10 != 0}
             for i in range(1, 121)]
    async with Bitrix24Simulator(users=users, rate=1000, burst=1000) as sim:
        seen: list[str] = []
        start = 0
        while True:
            _, body = await hook(http, sim, "user.get", {"FILTER": {"ACTIVE": True}, "start": start})
            assert len(body["result"]) <= 50
            seen += [u["ID"] for u in body["result"]]
            assert body["total"] == 108
            if "next" not in body:
                break
            start = body["next"]
        assert len(seen) == len(set(seen)) == 108
        _, body = await hook(http, sim, "user.get", {"filter": {"UF_PHONE_INNER": "205"}})
        assert [u["ID"] for u in body["result"]] == ["5"]
        async with http.get(sim.webhook_url + "user.get?FILTER[UF_PHONE_INNER]=207&select[]=ID") as resp:
            body = await resp.json()
        assert body["result"] == [{"ID": "7"}]
        sim.drop_filter("UF_PHONE_INNER")
        _, body = await hook(http, sim, "user.get", {"FILTER": {"UF_PHONE_INNER": "205"}})
        assert body["total"] == 120  # the portal silently ignores a filter key outside the scope


async def test_batch_references_halt_and_limits(sim: Bitrix24Simulator, http: aiohttp.ClientSession) -> None:
    cmd = {
        "reg": f"{REGISTER}?USER_ID=5&PHONE_NUMBER=%2B4930&TYPE=2&SHOW=0",
        "show": "telephony.externalcall.show?CALL_ID=$result[reg][CALL_ID]&USER_ID[]=5&USER_ID[]=7",
        "bad": f"{FINISH}?CALL_ID=externalCall.nope.1&USER_ID=5",
        "after": "user.get?FILTER[ID]=1",
    }
    status, body = await hook(http, sim, "batch", {"halt": 0, "cmd": cmd})
    assert status == 200
    inner = body["result"]
    call_id = inner["result"]["reg"]["CALL_ID"]
    assert inner["result"]["show"] is True and sim.calls[call_id].shows == [[5, 7]]
    assert inner["result_error"]["bad"]["error_description"].startswith("Call is not found")
    assert inner["result_total"]["after"] == 1
    assert set(inner["result_time"]) == {"reg", "show", "after"}  # failed commands carry no time

    status, body = await hook(http, sim, "batch", {"halt": 1, "cmd": {"a": cmd["bad"], "b": cmd["after"]}})
    assert status == 200 and body["result"]["result"] == [] and "b" not in body["result"]["result_error"]

    status, body = await hook(http, sim, "batch", {"cmd": {f"k{i}": "user.get" for i in range(51)}})
    assert (status, body["error"]) == (400, "ERROR_BATCH_LENGTH_EXCEEDED")
    _, body = await hook(http, sim, "batch", {"cmd": {"x": "batch?cmd[a]=user.get"}})
    assert body["result"]["result_error"]["x"]["error"] == "ERROR_BATCH_METHOD_NOT_ALLOWED"
    assert sim.counts["batch"] == 4


async def test_rate_limit_503(http: aiohttp.ClientSession) -> None:
    async with Bitrix24Simulator(rate=0.01, burst=5) as sim:
        statuses = [(await hook(http, sim, "user.get"))[0] for _ in range(8)]
        assert statuses == [200] * 5 + [503] * 3
        assert sim.requests[-1].error == "QUERY_LIMIT_EXCEEDED"


async def test_operating_limit_429_only_for_that_method(http: aiohttp.ClientSession) -> None:
    async with Bitrix24Simulator(rate=1000, burst=1000, operating_limit=0.5, method_cost=0.2) as sim:
        for _ in range(3):
            status, body = await hook(http, sim, "user.get")
            assert status == 200 and {"operating", "operating_reset_at", "start", "finish"} <= set(body["time"])
        status, body = await hook(http, sim, "user.get")
        assert (status, body["error"]) == (429, "OPERATION_TIME_LIMIT")
        assert body["time"]["operating_reset_at"] > body["time"]["start"]
        assert (await hook(http, sim, "event.get"))[0] == 200
        sim.pause_method("event.get", 30)
        assert (await hook(http, sim, "event.get"))[0] == 429


async def test_webhook_and_token_auth(sim: Bitrix24Simulator, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, f"{sim.rest_url}{sim.webhook_user}/wrong/user.get")
    assert (status, body["error"]) == (401, "INVALID_CREDENTIALS")
    status, body = await post(http, sim.rest_url + "user.get")
    assert (status, body["error"]) == (401, "NO_AUTH_FOUND")
    payload = sim.issue_tokens()
    assert payload["event"] == "ONAPPINSTALL" and payload["auth[client_endpoint]"] == sim.rest_url
    token = payload["auth[access_token]"]
    assert (await post(http, sim.rest_url + "user.get", {"auth": token}))[0] == 200
    async with http.get(sim.rest_url + f"user.get?auth={token}") as resp:
        assert resp.status == 200
    sim.expire_tokens()
    status, body = await post(http, sim.rest_url + "user.get", {"auth": token})
    assert (status, body["error"]) == (401, "expired_token")

    oauth = f"{sim.url}/oauth/token/"
    query = {"grant_type": "refresh_token", "client_id": sim.client_id, "client_secret": sim.client_secret,
             "refresh_token": payload["auth[refresh_token]"]}
    async with http.get(oauth, params=query) as resp:
        fresh = await resp.json()
    assert resp.status == 200 and fresh["refresh_token"] != payload["auth[refresh_token]"]
    assert (await post(http, sim.rest_url + "user.get", {"auth": fresh["access_token"]}))[0] == 200
    async with http.get(oauth, params=query) as resp:  # the old refresh token was rotated away
        assert (resp.status, (await resp.json())["error"]) == (400, "invalid_grant")
    async with http.get(oauth, params={**query, "client_secret": "nope"}) as resp:
        assert (resp.status, (await resp.json())["error"]) == (401, "invalid_client")
    assert sim.refreshes == 1


async def test_event_methods_need_an_app(sim: Bitrix24Simulator, http: aiohttp.ClientSession) -> None:
    status, body = await hook(http, sim, "event.bind", {"event": "ONEXTERNALCALLSTART", "handler": "https://x/"})
    assert (status, body["error"]) == (403, "WRONG_AUTH_TYPE")
    token = sim.issue_tokens()["auth[access_token]"]
    url = sim.rest_url
    assert (await post(http, url + "event.bind", {"auth": token, "event": "ONEXTERNALCALLSTART",
                                                  "handler": "https://bridge.example/events"}))[1]["result"] is True
    status, body = await post(http, url + "event.bind", {"auth": token, "event": "ONNOTHING", "handler": "https://x"})
    assert (status, body["error"]) == (400, "ERROR_EVENT_NOT_FOUND")
    _, body = await post(http, url + "event.get", {"auth": token})
    assert body["result"][0]["event"] == "ONEXTERNALCALLSTART"
    sim.queue_offline_event("ONEXTERNALCALLSTART", {"CALL_ID": "externalCall.x.1"})
    _, body = await post(http, url + "event.offline.get", {"auth": token})
    assert [e["EVENT_DATA"]["CALL_ID"] for e in body["result"]["events"]] == ["externalCall.x.1"]
    _, body = await post(http, url + "event.offline.get", {"auth": token})
    assert body["result"]["events"] == []


async def test_lines_and_crm_search(http: aiohttp.ClientSession) -> None:
    async with Bitrix24Simulator(rate=1000, burst=1000, crm={"+4930111": ("CONTACT", 42)},
                                 crm_owners={("CONTACT", 42): 7}) as sim:
        _, body = await hook(http, sim, "crm.contact.get", {"id": 42})
        assert body["result"]["ASSIGNED_BY_ID"] == "7"
        status, _ = await hook(http, sim, "crm.lead.get", {"id": 42})
        assert status == 400
        assert (await hook(http, sim, "telephony.externalLine.add", {"NUMBER": "4930999", "NAME": "Main"}))[0] == 200
        status, body = await hook(http, sim, "telephony.externalLine.add", {"NUMBER": "4930999"})
        assert (status, body["error_description"]) == (400, "Line already exists")
        _, body = await hook(http, sim, "telephony.externalLine.add", {"NUMBER": ""})
        assert body["error_description"] == "NUMBER should not be empty"
        _, body = await hook(http, sim, "telephony.externalLine.get")
        assert body["result"] == [{"NUMBER": "4930999", "NAME": "Main", "CRM_AUTO_CREATE": "Y"}]
        _, body = await hook(http, sim, "telephony.externalCall.searchCrmEntities", {"PHONE_NUMBER": "+49 30 111"})
        assert [(e["CRM_ENTITY_TYPE"], e["CRM_ENTITY_ID"]) for e in body["result"]] == [("CONTACT", 42)]
        _, body = await hook(http, sim, "telephony.externalCall.searchCrmEntities", {"PHONE_NUMBER": ""})
        assert body["error_description"] == "PHONE_NUMBER is empty"
        _, body = await hook(http, sim, REGISTER, {"USER_ID": 5, "PHONE_NUMBER": "+4930222", "TYPE": 2,
                                                   "CRM_CREATE": 1})
        assert body["result"]["CRM_ENTITY_TYPE"] == "LEAD" and body["result"]["CRM_CREATED_LEAD"]


async def test_faults_and_control_endpoints(sim: Bitrix24Simulator, http: aiohttp.ClientSession) -> None:
    sim.fail_next(2, 502, html=True)
    for _ in range(2):
        async with http.post(sim.webhook_url + "user.get", json={}) as resp:
            assert resp.status == 502 and resp.content_type == "text/html"
    assert (await hook(http, sim, "user.get"))[0] == 200
    async with http.post(f"{sim.url}/_fault", json={"kind": "go_down", "seconds": 30}) as resp:
        assert resp.status == 200
    with pytest.raises(aiohttp.ClientError):
        await hook(http, sim, "user.get")
    async with http.post(f"{sim.url}/_fault", json={"kind": "explode"}) as resp:
        assert resp.status == 400
    async with http.post(f"{sim.url}/_reset") as resp:
        assert resp.status == 200
    assert (await hook(http, sim, "user.get"))[0] == 200
    async with http.get(f"{sim.url}/_info") as resp:
        assert (await resp.json())["webhook_url"] == sim.webhook_url
    async with http.get(f"{sim.url}/_requests") as resp:
        recorded = await resp.json()
    assert [(r["method"], r["http_status"]) for r in recorded] == [("user.get", 200)]


async def test_portal_move_redirects(sim: Bitrix24Simulator, http: aiohttp.ClientSession) -> None:
    old = sim.webhook_url
    sim.move("/new-domain")
    async with http.post(old + "user.get", json={}, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == sim.webhook_url + "user.get"


@pytest.mark.parametrize(("content_type", "data"), [
    ("application/json", b"{not json"),
    ("application/json", b"[1, 2]"),
    ("application/x-www-form-urlencoded", b"FILTER[=1&&&%ZZ"),
    ("application/json", b'{"FILTER": "nope", "start": "-5", "select": 7}'),
])
async def test_hostile_bodies_get_clean_errors(sim: Bitrix24Simulator, http: aiohttp.ClientSession,
                                               content_type: str, data: bytes) -> None:
    async with http.post(sim.webhook_url + "user.get", data=data, headers={"Content-Type": content_type}) as resp:
        assert resp.status in (200, 400)
        body = await resp.json()
    assert "result" in body or body["error"] == "INVALID_REQUEST"
    status, body = await hook(http, sim, "no.such.method")
    assert (status, body["error"]) == (404, "ERROR_METHOD_NOT_FOUND")
