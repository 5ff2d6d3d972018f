"""The Bitrix24 REST client: one aiohttp session, one leaky bucket, webhook or OAuth-app auth.

Sending is a stack with one concern per step: `_request` handles auth (token refresh, one retry), `_send` handles the
bucket, 302 portal moves and classification of the answer. Errors leave as `Bitrix24Error` subclasses only.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import aiohttp
import structlog

from bridge.crm.bitrix24.api import Bitrix24Api
from bridge.crm.bitrix24.auth import TokenAuth, TokenStore
from bridge.crm.bitrix24.bucket import LeakyBucket
from bridge.crm.bitrix24.encoding import batch_command, format_scalar
from bridge.crm.bitrix24.errors import (
    Bitrix24ApiError,
    Bitrix24AuthError,
    Bitrix24CommandPaused,
    Bitrix24MethodPaused,
    Bitrix24RateLimited,
    Bitrix24ReinstallNeeded,
    Bitrix24TokenExpired,
    Bitrix24Unavailable,
    classify_api_error,
)
from bridge.crm.bitrix24.transport import (
    OPERATION_LIMIT,
    Answer,
    interpret,
    map_client_errors,
    moved_base,
    operating_reset_at,
    webhook_secrets,
)
from bridge.errors import Bitrix24Error, ConfigError
from bridge.log import register_secrets
from bridge.pbx.base import Health

if TYPE_CHECKING:
    from bridge.config import Bitrix24Settings

__all__ = ["MAX_BATCH", "BatchResult", "Bitrix24Client", "ClientState"]

log = structlog.get_logger(__name__)

MAX_BATCH = 50
MAX_MOVES = 3
# A portal request slower than this is logged as a warning (operators watch for a struggling portal).
SLOW_REQUEST_SECONDS = 2.0
_BATCH_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_UNREACHABLE_AFTER = 3
AuthState = Literal["ok", "reinstall_needed", "no_tokens", "unknown"]


class ClientState(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Per-key outcome of one `batch` request; a key is in `results` or in `errors` (or in neither after a halt)."""

    results: dict[str, Any]
    errors: dict[str, Bitrix24ApiError]
    totals: dict[str, int] = field(default_factory=dict)
    nexts: dict[str, int] = field(default_factory=dict)


def _keyed(value: Any) -> dict[str, Any]:
    """The portal serialises empty maps as `[]`, and a list-shaped batch as a list."""
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    return {}


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return format_scalar(value)


class Bitrix24Client(Bitrix24Api):
    """`async with Bitrix24Client(...) as b24: await b24.call("user.get", {...})`. Not reusable after close."""

    def __init__(self, *, base_url: str | None, auth: TokenAuth | None, bucket: LeakyBucket, timeout: float = 30.0,
                 user_agent: str = "b24-pbx-bridge") -> None:
        if (base_url is None) == (auth is None):
            raise ValueError("pass base_url (inbound webhook) or auth (OAuth app), exactly one of them")
        if base_url is not None:
            if not base_url.startswith(("https://", "http://")):
                raise ValueError("base_url must be an http(s) URL ending in '/'")
            base_url = base_url if base_url.endswith("/") else base_url + "/"
            register_secrets([base_url, *webhook_secrets(base_url)])
        self._base_url = base_url
        self._auth = auth
        self.bucket = bucket
        self._timeout = timeout
        self._user_agent = user_agent
        self._state = ClientState.UNOPENED
        self._session: aiohttp.ClientSession | None = None
        self._paused: dict[str, float] = {}
        self._reset_at: dict[str, float] = {}
        self._failures = 0
        self._last_error = ""
        self._auth_error: str | None = None
        self._authenticated = False
        self._proactive = True
        self.refreshes = 0
        # Called after every portal request with (method, result, HTTP status, seconds); feeds the metrics.
        self.request_observer: Callable[[str, str, int | None, float], None] | None = None

    @classmethod
    def from_settings(cls, s: Bitrix24Settings, *, token_path: Path) -> Bitrix24Client:
        bucket = LeakyBucket(rate=s.requests_per_second, burst=s.burst)
        if s.webhook_url is not None:
            return cls(base_url=s.webhook_url.get_secret_value(), auth=None, bucket=bucket,
                       timeout=s.request_timeout)
        if not s.client_id or s.client_secret is None:
            raise ConfigError("bitrix24: set webhook_url, or client_id and client_secret of the local app",
                              key="bitrix24.webhook_url")
        auth = TokenAuth(client_id=s.client_id, client_secret=s.client_secret.get_secret_value(),
                         store=TokenStore(token_path), oauth_server=s.oauth_server)
        return cls(base_url=None, auth=auth, bucket=bucket, timeout=s.request_timeout)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Bitrix24Client:
        if self._state is ClientState.OPENED:
            raise RuntimeError("Bitrix24Client is already open; it cannot be entered twice")
        if self._state is ClientState.CLOSED:
            raise RuntimeError("Bitrix24Client was closed; create a new one")
        connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=30.0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout, connect=min(10.0, self._timeout)),
            headers={"User-Agent": self._user_agent, "Accept": "application/json"},
        )
        self._state = ClientState.OPENED
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        self._state = ClientState.CLOSED
        if session is not None:
            await session.close()

    def _open_session(self) -> aiohttp.ClientSession:
        if self._state is not ClientState.OPENED or self._session is None:
            raise RuntimeError(f"Bitrix24Client is {self._state.value}; use it inside 'async with'")
        return self._session

    # --- state ----------------------------------------------------------------------------------------------------

    @property
    def mode(self) -> Literal["webhook", "app"]:
        return "webhook" if self._auth is None else "app"

    @property
    def auth(self) -> TokenAuth | None:
        """The app's tokens (the web layer installs ONAPPINSTALL payloads through `auth.install`)."""
        return self._auth

    @property
    def base_url(self) -> str | None:
        if self._auth is None:
            return self._base_url
        tokens = self._auth.tokens
        return tokens.client_endpoint if tokens else None

    @property
    def auth_state(self) -> AuthState:
        if self._auth is not None:
            if self._auth.reinstall_needed:
                return "reinstall_needed"
            if self._auth.tokens is None:
                return "no_tokens"
        return "ok" if self._authenticated and self._auth_error is None else "unknown"

    def paused_until(self, method: str) -> float | None:
        """Unix time until which the portal refuses `method` (429 OPERATION_TIME_LIMIT), else None."""
        until = self._paused.get(method.lower())
        if until is None:
            return None
        if until <= time.time():
            del self._paused[method.lower()]
            return None
        return until

    def health(self) -> Health:
        state = self.auth_state
        extra: dict[str, Any] = {
            "mode": self.mode, "auth_state": state, "refreshes": self.refreshes,
            "consecutive_failures": self._failures, "bucket_level": round(self.bucket.level, 2),
            "paused_methods": {m: until for m in list(self._paused) if (until := self.paused_until(m))},
        }
        if state == "reinstall_needed":
            return Health(False, "Bitrix24 refused the refresh token: re-install the app on the portal", extra)
        if state == "no_tokens":
            return Health(False, "no Bitrix24 OAuth tokens yet: install the local app on the portal", extra)
        if self._auth_error is not None:
            return Health(False, f"Bitrix24 refused the credentials: {self._auth_error}", extra)
        if self._failures >= _UNREACHABLE_AFTER:
            return Health(False, f"Bitrix24 unreachable: {self._last_error}", extra)
        return Health(True, "ok" if self._authenticated else "no request sent yet", extra)

    # --- public transport ---------------------------------------------------------------------------------------

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        return (await self._request(method, params)).result

    async def call_full(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return (await self._request(method, params)).body

    async def batch(self, commands: Mapping[str, tuple[str, Mapping[str, Any]]], *,
                    halt: bool = False) -> BatchResult:
        """Up to 50 commands in one HTTP request; `$result[key][FIELD]` values refer to earlier commands."""
        if len(commands) > MAX_BATCH:
            raise ValueError(f"a batch holds at most {MAX_BATCH} commands, got {len(commands)}; split it")
        if not commands:
            return BatchResult({}, {})
        cmd: dict[str, str] = {}
        for key, (method, params) in commands.items():
            if not _BATCH_KEY.match(key):
                raise ValueError(f"batch key {key!r} must be 1-64 characters of letters, digits, '_', '.', '-'")
            if (until := self.paused_until(method)) is not None:
                raise Bitrix24MethodPaused(f"{method} is paused by the portal", method=method, until=until)
            cmd[key] = batch_command(method, params)
        body = (await self._request("batch", {"halt": int(halt), "cmd": cmd})).body
        outer = body.get("result") if isinstance(body.get("result"), dict) else {}
        assert isinstance(outer, dict)
        times = _keyed(outer.get("result_time"))
        for key, info in times.items():
            if key in commands:
                self._note_time(commands[key][0], info)
        errors: dict[str, Bitrix24ApiError] = {}
        for key, raw in _keyed(outer.get("result_error")).items():
            method = commands[key][0] if key in commands else "batch"
            errors[key] = self._command_error(method, raw, times.get(key))
        return BatchResult(
            results=_keyed(outer.get("result")),
            errors=errors,
            totals={k: v for k, v in _keyed(outer.get("result_total")).items() if isinstance(v, int)},
            nexts={k: v for k, v in _keyed(outer.get("result_next")).items() if isinstance(v, int)},
        )

    def _command_error(self, method: str, raw: Any, time_info: Any) -> Bitrix24ApiError:
        code = str(raw.get("error") or "") if isinstance(raw, dict) else ""
        text = str(raw.get("error_description") or "") if isinstance(raw, dict) else str(raw)
        if code == OPERATION_LIMIT:
            until = operating_reset_at(time_info) or self._reset_at.get(method.lower()) or 0.0
            until = until if until > time.time() else time.time() + 60.0
            self._pause(method, until)
            return Bitrix24CommandPaused(code, text, method=method, until=until)
        return classify_api_error(code, text, status=None, method=method)

    async def post_file(self, url: str, path: Path, filename: str, field: str) -> dict[str, Any]:
        session = self._open_session()
        handle = await asyncio.to_thread(path.open, "rb")
        try:
            form = aiohttp.FormData()
            form.add_field(field, handle, filename=filename, content_type=_audio_type(filename))
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=self._timeout)
            async with self.bucket.slot():
                with map_client_errors("upload"):
                    async with session.post(url, data=form, timeout=timeout, allow_redirects=False) as resp:
                        status, payload = resp.status, await resp.read()
        except Bitrix24Unavailable as exc:
            self._note_failure(exc)
            raise
        finally:
            await asyncio.to_thread(handle.close)
        return self._classify("upload", status, payload).body

    # --- internals -----------------------------------------------------------------------------------------------

    async def _request(self, method: str, params: Mapping[str, Any] | None) -> Answer:
        self._open_session()
        if (until := self.paused_until(method)) is not None:
            raise Bitrix24MethodPaused(f"{method} is paused by the portal until {until:.0f}", method=method,
                                       until=until)
        payload = dict(params or {})
        if self._auth is None:
            try:
                return await self._send(method, payload, None)
            except Bitrix24TokenExpired as exc:  # a webhook has no token to refresh
                self._auth_error = exc.error
                raise Bitrix24AuthError(f"{method}: {exc.error}: {exc}", error=exc.error, status=exc.status) from exc
        token = await self._current_token()
        try:
            return await self._send(method, payload, token)
        except Bitrix24TokenExpired:
            await self._refresh(stale=token)
        try:
            return await self._send(method, payload, await self._current_token())
        except Bitrix24TokenExpired as exc:
            raise Bitrix24AuthError(f"{method}: token refused right after a refresh", error=exc.error,
                                    status=exc.status) from exc

    async def _current_token(self) -> str:
        """The access token; refreshed ahead of time when it is about to expire (unless our clock is off)."""
        assert self._auth is not None
        tokens = self._auth.require()
        if self._proactive and self._auth.expiring():
            try:
                await self._refresh(stale=tokens.access_token)
            except Bitrix24Unavailable as exc:  # the old token may still work; a 401 will tell
                log.warning("bitrix24_token_refresh_deferred", error=str(exc)[:200])
                return tokens.access_token
            tokens = self._auth.require()
            if self._auth.expiring():
                # Fresh tokens that look expired mean our clock is ahead: rely on expired_token answers only.
                self._proactive = False
                log.warning("bitrix24_clock_skew", expires=tokens.expires, now=round(time.time()))
        return tokens.access_token

    async def _send(self, method: str, payload: dict[str, Any], token: str | None) -> Answer:
        session = self._open_session()
        if token is not None:
            payload = {**payload, "auth": token}
        data = json.dumps(payload, default=_json_default, ensure_ascii=False).encode()
        for _ in range(MAX_MOVES + 1):
            base = self.base_url
            if base is None:
                raise Bitrix24ReinstallNeeded("no REST endpoint known: install the app", error="no_tokens")
            try:
                async with self.bucket.slot():
                    started = time.monotonic()
                    with map_client_errors(method):
                        async with session.post(base + method, data=data, allow_redirects=False,
                                                headers={"Content-Type": "application/json"}) as resp:
                            status, location = resp.status, resp.headers.get("Location")
                            body = await resp.read()
            except Bitrix24Unavailable as exc:
                self._note_failure(exc)
                self._report(method, "unavailable", None, started)
                raise
            if status in (301, 302, 303, 307, 308) and location:
                self._move(base, location, method)
                continue
            try:
                answer = self._classify(method, status, body)
            except Bitrix24Error as exc:
                self._report(method, type(exc).__name__.removeprefix("Bitrix24"), status, started)
                raise
            self._report(method, "ok", status, started)
            return answer
        moved = Bitrix24Unavailable(f"{method}: too many portal redirects", method=method, status=302)
        self._note_failure(moved)
        raise moved

    def _report(self, method: str, result: str, status: int | None, started: float) -> None:
        """One log line per portal request (a warning past SLOW_REQUEST_SECONDS) and the metrics hook."""
        seconds = time.monotonic() - started
        if seconds > SLOW_REQUEST_SECONDS:
            log.warning("portal_request_slow", method=method, status=status, result=result, seconds=round(seconds, 3))
        else:
            log.info("portal_request", method=method, status=status, result=result, seconds=round(seconds, 3))
        if self.request_observer is not None:
            self.request_observer(method, result, status, seconds)

    def _classify(self, method: str, status: int, body: bytes) -> Answer:
        try:
            answer = interpret(method, status, body, paused_until=self._reset_at.get(method.lower()),
                               rate=self.bucket.rate)
        except Bitrix24RateLimited:
            self.bucket.saturate()
            raise
        except Bitrix24MethodPaused as exc:
            self._pause(method, exc.until)
            raise
        except Bitrix24TokenExpired:
            raise
        except Bitrix24AuthError as exc:
            self._auth_error = exc.error or str(exc)
            log.error("bitrix24_credentials_refused", method=method, error=exc.error, status=exc.status)
            raise
        except Bitrix24Unavailable as exc:
            self._note_failure(exc)
            raise
        except Bitrix24Error:
            self._note_reached()
            raise
        self._note_reached()
        self._note_time(method, answer.time)
        return answer

    def _note_reached(self) -> None:
        self._failures = 0
        self._authenticated = True
        self._auth_error = None

    def _note_failure(self, exc: Bitrix24Error) -> None:
        self._failures += 1
        self._last_error = str(exc)[:300]

    def _note_time(self, method: str, info: Any) -> None:
        reset = operating_reset_at(info)
        if reset is not None:
            self._reset_at[method.lower()] = reset

    def _pause(self, method: str, until: float) -> None:
        self._paused[method.lower()] = until
        log.warning("bitrix24_method_paused", method=method, until=round(until, 1),
                    seconds=round(until - time.time(), 1))

    def _move(self, base: str, location: str, method: str) -> None:
        new_base = moved_base(base, location, method)
        if urlsplit(base).scheme == "https" and urlsplit(new_base).scheme != "https":
            refused = Bitrix24Unavailable(f"{method}: refusing a redirect from https to plain http", status=302,
                                          method=method)
            self._note_failure(refused)
            raise refused
        log.warning("bitrix24_portal_moved", old_host=urlsplit(base).netloc, new_host=urlsplit(new_base).netloc)
        if self._auth is None:
            register_secrets([new_base, *webhook_secrets(new_base)])
            self._base_url = new_base
        else:
            self._auth.move(new_base)

    async def _refresh(self, *, stale: str) -> None:
        assert self._auth is not None
        if await self._auth.refresh(self._open_session(), stale=stale):
            self.refreshes += 1


def _audio_type(filename: str) -> str:
    return "audio/mpeg" if filename.lower().endswith(".mp3") else "audio/wav"
