"""The Bitrix24 event endpoint over real HTTP: click-to-call, callback, install, refusals, health, and a fuzz.

The web server runs on port 0 (`WebServer`), requests go through `aiohttp.ClientSession`. The collaborators are fakes
with real behaviour: a PBX that records OriginateRequests and can refuse, a directory dict, a sink that collects the
CallEvents, a callback registrar and an installer that record what they are asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import Bitrix24Settings, HttpSettings, OriginateSettings
from bridge.errors import OriginateError
from bridge.model import CallEnded, CallEvent, CallStarted, Direction, Disposition, OriginateRequest
from bridge.pbx.base import Health
from bridge.web import EventDispatcher, OfflineEventPoller, WebServer, create_app
from bridge.web.auth import EventVerifier, TokenHolder
from bridge.web.clicktocall import ClickToCall
from bridge.web.dedup import RecentKeys
from bridge.web.ratelimit import RateLimiter

TOKEN = "4f1c2d3e5a6b7c8d9e0f1a2b3c4d5e6f"
MEMBER_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
DOMAIN = "example.bitrix24.com"
CALL_ID = "externalCall.9c4f8e2b9a1d4e6f8a0b1c2d3e4f5a6b.1732790000"
FIXED_NOW = datetime(2026, 11, 28, 10, 20, 30, tzinfo=UTC)


# ------------------------------------------------------------------------------------------------------------ fakes


class FakePbx:
    kind = "asterisk"

    def __init__(self) -> None:
        self.requests: list[OriginateRequest] = []
        self.refuse_with: str | None = None

    async def originate(self, request: OriginateRequest) -> None:
        if self.refuse_with is not None:
            raise OriginateError("originate failed", reason=self.refuse_with)
        self.requests.append(request)


class FakeDirectory:
    def __init__(self, users: dict[int, str]) -> None:
        self.users = users

    def extension_for_user(self, user_id: int) -> str | None:
        return self.users.get(user_id)


class FakeSink:
    def __init__(self) -> None:
        self.events: list[CallEvent] = []

    async def submit(self, event: CallEvent) -> None:
        self.events.append(event)


class FakeCallbacks:
    def __init__(self) -> None:
        self.registered: list[tuple[str, str | None, str | None, int | None, int | None]] = []
        self.fail = False
        self._n = 0

    async def register_callback(self, phone: str, line: str | None, crm_entity_type: str | None,
                                crm_entity_id: int | None, user_id: int | None) -> str:
        if self.fail:
            raise RuntimeError("portal unavailable")
        self.registered.append((phone, line, crm_entity_type, crm_entity_id, user_id))
        self._n += 1
        return f"externalCall.callback{self._n}.1732790000"


class FakeInstaller:
    def __init__(self) -> None:
        self.installed: list[dict[str, str]] = []
        self.bound: list[str | None] = []

    async def install(self, payload: Mapping[str, str]) -> None:
        self.installed.append(dict(payload))

    async def bind_events(self, url: str | None) -> None:
        self.bound.append(url)


class FakeRouter:
    def __init__(self, remote: dict[str, str]) -> None:
        self.remote = remote
        self.published: list[tuple[str, OriginateRequest]] = []

    def route(self, extension: str) -> str | None:
        return self.remote.get(extension)

    async def publish_originate(self, site: str, request: OriginateRequest) -> None:
        self.published.append((site, request))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Bridge:
    """One running web server and the fakes behind it."""

    url: str
    http: aiohttp.ClientSession
    dispatcher: EventDispatcher
    pbx: FakePbx
    directory: FakeDirectory
    sink: FakeSink
    callbacks: FakeCallbacks
    installer: FakeInstaller
    router: FakeRouter
    clock: FakeClock
    health: dict[str, Health] = field(default_factory=dict)

    async def post(self, fields: list[tuple[str, str]] | dict[str, str], **kwargs: Any) -> aiohttp.ClientResponse:
        pairs = list(fields.items()) if isinstance(fields, dict) else fields
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        headers.update(kwargs.pop("headers", {}))
        async with self.http.post(f"{self.url}/bitrix24/events", data=urlencode(pairs).encode(), headers=headers,
                                  **kwargs) as resp:
            await resp.read()
            return resp

    async def post_raw(self, body: bytes, content_type: str = "application/x-www-form-urlencoded"
                       ) -> tuple[int, dict[str, Any] | None]:
        async with self.http.post(f"{self.url}/bitrix24/events", data=body,
                                  headers={"Content-Type": content_type}) as resp:
            try:
                payload = await resp.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                payload = None
            return resp.status, payload

    async def settle(self) -> None:
        await self.dispatcher.tasks.wait_idle()


def call_start(call_id: str = CALL_ID, *, user_id: str = "7", phone: str = "+7 (495) 123-45-67",
               international: str | None = "+74951234567", token: str | None = TOKEN,
               member_id: str = MEMBER_ID, domain: str = DOMAIN) -> dict[str, str]:
    form = {
        "event": "ONEXTERNALCALLSTART",
        "event_handler_id": "31",
        "data[PHONE_NUMBER]": phone,
        "data[EXTENSION]": "",
        "data[USER_ID]": user_id,
        "data[CALL_LIST_ID]": "0",
        "data[LINE_NUMBER]": "",
        "data[IS_MOBILE]": "0",
        "data[CALL_ID]": call_id,
        "data[CRM_ENTITY_TYPE]": "CONTACT",
        "data[CRM_ENTITY_ID]": "42",
        "ts": "1732790000",
        "auth[domain]": domain,
        "auth[client_endpoint]": f"https://{domain}/rest/",
        "auth[server_endpoint]": "https://oauth.bitrix.info/rest/",
        "auth[member_id]": member_id,
    }
    if international is not None:
        form["data[PHONE_NUMBER_INTERNATIONAL]"] = international
    if token is not None:
        form["auth[application_token]"] = token
    return form


def callback_start(*, token: str = TOKEN, phone: str = "+4930123456", ts: str = "1732790100") -> dict[str, str]:
    return {
        "event": "ONEXTERNALCALLBACKSTART",
        "data[PHONE_NUMBER]": phone,
        "data[TEXT]": "Customer asks for a call back",
        "data[VOICE]": "ruinternalfemale",
        "data[CRM_ENTITY_TYPE]": "LEAD",
        "data[CRM_ENTITY_ID]": "15",
        "data[LINE_NUMBER]": "4930999",
        "ts": ts,
        "auth[domain]": DOMAIN,
        "auth[member_id]": MEMBER_ID,
        "auth[application_token]": token,
    }


def app_install(new_token: str, *, member_id: str = MEMBER_ID) -> dict[str, str]:
    return {
        "event": "ONAPPINSTALL",
        "data[VERSION]": "1",
        "data[ACTIVE]": "Y",
        "data[INSTALLED]": "Y",
        "data[LANGUAGE_ID]": "en",
        "ts": "1732790000",
        "auth[access_token]": "access-abcdef123456",
        "auth[expires_in]": "3600",
        "auth[scope]": "crm,telephony,user",
        "auth[domain]": DOMAIN,
        "auth[server_endpoint]": "https://oauth.bitrix.info/rest/",
        "auth[status]": "L",
        "auth[client_endpoint]": f"https://{DOMAIN}/rest/",
        "auth[member_id]": member_id,
        "auth[refresh_token]": "refresh-abcdef123456",
        "auth[application_token]": new_token,
    }


async def start_bridge(*, token: str | None = TOKEN, member_id: str | None = MEMBER_ID, domain: str | None = DOMAIN,
                       callback_target: str | None = None, callback_user_id: int | None = 9,
                       rate: float = 1000.0, burst: float = 1000.0,
                       ) -> tuple[Bridge, WebServer]:
    clock = FakeClock()
    pbx, directory, sink = FakePbx(), FakeDirectory({7: "101", 9: "109", 11: "201"}), FakeSink()
    callbacks, router = FakeCallbacks(), FakeRouter({"201": "pbx2"})
    holder = TokenHolder(token)
    installer = FakeInstaller()
    dispatcher = EventDispatcher(
        click_to_call=ClickToCall(pbx=pbx, directory=directory, sink=sink, callbacks=callbacks, router=router,
                                  callback_target=callback_target, callback_user_id=callback_user_id,
                                  clock=lambda: FIXED_NOW),
        verifier=EventVerifier(expected_token=holder, member_id=member_id, domain=domain),
        installer=installer,
        public_url="https://bridge.example.com/bitrix24/events",
        remember_token=holder,
        dedup=RecentKeys(30.0, clock=clock),
    )
    health: dict[str, Health] = {"ami": Health(ok=True, detail="logged in"), "bitrix24": Health(ok=True)}
    app = create_app(HttpSettings(), dispatcher=dispatcher, health=lambda: health,
                     metrics_renderer=lambda: (b"bridge_up 1\n", "text/plain; version=0.0.4; charset=utf-8"),
                     limiter=RateLimiter(rate, burst, clock=clock))
    server = WebServer(app, host="127.0.0.1", port=0, shutdown_timeout=2.0)
    await server.__aenter__()
    session = aiohttp.ClientSession()
    bridge = Bridge(url=f"http://127.0.0.1:{server.port}", http=session, dispatcher=dispatcher, pbx=pbx,
                    directory=directory, sink=sink, callbacks=callbacks, installer=installer, router=router,
                    clock=clock, health=health)
    return bridge, server


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    b, server = await start_bridge()
    try:
        yield b
    finally:
        await b.http.close()
        await server.__aexit__(None, None, None)


def failures(sink: FakeSink) -> list[CallEnded]:
    return [e for e in sink.events if isinstance(e, CallEnded)]


# ---------------------------------------------------------------------------------------------------- click-to-call


async def test_valid_click_to_call_originates_exactly_once(bridge: Bridge) -> None:
    resp = await bridge.post(call_start())
    assert resp.status == 200
    await bridge.settle()
    assert len(bridge.pbx.requests) == 1
    request = bridge.pbx.requests[0]
    assert (request.extension, request.number, request.crm_call_id) == ("101", "+74951234567", CALL_ID)
    assert request.timeout_seconds == 30
    assert bridge.sink.events == []


async def test_number_as_clicked_is_used_when_international_form_is_absent(bridge: Bridge) -> None:
    resp = await bridge.post(call_start(international=None, phone="8 (495) 123-45-67"))
    assert resp.status == 200
    await bridge.settle()
    assert [r.number for r in bridge.pbx.requests] == ["84951234567"]


async def test_repeat_of_the_same_call_id_within_30s_is_ignored(bridge: Bridge) -> None:
    assert (await bridge.post(call_start())).status == 200
    bridge.clock.now += 29
    resp = await bridge.post(call_start())
    assert resp.status == 200
    await bridge.settle()
    assert len(bridge.pbx.requests) == 1
    bridge.clock.now += 2  # 31 s after the first one: a new request again
    assert (await bridge.post(call_start())).status == 200
    await bridge.settle()
    assert len(bridge.pbx.requests) == 2


async def test_duplicate_answer_says_duplicate(bridge: Bridge) -> None:
    await bridge.post(call_start())
    async with bridge.http.post(f"{bridge.url}/bitrix24/events", data=call_start()) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "duplicate"


async def test_unknown_user_finishes_the_crm_call_with_a_reason(bridge: Bridge) -> None:
    assert (await bridge.post(call_start(user_id="77"))).status == 200
    await bridge.settle()
    assert bridge.pbx.requests == []
    started = [e for e in bridge.sink.events if isinstance(e, CallStarted)]
    ended = failures(bridge.sink)
    assert len(started) == 1
    assert len(ended) == 1
    assert started[0].crm_call_id == CALL_ID
    assert started[0].direction is Direction.OUTBOUND
    record = ended[0].call
    assert record.crm_call_id == CALL_ID
    assert record.disposition is Disposition.FAILED
    assert record.direction is Direction.OUTBOUND
    assert record.failure_reason == "no extension for Bitrix24 user 77"
    assert record.crm_user_id == 77  # the finish goes to the user who clicked
    assert record.external_number == "+74951234567"
    assert started[0].call_id == ended[0].call_id
    assert bridge.sink.events.index(started[0]) < bridge.sink.events.index(ended[0])


async def test_originate_refused_finishes_with_the_pbx_reason(bridge: Bridge) -> None:
    bridge.pbx.refuse_with = "Extension does not exist."
    assert (await bridge.post(call_start())).status == 200
    await bridge.settle()
    ended = failures(bridge.sink)
    assert len(ended) == 1
    assert ended[0].call.failure_reason == "Extension does not exist."
    assert ended[0].call.agent == "101"
    assert ended[0].call.crm_call_id == CALL_ID


async def test_agent_on_another_site_is_published_not_originated(bridge: Bridge) -> None:
    assert (await bridge.post(call_start(user_id="11"))).status == 200
    await bridge.settle()
    assert bridge.pbx.requests == []
    assert [(site, r.extension, r.crm_call_id) for site, r in bridge.router.published] == [("pbx2", "201", CALL_ID)]


# --------------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("fields", "error_id"),
    [
        (call_start(token="0" * 32), "bad_application_token"),
        (call_start(token=None), "bad_application_token"),
        (call_start(token=""), "bad_application_token"),
        (call_start(token=TOKEN[:-1]), "bad_application_token"),
        (call_start(token="ключ-не-тот"), "bad_application_token"),
        (call_start(member_id="ffffffffffffffffffffffffffffffff"), "wrong_portal"),
        (call_start(domain="evil.bitrix24.com"), "wrong_portal"),
    ],
)
async def test_wrong_or_missing_credentials_are_401_and_nothing_happens(
    bridge: Bridge, fields: dict[str, str], error_id: str
) -> None:
    async with bridge.http.post(f"{bridge.url}/bitrix24/events", data=fields) as resp:
        assert resp.status == 401
        body = await resp.json()
    assert body["error_id"] == error_id
    assert TOKEN not in str(body)
    await bridge.settle()
    assert bridge.pbx.requests == []
    assert bridge.sink.events == []


async def test_without_any_known_token_every_event_is_refused() -> None:
    b, server = await start_bridge(token=None)
    try:
        resp = await b.post(call_start())
        assert resp.status == 401
        await b.settle()
        assert b.pbx.requests == []
    finally:
        await b.http.close()
        await server.__aexit__(None, None, None)


async def test_body_over_64kb_is_413(bridge: Bridge) -> None:
    fields = call_start()
    fields["data[PADDING]"] = "x" * (64 * 1024)
    resp = await bridge.post(fields)
    assert resp.status == 413
    assert bridge.pbx.requests == []


async def test_chunked_body_over_64kb_is_413(bridge: Bridge) -> None:
    payload = urlencode(call_start()).encode() + b"&pad=" + b"x" * (70 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 8192):
            yield payload[i:i + 8192]

    async with bridge.http.post(f"{bridge.url}/bitrix24/events", data=chunks(),
                                headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
        assert resp.status == 413
    await bridge.settle()
    assert bridge.pbx.requests == []


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"", "application/x-www-form-urlencoded", 400),
        (b"event=ONEXTERNALCALLSTART", "application/x-www-form-urlencoded", 401),
        (b"data%5BCALL_ID%5D=x", "application/x-www-form-urlencoded", 400),
        (b"event=%FF%FE", "application/x-www-form-urlencoded", 400),
        (b"\xff\xfe\x00garbage", "application/x-www-form-urlencoded", 400),
        (b"event=ONEXTERNALCALLSTART&event=ONAPPINSTALL", "application/x-www-form-urlencoded", 400),
        (b"data=1&data%5BCALL_ID%5D=2&event=X", "application/x-www-form-urlencoded", 400),
        (b"a[b][c][d][e][f]=1&event=X", "application/x-www-form-urlencoded", 400),
        (b"x%5B%5D=1&event=X", "application/x-www-form-urlencoded", 400),
        (b"&".join(b"f%d=1" % i for i in range(300)), "application/x-www-form-urlencoded", 400),
        (b'{"event": "ONEXTERNALCALLSTART"}', "application/json", 415),
        (b"event=ONEXTERNALCALLSTART", "text/plain", 415),
        (b"--b\r\nContent-Disposition: form-data; name=\"event\"\r\n\r\nX\r\n--b--", "multipart/form-data; boundary=b",
         415),
    ],
)
async def test_malformed_bodies_are_refused_without_a_5xx(bridge: Bridge, body: bytes, content_type: str,
                                                         status: int) -> None:
    got, payload = await bridge.post_raw(body, content_type)
    assert got == status
    assert payload is not None and "error_id" in payload
    assert bridge.pbx.requests == []


@pytest.mark.parametrize(
    "fields_change",
    [
        {"data[CALL_ID]": ""},
        {"data[CALL_ID]": "externalCall.x\r\nAction: Command"},
        {"data[USER_ID]": "seven"},
        {"data[USER_ID]": "0"},
        {"data[USER_ID]": ""},
        {"data[CRM_ENTITY_ID]": "42; DROP"},
    ],
)
async def test_missing_or_malformed_fields_are_400(bridge: Bridge, fields_change: dict[str, str]) -> None:
    fields = call_start()
    fields.update(fields_change)
    resp = await bridge.post(fields)
    assert resp.status == 400
    await bridge.settle()
    assert bridge.pbx.requests == []


HOSTILE_NUMBERS = [
    "123\r\nAction: Command",
    "123\nAction: Originate",
    "74951234567&PJSIP/evil",
    "74951234567,1,Hangup",
    "74951234567|9",
    "74951234567/evil",
    "74951234567@from-internal",
    "74951234567;x",
    "7495abc",
    "١٢٣٤٥٦٧",
    "１２３４５６７",
    "1" * 25,
    "12",
]


@pytest.mark.parametrize("number", HOSTILE_NUMBERS)
async def test_hostile_phone_numbers_are_400_and_never_reach_the_pbx(bridge: Bridge, number: str) -> None:
    variants = (call_start("externalCall.hostile1.1", international=number),
                call_start("externalCall.hostile2.1", international=None, phone=number))
    for fields in variants:
        resp = await bridge.post(fields)
        assert resp.status == 400
    await bridge.settle()
    assert bridge.pbx.requests == []
    # Bitrix24 had registered those calls: each is finished as failed, so none hangs open in the CRM.
    ended = failures(bridge.sink)
    assert sorted(e.call.crm_call_id or "" for e in ended) == ["externalCall.hostile1.1", "externalCall.hostile2.1"]
    assert all(e.call.disposition is Disposition.FAILED and e.call.failure_reason for e in ended)
    assert all("Action" not in (e.call.failure_reason or "") for e in ended)


async def test_empty_phone_number_is_400(bridge: Bridge) -> None:
    resp = await bridge.post(call_start(international="", phone=""))
    assert resp.status == 400
    await bridge.settle()
    assert bridge.pbx.requests == []


async def test_unknown_event_is_200_and_ignored(bridge: Bridge) -> None:
    fields = {"event": "ONCRMLEADADD", "data[FIELDS][ID]": "5", "auth[application_token]": TOKEN,
              "auth[member_id]": MEMBER_ID, "auth[domain]": DOMAIN}
    async with bridge.http.post(f"{bridge.url}/bitrix24/events", data=fields) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ignored"
    await bridge.settle()
    assert bridge.pbx.requests == []
    assert bridge.sink.events == []


async def test_get_on_the_event_path_is_405_json(bridge: Bridge) -> None:
    async with bridge.http.get(f"{bridge.url}/bitrix24/events") as resp:
        assert resp.status == 405
        assert (await resp.json())["error_id"] == "method_not_allowed"


async def test_rate_limit_per_address_is_429() -> None:
    b, server = await start_bridge(rate=1.0, burst=3.0)
    try:
        statuses = [(await b.post({"event": "PING", "auth[application_token]": TOKEN,
                                   "auth[member_id]": MEMBER_ID, "auth[domain]": DOMAIN})).status for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        async with b.http.post(f"{b.url}/bitrix24/events", data=call_start()) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
        b.clock.now += 1.0  # one token back
        assert (await b.post(call_start())).status == 200
        await b.settle()
        assert len(b.pbx.requests) == 1
    finally:
        await b.http.close()
        await server.__aexit__(None, None, None)


# -------------------------------------------------------------------------------------------------------- callback


async def test_callback_registers_then_rings_the_callback_target() -> None:
    b, server = await start_bridge(callback_target="400")
    try:
        assert (await b.post(callback_start())).status == 200
        await b.settle()
        assert b.callbacks.registered == [("+4930123456", "4930999", "LEAD", 15, 9)]
        assert [(r.extension, r.number, r.crm_call_id) for r in b.pbx.requests] == [
            ("400", "+4930123456", "externalCall.callback1.1732790000")]
        # The same delivery again (same ts) is a duplicate; a new request later is not.
        assert (await b.post(callback_start())).status == 200
        assert (await b.post(callback_start(ts="1732790200"))).status == 200
        await b.settle()
        assert len(b.callbacks.registered) == 2
    finally:
        await b.http.close()
        await server.__aexit__(None, None, None)


async def test_callback_without_target_rings_the_responsible_user(bridge: Bridge) -> None:
    assert (await bridge.post(callback_start())).status == 200
    await bridge.settle()
    assert [r.extension for r in bridge.pbx.requests] == ["109"]


async def test_callback_originate_refused_finishes_the_registered_call(bridge: Bridge) -> None:
    bridge.pbx.refuse_with = "Channel unavailable"
    assert (await bridge.post(callback_start())).status == 200
    await bridge.settle()
    ended = failures(bridge.sink)
    assert [(e.call.crm_call_id, e.call.failure_reason) for e in ended] == [
        ("externalCall.callback1.1732790000", "Channel unavailable")]


async def test_callback_register_failure_places_no_call(bridge: Bridge) -> None:
    bridge.callbacks.fail = True
    assert (await bridge.post(callback_start())).status == 200
    await bridge.settle()
    assert bridge.pbx.requests == []


async def test_callback_with_hostile_number_is_400(bridge: Bridge) -> None:
    assert (await bridge.post(callback_start(phone="123\r\nAction: Command"))).status == 400
    await bridge.settle()
    assert bridge.callbacks.registered == []
    assert bridge.pbx.requests == []


async def test_callback_with_wrong_token_is_401(bridge: Bridge) -> None:
    assert (await bridge.post(callback_start(token="f" * 32))).status == 401
    await bridge.settle()
    assert bridge.callbacks.registered == []


# --------------------------------------------------------------------------------------------------------- install


async def test_install_stores_tokens_binds_events_and_switches_the_token(bridge: Bridge) -> None:
    new_token = "9" * 32
    assert (await bridge.post(app_install(new_token))).status == 200
    await bridge.settle()
    assert len(bridge.installer.installed) == 1
    payload = bridge.installer.installed[0]
    assert payload["auth[access_token]"] == "access-abcdef123456"
    assert payload["auth[refresh_token]"] == "refresh-abcdef123456"
    assert bridge.installer.bound == ["https://bridge.example.com/bitrix24/events"]
    # The install's application_token is now the one events must carry.
    assert (await bridge.post(call_start(token=TOKEN))).status == 401
    assert (await bridge.post(call_start(token=new_token))).status == 200
    await bridge.settle()
    assert len(bridge.pbx.requests) == 1


async def test_install_from_another_portal_is_refused(bridge: Bridge) -> None:
    assert (await bridge.post(app_install("8" * 32, member_id="0" * 32))).status == 401
    await bridge.settle()
    assert bridge.installer.installed == []


async def test_unpinned_reinstall_cannot_replace_a_known_token() -> None:
    b, server = await start_bridge(member_id=None, domain=None)
    try:
        assert (await b.post(app_install("8" * 32))).status == 401
        await b.settle()
        assert b.installer.installed == []
        assert (await b.post(call_start())).status == 200  # the old token still works
    finally:
        await b.http.close()
        await server.__aexit__(None, None, None)


async def test_first_install_is_trusted_when_nothing_is_known() -> None:
    b, server = await start_bridge(token=None, member_id=None, domain=None)
    try:
        assert (await b.post(app_install("7" * 32))).status == 200
        await b.settle()
        assert len(b.installer.installed) == 1
        assert (await b.post(call_start(token="7" * 32))).status == 200
    finally:
        await b.http.close()
        await server.__aexit__(None, None, None)


async def test_install_without_application_token_is_400(bridge: Bridge) -> None:
    fields = app_install("x")
    del fields["auth[application_token]"]
    assert (await bridge.post(fields)).status == 400
    await bridge.settle()
    assert bridge.installer.installed == []


# ---------------------------------------------------------------------------------------------------------- health


async def test_healthz_is_200(bridge: Bridge) -> None:
    async with bridge.http.get(f"{bridge.url}/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_readyz_follows_the_parts(bridge: Bridge) -> None:
    async with bridge.http.get(f"{bridge.url}/readyz") as resp:
        assert resp.status == 200
        body = await resp.json()
        assert body["status"] == "ready"
        assert body["checks"]["ami"] == {"ok": True, "detail": "logged in"}
    bridge.health["ami"] = Health(ok=False, detail="reconnecting", extra={"since": FIXED_NOW})
    async with bridge.http.get(f"{bridge.url}/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
        assert body["status"] == "not_ready"
        assert body["checks"]["ami"]["ok"] is False
        assert body["checks"]["ami"]["detail"] == "reconnecting"
        assert body["checks"]["bitrix24"]["ok"] is True


async def test_metrics_are_served_with_their_content_type(bridge: Bridge) -> None:
    async with bridge.http.get(f"{bridge.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert await resp.read() == b"bridge_up 1\n"


async def test_unknown_path_is_404_json(bridge: Bridge) -> None:
    async with bridge.http.get(f"{bridge.url}/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["error_id"] == "not_found"


# ------------------------------------------------------------------------------------------------- wiring + offline


async def test_from_config_wiring_and_offline_poller() -> None:
    """from_config: configured token checked; the offline poller feeds the same logic (no token needed there)."""
    pbx, sink = FakePbx(), FakeSink()
    http = HttpSettings(application_token=TOKEN, offline_poll_seconds=0.01)
    dispatcher = EventDispatcher.from_config(http, Bitrix24Settings(member_id=MEMBER_ID), OriginateSettings(),
                                             pbx=pbx, directory=FakeDirectory({7: "101"}), sink=sink)
    queue: list[list[Mapping[str, str]]] = [
        [dict(call_start(token=None, call_id="externalCall.off1.1")), {"event": "ONEXTERNALCALLSTART"},
         dict(call_start(token=None, call_id="externalCall.off2.1", phone="1\n2", international=None))],
    ]

    class Source:
        async def fetch_offline_events(self) -> list[Mapping[str, str]]:
            if not queue:
                raise RuntimeError("portal down")  # a failing fetch must not stop the poller
            return queue.pop()

    poller = OfflineEventPoller(dispatcher, Source(), interval_seconds=0.01)
    async with poller:
        while poller.polls < 3:
            await asyncio.sleep(0.01)
    await dispatcher.tasks.wait_idle()
    assert [r.crm_call_id for r in pbx.requests] == ["externalCall.off1.1"]
    assert [e.call.crm_call_id for e in failures(sink)] == ["externalCall.off2.1"]


async def test_web_server_refuses_reuse() -> None:
    b, server = await start_bridge()
    await b.http.close()
    await server.__aexit__(None, None, None)
    with pytest.raises(RuntimeError):
        await server.__aenter__()


# ------------------------------------------------------------------------------------------------------------ fuzz

_KEYS = st.sampled_from([
    "event", "ts", "data[CALL_ID]", "data[USER_ID]", "data[PHONE_NUMBER]", "data[PHONE_NUMBER_INTERNATIONAL]",
    "data[LINE_NUMBER]", "data[CRM_ENTITY_ID]", "auth[application_token]", "auth[member_id]", "auth[domain]",
    "data", "auth", "data[CALL_ID][x]", "data[]", "a[b][c][d][e][f]",
]) | st.text(max_size=20)
_VALUES = st.sampled_from([
    "ONEXTERNALCALLSTART", "ONEXTERNALCALLBACKSTART", "ONAPPINSTALL", "7", "101", CALL_ID, "+74951234567",
    MEMBER_ID, DOMAIN, "0" * 32, "123\r\nAction: Command", "", "ONCRMLEADADD",
]) | st.text(max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(_KEYS, _VALUES), max_size=14), raw=st.binary(max_size=200), use_raw=st.booleans())
async def test_fuzzed_bodies_never_5xx_and_never_originate_without_the_token(
    bridge: Bridge, pairs: list[tuple[str, str]], raw: bytes, use_raw: bool
) -> None:
    before = len(bridge.pbx.requests)
    body = raw if use_raw else urlencode(pairs).encode()
    status, payload = await bridge.post_raw(body)
    assert status < 500, payload
    await bridge.settle()
    if len(bridge.pbx.requests) > before:
        assert not use_raw or TOKEN.encode() in raw
        assert ("auth[application_token]", TOKEN) in pairs or use_raw
        assert status == 200


_FIELD_NAMES = sorted(call_start())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.dictionaries(st.sampled_from(_FIELD_NAMES), _VALUES, max_size=4),
    dropped=st.sets(st.sampled_from(_FIELD_NAMES), max_size=3),
    call_no=st.integers(min_value=0, max_value=10**6),
)
async def test_mutated_click_to_call_events_never_5xx_and_only_dial_safe_numbers(
    bridge: Bridge, changes: dict[str, str], dropped: set[str], call_no: int
) -> None:
    fields = call_start(call_id=f"externalCall.fuzz{call_no}.1")
    fields.update(changes)
    for name in dropped:
        fields.pop(name, None)
    before = len(bridge.pbx.requests)
    status, payload = await bridge.post_raw(urlencode(fields).encode())
    assert status < 500, payload
    await bridge.settle()
    new = bridge.pbx.requests[before:]
    if new:
        assert fields.get("auth[application_token]") == TOKEN
        assert fields.get("auth[member_id]") == MEMBER_ID
        assert status == 200
        for request in new:
            assert request.number.lstrip("+").isdigit() and request.number.isascii()
            assert request.extension == "101"
