"""Bitrix24Client against the portal simulator over real HTTP: auth modes, error classes, bucket, batch, uploads."""

from __future__ import annotations

import asyncio
import io
import json
import math
import stat
import struct
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge.config import Bitrix24Settings
from bridge.crm.bitrix24 import Bitrix24Client, LeakyBucket, TokenAuth, TokenStore
from bridge.crm.bitrix24.errors import (
    Bitrix24ApiError,
    Bitrix24AuthError,
    Bitrix24CallNotFound,
    Bitrix24CommandPaused,
    Bitrix24MethodPaused,
    Bitrix24RateLimited,
    Bitrix24ReinstallNeeded,
    Bitrix24Unavailable,
)
from bridge.crm.bitrix24.installer import AppInstaller
from bridge.crm.bitrix24.telephony import REGISTER, SHOW, CallType
from bridge.log import configure_logging
from bridge.sim.bitrix24 import Bitrix24Simulator


def fast_bucket() -> LeakyBucket:
    return LeakyBucket(rate=1000.0, burst=1000)


@pytest.fixture
async def sim() -> AsyncIterator[Bitrix24Simulator]:
    async with Bitrix24Simulator(rate=1000.0, burst=1000) as simulator:
        yield simulator


@pytest.fixture
async def b24(sim: Bitrix24Simulator) -> AsyncIterator[Bitrix24Client]:
    async with Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=fast_bucket(), timeout=5.0) as client:
        yield client


async def app_client(sim: Bitrix24Simulator, token_path: Path, **kw: Any) -> Bitrix24Client:
    auth = TokenAuth(client_id=sim.client_id, client_secret=sim.client_secret, store=TokenStore(token_path))
    await auth.install(sim.issue_tokens())
    return Bitrix24Client(base_url=None, auth=auth, bucket=kw.pop("bucket", fast_bucket()), timeout=5.0, **kw)


def make_wav(path: Path, seconds: float = 0.2) -> bytes:
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(i / 8))) for i in range(int(8000 * seconds)))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(frames)
    return path.read_bytes()


async def finished_call(b24: Bitrix24Client) -> str:
    registered = await b24.register_call(phone_number="+4930123456", call_type=CallType.INCOMING, user_id=5,
                                         external_call_id=f"ext-{time.monotonic_ns()}")
    await b24.finish_call(registered.call_id, user_id=5, duration=7)
    return registered.call_id


# --- webhook mode, typed wrappers ----------------------------------------------------------------------------------


async def test_webhook_call_lifecycle(sim: Bitrix24Simulator, b24: Bitrix24Client) -> None:
    registered = await b24.register_call(phone_number="+4930123456", call_type=CallType.INCOMING,
                                         user_phone_inner="101", line_number="4930999", external_call_id="1710.5",
                                         show=False, crm_create=True)
    assert registered.call_id in sim.calls and registered.crm_entity_type == "LEAD"
    assert sim.calls[registered.call_id].user_id == 5
    assert await b24.show_call(registered.call_id, [5, 7]) is True
    assert await b24.hide_call(registered.call_id, 7) is True
    finished = await b24.finish_call(registered.call_id, user_id=7, duration=95, status_code="200")
    assert (finished.external_call_id, finished.duration, finished.failed_code) == ("1710.5", 95, "200")
    assert sim.calls[registered.call_id].finish is not None
    assert await b24.show_call(registered.call_id, 5) is False
    with pytest.raises(Bitrix24CallNotFound):
        await b24.finish_call(registered.call_id, user_id=7)
    assert b24.auth_state == "ok" and b24.health().ok
    assert [line["NUMBER"] for line in await b24.external_line_get()] == ["4930999"]
    assert isinstance(await b24.external_line_add("4930888", "Second"), int)


async def test_api_error_keeps_portal_text(b24: Bitrix24Client) -> None:
    with pytest.raises(Bitrix24ApiError) as caught:
        await b24.call(REGISTER, {"USER_ID": 5, "PHONE_NUMBER": "1", "TYPE": 9})
    assert not isinstance(caught.value, Bitrix24CallNotFound)
    assert (caught.value.status, caught.value.error, caught.value.description) == (400, "", "Unknown TYPE")
    with pytest.raises(Bitrix24ApiError) as caught:
        await b24.call("no.such.method")
    assert caught.value.error == "ERROR_METHOD_NOT_FOUND"


async def test_user_paging_over_50(tmp_path: Path) -> None:
    users = [{"ID": i, "NAME": f"N{i}", "LAST_NAME": "L", "UF_PHONE_INNER": str(1000 + i), "ACTIVE": True}
             for i in range(1, 131)]
    async with Bitrix24Simulator(users=users, rate=1000, burst=1000) as sim, \
            Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=fast_bucket()) as b24:
        found = [u async for u in b24.iter_users({"ACTIVE": True})]
        assert sorted(int(u["ID"]) for u in found) == list(range(1, 131))
        assert [r.params.get("start") for r in sim.requests] == [0, 50, 100]


# --- OAuth app mode -------------------------------------------------------------------------------------------------


async def test_app_refresh_is_single_flight_and_persisted(sim: Bitrix24Simulator, tmp_path: Path) -> None:
    token_path = tmp_path / "state" / "tokens.json"
    client = await app_client(sim, token_path)
    async with client:
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        before = json.loads(token_path.read_text())
        assert len(await client.call("user.get")) == 4
        sim.expire_tokens()
        results = await asyncio.gather(*(client.call("user.get", {"FILTER": {"ID": 5}}) for _ in range(10)))
        assert all(r[0]["ID"] == "5" for r in results)
        assert sim.refreshes == 1 and client.refreshes == 1
        after = json.loads(token_path.read_text())
        assert after["refresh_token"] != before["refresh_token"]
        assert after["access_token"] == client.auth.access_token if client.auth else False
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        assert not list(token_path.parent.glob(".tokens.*"))  # no temp file left behind
        assert client.auth_state == "ok"
    # a restart reads the rotated tokens from disk and they work
    restarted = TokenAuth(client_id=sim.client_id, client_secret=sim.client_secret, store=TokenStore(token_path))
    async with Bitrix24Client(base_url=None, auth=restarted, bucket=fast_bucket()) as again:
        assert len(await again.call("user.get")) == 4
    assert sim.refreshes == 1


async def test_refresh_ahead_of_expiry(sim: Bitrix24Simulator, tmp_path: Path) -> None:
    payload = {**sim.issue_tokens(), "auth[expires]": str(int(time.time()) + 5)}  # we believe it expires soon
    auth = TokenAuth(client_id=sim.client_id, client_secret=sim.client_secret, store=TokenStore(tmp_path / "t.json"))
    await auth.install(payload)
    async with Bitrix24Client(base_url=None, auth=auth, bucket=fast_bucket()) as client:
        for _ in range(3):
            await client.call("user.get")
        assert sim.refreshes == 1
        assert [r.http_status for r in sim.requests if r.method == "user.get"] == [200, 200, 200]


async def test_clock_skew_stops_refreshing_ahead(tmp_path: Path) -> None:
    async with Bitrix24Simulator(rate=1000, burst=1000, token_lifetime=10) as sim:  # always "about to expire"
        client = await app_client(sim, tmp_path / "t.json")
        async with client:
            for _ in range(4):
                await client.call("user.get")
        assert sim.refreshes == 1


async def test_invalid_grant_needs_reinstall(sim: Bitrix24Simulator, tmp_path: Path) -> None:
    client = await app_client(sim, tmp_path / "tokens.json")
    async with client:
        sim.expire_tokens()
        sim.revoke_refresh_tokens()
        with pytest.raises(Bitrix24ReinstallNeeded):
            await client.call("user.get")
        assert client.auth_state == "reinstall_needed"
        health = client.health()
        assert not health.ok and "re-install" in health.detail
        sent = len(sim.requests)
        with pytest.raises(Bitrix24ReinstallNeeded):
            await client.call("user.get")
        assert len(sim.requests) == sent  # no more requests until an administrator re-installs
        assert client.auth is not None
        await client.auth.install(sim.issue_tokens())
        assert len(await client.call("user.get")) == 4
        assert client.health().ok


async def test_wrong_client_secret_is_an_auth_error(sim: Bitrix24Simulator, tmp_path: Path) -> None:
    auth = TokenAuth(client_id=sim.client_id, client_secret="not-the-secret", store=TokenStore(tmp_path / "t.json"))
    await auth.install(sim.issue_tokens())
    async with Bitrix24Client(base_url=None, auth=auth, bucket=fast_bucket()) as client:
        sim.expire_tokens()
        with pytest.raises(Bitrix24AuthError) as caught:
            await client.call("user.get")
        assert not isinstance(caught.value, Bitrix24ReinstallNeeded)
        assert caught.value.error == "invalid_client"
        assert client.auth_state != "reinstall_needed"


async def test_no_tokens_state(sim: Bitrix24Simulator, tmp_path: Path) -> None:
    settings = Bitrix24Settings(client_id=sim.client_id, client_secret=sim.client_secret)
    async with Bitrix24Client.from_settings(settings, token_path=tmp_path / "none.json") as client:
        assert client.auth_state == "no_tokens" and not client.health().ok
        with pytest.raises(Bitrix24ReinstallNeeded):
            await client.call("user.get")
        assert sim.requests == []


async def test_from_settings_webhook(sim: Bitrix24Simulator, tmp_path: Path) -> None:
    settings = Bitrix24Settings(webhook_url=sim.webhook_url.rstrip("/"), requests_per_second=100, burst=100)
    async with Bitrix24Client.from_settings(settings, token_path=tmp_path / "t.json") as client:
        assert client.mode == "webhook" and client.bucket.capacity == 99
        assert len(await client.call("user.get")) == 4


async def test_portal_move_is_followed_and_persisted(sim: Bitrix24Simulator, tmp_path: Path) -> None:
    token_path = tmp_path / "tokens.json"
    client = await app_client(sim, token_path)
    async with client:
        sim.move("/moved")
        assert len(await client.call("user.get")) == 4
        assert client.base_url == sim.rest_url
        assert json.loads(token_path.read_text())["client_endpoint"] == sim.rest_url
        assert [r.http_status for r in sim.requests] == [302, 200]


async def test_webhook_move_and_no_secret_in_logs(sim: Bitrix24Simulator, b24: Bitrix24Client) -> None:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    try:
        sim.move("/elsewhere")
        assert len(await b24.call("user.get")) == 4
        assert b24.base_url == sim.webhook_url
        sim.go_down(30)
        with pytest.raises(Bitrix24Unavailable):
            await b24.call("user.get")
    finally:
        configure_logging("info", "console")
    text = out.getvalue()
    assert "bitrix24_portal_moved" in text
    assert sim.webhook_secret not in text


# --- error classes --------------------------------------------------------------------------------------------------


async def test_503_storm_is_rate_limited(sim: Bitrix24Simulator, b24: Bitrix24Client) -> None:
    sim.fail_next(5, 503)
    for _ in range(5):
        with pytest.raises(Bitrix24RateLimited) as caught:
            await b24.call("user.get")
        assert caught.value.status == 503 and caught.value.retry_after > 0
    sim.fail_next(1, 429, error="QUERY_LIMIT_EXCEEDED")
    with pytest.raises(Bitrix24RateLimited):
        await b24.call("user.get")
    assert len(await b24.call("user.get")) == 4


async def test_503_makes_the_bucket_assume_a_full_portal(sim: Bitrix24Simulator) -> None:
    bucket = LeakyBucket(rate=1.0, burst=1000)
    async with Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=bucket) as b24:
        sim.fail_next(1, 503)
        with pytest.raises(Bitrix24RateLimited):
            await b24.call("user.get")
        assert bucket.available() < 1  # another process shares our IP: slow down to the sustained rate


async def test_real_overflow_is_rate_limited() -> None:
    async with Bitrix24Simulator(rate=0.01, burst=3) as sim, \
            Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=fast_bucket()) as b24:
        for _ in range(3):
            await b24.call("user.get")
        with pytest.raises(Bitrix24RateLimited):
            await b24.call("user.get")


async def test_operating_limit_pauses_only_that_method(sim: Bitrix24Simulator, b24: Bitrix24Client) -> None:
    sim.pause_method("user.get", 120)
    with pytest.raises(Bitrix24MethodPaused) as caught:
        await b24.call("user.get")
    assert caught.value.method == "user.get" and caught.value.until > time.time() + 100
    sent = len(sim.requests)
    with pytest.raises(Bitrix24MethodPaused):
        await b24.call("USER.GET")  # refused by the client itself
    assert len(sim.requests) == sent
    assert await b24.call("event.get") == []
    assert b24.paused_until("user.get") is not None and b24.paused_until("event.get") is None
    assert "user.get" in b24.health().extra["paused_methods"]


async def test_operating_limit_uses_reset_time_from_portal() -> None:
    async with Bitrix24Simulator(rate=1000, burst=1000, operating_limit=0.3, method_cost=0.2) as sim, \
            Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=fast_bucket()) as b24:
        await b24.call("user.get")
        await b24.call("user.get")
        with pytest.raises(Bitrix24MethodPaused) as caught:
            await b24.call("user.get")
        expected = sim.budget.reset_at(f"webhook:{sim.webhook_user}", "user.get")
        assert caught.value.until == pytest.approx(expected, abs=1.0)


@pytest.mark.parametrize(("status", "html"), [(500, False), (502, True), (504, True), (503, True)])
async def test_server_errors_are_unavailable(sim: Bitrix24Simulator, b24: Bitrix24Client, status: int,
                                             html: bool) -> None:
    sim.fail_next(1, status, html=html)
    with pytest.raises(Bitrix24Unavailable) as caught:
        await b24.call("user.get")
    assert not isinstance(caught.value, Bitrix24RateLimited)
    assert caught.value.status == status


async def test_connection_reset_and_timeout_are_unavailable(sim: Bitrix24Simulator) -> None:
    async with Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=fast_bucket(), timeout=0.3) as b24:
        sim.go_down(0.2)
        with pytest.raises(Bitrix24Unavailable) as caught:
            await b24.call("user.get")
        assert caught.value.__cause__ is not None
        await asyncio.sleep(0.25)
        sim.slow(0.6, count=1)
        with pytest.raises(Bitrix24Unavailable):
            await b24.call("user.get")
        for _ in range(3):
            sim.fail_next(1, 500)
            with pytest.raises(Bitrix24Unavailable):
                await b24.call("user.get")
        assert not b24.health().ok
        assert len(await b24.call("user.get")) == 4
        assert b24.health().ok


async def test_wrong_webhook_secret_is_an_auth_error(sim: Bitrix24Simulator) -> None:
    url = f"{sim.rest_url}{sim.webhook_user}/not-the-secret/"
    async with Bitrix24Client(base_url=url, auth=None, bucket=fast_bucket()) as b24:
        with pytest.raises(Bitrix24AuthError) as caught:
            await b24.call("user.get")
        assert caught.value.error == "INVALID_CREDENTIALS"
        assert not b24.health().ok


async def test_lifecycle_is_guarded(sim: Bitrix24Simulator) -> None:
    client = Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=fast_bucket())
    with pytest.raises(RuntimeError):
        await client.call("user.get")
    async with client:
        with pytest.raises(RuntimeError):
            await client.__aenter__()
    with pytest.raises(RuntimeError):
        await client.__aenter__()
    with pytest.raises(ValueError):
        Bitrix24Client(base_url=None, auth=None, bucket=fast_bucket())


# --- the bucket keeps us under the portal's limit --------------------------------------------------------------------


async def test_burst_of_200_never_gets_503() -> None:
    async with Bitrix24Simulator(rate=150.0, burst=20) as sim, \
            Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=LeakyBucket(rate=150.0, burst=20)) as b24:
        results = await asyncio.gather(*(b24.call("user.get", {"FILTER": {"ID": 1}}) for _ in range(200)))
        assert len(results) == 200
        assert sim.bucket.refused == 0
        assert all(r.http_status == 200 for r in sim.requests)
        assert sim.counts["user.get"] == 200


# --- batch ----------------------------------------------------------------------------------------------------------


async def test_batch_register_and_show_with_reference(sim: Bitrix24Simulator, b24: Bitrix24Client) -> None:
    result = await b24.batch({
        "reg": (REGISTER, {"USER_ID": 5, "PHONE_NUMBER": "+4930555", "TYPE": 2, "SHOW": 0,
                           "EXTERNAL_CALL_ID": "1710.9"}),
        "show": (SHOW, {"CALL_ID": "$result[reg][CALL_ID]", "USER_ID": [5, 7]}),
        "gone": ("telephony.externalcall.finish", {"CALL_ID": "externalCall.unknown.1", "USER_ID": 5}),
        "bad": (REGISTER, {"USER_ID": 5, "PHONE_NUMBER": "1", "TYPE": 0}),
    })
    call_id = result.results["reg"]["CALL_ID"]
    assert result.results["show"] is True and sim.calls[call_id].shows == [[5, 7]]
    assert isinstance(result.errors["gone"], Bitrix24CallNotFound)
    assert type(result.errors["bad"]) is Bitrix24ApiError and result.errors["bad"].description == "Unknown TYPE"
    assert sim.counts == {"batch": 1}
    assert sim.commands[1].params["CALL_ID"] == call_id  # the reference reached the portal intact


async def test_batch_halt_limits_and_paused(sim: Bitrix24Simulator, b24: Bitrix24Client) -> None:
    halted = await b24.batch({"a": ("telephony.externalcall.finish", {"CALL_ID": "x", "USER_ID": 5}),
                              "b": ("user.get", {})}, halt=True)
    assert set(halted.errors) == {"a"} and halted.results == {}
    with pytest.raises(ValueError):
        await b24.batch({f"k{i}": ("user.get", {}) for i in range(51)})
    with pytest.raises(ValueError):
        await b24.batch({"bad key]": ("user.get", {})})
    full = await b24.batch({f"k{i}": ("user.get", {"FILTER": {"ID": 1}}) for i in range(50)})
    assert len(full.results) == 50 and full.totals["k0"] == 1
    assert (await b24.batch({})).results == {}
    sim.pause_method("user.get", 60)
    with pytest.raises(Bitrix24MethodPaused):
        await b24.call("user.get")
    with pytest.raises(Bitrix24MethodPaused):
        await b24.batch({"a": ("user.get", {}), "b": ("event.get", {})})


async def test_batch_command_over_budget_is_paused_not_permanent() -> None:
    async with Bitrix24Simulator(rate=1000, burst=1000, operating_limit=0.1, method_cost=0.2) as sim, \
            Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=fast_bucket()) as b24:
        result = await b24.batch({"a": ("user.get", {}), "b": ("user.get", {}), "c": ("event.get", {})})
        assert set(result.results) == {"a", "c"}
        paused = result.errors["b"]
        assert isinstance(paused, Bitrix24CommandPaused) and paused.until > time.time()
        assert b24.paused_until("user.get") is not None


# --- recordings -----------------------------------------------------------------------------------------------------


async def test_attach_record_upload_two_step(sim: Bitrix24Simulator, b24: Bitrix24Client, tmp_path: Path) -> None:
    call_id = await finished_call(b24)
    data = make_wav(tmp_path / "rec.wav")
    file_id = await b24.attach_record_upload(call_id, tmp_path / "rec.wav", "1710.1.wav")
    assert isinstance(file_id, int)
    assert sim.calls[call_id].records == [("1710.1.wav", data)]
    assert [r.method for r in sim.requests[-2:]] == ["telephony.externalcall.attachrecord", "upload"]


async def test_attach_record_base64_and_errors(sim: Bitrix24Simulator, b24: Bitrix24Client, tmp_path: Path) -> None:
    data = make_wav(tmp_path / "rec.wav")
    registered = await b24.register_call(phone_number="+4930777", call_type=CallType.OUTGOING, user_id=7)
    with pytest.raises(Bitrix24ApiError) as caught:
        await b24.attach_record_base64(registered.call_id, "rec.wav", data)
    assert "not finished yet" in caught.value.description
    await b24.finish_call(registered.call_id, user_id=7, duration=1)
    assert isinstance(await b24.attach_record_base64(registered.call_id, "rec.wav", data), int)
    assert sim.calls[registered.call_id].record_bytes == data
    with pytest.raises(Bitrix24ApiError) as caught:
        await b24.attach_record_base64(registered.call_id, "rec.ogg", data)
    assert caught.value.description == "Wrong file extension. Only wav and mp3 are allowed"


async def test_attach_record_url(sim: Bitrix24Simulator, b24: Bitrix24Client, tmp_path: Path) -> None:
    data = make_wav(tmp_path / "rec.wav")

    async def serve_file(_request: web.Request) -> web.Response:
        return web.Response(body=data, content_type="audio/wav")

    app = web.Application()
    app.router.add_get("/rec/{name}", serve_file)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        call_id = await finished_call(b24)
        assert isinstance(await b24.attach_record_url(call_id, None, f"http://127.0.0.1:{port}/rec/x.wav"), int)
        assert sim.calls[call_id].records == [("x.wav", data)]
    finally:
        await runner.cleanup()


async def test_upload_of_missing_file_is_not_an_outage(b24: Bitrix24Client, tmp_path: Path) -> None:
    call_id = await finished_call(b24)
    with pytest.raises(FileNotFoundError):
        await b24.attach_record_upload(call_id, tmp_path / "missing.wav", "missing.wav")
    assert b24.health().ok


async def test_search_and_events(tmp_path: Path) -> None:
    async with Bitrix24Simulator(rate=1000, burst=1000, crm={"+4930111": ("CONTACT", 42)}) as sim:
        client = await app_client(sim, tmp_path / "tokens.json")
        async with client:
            found = await client.search_crm_entities("+4930111")
            assert [(e["CRM_ENTITY_TYPE"], e["CRM_ENTITY_ID"]) for e in found] == [("CONTACT", 42)]
            assert await client.event_bind("ONEXTERNALCALLSTART", "https://bridge.example/b24") is True
            assert await client.event_bind("ONEXTERNALCALLBACKSTART", "", event_type="offline") is True
            assert {e["event"] for e in await client.event_get()} == {"ONEXTERNALCALLSTART",
                                                                       "ONEXTERNALCALLBACKSTART"}
            sim.queue_offline_event("ONEXTERNALCALLBACKSTART", {"PHONE_NUMBER": "+4930111"})
            offline = await client.event_offline_get()
            assert [e["EVENT_NAME"] for e in offline["events"]] == ["ONEXTERNALCALLBACKSTART"]


async def test_app_installer_stores_tokens_and_binds_once(sim: Bitrix24Simulator, tmp_path: Path) -> None:
    auth = TokenAuth(client_id=sim.client_id, client_secret=sim.client_secret, store=TokenStore(tmp_path / "t.json"))
    async with Bitrix24Client(base_url=None, auth=auth, bucket=fast_bucket()) as client:
        installer = AppInstaller(client)
        await installer.install(sim.issue_tokens())
        assert client.auth_state != "no_tokens"
        for _ in range(2):  # an app update re-runs the installer
            await installer.bind_events("https://bridge.example/bitrix24/events")
        await installer.bind_events(None)
        bound = sorted((h["event"], h["offline"]) for h in await client.event_get())
        assert bound == [("ONEXTERNALCALLBACKSTART", 0), ("ONEXTERNALCALLBACKSTART", 1),
                         ("ONEXTERNALCALLSTART", 0), ("ONEXTERNALCALLSTART", 1)]
        assert sim.count("event.bind") == 4
