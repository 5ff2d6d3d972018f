"""Every portal request is logged and reported to the metrics hook; slow ones are warnings."""

from __future__ import annotations

import io
import json

import pytest

from bridge.crm.bitrix24 import client as client_module
from bridge.crm.bitrix24.bucket import LeakyBucket
from bridge.crm.bitrix24.client import Bitrix24Client
from bridge.crm.bitrix24.errors import Bitrix24ApiError
from bridge.log import configure_logging
from bridge.sim.bitrix24 import Bitrix24Simulator


async def test_requests_reported_and_slow_ones_warned(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    monkeypatch.setattr(client_module, "SLOW_REQUEST_SECONDS", 0.05)
    seen: list[tuple[str, str, int | None]] = []
    async with Bitrix24Simulator(latency=0.1) as sim:
        client = Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=LeakyBucket(rate=50, burst=20))
        client.request_observer = lambda method, result, status, _seconds: seen.append((method, result, status))
        async with client:
            await client.call("user.get", {"FILTER": {"UF_PHONE_INNER": "101"}})
            with pytest.raises(Bitrix24ApiError):
                await client.call("telephony.externalcall.finish", {"CALL_ID": "externalCall.nope.1", "USER_ID": 5})
    assert seen == [("user.get", "ok", 200), ("telephony.externalcall.finish", "CallNotFound", 400)]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    slow = [entry for entry in lines if entry["event"] == "portal_request_slow"]
    assert [entry["method"] for entry in slow] == ["user.get", "telephony.externalcall.finish"]
    assert all(entry["level"] == "warning" and entry["seconds"] >= 0.05 for entry in slow)
    assert sim.webhook_secret not in stream.getvalue()
