"""`b24-bridge demo`: the whole bridge between the built-in simulators, with no PBX and no portal at hand.

The AMI simulator replays the real recorded Asterisk traces (inbound, queue, transfers, FreePBX flavours...) and then
synthetic calls re-identified from them; a click-to-call arrives over HTTP like Bitrix24 would send it. The Bitrix24
simulator enforces the cloud limits (2 requests/s, burst 50) with an 80 ms round trip. The view shows every call as
the PBX reported it and every request the portal received, then a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from bridge.app import Bridge
from bridge.config import (
    AmiSettings,
    Bitrix24Settings,
    HttpSettings,
    LogSettings,
    RecordingsSettings,
    Settings,
    StorageSettings,
)
from bridge.model import CallEnded, CallEvent, CallStarted
from bridge.sim.ami import AmiSimulator
from bridge.sim.ami_traces import default_fixtures_dir
from bridge.sim.bitrix24 import Bitrix24Simulator

DEMO_USERS = [
    {"ID": 1, "NAME": "Anna", "LAST_NAME": "Admin", "UF_PHONE_INNER": "100", "ACTIVE": True},
    *({"ID": 10 + n, "NAME": f"Agent{n}", "LAST_NAME": "Demo", "UF_PHONE_INNER": str(100 + n), "ACTIVE": True}
      for n in range(1, 11)),
]
TRACES = ("inbound_answered", "inbound_missed", "inbound_busy", "inbound_queue", "recorded", "outbound_answered",
          "outbound_noanswer", "blind_transfer", "fpbx_queue_local", "cyrillic_callerid", "internal_call")
SYNTHETIC_TEMPLATES = ("inbound_answered", "inbound_queue", "inbound_missed", "outbound_answered")


class LiveView:
    def __init__(self, out: TextIO, portal: Bitrix24Simulator) -> None:
        self._out = out
        self._portal = portal
        self._seen = 0
        self._t0 = time.monotonic()
        self.ended: list[CallEnded] = []

    def _line(self, text: str) -> None:
        print(f"{time.monotonic() - self._t0:6.1f}s  {text}", file=self._out, flush=True)

    def on_event(self, event: CallEvent) -> None:
        if isinstance(event, CallStarted):
            who = event.agent or "-"
            c2c = f" click-to-call {event.crm_call_id[:24]}..." if event.crm_call_id else ""
            self._line(f"PBX    call {event.call_id:<22} started  {event.direction.value:<8} "
                       f"number {event.external_number or '-'} line {event.line or '-'} agent {who}{c2c}")
        elif isinstance(event, CallEnded):
            c = event.call
            self.ended.append(event)
            self._line(f"PBX    call {event.call_id:<22} ended    {c.disposition.value:<9} agent {c.agent or '-'} "
                       f"rung {','.join(c.agents_rung) or '-'} talk {c.talk_seconds}s")

    async def follow_portal(self) -> None:
        while True:
            requests = self._portal.requests
            for req in requests[self._seen:]:
                self._line(f"PORTAL {req.method:<36} {_summary(req.params)} -> {req.http_status}"
                           + (f" {req.error}" if req.error else ""))
            self._seen = len(requests)
            await asyncio.sleep(0.2)


def _summary(params: dict[str, Any]) -> str:
    if "cmd" in params:
        return f"({len(params['cmd'])} commands)"
    keys = ("TYPE", "PHONE_NUMBER", "USER_ID", "STATUS_CODE", "DURATION", "LINE_NUMBER")
    return " ".join(f"{k}={params[k]}" for k in keys if k in params)[:70]


async def _click_to_call(port: int, token: str, portal: Bitrix24Simulator) -> None:
    """What Bitrix24 does when agent 101 clicks a number: register the call, then POST the event."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{portal.webhook_url}telephony.externalcall.register",
                                json={"USER_ID": 11, "PHONE_NUMBER": "+79165550123", "TYPE": 1}) as response:
            call_id = (await response.json())["result"]["CALL_ID"]
        form = {"event": "ONEXTERNALCALLSTART", "data[USER_ID]": "11", "data[CALL_ID]": call_id,
                "data[PHONE_NUMBER]": "8 (916) 555-01-23", "data[PHONE_NUMBER_INTERNATIONAL]": "+79165550123",
                "data[CRM_ENTITY_TYPE]": "CONTACT", "data[CRM_ENTITY_ID]": "42", "data[CALL_LIST_ID]": "0",
                "data[LINE_NUMBER]": "", "data[IS_MOBILE]": "0", "auth[application_token]": token,
                "auth[domain]": "demo.bitrix24.com", "auth[member_id]": "demo"}
        async with session.post(f"http://127.0.0.1:{port}/bitrix24/events", data=form) as response:
            await response.read()


async def run_demo(*, duration: float, calls: int, speed: float, out: TextIO) -> int:
    try:
        default_fixtures_dir()
    except FileNotFoundError as exc:
        print(f"demo: {exc} (the demo replays the recorded traces of a source checkout)", file=out)
        return 1
    token = secrets.token_hex(16)
    ami_secret = secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="b24-demo-") as tmp:
        async with AmiSimulator(secret=ami_secret) as ami, \
                Bitrix24Simulator(users=DEMO_USERS, rate=2.0, burst=50, latency=0.08) as portal:
            ami.timestamps = True  # durations stay true although traces replay faster than real time
            settings = Settings(
                ami=AmiSettings(port=ami.port, secret=ami_secret, ping_interval=5.0, reconnect_min=0.2,
                                reconnect_max=2.0),
                bitrix24=Bitrix24Settings(webhook_url=portal.webhook_url, default_user_id=1),
                http=HttpSettings(port=0, application_token=token),
                storage=StorageSettings(path=Path(tmp) / "bridge.sqlite3"),
                recordings=RecordingsSettings(enabled=False),
                log=LogSettings(level="warning", format="console"),
            )
            view = LiveView(out, portal)
            bridge = Bridge(settings, event_observers=[view.on_event])
            stop = asyncio.Event()
            ready = asyncio.Event()
            runner = asyncio.create_task(bridge.run(stop.wait(), ready=lambda _b: ready.set()))
            follower = asyncio.create_task(view.follow_portal())
            try:
                await asyncio.wait_for(ready.wait(), 30)
                assert bridge.web_port is not None
                print(f"demo: bridge ready (HTTP on port {bridge.web_port}); replaying {len(TRACES)} real traces, "
                      f"then {calls} synthetic calls and one click-to-call", file=out)
                started = time.monotonic()
                for name in TRACES:
                    await ami.play_trace(name, speed=speed)
                await _click_to_call(bridge.web_port, token, portal)
                remaining = max(1.0, duration - (time.monotonic() - started))
                await ami.run_load(calls=calls, rate=max(0.5, calls / remaining), templates=SYNTHETIC_TEMPLATES,
                                   speed=speed)
                await _settle(bridge, timeout=max(30.0, duration))
                dead = bridge.outbox.dead_count() if bridge.outbox is not None else 0
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
                stop.set()
                await runner
            _summary_table(out, view, portal, dead)
    return 0


async def _settle(bridge: Bridge, *, timeout: float) -> None:
    """Wait until the bridge has been idle (no live call, nothing to send) for a moment, or the timeout passes."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline and quiet < 4:
        quiet = quiet + 1 if bridge.idle() else 0
        await asyncio.sleep(0.25)


def _summary_table(out: TextIO, view: LiveView, portal: Bitrix24Simulator, dead: int) -> None:
    dispositions = Counter(e.call.disposition.value for e in view.ended)
    methods = Counter(r.method for r in portal.requests)
    statuses = Counter(r.http_status for r in portal.requests)
    finished = sum(1 for c in portal.portal.calls.values() if not c.live)
    print("\n=== summary ===", file=out)
    print(f"calls seen on the PBX: {len(view.ended)}  "
          + ", ".join(f"{k} {v}" for k, v in sorted(dispositions.items())), file=out)
    print(f"portal requests: {len(portal.requests)}  " + ", ".join(f"{k} {v}" for k, v in sorted(methods.items())),
          file=out)
    print("portal answers: " + ", ".join(f"HTTP {k}: {v}" for k, v in sorted(statuses.items())), file=out)
    print(f"calls registered in the portal: {len(portal.portal.calls)}, finished: {finished}", file=out)
    print(f"dead letters: {dead}  (internal calls are not sent to Bitrix24 by default; recordings are off in the "
          "demo because the traces' files are not on this machine)", file=out)
