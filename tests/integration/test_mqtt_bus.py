"""MqttBus against a real mosquitto: event order per call, originates between two sites, broker restarts, bad input."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from bridge.bus.commands import encode_command, new_command
from bridge.bus.errors import RemoteOriginateError
from bridge.bus.mqtt import MqttBus
from bridge.bus.sites import SiteRouter
from bridge.bus.topics import decode_level
from bridge.config import MqttSettings
from bridge.errors import ConfigError
from bridge.model import (
    AgentsRinging,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallRecord,
    CallStarted,
    CallTransferred,
    Direction,
    Disposition,
    OriginateRequest,
    RecordingStarted,
    RingStopped,
    RingStopReason,
    TransferKind,
    event_to_json,
)
from tests.mqtt_broker import MosquittoBroker, find_mosquitto, free_port, mqtt_broker

__all__ = ["mqtt_broker"]  # the fixture, imported for pytest

WAIT = 15.0


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:60]
    return f"test/{name}/{uuid.uuid4().hex[:8]}"


def make_bus(broker: MosquittoBroker | None, prefix: str, pbx_id: str, **kwargs: Any) -> MqttBus:
    options: dict[str, Any] = {"reconnect_min": 0.05, "reconnect_max": 0.3, "command_retry": 0.2,
                               "command_deadline": 20.0}
    options.update(kwargs)
    host, port = ("127.0.0.1", free_port()) if broker is None else (broker.host, broker.port)
    return MqttBus(host=host, port=port, pbx_id=pbx_id, prefix=prefix, **options)


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Collector:
    """A plain aiomqtt subscriber that records (topic, payload, retain) of everything on its subscriptions."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.client = aiomqtt.Client(broker.host, broker.port)
        self.messages: list[tuple[str, bytes, bool]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self, *topics: str) -> None:
        await self.client.__aenter__()
        for topic in topics:
            await self.client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            self.messages.append((message.topic.value, message.payload, message.retain))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self._task
        await self.client.__aexit__(None, None, None)


@pytest.fixture
async def collector(mqtt_broker: MosquittoBroker) -> AsyncIterator[Collector]:
    c = Collector(mqtt_broker)
    yield c
    await c.stop()


T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def call_events(call_id: str, offset: int) -> list[CallEvent]:
    at = [T0 + timedelta(seconds=offset + i) for i in range(8)]
    record = CallRecord(call_id=call_id, pbx="asterisk", direction=Direction.INBOUND, external_number="+74951234567",
                        line="+74950000000", agent="202", agents_rung=("201", "202"),
                        disposition=Disposition.ANSWERED, started_at=at[0], answered_at=at[3], ended_at=at[7],
                        talk_seconds=4, hangup_cause=16, recordings=(f"/rec/{offset}.wav",), crm_call_id="crm.1")
    return [
        CallStarted(call_id=call_id, at=at[0], direction=Direction.INBOUND, external_number="+74951234567",
                    line="+74950000000"),
        AgentsRinging(call_id=call_id, at=at[1], agents=("201", "202")),
        RingStopped(call_id=call_id, at=at[2], agent="201", reason=RingStopReason.ANSWERED_ELSEWHERE),
        CallAnswered(call_id=call_id, at=at[3], agent="202"),
        RecordingStarted(call_id=call_id, at=at[4], path=f"/rec/{offset}.wav"),
        CallTransferred(call_id=call_id, at=at[5], from_agent="202", to_agent="203",
                        transfer_kind=TransferKind.BLIND),
        CallEnded(call_id=call_id, at=at[7], call=record),
    ]


def request(extension: str = "250", number: str = "+74951234567") -> OriginateRequest:
    return OriginateRequest(request_id=f"req-{uuid.uuid4().hex[:6]}", extension=extension, number=number,
                            crm_call_id="externalCall.abc.1712", timeout_seconds=30)


async def connected(*buses: MqttBus) -> None:
    for bus in buses:
        await asyncio.wait_for(bus.connected(), WAIT)


async def test_events_of_interleaved_calls_arrive_in_order_with_full_payloads(
        mqtt_broker: MosquittoBroker, collector: Collector, prefix: str) -> None:
    call_ids = ["1712345678.101", "odd/id+with#wildcards", "1712345678.103"]
    sequences = {cid: call_events(cid, i * 10) for i, cid in enumerate(call_ids)}
    await collector.start(f"{prefix}/pbx1/calls/#")
    async with make_bus(mqtt_broker, prefix, "pbx1") as bus:
        await connected(bus)
        total = 0
        for step in range(7):  # interleave: one event of each call in turn
            for cid in call_ids:
                bus.publish_event(sequences[cid][step])
                total += 1
        await until(lambda: len(collector.messages) >= total, "all events")
        assert bus.counters.published == total
        assert bus.counters.dropped_events == 0

    received: dict[str, list[dict[str, Any]]] = {cid: [] for cid in call_ids}
    for topic, payload, retain in collector.messages:
        assert not retain
        head, pbx, calls, level, kind = topic.rsplit("/", 4)
        assert (head, pbx, calls) == (prefix, "pbx1", "calls")
        call_id = decode_level(level)
        body = json.loads(payload)
        assert body["kind"] == kind
        assert body["call_id"] == call_id
        received[call_id].append(body)
    for cid in call_ids:
        assert received[cid] == [event_to_json(e) for e in sequences[cid]]
        ended = received[cid][-1]
        assert CallRecord.from_json(ended["call"]) == sequences[cid][-1].call  # type: ignore[union-attr]


async def test_originate_routed_to_the_other_site_arrives_exactly_once(
        mqtt_broker: MosquittoBroker, collector: Collector, prefix: str) -> None:
    router = SiteRouter({"pbx1": ("100-199",), "pbx2": ("200-299", "3001")}, local_site="pbx1")
    got: list[OriginateRequest] = []

    async def on_originate(req: OriginateRequest) -> None:
        got.append(req)

    await collector.start(f"{prefix}/pbx2/commands/originate")
    async with (make_bus(mqtt_broker, prefix, "pbx1", command_retry=30.0) as pbx1,
                make_bus(mqtt_broker, prefix, "pbx2", on_originate=on_originate) as pbx2):
        await connected(pbx1, pbx2)
        req = request(extension="250")
        site = router.route(req.extension)
        assert site == "pbx2"
        assert router.route("150") is None
        await asyncio.wait_for(pbx1.publish_originate(site, req), WAIT)
        await until(lambda: len(got) == 1, "on_originate")
        assert got == [req]
        assert pbx1.counters.commands_delivered == 1

        # The same command again (a resend after a lost receipt looks like this): dropped by id.
        await until(lambda: len(collector.messages) == 1, "the command on the wire")
        _, raw, _ = collector.messages[0]
        await collector.client.publish(f"{prefix}/pbx2/commands/originate", raw, qos=1)
        await until(lambda: pbx2.counters.commands_duplicate == 1, "the duplicate to be seen")
        assert len(got) == 1
        assert pbx2.counters.commands_received == 2


async def test_broker_restart_drops_events_but_delivers_the_waiting_command(
        mqtt_broker: MosquittoBroker, prefix: str) -> None:
    got: list[OriginateRequest] = []

    async def on_originate(req: OriginateRequest) -> None:
        got.append(req)

    async with (make_bus(mqtt_broker, prefix, "pbx1") as pbx1,
                make_bus(mqtt_broker, prefix, "pbx2", on_originate=on_originate) as pbx2):
        await connected(pbx1, pbx2)
        mqtt_broker.stop()
        await asyncio.wait_for(pbx1.disconnected(), WAIT)
        await asyncio.wait_for(pbx2.disconnected(), WAIT)
        assert not pbx1.health().ok

        outage_events = call_events("1712.outage", 0)
        for event in outage_events:
            pbx1.publish_event(event)
        assert pbx1.counters.dropped_events == len(outage_events)

        req = request(extension="260")
        sending = asyncio.create_task(pbx1.publish_originate("pbx2", req))
        await asyncio.sleep(0)
        assert pbx1.health().extra["pending_commands"] == 1

        await asyncio.to_thread(mqtt_broker.start)
        await asyncio.wait_for(sending, WAIT)
        await until(lambda: got == [req], "the command after the restart")
        assert pbx1.counters.reconnects >= 1
        assert pbx2.counters.reconnects >= 1
        assert pbx1.health().ok

        # Events flow again after the reconnect.
        after = Collector(mqtt_broker)
        await after.start(f"{prefix}/pbx1/calls/#")
        try:
            await connected(pbx1)
            pbx1.publish_event(call_events("1712.after", 50)[0])
            await until(lambda: len(after.messages) == 1, "an event after the restart")
            assert decode_level(after.messages[0][0].split("/")[-2]) == "1712.after"
        finally:
            await after.stop()


def _valid_command(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(encode_command(new_command(request(), origin="pbx1", now=time.time(), ttl=60)))
    body.update(overrides)
    return body


def _hostile_payloads() -> list[bytes]:
    good = _valid_command()
    bad_request: list[dict[str, Any]] = [
        {"number": "12; Action: Hangup"}, {"number": "+7 495"}, {"extension": "250\r\nAction: Logoff"},
        {"extension": ""}, {"timeout_seconds": True}, {"timeout_seconds": 100000}, {"caller_id_name": "a\nb"},
        {"request_id": 7}, {"crm_call_id": "x" * 1000},
    ]
    payloads = [
        b"", b"not json", b"\xff\xfe\xfd", b"[1, 2]", b"null", b'"text"', b'{"id": 5}', b"[" * 5000 + b"]" * 5000,
        b'{"pad": "' + b"a" * 20000 + b'"}', b'{"v": 99}',
        json.dumps(_valid_command(type="hangup")).encode(),
        json.dumps(_valid_command(request="no")).encode(),
        json.dumps(_valid_command(sent_at=10**400)).encode(),
        json.dumps(_valid_command(expires_at=float("nan"))).encode(),
        json.dumps(_valid_command(**{"from": "../pbx1/#"})).encode(),
    ]
    for change in bad_request:
        body = dict(good)
        body["id"] = uuid.uuid4().hex
        body["request"] = {**good["request"], **change}
        payloads.append(json.dumps(body).encode())
    return payloads


async def test_malformed_and_expired_commands_are_skipped_and_bad_acks_ignored(
        mqtt_broker: MosquittoBroker, collector: Collector, prefix: str) -> None:
    got: list[OriginateRequest] = []

    async def on_originate(req: OriginateRequest) -> None:
        got.append(req)

    command_topic = f"{prefix}/pbx2/commands/originate"
    await collector.start(f"{prefix}/nobody/#")
    # A retained command would replay on every connect: published before pbx2 subscribes, it must be refused.
    await collector.client.publish(command_topic, json.dumps(_valid_command()).encode(), qos=1, retain=True)
    async with (make_bus(mqtt_broker, prefix, "pbx1") as pbx1,
                make_bus(mqtt_broker, prefix, "pbx2", on_originate=on_originate) as pbx2):
        await connected(pbx1, pbx2)
        await until(lambda: pbx2.counters.commands_malformed == 1, "the retained command to be refused")

        hostile = _hostile_payloads()
        for payload in hostile:
            await collector.client.publish(command_topic, payload, qos=1)
        expired = new_command(request(), origin="pbx1", now=time.time() - 600, ttl=60)
        await collector.client.publish(command_topic, encode_command(expired), qos=1)
        for junk in (b"{", b'{"id": "zz", "site": "pbx2", "status": "accepted"}', b"\x00" * 100):
            await collector.client.publish(f"{prefix}/pbx1/commands/ack", junk, qos=1)

        await until(lambda: pbx2.counters.commands_malformed == 1 + len(hostile) and
                    pbx2.counters.commands_expired == 1, "the bad commands to be processed")
        assert got == []

        # Still alive: a good command goes through, and a bad one from a real sender is rejected with a reason.
        req = request(extension="270")
        await asyncio.wait_for(pbx1.publish_originate("pbx2", req), WAIT)
        await until(lambda: got == [req], "the good command")
        with pytest.raises(RemoteOriginateError) as info:
            await asyncio.wait_for(pbx1.publish_originate("pbx2", request(number="12; Action: Hangup")), WAIT)
        assert "number" in info.value.reason
        assert info.value.site == "pbx2"
        assert got == [req]
        assert pbx2.health().ok


async def test_command_queue_overflow_and_deadline_fail_loudly(prefix: str) -> None:
    # Nothing listens on the port: the broker is "down" for the whole test.
    async with make_bus(None, prefix, "pbx1", command_queue_size=2, command_deadline=0.5) as bus:
        waiting = [asyncio.create_task(bus.publish_originate("pbx2", request())) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(RemoteOriginateError) as full:
            await bus.publish_originate("pbx2", request())
        assert full.value.reason == "command queue full"
        for task in waiting:
            with pytest.raises(RemoteOriginateError) as late:
                await asyncio.wait_for(task, WAIT)
            assert "within" in late.value.reason
        assert bus.counters.commands_failed == 3
        assert bus.health().extra["pending_commands"] == 0
        assert not bus.health().ok


async def test_command_to_a_site_nobody_serves_fails_after_the_deadline(
        mqtt_broker: MosquittoBroker, prefix: str) -> None:
    async with make_bus(mqtt_broker, prefix, "pbx1", command_deadline=0.5) as bus:
        await connected(bus)
        with pytest.raises(RemoteOriginateError):
            await asyncio.wait_for(bus.publish_originate("pbx9", request()), WAIT)
        assert bus.counters.commands_sent >= 1


async def test_a_command_expires_when_its_sender_stops_waiting(
        mqtt_broker: MosquittoBroker, prefix: str, collector: Collector) -> None:
    """The other site must never dial a click whose CRM call was already failed for want of a receipt."""
    await collector.start(f"{prefix}/pbx9/commands/originate")
    async with make_bus(mqtt_broker, prefix, "pbx1", command_deadline=0.7) as bus:
        await connected(bus)
        with pytest.raises(RemoteOriginateError):
            await asyncio.wait_for(bus.publish_originate("pbx9", request()), WAIT)
    await until(lambda: bool(collector.messages), "the command on the wire")
    body = json.loads(collector.messages[0][1])
    assert body["expires_at"] - body["sent_at"] == pytest.approx(0.7)


async def test_bus_refuses_reuse_and_fails_waiting_commands_on_close(prefix: str) -> None:
    bus = make_bus(None, prefix, "pbx1")
    async with bus:
        pending = asyncio.create_task(bus.publish_originate("pbx2", request()))
        await asyncio.sleep(0)
    with pytest.raises(RemoteOriginateError):
        await pending
    with pytest.raises(RuntimeError):
        await bus.__aenter__()
    with pytest.raises(RuntimeError):
        await bus.publish_originate("pbx2", request())



def _make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command not found (needed to make test certificates)")
    ca_key, ca, key, csr, cert, ext = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr",
                                                               "server.pem", "ext.cnf"))
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=b24bridge test CA"],
        [openssl, "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ]
    for step in steps:
        subprocess.run([str(a) for a in step], check=True, capture_output=True, timeout=30)
    return ca, cert, key


# paho-mqtt leaves the socket of a failed TLS handshake to the garbage collector (a ResourceWarning, not a bug of ours).
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_tls_connects_with_the_ca_file_and_refuses_an_unknown_ca(tmp_path: Path, prefix: str) -> None:
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto binary not found")
    ca, cert, key = _make_tls_files(tmp_path)
    broker = MosquittoBroker(binary, tmp_path, listener_options=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
    broker.start()
    try:
        trusting = MqttSettings(host=broker.host, port=broker.port, tls=True, ca_file=ca, prefix=prefix,
                                reconnect_min=0.05, reconnect_max=0.2)
        async with MqttBus.from_settings(trusting, pbx_id="pbx1") as bus:
            await connected(bus)
            bus.publish_event(call_events("1712.tls", 0)[0])
            await until(lambda: bus.counters.published == 1, "a publish over TLS")

        system_cas = MqttSettings(host=broker.host, port=broker.port, tls=True, prefix=prefix,
                                  reconnect_min=0.05, reconnect_max=0.2)
        async with MqttBus.from_settings(system_cas, pbx_id="pbx1") as bus:
            await until(lambda: "certificate" in bus.health().detail.lower(), "a certificate verification failure")
            assert not bus.health().ok
    finally:
        broker.stop()
        gc.collect()  # sweep such sockets while the warning filter above applies


def test_from_settings_reports_config_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as off:
        MqttBus.from_settings(MqttSettings(), pbx_id="pbx1")
    assert off.value.key == "mqtt.host"
    with pytest.raises(ConfigError) as missing:
        MqttBus.from_settings(MqttSettings(host="h", tls=True, ca_file=tmp_path / "nope.pem"), pbx_id="pbx1")
    assert missing.value.key == "mqtt.ca_file"
    for bad in ({"ca_file": tmp_path / "ca.pem"}, {"password": "x"}, {"reconnect_min": 5, "reconnect_max": 1},
                {"command_deadline_seconds": 0}, {"client_id": "has space"}):
        with pytest.raises(ValueError):
            MqttSettings(host="h", **bad)
    with pytest.raises(ValueError):
        MqttBus(host="h", pbx_id="bad/id")
