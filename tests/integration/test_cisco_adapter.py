"""FinesseAdapter against the Finesse simulator over real TCP (XMPP) and HTTP (REST)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest

from bridge.config import Settings
from bridge.errors import ConfigError, OriginateError
from bridge.model import (
    AgentsRinging,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallStarted,
    CallTransferred,
    Direction,
    Disposition,
    OriginateRequest,
    RingStopped,
    TransferKind,
)
from bridge.pbx.base import PbxAdapter
from bridge.pbx.cisco.adapter import FinesseAdapter, FinesseAgent
from bridge.pbx.cisco.rest import Credentials, tls_context
from bridge.pbx.cisco.xmpp import XmppConfig
from bridge.sim import finesse_scenarios as scenario
from bridge.sim.finesse import FinesseSim, SimUser

AGENTS = [("agent1", "pw-one", "1001"), ("agent2", "pw-two", "1002"), ("agent3", "pw-three", "1003")]
CALLER = "+15557654321"
DID = "5551000"


class Collector:
    """Reads the adapter's event stream in the background; tests wait for what they expect."""

    def __init__(self, adapter: FinesseAdapter) -> None:
        self.events: list[CallEvent] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(adapter))

    async def _read(self, adapter: FinesseAdapter) -> None:
        async for event in adapter.events():
            self.events.append(event)
            self._changed.set()

    async def until(self, predicate: Callable[[list[CallEvent]], bool], timeout: float = 5.0) -> list[CallEvent]:
        async with asyncio.timeout(timeout):
            while not predicate(self.events):
                self._changed.clear()
                await self._changed.wait()
        return self.events

    async def ended(self, call_id: str | None = None, count: int = 1) -> list[CallEnded]:
        def done(events: list[CallEvent]) -> bool:
            return len(self._ends(events, call_id)) >= count
        return self._ends(await self.until(done), call_id)

    @staticmethod
    def _ends(events: list[CallEvent], call_id: str | None) -> list[CallEnded]:
        return [e for e in events if isinstance(e, CallEnded) and (call_id is None or e.call_id == call_id)]

    def of(self, call_id: str) -> list[CallEvent]:
        return [e for e in self.events if e.call_id == call_id]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _xmpp(sim: FinesseSim, **changes: Any) -> XmppConfig:
    base = XmppConfig(host="127.0.0.1", port=sim.xmpp_port, domain=sim.domain, pubsub_domain=f"pubsub.{sim.domain}",
                      tls="off", connect_timeout=2.0, ping_interval=0.5, ping_timeout=0.5, reconnect_min=0.02,
                      reconnect_max=0.1)
    return replace(base, **changes)


def _adapter(sim: FinesseSim, *, agents: list[FinesseAgent] | None = None, xmpp: XmppConfig | None = None,
             **kwargs: Any) -> FinesseAdapter:
    agents = agents or [FinesseAgent(u, e, p) for u, p, e in AGENTS]
    return FinesseAdapter(finesse_url=sim.rest_url, agents=agents, xmpp=xmpp or _xmpp(sim), orphan_grace=0.3,
                          tick_interval=0.02, **kwargs)


async def _ready(adapter: FinesseAdapter, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not adapter.health().ok:
            await asyncio.sleep(0.01)


@pytest.fixture
async def sim() -> AsyncIterator[FinesseSim]:
    users = [SimUser(u, p, e) for u, p, e in AGENTS] + [SimUser("admin", "pw-admin", admin=True)]
    async with FinesseSim(users=users) as simulator:
        yield simulator


@pytest.fixture
async def running(sim: FinesseSim) -> AsyncIterator[tuple[FinesseAdapter, Collector]]:
    adapter = _adapter(sim)
    async with adapter:
        await _ready(adapter)
        collector = Collector(adapter)
        yield adapter, collector
        await collector.close()


async def test_login_presence_and_initial_resync(sim: FinesseSim,
                                                 running: tuple[FinesseAdapter, Collector]) -> None:
    adapter, _ = running
    assert isinstance(adapter, PbxAdapter) and adapter.kind == "cisco"
    gets = [r for r in sim.requests if r.method == "GET"]
    assert sorted((r.path, r.user, r.status) for r in gets) == [
        (f"/finesse/api/User/{u}/Dialogs", u, 200) for u, _, _ in AGENTS]
    sent = [(user, stanza.tag.rsplit("}", 1)[-1]) for user, stanza in sim.stanzas]
    for user, _, _ in AGENTS:
        assert (user, "presence") in sent
    assert sim.xmpp.logins == 3
    health = adapter.health()
    assert health.extra["sessions"] == {u: "ready" for u, _, _ in AGENTS}


async def test_inbound_answered(sim: FinesseSim, running: tuple[FinesseAdapter, Collector]) -> None:
    adapter, events = running
    call_id = await scenario.inbound_answered(sim, caller=CALLER, dnis=DID, agent="1001", ring=4, talk=30)
    (end,) = await events.ended(call_id)
    kinds = [e.kind for e in events.of(call_id)]
    assert kinds == ["started", "ringing", "answered", "ended"]
    started = events.of(call_id)[0]
    assert isinstance(started, CallStarted)
    assert (started.direction, started.external_number, started.line) == (Direction.INBOUND, CALLER, DID)
    record = end.call
    assert (record.pbx, record.disposition, record.agent, record.talk_seconds, record.agents_rung) == (
        "cisco", Disposition.ANSWERED, "1001", 30, ("1001",))
    counters = adapter.health().extra  # what /metrics reads for every PBX kind
    assert counters["events_received"] >= 3
    assert (counters["dropped_events"], counters["reconnects"]) == (0, 0)


async def test_inbound_missed_seen_by_two_agents_is_one_call(sim: FinesseSim,
                                                             running: tuple[FinesseAdapter, Collector]) -> None:
    _, events = running
    call_id = await scenario.inbound_missed(sim, caller=CALLER, dnis=DID, agents=["1001", "1002"], ring=12)
    (end,) = await events.ended(call_id)
    await asyncio.sleep(0.1)  # both agents' DELETEs have arrived by now; neither may start a second call
    assert [e.kind for e in events.events].count("started") == 1
    rung = {a for e in events.of(call_id) if isinstance(e, AgentsRinging) for a in e.agents}
    stopped = {e.agent for e in events.of(call_id) if isinstance(e, RingStopped)}
    assert rung == stopped == {"1001", "1002"}
    assert (end.call.disposition, end.call.agent, set(end.call.agents_rung)) == (Disposition.MISSED, None,
                                                                                 {"1001", "1002"})
    assert sim.published.count(("agent1", "DELETE", call_id)) == 1
    assert sim.published.count(("agent2", "DELETE", call_id)) == 1


@pytest.mark.parametrize(("answer", "cause", "disposition"), [
    (True, None, Disposition.ANSWERED),
    (False, None, Disposition.NO_ANSWER),
    (False, "BUSY", Disposition.BUSY),
])
async def test_outbound_from_the_phone(sim: FinesseSim, running: tuple[FinesseAdapter, Collector], answer: bool,
                                       cause: str | None, disposition: Disposition) -> None:
    _, events = running
    call_id = await scenario.outbound(sim, agent="1002", number="5553334444", answer=answer, cause=cause,
                                      ring=5, talk=20)
    (end,) = await events.ended(call_id)
    started = events.of(call_id)[0]
    assert isinstance(started, CallStarted)
    assert (started.direction, started.agent, started.external_number, started.crm_call_id) == (
        Direction.OUTBOUND, "1002", "5553334444", None)
    assert end.call.disposition is disposition
    assert end.call.talk_seconds == (20 if answer else 0)
    assert any(isinstance(e, CallAnswered) for e in events.of(call_id)) is answer


async def test_blind_transfer(sim: FinesseSim, running: tuple[FinesseAdapter, Collector]) -> None:
    _, events = running
    call_id = await scenario.blind_transfer(sim, caller=CALLER, dnis=DID, from_agent="1001", to_agent="1002")
    (end,) = await events.ended(call_id)
    (transfer,) = [e for e in events.of(call_id) if isinstance(e, CallTransferred)]
    assert (transfer.from_agent, transfer.to_agent, transfer.transfer_kind) == ("1001", "1002", TransferKind.BLIND)
    assert [e.kind for e in events.of(call_id)].count("answered") == 1
    assert (end.call.agent, end.call.disposition, [t.to_json() for t in end.call.transfers]) == (
        "1002", Disposition.ANSWERED, [{"from": "1001", "to": "1002", "kind": "blind"}])


async def test_consult_transfer(sim: FinesseSim, running: tuple[FinesseAdapter, Collector]) -> None:
    _, events = running
    call_id, consult_id = await scenario.consult_transfer(sim, caller=CALLER, dnis=DID, from_agent="1001",
                                                          to_agent="1003")
    (end,) = await events.ended(call_id)
    await asyncio.sleep(0.1)
    assert not events.of(consult_id)  # the consult leg is part of the customer's call, not a call of its own
    assert [e.kind for e in events.events].count("started") == 1
    assert end.call.transfers[0].kind is TransferKind.ATTENDED
    assert (end.call.agent, end.call.disposition) == ("1003", Disposition.ANSWERED)


async def test_click_to_call_carries_the_crm_call_id(sim: FinesseSim,
                                                     running: tuple[FinesseAdapter, Collector]) -> None:
    adapter, events = running
    await adapter.originate(OriginateRequest(request_id="req-1", extension="1002", number="+15553334444",
                                             crm_call_id="externalCall.abc"))
    dialog_id = await asyncio.wait_for(sim.made_calls.get(), 5)
    await scenario.connect_made_call(sim, dialog_id, number="15553334444", ring=3, talk=12)
    (end,) = await events.ended(dialog_id)
    started = events.of(dialog_id)[0]
    assert isinstance(started, CallStarted)
    assert (started.crm_call_id, started.agent, started.external_number) == ("externalCall.abc", "1002",
                                                                             "+15553334444")
    assert (end.call.crm_call_id, end.call.disposition, end.call.talk_seconds) == ("externalCall.abc",
                                                                                   Disposition.ANSWERED, 12)
    (post,) = [r for r in sim.requests if r.method == "POST"]
    assert (post.path, post.user, post.status) == ("/finesse/api/User/agent2/Dialogs", "agent2", 202)
    assert "<fromAddress>1002</fromAddress><toAddress>15553334444</toAddress>" in post.body
    assert "callvariables" not in post.body.lower()
    # The same request again (a retried delivery) does not dial twice.
    await adapter.originate(OriginateRequest(request_id="req-1", extension="1002", number="+15553334444",
                                             crm_call_id="externalCall.abc"))
    assert len([r for r in sim.requests if r.method == "POST"]) == 1


async def test_click_to_call_sends_the_call_variable_and_dial_prefix(sim: FinesseSim) -> None:
    adapter = _adapter(sim, crm_call_id_variable="callVariable10", dial_prefix="9")
    async with adapter:
        await _ready(adapter)
        events = Collector(adapter)
        await adapter.originate(OriginateRequest(request_id="r2", extension="1001", number="+4930123456",
                                                 crm_call_id="CRM-77"))
        dialog_id = await asyncio.wait_for(sim.made_calls.get(), 5)
        assert sim.dialogs[dialog_id].variables == [("callVariable10", "CRM-77")]
        assert sim.dialogs[dialog_id].to_address == "94930123456"
        await scenario.connect_made_call(sim, dialog_id, number="94930123456", answer=False)
        (end,) = await events.ended(dialog_id)
        assert (end.call.crm_call_id, end.call.disposition) == ("CRM-77", Disposition.NO_ANSWER)
        await events.close()


async def test_click_to_call_refusals(sim: FinesseSim, running: tuple[FinesseAdapter, Collector]) -> None:
    adapter, _ = running
    sim.fail_next_request(400, "Invalid Destination", "CF_INVALID_DESTINATION")
    with pytest.raises(OriginateError) as refused:
        await adapter.originate(OriginateRequest(request_id="a", extension="1001", number="+15553334444"))
    assert refused.value.reason == "CF_INVALID_DESTINATION"
    with pytest.raises(OriginateError) as unknown:
        await adapter.originate(OriginateRequest(request_id="b", extension="4242", number="+15553334444"))
    assert unknown.value.reason == "unknown_extension"
    for bad in ("+1555<x>", "12; DROP", "+"):
        with pytest.raises(OriginateError) as invalid:
            await adapter.originate(OriginateRequest(request_id=f"c{bad}", extension="1001", number=bad))
        assert invalid.value.reason == "invalid_number"
    assert len([r for r in sim.requests if r.method == "POST"]) == 1  # only the first one reached Finesse
    assert adapter.health().extra["pending_originates"] == 0


async def test_click_to_call_with_a_wrong_password_is_refused(sim: FinesseSim) -> None:
    agents = [FinesseAgent("agent1", "1001", "pw-one"), FinesseAgent("agent2", "1002", "wrong")]
    adapter = _adapter(sim, agents=agents)
    async with adapter:
        with pytest.raises(OriginateError) as refused:
            await adapter.originate(OriginateRequest(request_id="x", extension="1002", number="+15553334444"))
        assert "401" in str(refused.value)
        await asyncio.sleep(0.3)
        health = adapter.health()
        assert not health.ok
        assert health.extra["sessions"]["agent1"] == "ready"
        assert "SASL" in health.extra["errors"]["agent2"]


async def test_click_to_call_cti_error_finishes_the_crm_call(sim: FinesseSim,
                                                             running: tuple[FinesseAdapter, Collector]) -> None:
    adapter, events = running
    sim.next_make_call_cti_error = ("34", "CF_RESOURCE_OUT_OF_SERVICE")
    await adapter.originate(OriginateRequest(request_id="req-9", extension="1003", number="+15553334444",
                                             crm_call_id="CRM-9"))
    (end,) = await events.ended("c2c-req-9")
    assert (end.call.crm_call_id, end.call.disposition, end.call.failure_reason) == (
        "CRM-9", Disposition.FAILED, "CF_RESOURCE_OUT_OF_SERVICE")


async def test_link_loss_then_resync_closes_a_call_that_ended_meanwhile(
        sim: FinesseSim, running: tuple[FinesseAdapter, Collector]) -> None:
    adapter, events = running
    talking = sim.create_dialog(from_address=CALLER, to_address=DID, call_type="ACD_IN", state="ACTIVE", dnis=DID,
                                participants={CALLER: "ACTIVE", "1001": "ACTIVE"})
    await events.until(lambda ev: any(isinstance(e, CallAnswered) and e.call_id == talking for e in ev))
    gets_before = len([r for r in sim.requests if r.method == "GET"])

    sim.refuse_xmpp = True
    await sim.drop_links()
    async with asyncio.timeout(5):
        while adapter.health().ok:
            await asyncio.sleep(0.01)
    sim.advance(60)
    sim.end_dialog(talking)  # nobody is connected to hear about it
    during = sim.create_dialog(from_address="+15550000009", to_address=DID, call_type="ACD_IN", state="ALERTING",
                               dnis=DID, participants={"+15550000009": "ACTIVE", "1002": "ALERTING"})
    sim.refuse_xmpp = False

    (end,) = await events.ended(talking)
    assert end.call.disposition is Disposition.ANSWERED
    assert end.call.ended_at > end.call.answered_at  # type: ignore[operator]
    await events.until(lambda ev: any(isinstance(e, AgentsRinging) and e.call_id == during for e in ev))
    await _ready(adapter)
    assert len([r for r in sim.requests if r.method == "GET"]) >= gets_before + 3
    # Live again: the call that started during the outage goes on normally.
    sim.set_participant(during, "1002", "ACTIVE", dialog_state="ACTIVE")
    sim.end_dialog(during)
    (late,) = await events.ended(during)
    assert (late.call.disposition, late.call.agent) == (Disposition.ANSWERED, "1002")


async def test_events_stay_in_order_and_end_when_closed(sim: FinesseSim) -> None:
    adapter = _adapter(sim)
    seen: list[CallEvent] = []
    async with adapter:
        await _ready(adapter)
        reader = asyncio.create_task(_drain(adapter, seen))
        for n in range(5):
            await scenario.inbound_answered(sim, caller=f"+1555000000{n}", dnis=DID, agent=AGENTS[n % 3][2])
        async with asyncio.timeout(5):
            while sum(isinstance(e, CallEnded) for e in seen) < 5:
                await asyncio.sleep(0.01)
    async with asyncio.timeout(2):
        await reader  # the stream ends once the adapter is closed
    for call_id in {e.call_id for e in seen}:
        assert [e.kind for e in seen if e.call_id == call_id] == ["started", "ringing", "answered", "ended"]
    assert not adapter.health().ok
    with pytest.raises(OriginateError):
        await adapter.originate(OriginateRequest(request_id="late", extension="1001", number="+15553334444"))


async def _drain(adapter: FinesseAdapter, into: list[CallEvent]) -> None:
    async for event in adapter.events():
        into.append(event)


async def test_admin_mode_subscribes_explicitly(sim: FinesseSim) -> None:
    agents = [FinesseAgent(u, e) for u, _, e in AGENTS[:2]]
    adapter = _adapter(sim, agents=agents, auth_mode="admin", admin=Credentials("admin", "pw-admin"))
    async with adapter:
        await _ready(adapter)
        events = Collector(adapter)
        subscribed = [s.find("{http://jabber.org/protocol/pubsub}pubsub") for u, s in sim.stanzas if u == "admin"]
        nodes = sorted(child.get("node", "") for p in subscribed if p is not None for child in p)
        assert nodes == ["/finesse/api/User/agent1/Dialogs", "/finesse/api/User/agent2/Dialogs"]
        assert [r.user for r in sim.requests if r.method == "GET"] == ["admin", "admin"]
        call_id = await scenario.inbound_answered(sim, caller=CALLER, dnis=DID, agent="1002")
        (end,) = await events.ended(call_id)
        assert end.call.agent == "1002"
        with pytest.raises(OriginateError) as refused:  # an administrator cannot dial for an agent
            await adapter.originate(OriginateRequest(request_id="z", extension="1001", number="+15553334444"))
        assert refused.value.reason == "no_credentials"
        await events.close()
    unsubscribed = [s for u, s in sim.stanzas if u == "admin" and b"unsubscribe" in _xml(s)]
    assert len(unsubscribed) == 2  # explicit subscriptions are removed on the way out


def _xml(element: ET.Element) -> bytes:
    return ET.tostring(element)


async def test_xmpp_domain_comes_from_systeminfo_when_not_configured(sim: FinesseSim) -> None:
    wrong = _xmpp(sim, domain="finesse.example.com", pubsub_domain="pubsub.finesse.example.com")
    adapter = _adapter(sim, xmpp=wrong, discover_domain=True)
    async with adapter:
        await _ready(adapter)
    assert ("GET", "/finesse/api/SystemInfo", 200) in [(r.method, r.path, r.status) for r in sim.requests]
    # Without discovery the wrong domain is refused by the server (host-unknown) and nothing becomes ready.
    stuck = _adapter(sim, xmpp=wrong)
    async with stuck:
        await asyncio.sleep(0.2)
        assert not stuck.health().ok
        assert all("host-unknown" in (e or "") for e in stuck.health().extra["errors"].values())


async def test_agent_answers_server_pings_and_refuses_garbage(sim: FinesseSim,
                                                              running: tuple[FinesseAdapter, Collector]) -> None:
    adapter, _ = running
    pongs = [s for u, s in sim.stanzas if s.get("type") == "result" and (s.get("id") or "").startswith("srvping")]
    assert len(pongs) == 3
    # A hostile server-side stanza (DTD inside the stream) kills that link only; the session comes back.
    logins = sim.xmpp.logins
    assert sim.send_raw("agent1", b"<!DOCTYPE x [<!ENTITY a 'b'>]><message>&a;</message>") == 1
    async with asyncio.timeout(5):
        while sim.xmpp.logins == logins:
            await asyncio.sleep(0.01)
    await _ready(adapter)


async def test_notifications_not_from_the_pubsub_service_are_ignored(
        sim: FinesseSim, running: tuple[FinesseAdapter, Collector]) -> None:
    _, events = running
    fake = ("<Update><data><dialogs><Dialog><id>666</id><state>ALERTING</state><fromAddress>+1999</fromAddress>"
            "<toAddress>5551000</toAddress><participants><Participant><mediaAddress>1001</mediaAddress>"
            "<state>ALERTING</state></Participant></participants></Dialog></dialogs></data><event>POST</event>"
            "</Update>")
    for sender in ("agent2@finesse.sim/desk", "pubsub.evil.example", ""):
        stanza = (f"<message from='{sender}'><event xmlns='http://jabber.org/protocol/pubsub#event'>"
                  "<items node='/finesse/api/User/agent1/Dialogs'><item><notification "
                  f"xmlns='http://jabber.org/protocol/pubsub'>{escape(fake)}</notification></item></items>"
                  "</event></message>")
        sim.send_raw("agent1", stanza.encode())
    # A genuine call afterwards is the first thing the adapter reports.
    call_id = await scenario.inbound_answered(sim, caller=CALLER, dnis=DID, agent="1001")
    await events.ended(call_id)
    assert {e.call_id for e in events.events} == {call_id}


def test_from_config_validates() -> None:
    base = {"finesse_url": "https://finesse.example.com:8445"}
    with pytest.raises(ConfigError, match=r"cisco\.agents"):
        FinesseAdapter.from_config(Settings(cisco=base))
    with pytest.raises(ConfigError, match="password"):
        FinesseAdapter.from_config(Settings(cisco={**base, "agents": [{"user_id": "a", "extension": "1"}]}))
    adapter = FinesseAdapter.from_config(Settings(cisco={
        **base, "tls": "direct", "xmpp_port": 5223,
        "agents": [{"user_id": "a", "extension": "1001", "password": "s3cret"}]}))
    assert adapter.kind == "cisco"
    with pytest.raises(ValueError, match="admin"):
        Settings(cisco={**base, "auth_mode": "admin"})


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                        "-out", str(cert)], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")
    return cert, key


@pytest.mark.parametrize("mode", ["starttls", "direct"])
async def test_tls_with_certificate_verification(certificate: tuple[Path, Path], mode: str) -> None:
    cert, key = certificate
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    users = [SimUser(u, p, e) for u, p, e in AGENTS]
    async with FinesseSim(users=users, xmpp_tls=mode, xmpp_ssl=server) as tls_sim:  # type: ignore[arg-type]
        xmpp = _xmpp(tls_sim, tls=mode, ssl_context=tls_context(True, cert))
        adapter = _adapter(tls_sim, xmpp=xmpp)
        async with adapter:
            await _ready(adapter)
            events = Collector(adapter)
            call_id = await scenario.inbound_answered(tls_sim, caller=CALLER, dnis=DID, agent="1003")
            assert (await events.ended(call_id))[0].call.agent == "1003"
            await events.close()
        # Without the CA the certificate is refused and the sessions never become ready.
        untrusted = _adapter(tls_sim, xmpp=_xmpp(tls_sim, tls=mode, ssl_context=tls_context(True, None)))
        async with untrusted:
            await asyncio.sleep(0.3)
            assert not untrusted.health().ok
            assert any("SSL" in (err or "") or "certificate" in (err or "").lower()
                       for err in untrusted.health().extra["errors"].values())


async def test_plain_client_refuses_a_server_without_starttls(sim: FinesseSim) -> None:
    adapter = _adapter(sim, xmpp=_xmpp(sim, tls="starttls", ssl_context=tls_context(True, None)))
    async with adapter:
        await asyncio.sleep(0.2)
        assert not adapter.health().ok
        assert all("STARTTLS" in (e or "") for e in adapter.health().extra["errors"].values())
    assert not [s for u, s in sim.stanzas if s.tag.endswith("auth")]  # the password never went out in clear
