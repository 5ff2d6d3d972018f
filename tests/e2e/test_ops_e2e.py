"""The operator's view of a running bridge, end to end: systemd notifications (READY, WATCHDOG, STOPPING), /readyz
per part (PBX, store, portal, MQTT), /metrics fed by the live parts, and `b24-bridge status` during a call.

systemd is stood in for by an AF_UNIX datagram socket in a temp directory named by NOTIFY_SOCKET, as systemd does it.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from bridge.app import Bridge
from bridge.config import AvayaSettings, Bitrix24Settings, HttpSettings, MqttSettings, PbxSettings
from bridge.crm.bitrix24.auth import TokenStore, tokens_from_payload
from bridge.model import CallEvent
from bridge.sim.ami import AmiSimulator
from bridge.sim.avaya import AvayaSimulator
from bridge.status import print_status
from tests.e2e.conftest import (
    DEFAULT_USER_ID,
    EVENT_TOKEN,
    dead_letters,
    metric,
    running_bridge,
    scrape,
    settle,
    simulators,
    until,
)
from tests.mqtt_broker import MosquittoBroker, free_port

WATCHDOG_USEC = 200_000  # systemd's WatchdogSec=0.2s: the bridge pings every 0.1 s
PING_INTERVAL = WATCHDOG_USEC / 2_000_000


@dataclass
class Notification:
    fields: list[str]
    pbx_links: int  # what the PBX simulator had accepted when the datagram arrived
    http_listening: bool


class NotifySocket:
    """systemd's side of sd_notify: records every datagram, with what the world looked like when it arrived."""

    def __init__(self, pbx_links: Callable[[], int], http_port: int) -> None:
        self._pbx_links = pbx_links
        self._http_port = http_port
        self._dir = Path(tempfile.mkdtemp(prefix="b24n"))  # short: AF_UNIX paths are limited to ~100 bytes
        self.path = self._dir / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.received: list[Notification] = []

    def __enter__(self) -> NotifySocket:
        self._sock.bind(str(self.path))
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self.drain)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def drain(self) -> None:
        """Read every datagram already sent (sendto is synchronous, so nothing sent before this call is missed)."""
        while True:
            try:
                data = self._sock.recv(4096)
            except BlockingIOError:
                return
            self.received.append(Notification(data.decode().split("\n"), self._pbx_links(), self._listening()))

    def _listening(self) -> bool:
        # A blocking connect is fine here: the kernel completes it from the listen backlog, the loop is not needed.
        try:
            with socket.create_connection(("127.0.0.1", self._http_port), timeout=0.5):
                return True
        except OSError:
            return False

    def index(self, field: str) -> int:
        return next(i for i, n in enumerate(self.received) if field in n.fields)

    def count(self, field: str, *, after: int = -1) -> int:
        return sum(1 for i, n in enumerate(self.received) if i > after and field in n.fields)


def logins(ami: AmiSimulator) -> int:
    return sum(1 for action in ami.actions if action.name.lower() == "login")


def refuse_writes(database: Path) -> None:
    """Another process breaks the store under the running bridge: from now on every write to it fails."""
    with sqlite3.connect(database, timeout=5.0) as db:
        for table in ("ops", "calls"):
            db.execute(f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
                       "BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END")


async def readyz(bridge: Bridge) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{bridge.web_port}/readyz") as response:
        return response.status, await response.json()


async def until_ready_is(bridge: Bridge, status: int, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            code, body = await readyz(bridge)
            if code == status:
                return body
            await asyncio.sleep(0.05)


# --- systemd ---------------------------------------------------------------------------------------------------------

async def test_systemd_hears_ready_after_login_and_listen_then_watchdog_until_the_store_fails_then_stopping(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    port = free_port()
    async with simulators() as sims:
        settings = sims.settings(tmp_path, http=HttpSettings(port=port, application_token=EVENT_TOKEN))
        sims.ami.refuse_logins = True
        before_login: list[Notification] = []
        with NotifySocket(lambda: sims.ami.sessions, port) as notify:
            monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))

            async def let_in_after_two_refusals() -> None:
                await until(lambda: logins(sims.ami) >= 2)
                notify.drain()
                before_login.extend(notify.received)
                sims.ami.refuse_logins = False

            gate = asyncio.create_task(let_in_after_two_refusals())
            async with running_bridge(settings) as bridge:
                await gate
                ready = notify.index("READY=1")
                await until(lambda: notify.count("WATCHDOG=1", after=ready) >= 3)
                healthy = await readyz(bridge)

                refuse_writes(settings.storage.path)
                await sims.ami.play_trace("inbound_answered", speed=50)
                assert bridge.pipeline is not None
                pipeline = bridge.pipeline
                await until(lambda: pipeline.store_failures > 0)
                notify.drain()
                pings_when_failed = notify.count("WATCHDOG=1")
                await asyncio.sleep(8 * PING_INTERVAL)
                notify.drain()
                pings_later = notify.count("WATCHDOG=1")
                broken = await readyz(bridge)
            notify.drain()

    assert all("READY=1" not in n.fields for n in before_login)  # no READY while Asterisk refused the login
    assert notify.count("READY=1") == 1
    at_ready = notify.received[ready]
    assert at_ready.pbx_links >= 1 and at_ready.http_listening
    assert healthy[0] == 200
    assert pings_later == pings_when_failed  # withheld: systemd restarts a bridge that cannot keep its record
    assert broken[0] == 503
    store = broken[1]["checks"]["store"]
    assert store["ok"] is False and str(settings.storage.path) in store["detail"]
    assert "simulated write failure" in store["detail"] and store["extra"]["write_failures"] >= 1
    assert broken[1]["checks"]["pbx"]["ok"] is True
    stopping = notify.index("STOPPING=1")
    assert stopping > ready and notify.count("STOPPING=1") == 1


async def test_the_watchdog_stops_when_the_event_pump_dies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    port = free_port()
    async with simulators() as sims:
        settings = sims.settings(tmp_path, http=HttpSettings(port=port, application_token=EVENT_TOKEN))
        with NotifySocket(lambda: sims.ami.sessions, port) as notify:
            monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
            async with running_bridge(settings) as bridge:
                await until(lambda: notify.count("WATCHDOG=1") >= 2)
                assert bridge.pipeline is not None

                def bug(event: CallEvent) -> None:
                    raise RuntimeError("a bug on the event path")

                # Stands in for a bug that escapes the pipeline's own guards and kills the loop feeding it.
                monkeypatch.setattr(bridge.pipeline, "handle", bug)
                pump = next(t for t in asyncio.all_tasks() if t.get_name() == "pipeline.pump")
                await sims.ami.play_trace("inbound_answered", speed=200)
                await until(pump.done)
                notify.drain()
                pings_when_dead = notify.count("WATCHDOG=1")
                await asyncio.sleep(8 * PING_INTERVAL)
                notify.drain()
                pings_later = notify.count("WATCHDOG=1")

    assert pings_later == pings_when_dead


async def test_an_avaya_bridge_is_ready_once_its_stations_are_monitored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    port = free_port()
    stations = ("201", "202")
    async with simulators() as sims, AvayaSimulator(stations=stations) as aes:
        avaya = AvayaSettings(port=aes.port, username=aes.username, password=SecretStr(aes.password),
                              protocol_version=aes.protocol, stations=stations, reconnect_min=0.05, reconnect_max=0.2)
        settings = sims.settings(tmp_path, pbx=PbxSettings(kind="avaya"), avaya=avaya,
                                 http=HttpSettings(port=port, application_token=EVENT_TOKEN))
        monitored = lambda: sum(len(session.monitors) for session in aes.sessions.values())  # noqa: E731
        with NotifySocket(monitored, port) as notify:
            monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
            async with running_bridge(settings) as bridge:
                ready = await readyz(bridge)
            notify.drain()

    at_ready = notify.received[notify.index("READY=1")]
    assert at_ready.pbx_links == len(stations) and at_ready.http_listening
    assert ready[0] == 200 and ready[1]["checks"]["pbx"]["ok"] is True


# --- /readyz ---------------------------------------------------------------------------------------------------------

async def test_readyz_reports_the_pbx_link_down_and_back(tmp_path: Path) -> None:
    async with simulators() as sims, running_bridge(sims.settings(tmp_path)) as bridge:
        up = await until_ready_is(bridge, 200)
        sims.ami.refuse_logins = True
        await sims.ami.drop_connections()
        down = await until_ready_is(bridge, 503)
        while_down = await scrape(bridge)
        sims.ami.refuse_logins = False
        again = await until_ready_is(bridge, 200)
        after = await scrape(bridge)

    assert set(up["checks"]) == {"pbx", "store", "portal"}  # no MQTT part when MQTT is not configured
    assert down["status"] == "not_ready"
    pbx = down["checks"]["pbx"]
    assert pbx["ok"] is False and pbx["detail"]
    assert all(down["checks"][name]["ok"] for name in ("store", "portal"))
    assert again["checks"]["pbx"]["ok"] is True
    assert metric(while_down, "b24bridge_pbx_connected") == 0
    assert metric(after, "b24bridge_pbx_connected") == 1
    assert metric(after, "b24bridge_pbx_reconnects_total") >= 1  # type: ignore[operator]


async def test_readyz_reports_credentials_the_portal_refuses(tmp_path: Path) -> None:
    async with simulators() as sims:
        good = sims.settings(tmp_path)
        wrong = SecretStr(sims.portal.webhook_url.replace(sims.portal.webhook_secret, "not-the-secret"))
        settings = good.model_copy(update={"bitrix24": good.bitrix24.model_copy(update={"webhook_url": wrong})})
        async with running_bridge(settings, wait_dispatcher=False) as bridge:
            body = await until_ready_is(bridge, 503)
            while body["checks"]["portal"]["ok"]:  # the PBX may be the first part found down; wait for the portal
                body = await until_ready_is(bridge, 503)

    portal = body["checks"]["portal"]
    assert "refused the credentials" in portal["detail"]
    assert "not-the-secret" not in str(body)


async def test_readyz_reports_the_mqtt_broker_down_and_back(tmp_path: Path, mqtt_broker: MosquittoBroker) -> None:
    async with simulators() as sims:
        mqtt = MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port, reconnect_min=0.05, reconnect_max=0.2)
        async with running_bridge(sims.settings(tmp_path, mqtt=mqtt)) as bridge:
            assert bridge.bus is not None
            bus = bridge.bus
            up = await until_ready_is(bridge, 200)
            await sims.ami.play_trace("inbound_answered", speed=200)
            await until(lambda: bus.counters.published >= 4)
            published = await scrape(bridge)
            await asyncio.to_thread(mqtt_broker.stop)
            down = await until_ready_is(bridge, 503)
            await sims.ami.play_trace("outbound_answered", speed=200)
            await settle(bridge)  # every event of the call went through the pipeline (and was dropped)
            dropped = await scrape(bridge)
            await asyncio.to_thread(mqtt_broker.start)
            again = await until_ready_is(bridge, 200)
            counters = bus.counters

    assert up["checks"]["mqtt"]["ok"] is True
    assert down["checks"]["mqtt"]["ok"] is False and "disconnected" in down["checks"]["mqtt"]["detail"]
    assert all(down["checks"][name]["ok"] for name in ("pbx", "store", "portal"))
    assert again["checks"]["mqtt"]["ok"] is True
    assert metric(published, "b24bridge_mqtt_connected") == 1
    assert metric(published, "b24bridge_mqtt_published_total") >= 4  # type: ignore[operator]
    assert metric(published, "b24bridge_mqtt_dropped_total") == 0
    assert metric(dropped, "b24bridge_mqtt_connected") == 0
    assert metric(dropped, "b24bridge_mqtt_dropped_total") == counters.dropped_events > 0


# --- /metrics --------------------------------------------------------------------------------------------------------

async def test_metrics_follow_calls_the_portal_and_the_outbox(tmp_path: Path) -> None:
    async with simulators() as sims, running_bridge(sims.settings(tmp_path)) as bridge:
        assert bridge.outbox is not None
        outbox = bridge.outbox
        # A call that rings long enough for its card to be up before it ends, then one that never rings anybody.
        await sims.ami.play_trace("inbound_answered", speed=5)
        await settle(bridge)
        await sims.ami.play_trace("outbound_answered", speed=200)
        await settle(bridge)
        calm = await scrape(bridge)

        # The portal says "slow down": 503 twice, then 429 once.
        sims.portal.fail_next(2, status=503, error="QUERY_LIMIT_EXCEEDED")
        sims.portal.fail_next(1, status=429, error="QUERY_LIMIT_EXCEEDED")
        await sims.ami.play_trace("inbound_missed", speed=200)
        await settle(bridge)
        throttled = await scrape(bridge)

        # The portal is gone: the call's ops wait in the outbox, counted by kind.
        sims.portal.go_down(60)
        await sims.ami.play_trace("internal_call", speed=200)
        await sims.ami.play_trace("outbound_noanswer", speed=200)
        await until(lambda: outbox.pending_count() >= 2 and bridge.idle() is False)
        await until(lambda: len(getattr(bridge.adapter, "tracker", ())) == 0)
        waiting = outbox.depth_by_kind()
        backlog = await scrape(bridge)
        sims.portal.faults.clear()
        await settle(bridge)

        # The portal refuses one call's ops outright: dead letters.
        sims.portal.fail_next(20, status=400, error="ERROR_ARGUMENT")
        await sims.ami.play_trace("cyrillic_callerid", speed=200)
        await until(lambda: outbox.dead_count() > 0 and outbox.pending_count() == 0)
        refused = await scrape(bridge)
        letters = dead_letters(bridge)

    assert metric(calm, "b24bridge_ring_to_card_seconds_count") == 1  # the outbound call never rang an agent
    assert metric(calm, "b24bridge_pbx_events_total") > 0  # type: ignore[operator]
    assert metric(calm, "b24bridge_pbx_events_dropped_total") == 0
    assert metric(calm, "b24bridge_pbx_reconnects_total") == 0
    assert metric(calm, "b24bridge_pbx_connected") == 1
    assert metric(calm, "b24bridge_active_calls") == 0
    assert metric(calm, "b24bridge_outbox_dead_letters") == 0
    assert metric(calm, "b24bridge_portal_requests_total", result="ok") > 0  # type: ignore[operator]
    assert metric(calm, "b24bridge_portal_request_seconds_count") == metric(calm, "b24bridge_portal_requests_total")
    assert metric(calm, "b24bridge_portal_throttled_total") is None
    assert metric(calm, "b24bridge_oauth_token_expiry_timestamp_seconds") == 0  # webhook mode: no token
    assert metric(calm, "b24bridge_mqtt_published_total") == 0  # MQTT off

    assert metric(throttled, "b24bridge_portal_throttled_total", code="503") == 2
    assert metric(throttled, "b24bridge_portal_throttled_total", code="429") == 1
    assert metric(throttled, "b24bridge_portal_requests_total", result="RateLimited") == 3

    assert sum(waiting.values()) >= 2
    for kind, count in waiting.items():
        assert metric(backlog, "b24bridge_outbox_depth", kind=kind) == count
    assert metric(backlog, "b24bridge_portal_requests_total", result="unavailable") > 0  # type: ignore[operator]

    assert letters and metric(refused, "b24bridge_outbox_dead_letters") == len(letters)
    assert not metric(refused, "b24bridge_outbox_depth")  # nothing left waiting (absent or zero)


async def test_metrics_show_when_the_oauth_token_expires(tmp_path: Path) -> None:
    async with simulators() as sims:
        base = sims.settings(tmp_path)
        settings = base.model_copy(update={"bitrix24": Bitrix24Settings(
            client_id=sims.portal.client_id, client_secret=SecretStr(sims.portal.client_secret),
            default_user_id=DEFAULT_USER_ID, requests_per_second=base.bitrix24.requests_per_second,
            burst=base.bitrix24.burst)})
        tokens = tokens_from_payload(sims.portal.issue_tokens())
        TokenStore(settings.storage.path.parent / "tokens.json").save(tokens)
        async with running_bridge(settings) as bridge:
            body = await scrape(bridge)
            assert bridge.client is not None and bridge.client.auth is not None
            current = bridge.client.auth.tokens

    assert current is not None and current.expires > 0
    assert metric(body, "b24bridge_oauth_token_expiry_timestamp_seconds") == pytest.approx(current.expires)


# --- b24-bridge status -----------------------------------------------------------------------------------------------

async def test_status_lists_the_call_in_progress_and_forgets_it_when_it_ends(tmp_path: Path) -> None:
    answered = asyncio.Event()

    def observe(event: CallEvent) -> None:
        if event.kind == "answered":
            answered.set()

    async with simulators() as sims, running_bridge(sims.settings(tmp_path), observers=[observe]) as bridge:
        here = bridge.settings.model_copy(update={"http": HttpSettings(port=bridge.web_port or 0)})
        playing = asyncio.create_task(sims.ami.play_trace("inbound_answered", speed=3))
        await asyncio.wait_for(answered.wait(), 10)
        during = await status_text(here)
        during_json = await status_text(here, as_json=True)
        await playing
        await settle(bridge)
        after = await status_text(here)

    assert "calls in progress: 1" in during
    live = next(line for line in during.splitlines() if "79161110001" in line)
    assert "inbound" in live and "talking" in live and "agent 101" in live
    assert '"calls_in_progress": [' in during_json and '"state": "talking"' in during_json
    assert "calls in progress: 0" in after and "recently ended:" in after


async def status_text(settings: Any, *, as_json: bool = False) -> str:
    out = io.StringIO()
    assert await print_status(settings, out=out, as_json=as_json) == 0
    return out.getvalue()
