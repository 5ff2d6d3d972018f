"""AvayaAdapter against the AES DMCC simulator over real TCP (and TLS): calls, click-to-call, faults, resync."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bridge.config import AvayaSettings
from bridge.errors import OriginateError
from bridge.model import (
    CallAnswered,
    CallEnded,
    CallEvent,
    CallStarted,
    CallTransferred,
    Direction,
    Disposition,
    OriginateRequest,
    TransferKind,
)
from bridge.pbx.avaya.adapter import AvayaAdapter
from bridge.pbx.avaya.framing import EVENT_INVOKE_ID, encode_frame
from bridge.pbx.avaya.session import SessionConfig
from bridge.pbx.base import PbxAdapter
from bridge.sim import avaya_xml as X
from bridge.sim.avaya import AvayaSimulator

CUSTOMER = "5557654321"
STATIONS = ("201", "202", "203")
WAIT = 5.0


@pytest.fixture
async def sim() -> AsyncIterator[AvayaSimulator]:
    async with AvayaSimulator(stations=STATIONS, vdns=("5001",)) as s:
        yield s


def make_adapter(sim: AvayaSimulator, **overrides: Any) -> AvayaAdapter:
    session = SessionConfig(application_id="b24-test", username="bridge", password=overrides.pop("password", "secret"),
                            protocol_version=sim.protocol, session_duration=60, cleanup_delay=30, switch_name="CM")
    options: dict[str, Any] = {"host": "127.0.0.1", "port": sim.port, "session": session, "stations": STATIONS,
                               "vdns": ("5001",), "reconnect_min": 0.01, "reconnect_max": 0.05, "tick_interval": 0.02,
                               "orphan_grace": 0.2, "keepalive_interval": 30.0, "dial_prefix": "9"}
    options.update(overrides)
    return AvayaAdapter(**options)


class Events:
    """Collects an adapter's events in the background so tests can wait for what they expect."""

    def __init__(self, adapter: AvayaAdapter) -> None:
        self.items: list[CallEvent] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._pump(adapter))

    async def _pump(self, adapter: AvayaAdapter) -> None:
        async for event in adapter.events():
            self.items.append(event)
            self._changed.set()

    async def until(self, predicate: Callable[[list[CallEvent]], bool], timeout: float = WAIT) -> list[CallEvent]:
        async with asyncio.timeout(timeout):
            while not predicate(self.items):
                self._changed.clear()
                await self._changed.wait()
        return self.items

    async def ended(self, count: int = 1) -> list[CallEnded]:
        await self.until(lambda items: sum(isinstance(e, CallEnded) for e in items) >= count)
        return [e for e in self.items if isinstance(e, CallEnded)]

    def of(self, call_id: str) -> list[CallEvent]:
        return [e for e in self.items if e.call_id == call_id]

    async def close(self) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def running(sim: AvayaSimulator) -> AsyncIterator[tuple[AvayaAdapter, Events]]:
    async with make_adapter(sim) as adapter:
        async with asyncio.timeout(WAIT):
            await adapter.connected()
        events = Events(adapter)
        yield adapter, events
        await events.close()


async def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def kinds(events: list[CallEvent]) -> list[str]:
    return [e.kind for e in events]


# ---- session set-up -----------------------------------------------------------------------------------------------

async def test_session_start_device_ids_and_monitors(sim: AvayaSimulator,
                                                     running: tuple[AvayaAdapter, Events]) -> None:
    adapter, _ = running
    assert isinstance(adapter, PbxAdapter)
    start = sim.requests_named("StartApplicationSession")[0]
    assert start.fields["userName"] == "bridge" and start.fields["password"] == "secret"
    assert start.fields["sessionCleanupDelay"] == "30" and "sessionID" not in start.fields
    assert [r.fields["extension"] for r in sim.requests_named("GetDeviceId")] == [*STATIONS, "5001"]
    assert [r.fields["deviceObject"] for r in sim.requests_named("MonitorStart")] == [
        sim.device_id(n) for n in (*STATIONS, "5001")]
    health = adapter.health()
    assert health.ok and health.extra["monitors"] == 4


async def test_keepalive_resets_the_session_timer(sim: AvayaSimulator) -> None:
    async with make_adapter(sim, keepalive_interval=0.05) as adapter:
        await asyncio.wait_for(adapter.connected(), WAIT)
        resets = await sim.wait_requests("ResetApplicationSessionTimer", 2)
        session_id = next(iter(sim.sessions))
        assert {r.fields["sessionID"] for r in resets} == {session_id}
        assert adapter.links == 1


async def test_closing_stops_the_session_and_ends_the_event_stream(sim: AvayaSimulator) -> None:
    adapter = make_adapter(sim)
    async with adapter:
        await asyncio.wait_for(adapter.connected(), WAIT)
        stream = adapter.events()
    assert sim.requests_named("StopApplicationSession")
    assert [e async for e in stream] == []
    assert not adapter.health().ok
    with pytest.raises(RuntimeError):
        await adapter.__aenter__()


# ---- calls --------------------------------------------------------------------------------------------------------

async def test_inbound_answered(sim: AvayaSimulator, running: tuple[AvayaAdapter, Events]) -> None:
    adapter, events = running
    call = sim.new_call()
    await sim.ring(call, "201", calling=CUSTOMER, called="5551000")
    await sim.ring(call, "202", calling=CUSTOMER, called="5551000")
    await sim.answer(call, "202", calling=CUSTOMER, called="5551000")
    await sim.clear(call, "201")
    await sim.clear(call, CUSTOMER)
    [end] = await events.ended()
    assert kinds(events.items) == ["started", "ringing", "ringing", "answered", "ring_stopped", "ended"]
    started = events.items[0]
    assert isinstance(started, CallStarted)
    assert (started.call_id, started.direction, started.external_number, started.line) == (
        call.ucid, Direction.INBOUND, CUSTOMER, "5551000")
    rec = end.call
    assert (rec.pbx, rec.agent, rec.agents_rung, rec.disposition) == ("avaya", "202", ("201", "202"),
                                                                      Disposition.ANSWERED)
    counters = adapter.health().extra  # what /metrics reads for every PBX kind
    assert counters["events_received"] >= 5
    assert (counters["dropped_events"], counters["reconnects"]) == (0, 0)


async def test_inbound_missed_through_a_vdn(sim: AvayaSimulator, running: tuple[AvayaAdapter, Events]) -> None:
    _, events = running
    call = sim.new_call()
    await sim.ring(call, "5001", calling=CUSTOMER, called="5001", vdn="5001")
    await sim.divert(call, "5001", "201")
    await sim.ring(call, "201", calling=CUSTOMER, called="5001", vdn="5001")
    await sim.clear(call, CUSTOMER)
    [end] = await events.ended()
    assert kinds(events.items) == ["started", "ringing", "ring_stopped", "ended"]
    assert (end.call.disposition, end.call.line, end.call.agents_rung) == (Disposition.MISSED, "5001", ("201",))


async def test_outbound_answered_and_busy(sim: AvayaSimulator, running: tuple[AvayaAdapter, Events]) -> None:
    _, events = running
    call = await sim.originate("203", "95551234567")
    await sim.answer(call, "95551234567", calling="203", called="95551234567")
    await sim.clear(call, "203")
    [end] = await events.ended()
    assert (end.call.direction, end.call.external_number, end.call.agent, end.call.disposition) == (
        Direction.OUTBOUND, "5551234567", "203", Disposition.ANSWERED)

    busy = await sim.originate("201", "95550000001")
    await sim.fail(busy, "95550000001", cause="busy")
    await sim.clear(busy, "201")
    ends = await events.ended(2)
    assert (ends[1].call.disposition, ends[1].call.hangup_cause) == (Disposition.BUSY, 17)


async def test_attended_transfer(sim: AvayaSimulator, running: tuple[AvayaAdapter, Events]) -> None:
    _, events = running
    call = sim.new_call()
    await sim.ring(call, "201", calling=CUSTOMER, called="5551000")
    await sim.answer(call, "201", calling=CUSTOMER, called="5551000")
    await sim.hold(call, CUSTOMER)
    consult = await sim.originate("201", "202")
    await sim.answer(consult, "202", calling="201", called="202")
    await sim.transfer(call, consult, "201", "202")
    await sim.clear(call, CUSTOMER)
    ends = await events.ended(2)
    inbound = next(e for e in ends if e.call.direction is Direction.INBOUND)
    internal = next(e for e in ends if e.call.direction is Direction.INTERNAL)
    transfers = [e for e in events.items if isinstance(e, CallTransferred)]
    assert [(t.call_id, t.from_agent, t.to_agent, t.transfer_kind) for t in transfers] == [
        (call.ucid, "201", "202", TransferKind.ATTENDED)]
    assert (inbound.call.agent, inbound.call.disposition, len(inbound.call.transfers)) == (
        "202", Disposition.ANSWERED, 1)
    assert internal.at <= inbound.at


# ---- click-to-call ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("events_first", [False, True], ids=["response-first", "events-first"])
async def test_click_to_call(sim: AvayaSimulator, running: tuple[AvayaAdapter, Events], events_first: bool) -> None:
    adapter, events = running
    sim.make_call_events_first = events_first
    await adapter.originate(OriginateRequest(request_id="r1", extension="202", number="+15551234567",
                                             crm_call_id="externalCall.abc"))
    make_call = sim.requests_named("MakeCall")[0]
    assert make_call.fields["callingDevice"] == sim.device_id("202")
    assert make_call.fields["calledDirectoryNumber"] == sim.device_id("915551234567")
    await events.until(lambda items: any(isinstance(e, CallAnswered) for e in items))
    started = events.items[0]
    assert isinstance(started, CallStarted)
    assert (started.direction, started.agent, started.external_number, started.crm_call_id) == (
        Direction.OUTBOUND, "202", "+15551234567", "externalCall.abc")
    live = next(iter(sim.calls.values()))
    await sim.clear(live, "915551234567")
    [end] = await events.ended()
    assert (end.call.crm_call_id, end.call.disposition, end.call.agent) == ("externalCall.abc",
                                                                           Disposition.ANSWERED, "202")
    # The same request again (a retried delivery) does not place a second call.
    await adapter.originate(OriginateRequest(request_id="r1", extension="202", number="+15551234567"))
    assert len(sim.requests_named("MakeCall")) == 1


async def test_click_to_call_the_agent_never_answers(sim: AvayaSimulator,
                                                     running: tuple[AvayaAdapter, Events]) -> None:
    adapter, events = running
    sim.make_call_outcome = "agent_no_answer"
    await adapter.originate(OriginateRequest(request_id="r2", extension="201", number="5551234567",
                                             crm_call_id="CRM-2"))
    [end] = await events.ended()
    assert (end.call.crm_call_id, end.call.disposition, end.call.direction) == ("CRM-2", Disposition.NO_ANSWER,
                                                                               Direction.OUTBOUND)


async def test_click_to_call_refusals(sim: AvayaSimulator, running: tuple[AvayaAdapter, Events]) -> None:
    adapter, events = running
    sim.unknown_numbers = {"9000"}  # "000" after the adapter's dial prefix "9"
    with pytest.raises(OriginateError) as refused:
        await adapter.originate(OriginateRequest(request_id="r3", extension="201", number="000",
                                                 crm_call_id="CRM-3"))
    assert "invalidDeviceID" in refused.value.reason
    with pytest.raises(OriginateError, match="not a configured"):
        await adapter.originate(OriginateRequest(request_id="r4", extension="299", number="5551234567"))
    for hostile in ("555<x/>", "5551234\n", "+"):
        with pytest.raises(OriginateError, match="digits"):
            await adapter.originate(OriginateRequest(request_id="r5", extension="201", number=hostile))
    assert sim.requests_named("MakeCall") == []
    # The refused request leaves no expectation behind: a manual call next carries no crm_call_id.
    call = await sim.originate("201", "95550001111")
    await sim.clear(call, "201")
    [end] = await events.ended()
    assert end.call.crm_call_id is None


# ---- faults -------------------------------------------------------------------------------------------------------

async def test_link_loss_reattach_and_resync_closes_a_call_that_ended_meanwhile(sim: AvayaSimulator) -> None:
    async with make_adapter(sim, reconnect_min=0.3, reconnect_max=0.3) as adapter:
        await asyncio.wait_for(adapter.connected(), WAIT)
        events = Events(adapter)
        ended_meanwhile = sim.new_call()
        await sim.ring(ended_meanwhile, "201", calling=CUSTOMER, called="5551000")
        await sim.answer(ended_meanwhile, "201", calling=CUSTOMER, called="5551000")
        still_ringing = sim.new_call()
        await sim.ring(still_ringing, "202", calling="5559990000", called="5551000")
        await events.until(lambda items: kinds(items).count("ringing") == 2 and "answered" in kinds(items))
        first_session = next(iter(sim.sessions))

        await sim.drop_links()
        await sim.clear(ended_meanwhile, CUSTOMER)  # lost: nobody is connected
        [end] = await events.ended()

        assert end.call_id == ended_meanwhile.ucid
        assert (end.call.disposition, end.call.agent) == (Disposition.ANSWERED, "201")
        starts = sim.requests_named("StartApplicationSession")
        assert len(starts) == 2 and starts[1].fields["sessionID"] == first_session
        assert len(sim.requests_named("MonitorStart")) == 4  # re-attached: monitors kept
        assert sim.requests_named("SnapshotDevice")
        assert adapter.reattaches == 1
        # The call still ringing survived the resync and is followed to its end.
        await sim.clear(still_ringing, "5559990000")
        ends = await events.ended(2)
        assert ends[1].call_id == still_ringing.ucid and ends[1].call.disposition is Disposition.MISSED
        await events.close()


async def test_reattach_refused_starts_a_new_session_and_monitors_again(sim: AvayaSimulator) -> None:
    sim.allow_reattach = False
    async with make_adapter(sim) as adapter:
        await asyncio.wait_for(adapter.connected(), WAIT)
        events = Events(adapter)
        call = sim.new_call()
        await sim.ring(call, "203", calling=CUSTOMER, called="5551000")
        await events.until(lambda items: "ringing" in kinds(items))
        await sim.drop_links()
        await sim.wait_requests("MonitorStart", 8)
        await eventually(lambda: adapter.links == 2 and adapter.health().ok)
        assert adapter.reattaches == 0
        await sim.clear(call, CUSTOMER)
        [end] = await events.ended()
        assert end.call.disposition is Disposition.MISSED and end.call.agents_rung == ("203",)
        await events.close()


async def test_session_lost_on_aes_is_replaced(sim: AvayaSimulator) -> None:
    async with make_adapter(sim, keepalive_interval=0.05) as adapter:
        await asyncio.wait_for(adapter.connected(), WAIT)
        sim.expire_sessions()  # the next keep-alive is refused
        await sim.wait_requests("MonitorStart", 8)
        await eventually(lambda: adapter.links == 2)
        assert len(sim.sessions) == 1


async def test_session_ended_by_aes_is_replaced(sim: AvayaSimulator) -> None:
    async with make_adapter(sim) as adapter:
        await asyncio.wait_for(adapter.connected(), WAIT)
        sim.terminate_sessions()
        await sim.wait_requests("MonitorStart", 8)
        await eventually(lambda: adapter.links == 2)
        assert "sessionID" not in sim.requests_named("StartApplicationSession")[1].fields


async def test_garbage_and_hostile_xml_from_aes_do_not_break_the_link(sim: AvayaSimulator,
                                                                      running: tuple[AvayaAdapter, Events]) -> None:
    adapter, events = running
    doctype = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><DeliveredEvent>&a;</DeliveredEvent>'
    sim.send_raw(b"\x17garbage\xff" + encode_frame(EVENT_INVOKE_ID, doctype)
                 + encode_frame(EVENT_INVOKE_ID, b"<DeliveredEvent><monitorCrossRef")
                 + encode_frame(EVENT_INVOKE_ID, X.delivered(sim.protocol, "999", call_id="1", alerting="x",
                                                             calling=None, called=None, ucid=None)))
    call = sim.new_call()
    await sim.ring(call, "201", calling=CUSTOMER, called="5551000")
    await sim.clear(call, CUSTOMER)
    [end] = await events.ended()
    assert end.call_id == call.ucid
    assert adapter.links == 1 and adapter.health().ok


async def test_wrong_password_is_reported_without_crashing(sim: AvayaSimulator) -> None:
    async with make_adapter(sim, password="wrong") as adapter:
        await sim.wait_requests("StartApplicationSession", 2)
        await eventually(lambda: "refused" in adapter.health().detail)
        assert not adapter.health().ok
        with pytest.raises(OriginateError, match="down"):
            await adapter.originate(OriginateRequest(request_id="r9", extension="201", number="5551234567"))


async def test_unknown_station_is_reported_and_the_others_monitored(sim: AvayaSimulator) -> None:
    async with make_adapter(sim, stations=("201", "299")) as adapter:
        await asyncio.wait_for(adapter.connected(), WAIT)
        health = adapter.health()
        assert health.ok and "299" in health.detail
        assert health.extra["failed_devices"] == {"299": "operation/invalidDeviceID"}
        events = Events(adapter)
        call = sim.new_call()
        await sim.ring(call, "201", calling=CUSTOMER, called="5551000")
        await sim.clear(call, CUSTOMER)
        await events.ended()
        await events.close()


# ---- configuration and TLS ----------------------------------------------------------------------------------------

async def test_from_settings(sim: AvayaSimulator) -> None:
    settings = AvayaSettings(host="127.0.0.1", port=sim.port, password=SecretStr("secret"), stations=("201",),
                             device_id_service="GetThirdPartyDeviceId", reconnect_min=0.01, reconnect_max=0.05)
    async with AvayaAdapter.from_settings(settings) as adapter:
        await asyncio.wait_for(adapter.connected(), WAIT)
        assert [r.fields["extension"] for r in sim.requests_named("GetThirdPartyDeviceId")] == ["201"]


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "aes.pem", tmp / "aes.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def test_tls_link(tmp_path: Path) -> None:
    try:
        cert, key = _self_signed(tmp_path)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl is not available to make a test certificate")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with AvayaSimulator(stations=("201",), ssl_context=server_ctx) as tls_sim:
        settings = AvayaSettings(host="localhost", port=tls_sim.port, tls=True, ca_file=cert,
                                 password=SecretStr("secret"), stations=("201",))
        async with AvayaAdapter.from_settings(settings) as adapter:
            await asyncio.wait_for(adapter.connected(), WAIT)
            assert adapter.health().ok
