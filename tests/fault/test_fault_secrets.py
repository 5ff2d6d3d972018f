"""No secret ever reaches a log line: the daemon runs end to end, at debug level, with distinctive secret values.

Two real `b24-bridge run` processes, their whole stderr captured: one with an inbound webhook, an MQTT broker with a
password and a recording signing key; one as an OAuth local app whose tokens expire, get refreshed, are revoked and
re-installed. Both are pushed through the paths that like to print credentials: logins refused, the portal down
(errors carrying URLs), forged events, click-to-call. Then every line is searched for every secret, and so are the
daemon's own `/status` and `/metrics` pages.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp

from bridge.crm.bitrix24.auth import TokenStore, tokens_from_payload
from tests.fault.conftest import (
    AMI_SECRET,
    Daemon,
    Stack,
    daemon_config,
    free_port,
    simulators,
    toml_text,
    until,
)
from tests.mqtt_broker import MosquittoBroker

WEBHOOK_SECRET = "WebhookSecretQ7x9Zt3Lm2"
APP_TOKEN = "AppTokenSecret-5e4d3c2b1a9f"
MQTT_PASSWORD = "MqttPasswordSecret-0a1b2c3d"
SIGNING_KEY = "SigningKeySecret-abcdef123456"
CLIENT_SECRET = "ClientSecretValue-9z8y7x6w5v"


async def _wait_ready(port: int, daemon: Daemon, timeout: float = 20.0) -> None:
    async def up() -> bool:
        try:
            async with aiohttp.ClientSession() as session, \
                    session.get(f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    deadline = asyncio.get_running_loop().time() + timeout
    while not await up():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the daemon never answered /healthz:\n{daemon.output()[-3000:]}")
        await asyncio.sleep(0.1)


async def _post(port: int, form: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session, \
            session.post(f"http://127.0.0.1:{port}/bitrix24/events", data=form) as response:
        await response.read()
        return response.status


async def _pages(port: int) -> str:
    out = []
    async with aiohttp.ClientSession() as session:
        for path in ("/status", "/metrics", "/readyz", "/healthz"):
            async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                out.append(await response.text())
    return "\n".join(out)


async def _register_click(stack: Stack, *, user_id: int = 11) -> str:
    """What the portal does first when user 11 clicks a number: register the call (its CALL_ID goes in the event)."""
    register = {"USER_ID": user_id, "PHONE_NUMBER": "+79165550123", "TYPE": 1}
    async with aiohttp.ClientSession() as session, \
            session.post(f"{stack.portal.webhook_url}telephony.externalcall.register", json=register) as response:
        return str((await response.json())["result"]["CALL_ID"])


async def _click_to_call(stack: Stack, port: int, token: str, call_id: str, *, user_id: int = 11) -> int:
    return await _post(port, {"event": "ONEXTERNALCALLSTART", "data[USER_ID]": str(user_id),
                              "data[CALL_ID]": call_id, "data[PHONE_NUMBER_INTERNATIONAL]": "+79165550123",
                              "auth[application_token]": token, "auth[domain]": "sim.example",
                              "auth[member_id]": stack.portal.member_id})


def _leaks(text: str, secrets: Iterable[str]) -> list[str]:
    found = []
    for line in text.splitlines():
        for secret in secrets:
            if secret and secret in line:
                found.append(f"{secret[:6]}...: {line[:300]}")
    return found


def _assert_logged_enough(output: str) -> None:
    """The capture really holds the daemon's debug log (a silent daemon would pass any leak check)."""
    events = [json.loads(line).get("event") for line in output.splitlines() if line.startswith("{")]
    assert len(events) > 50, output[-2000:]
    assert {"ami_connected", "portal_request", "bridge_ready"} <= set(events), sorted(set(events))


async def test_no_secret_in_logs_webhook_mode(tmp_path: Path, mqtt_broker: MosquittoBroker) -> None:
    async with simulators(tmp_path, speed=10.0, webhook_secret=WEBHOOK_SECRET) as stack:
        stack.ami.originate_outcome = "answered"
        port = free_port()
        config = daemon_config(stack.ami, stack.portal, tmp_path, http_port=port, extra={
            "ami": {"auth": "plain"},  # the secret itself crosses the wire in the Login action
            "http": {"application_token": APP_TOKEN},
            "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port, "username": "bridge",
                     "password": MQTT_PASSWORD, "reconnect_min": 0.1, "reconnect_max": 0.5},
            "recordings": {"signing_key": SIGNING_KEY},
            "log": {"level": "debug", "format": "json"},
        })
        path = tmp_path / "config.toml"
        path.write_text(toml_text(config))
        daemon = Daemon(path, tmp_path / "logs")
        await daemon.start()
        try:
            await _wait_ready(port, daemon)
            await until(lambda: stack.ami.sessions >= 2, 10)
            click = await _register_click(stack)
            await stack.driver.burst(6, 6.0)
            # Credentials refused and links lost: the paths whose errors like to quote what was sent.
            stack.ami.refuse_logins = True
            await stack.ami.drop_connections()
            await asyncio.sleep(0.8)
            stack.ami.refuse_logins = False
            await until(lambda: stack.ami.sessions >= 2, 10, message="the daemon did not log in again")
            stack.portal.go_down(1.0)
            await stack.driver.burst(3, 6.0)
            stack.portal.fail_next(2, 401, error="INVALID_CREDENTIALS")
            await asyncio.to_thread(mqtt_broker.stop)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(mqtt_broker.start)
            assert await _post(port, {"event": "ONEXTERNALCALLSTART", "auth[application_token]": "wrong"}) == 401
            assert await _post(port, {"event": "ONAPPINSTALL", "auth[application_token]": APP_TOKEN + "0",
                                      "auth[access_token]": "x" * 12, "auth[refresh_token]": "y" * 12}) == 200
            assert await _click_to_call(stack, port, APP_TOKEN, click) == 200
            await stack.ami.wait_for_action("Originate", timeout=10)
            await until(lambda: sum(1 for c in stack.portal.calls.values() if c.finish) >= 9, 30,
                        message=lambda: f"calls never finished in the portal:\n{daemon.output()[-6000:]}")
            pages = await _pages(port)
        finally:
            code = await daemon.stop()
        output = daemon.output()
    secrets = [AMI_SECRET, WEBHOOK_SECRET, stack.portal.webhook_url, APP_TOKEN, MQTT_PASSWORD, SIGNING_KEY]
    assert code == 0, output[-3000:]
    _assert_logged_enough(output)
    assert not _leaks(output, secrets), "\n".join(_leaks(output, secrets)[:10])
    assert not _leaks(pages, secrets), "\n".join(_leaks(pages, secrets)[:10])


async def test_no_secret_in_logs_oauth_app(tmp_path: Path) -> None:
    async with simulators(tmp_path, speed=10.0, client_secret=CLIENT_SECRET) as stack:
        portal = stack.portal
        issued: list[str] = []
        refresh = portal.oauth.refresh

        def spy(params: Any) -> dict[str, Any]:  # every token pair the portal hands out is a secret to look for
            answer = refresh(params)
            issued.extend([answer["access_token"], answer["refresh_token"]])
            return answer

        portal.oauth.refresh = spy  # type: ignore[method-assign]
        install = portal.issue_tokens()
        issued += [install["auth[access_token]"], install["auth[refresh_token]"]]
        port = free_port()
        config = daemon_config(stack.ami, portal, tmp_path, http_port=port, oauth=True, extra={
            "log": {"level": "debug", "format": "json"}})
        config["http"].pop("application_token")  # the app's token comes with the install
        token_file = Path(config["storage"]["path"]).parent / "tokens.json"
        TokenStore(token_file).save(tokens_from_payload(install))
        path = tmp_path / "config.toml"
        path.write_text(toml_text(config))
        daemon = Daemon(path, tmp_path / "logs")
        await daemon.start()
        try:
            await _wait_ready(port, daemon)
            await until(lambda: stack.ami.sessions >= 2, 10)
            click = await _register_click(stack)
            await stack.driver.burst(4, 6.0)
            portal.expire_tokens()  # next request: expired_token, refresh, retry
            await stack.driver.burst(3, 6.0)
            await until(lambda: portal.refreshes >= 1, 20, message="the daemon never refreshed its tokens")
            # The refresh token is revoked: the bridge must ask for a re-install, then take the new tokens.
            portal.revoke_refresh_tokens()
            portal.expire_tokens()
            await stack.driver.burst(2, 6.0)
            await asyncio.sleep(1.0)
            again = portal.issue_tokens()
            issued += [again["auth[access_token]"], again["auth[refresh_token]"]]
            assert await _post(port, again) == 200
            assert await _post(port, {"event": "ONEXTERNALCALLSTART", "auth[application_token]": "forged"}) == 401
            assert await _click_to_call(stack, port, portal.application_token, click) == 200
            await until(lambda: sum(1 for c in portal.calls.values() if c.finish) >= 9, 40,
                        message=lambda: f"calls never finished in the portal:\n{daemon.output()[-2000:]}")
            pages = await _pages(port)
        finally:
            code = await daemon.stop()
        output = daemon.output()
        saved = json.loads(token_file.read_text())
    secrets = [AMI_SECRET, CLIENT_SECRET, portal.application_token, saved["access_token"], saved["refresh_token"],
               *issued]
    assert code == 0, output[-3000:]
    _assert_logged_enough(output)
    assert portal.refreshes >= 1
    assert not _leaks(output, secrets), "\n".join(_leaks(output, secrets)[:10])
    assert not _leaks(pages, secrets), "\n".join(_leaks(pages, secrets)[:10])
