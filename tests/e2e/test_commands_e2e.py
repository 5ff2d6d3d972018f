"""`b24-bridge check` and `b24-bridge status` against the simulators and a running bridge (real TCP and HTTP)."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from bridge.check import run_check
from bridge.config import AmiSettings, Bitrix24Settings, HttpSettings
from bridge.errors import ConfigError
from bridge.status import print_status
from tests.e2e.conftest import running_bridge, settle, simulators


async def test_check_passes_against_a_working_pbx_and_portal(tmp_path: Path) -> None:
    async with simulators() as sims:
        out = io.StringIO()
        code = await run_check(sims.settings(tmp_path), offline=False, out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "FAIL" not in text
    assert "pbx (asterisk)" in text and "logged in" in text
    assert "11 active users with an extension" in text
    assert "telephony.externalLine.get answered" in text
    # Read-only: nothing was registered, shown or finished.
    assert [r.method for r in sims.portal.requests if r.method not in ("user.get", "telephony.externalline.get")] == []


async def test_check_names_what_fails_and_exits_1(tmp_path: Path) -> None:
    async with simulators() as sims:
        good = sims.settings(tmp_path)
        bad = good.model_copy(update={
            "ami": good.ami.model_copy(update={"secret": SecretStr("not-the-secret")}),
            "bitrix24": good.bitrix24.model_copy(update={
                "webhook_url": SecretStr(sims.portal.webhook_url.replace(sims.portal.webhook_secret, "wrong"))}),
        })
        out = io.StringIO()
        code = await run_check(bad, offline=False, out=out)
    text = out.getvalue()
    assert code == 1
    pbx = next(line for line in text.splitlines() if "pbx (asterisk)" in line)
    assert pbx.startswith("FAIL") and "login failed" in pbx
    portal = next(line for line in text.splitlines() if "bitrix24 user.get" in line)
    assert portal.startswith("FAIL") and "credentials" in portal.lower()
    assert sims.ami.sessions == 0  # the check logged nothing in and left nothing running


async def test_offline_check_contacts_nothing_and_reports_missing_settings(tmp_path: Path) -> None:
    async with simulators() as sims:
        settings = sims.settings(tmp_path).model_copy(update={"ami": AmiSettings(port=sims.ami.port),
                                                              "bitrix24": Bitrix24Settings()})
        out = io.StringIO()
        code = await run_check(settings, offline=True, out=out)
    text = out.getvalue()
    assert code == 1
    assert "ami.secret" in text and "bitrix24.webhook_url" in text
    assert sims.portal.requests == [] and sims.ami.actions == []


async def test_status_prints_the_running_bridge_and_fails_when_nothing_runs(tmp_path: Path) -> None:
    async with simulators() as sims:
        async with running_bridge(sims.settings(tmp_path)) as bridge:
            await sims.ami.play_trace("inbound_answered", speed=200)
            await settle(bridge)
            assert bridge.web_port is not None
            here = bridge.settings.model_copy(update={"http": HttpSettings(port=bridge.web_port)})
            out = io.StringIO()
            code = await print_status(here, out=out)
            raw = io.StringIO()
            assert await print_status(here, out=raw, as_json=True) == 0
            async with aiohttp.ClientSession() as session, \
                    session.get(f"http://127.0.0.1:{bridge.web_port}/metrics") as response:
                metrics = await response.text()
        gone = io.StringIO()
        code_gone = await print_status(here, out=gone)
    text = out.getvalue()
    assert code == 0
    assert "ok    pbx" in text and "ok    portal" in text and "ok    directory" in text
    assert "calls in progress: 0" in text
    assert "answered" in text and "79161110001" in text  # the call just made, under "recently ended"
    assert '"dead_letters": 0' in raw.getvalue()
    assert code_gone == 1 and "not reachable" in gone.getvalue()
    # The parts' own counters reach /metrics: AMI events read, portal requests made.
    assert sample(metrics, "b24bridge_pbx_events_total") > 0
    assert sample(metrics, "b24bridge_portal_requests_total{") >= 2  # user.get, then the call's request(s)


def sample(exposition: str, prefix: str) -> float:
    """The sum of every sample whose line starts with `prefix` (a name, or a name and the start of its labels)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
              if line.startswith(prefix) and (prefix.endswith("{") or line[len(prefix)] in " {")]
    assert values, f"{prefix} not in /metrics"
    return sum(values)


async def test_a_busy_http_port_is_a_configuration_error_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with simulators() as sims:
            settings = sims.settings(tmp_path).model_copy(update={"http": HttpSettings(port=port)})
            with pytest.raises(ConfigError) as caught:
                async with running_bridge(settings):
                    pass
            assert sims.ami.sessions == 0  # everything opened before the failure was closed again
    assert caught.value.key == "http.port" and str(port) in str(caught.value)
