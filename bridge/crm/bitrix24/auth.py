"""OAuth tokens of the local app: what they are, where they live on disk, and how a refresh rotates them.

The refresh token is single-use: once the OAuth server hands out a new one the old is dead, so the new one is written
to disk (0600, temp file + rename) before anything uses it. A crash between refresh and write would otherwise lock the
bridge out until an administrator re-installs the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import structlog

from bridge.crm.bitrix24.errors import Bitrix24AuthError, Bitrix24ReinstallNeeded, Bitrix24Unavailable
from bridge.crm.bitrix24.transport import map_client_errors
from bridge.log import register_secrets

__all__ = ["TokenAuth", "TokenStore", "Tokens", "tokens_from_payload"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    client_endpoint: str
    server_endpoint: str = ""
    member_id: str = ""
    application_token: str = ""
    domain: str = ""
    expires: float = 0.0  # unix time; 0 = unknown
    scope: str = ""
    user_id: str = ""
    status: str = ""

    def secrets(self) -> tuple[str, ...]:
        return self.access_token, self.refresh_token, self.application_token


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def tokens_from_payload(payload: Mapping[str, Any], *, now: float | None = None,
                        previous: Tokens | None = None) -> Tokens:
    """Tokens from an ONAPPINSTALL form (`auth[access_token]`...), its `auth` part, or an OAuth server answer.

    Fields the payload lacks are kept from `previous` (a refresh answer may omit `application_token`).
    """
    flat: dict[str, Any] = {}
    nested = payload.get("auth")
    if isinstance(nested, Mapping):
        flat.update(nested)
    for key, value in payload.items():
        if key.startswith("auth[") and key.endswith("]"):
            flat[key[5:-1]] = value
        elif key not in flat and not isinstance(value, Mapping):
            flat[key] = value
    access, refresh = _text(flat.get("access_token")), _text(flat.get("refresh_token"))
    if not access or not refresh:
        raise ValueError("payload lacks access_token or refresh_token")
    endpoint = _text(flat.get("client_endpoint")) or (previous.client_endpoint if previous else "")
    if not endpoint:
        raise ValueError("payload lacks client_endpoint")
    expires = _expires(flat, now if now is not None else time.time())
    base = previous or Tokens(access_token=access, refresh_token=refresh, client_endpoint=endpoint)
    return replace(
        base,
        access_token=access,
        refresh_token=refresh,
        client_endpoint=endpoint if endpoint.endswith("/") else endpoint + "/",
        server_endpoint=_text(flat.get("server_endpoint")) or base.server_endpoint,
        member_id=_text(flat.get("member_id")) or base.member_id,
        application_token=_text(flat.get("application_token")) or base.application_token,
        domain=_text(flat.get("domain")) or base.domain,
        expires=expires,
        scope=_text(flat.get("scope")) or base.scope,
        user_id=_text(flat.get("user_id")) or base.user_id,
        status=_text(flat.get("status")) or base.status,
    )


def _expires(flat: Mapping[str, Any], now: float) -> float:
    for key, offset in (("expires", 0.0), ("expires_in", now)):
        try:
            value = float(flat.get(key) or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return value + offset
    return 0.0


class TokenStore:
    """A small JSON file, mode 0600, replaced atomically on every save."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Tokens | None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("bitrix24_token_file_unreadable", path=str(self.path), error=str(exc))
            return None
        if not isinstance(raw, dict):
            return None
        known = {f.name for f in fields(Tokens)}
        try:
            tokens = Tokens(**{k: v for k, v in raw.items() if k in known})
        except TypeError:
            return None
        if not tokens.access_token or not tokens.refresh_token or not tokens.client_endpoint:
            return None
        register_secrets(tokens.secrets())
        return tokens

    def save(self, tokens: Tokens) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(asdict(tokens), indent=2, sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(prefix=".tokens.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class TokenAuth:
    """The app's credentials and tokens; the client asks it for the current token and for a refresh."""

    def __init__(self, *, client_id: str, client_secret: str, store: TokenStore | None,
                 tokens: Tokens | None = None, oauth_server: str = "https://oauth.bitrix.info/") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.store = store
        self.oauth_server = oauth_server
        self._tokens = tokens if tokens is not None else (store.load() if store else None)
        self.reinstall_needed = False
        self._reinstall_logged = False
        self.refresh_lock = asyncio.Lock()
        register_secrets([client_secret, *(self._tokens.secrets() if self._tokens else ())])

    @property
    def tokens(self) -> Tokens | None:
        return self._tokens

    @property
    def access_token(self) -> str | None:
        return self._tokens.access_token if self._tokens else None

    @property
    def application_token(self) -> str | None:
        return self._tokens.application_token if self._tokens else None

    @property
    def member_id(self) -> str | None:
        return self._tokens.member_id if self._tokens else None

    def require(self) -> Tokens:
        if self._tokens is None:
            raise Bitrix24ReinstallNeeded("no OAuth tokens: install the local app on the portal", error="no_tokens")
        if self.reinstall_needed:
            raise Bitrix24ReinstallNeeded("the refresh token was refused: re-install the app", error="invalid_grant")
        return self._tokens

    def expiring(self, *, now: float | None = None, skew: float = 30.0) -> bool:
        tokens = self._tokens
        if tokens is None or tokens.expires <= 0:
            return False
        return (now if now is not None else time.time()) >= tokens.expires - skew

    def refresh_url(self) -> str:
        """`<oauth host>/oauth/token/?grant_type=refresh_token&...`; the host comes from the tokens' server_endpoint."""
        tokens = self.require()
        parts = urlsplit(tokens.server_endpoint or self.oauth_server)
        origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else self.oauth_server.rstrip("/")
        query = urlencode({"grant_type": "refresh_token", "client_id": self.client_id,
                           "client_secret": self.client_secret, "refresh_token": tokens.refresh_token})
        return f"{origin}/oauth/token/?{query}"

    def _persist(self, tokens: Tokens) -> None:
        register_secrets(tokens.secrets())
        if self.store is not None:
            self.store.save(tokens)
        self._tokens = tokens

    def rotate(self, answer: Mapping[str, Any]) -> Tokens:
        """Apply an OAuth server answer: persist first, then use."""
        tokens = tokens_from_payload(answer, previous=self._tokens)
        self._persist(tokens)
        self.reinstall_needed = self._reinstall_logged = False
        return tokens

    def move(self, client_endpoint: str) -> None:
        """The portal moved (HTTP 302): remember the new REST endpoint."""
        if self._tokens is not None and self._tokens.client_endpoint != client_endpoint:
            self._persist(replace(self._tokens, client_endpoint=client_endpoint))

    async def refresh(self, session: aiohttp.ClientSession, *, stale: str) -> bool:
        """Single-flight refresh: True if this call rotated the tokens; False if another caller already had."""
        async with self.refresh_lock:
            if self.require().access_token != stale:
                return False
            with map_client_errors("oauth.token"):
                async with session.get(self.refresh_url(), allow_redirects=False) as resp:
                    status, payload = resp.status, await resp.read()
            self._apply_answer(status, payload)
            return True

    def _apply_answer(self, status: int, payload: bytes) -> None:
        try:
            body = json.loads(payload)
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("access_token") and body.get("refresh_token"):
            try:
                self.rotate(body)
            except ValueError as exc:
                raise Bitrix24Unavailable(f"oauth.token: unusable answer: {exc}", status=status) from exc
            log.info("bitrix24_token_refreshed", member_id=self.member_id)
            return
        error = str(body.get("error") or "") if isinstance(body, dict) else ""
        if error == "invalid_grant":
            self.reinstall_needed = True
            if not self._reinstall_logged:
                self._reinstall_logged = True
                log.error("bitrix24_reinstall_needed", reason="invalid_grant",
                          hint="re-install the local app on the portal to issue new tokens")
            raise Bitrix24ReinstallNeeded("refresh token refused (invalid_grant): re-install the app",
                                          error=error, status=status)
        if status >= 500 or not error:
            raise Bitrix24Unavailable(f"oauth.token: HTTP {status}", status=status, method="oauth.token")
        raise Bitrix24AuthError(f"oauth.token refused: {error}", error=error, status=status)

    async def install(self, payload: Mapping[str, Any]) -> Tokens:
        """Store the tokens of an ONAPPINSTALL post (form keys `auth[...]`, or the `auth` mapping itself)."""
        async with self.refresh_lock:
            tokens = tokens_from_payload(payload)
            self._persist(tokens)
            self.reinstall_needed = self._reinstall_logged = False
        log.info("bitrix24_app_installed", member_id=tokens.member_id, domain=tokens.domain)
        return tokens
