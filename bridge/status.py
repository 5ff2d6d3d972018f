"""`b24-bridge status`: ask the running daemon for `GET /status` (http.host/http.port) and print it for a human.

The daemon answers /status only to loopback clients, so this runs on the bridge's own machine. A daemon listening on
every address (0.0.0.0 / ::) is asked on the loopback address. Exit 1 when it cannot be reached.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, TextIO

import aiohttp

from bridge.config import Settings

__all__ = ["fetch_status", "format_status", "print_status", "status_url"]

EXIT_OK = 0
EXIT_FAILED = 1
TIMEOUT_SECONDS = 5.0
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def status_url(settings: Settings) -> str:
    host = _ANY_ADDRESS.get(settings.http.host, settings.http.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.http.port}/status"


async def fetch_status(url: str, *, timeout: float = TIMEOUT_SECONDS) -> dict[str, Any]:
    """The daemon's status document; raises OSError/aiohttp.ClientError/ValueError when there is none."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
            session.get(url) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}: {(await response.text())[:200]}")
        body = await response.json()
    if not isinstance(body, dict):
        raise ValueError("the answer is not a JSON object")
    return body


async def print_status(settings: Settings, *, out: TextIO, as_json: bool = False) -> int:
    url = status_url(settings)
    try:
        status = await fetch_status(url)
    except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
        print(f"b24-bridge is not reachable at {url}: {exc or type(exc).__name__}", file=out)
        print("is it running (systemctl status b24-bridge), and do http.host/http.port match its settings?",
              file=out)
        return EXIT_FAILED
    print(json.dumps(status, indent=2, ensure_ascii=False) if as_json else format_status(status), file=out)
    return EXIT_OK


def format_status(status: Mapping[str, Any]) -> str:
    """A readable page: health per part, live calls, outbox depth, dead letters, the last finished calls."""
    lines = [f"b24-bridge ({status.get('pbx', '?')}), up {_duration(status.get('uptime_seconds'))}, "
             f"{status.get('events_seen', 0)} call events seen", "", "health:"]
    for name, raw in _mapping(status.get("health")).items():
        part = _mapping(raw)
        lines.append(f"  {'ok  ' if part.get('ok') else 'DOWN'}  {name:<10} {part.get('detail', '')}")
    calls = _list(status.get("calls_in_progress"))
    lines += ["", f"calls in progress: {len(calls)}"]
    now = time.time()
    for item in calls:
        call = _mapping(item)
        started = call.get("started_at")
        age = _duration(now - started) if isinstance(started, int | float) else "?"
        lines.append(f"  {call.get('call_id', '?'):<24} {call.get('direction') or '-':<9} {call.get('state', '?'):<8} "
                     f"number {call.get('external_number') or '-'}  agent {call.get('agent') or '-'}  for {age}")
    outbox = {k: v for k, v in _mapping(status.get("outbox")).items() if v}
    pending = ", ".join(f"{kind} {count}" for kind, count in sorted(outbox.items())) or "empty"
    lines += ["", f"outbox: {pending}; dead letters: {status.get('dead_letters', 0)}"
              + (" (see: b24-bridge outbox list)" if status.get("dead_letters") else "")]
    dispatcher = _mapping(status.get("dispatcher"))
    if dispatcher:
        lines.append(f"dispatcher: {dispatcher.get('state', '?')}"
                     + (", backing off" if dispatcher.get("backing_off") else "")
                     + (f", last error: {dispatcher['last_error']}" if dispatcher.get("last_error") else ""))
    recent = _list(status.get("recent_calls"))
    if recent:
        lines += ["", "recently ended:"]
        for item in recent[-10:]:
            call = _mapping(item)
            lines.append(f"  {str(call.get('ended_at', '?'))[:19]}  {call.get('direction', '?'):<9} "
                         f"{call.get('disposition', '?'):<9} number {call.get('external_number') or '-'}  "
                         f"agent {call.get('agent') or '-'}  talk {call.get('talk_seconds', 0)}s")
    return "\n".join(lines)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []

