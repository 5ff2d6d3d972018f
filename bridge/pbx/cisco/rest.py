"""Finesse REST client (aiohttp): read a user's Dialogs, place MAKE_CALL, read SystemInfo.

Basic auth per request, because Finesse ties both calls to the signed-in agent (an agent may act only on its own
dialogs). Every aiohttp failure is translated here, once, into `FinesseUnavailableError`; error statuses become
`FinesseApiError` carrying Finesse's `ApiErrors` text. Bodies are size-capped and parsed with the safe XML reader.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp

from bridge.pbx.cisco.dialog import Dialog, make_call_body, parse_api_errors, parse_dialogs
from bridge.pbx.cisco.errors import (
    FinesseApiError,
    FinesseAuthError,
    FinesseUnavailableError,
    XmlRefusedError,
)
from bridge.pbx.cisco.xml import MAX_DOCUMENT_BYTES, local_name, parse_document

__all__ = ["Credentials", "FinesseRest", "SystemInfo", "tls_context"]


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class SystemInfo:
    xmpp_domain: str | None
    pubsub_domain: str | None
    status: str | None


def tls_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
    """Client TLS context: system CAs (or `ca_file`), or no verification when the operator turned it off."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@asynccontextmanager
async def _translate(what: str) -> AsyncIterator[None]:
    try:
        yield
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise FinesseUnavailableError(f"Finesse {what} failed: {type(exc).__name__}") from exc


class FinesseRest:
    """Owns one aiohttp session; use as an async context manager."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, verify_tls: bool = True,
                 ca_file: Path | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl = tls_context(verify_tls, ca_file) if self._base.startswith("https://") else None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> FinesseRest:
        if self._session is not None:
            raise RuntimeError("FinesseRest is already open")
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, *parts: str) -> str:
        return self._base + "/finesse/api/" + "/".join(quote(p, safe="") for p in parts)

    async def _request(self, method: str, url: str, auth: Credentials, body: str | None = None) -> tuple[int, bytes]:
        if self._session is None:
            raise RuntimeError("FinesseRest is not open")
        token = base64.b64encode(f"{auth.user}:{auth.password}".encode()).decode("ascii")
        headers = {"Accept": "application/xml", "Authorization": f"Basic {token}"}
        if body is not None:
            headers["Content-Type"] = "application/xml"
        async with _translate(f"{method} {url.removeprefix(self._base)}"), self._session.request(
            method, url, data=body.encode("utf-8") if body is not None else None, headers=headers,
            ssl=self._ssl if self._ssl is not None else True,
            allow_redirects=False,
        ) as resp:
            data = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
            status = resp.status
        if status >= 400:
            raise _api_error(method, status, data)
        if len(data) > MAX_DOCUMENT_BYTES:
            raise FinesseApiError(f"Finesse {method} answer is too large", status=status)
        return status, data

    async def get_dialogs(self, user_id: str, auth: Credentials) -> tuple[Dialog, ...]:
        """GET /finesse/api/User/{id}/Dialogs: the user's current dialogs (used to resync after a reconnect)."""
        _, data = await self._request("GET", self._url("User", user_id, "Dialogs"), auth)
        try:
            return parse_dialogs(parse_document(data)) if data.strip() else ()
        except XmlRefusedError as exc:
            raise FinesseApiError(f"Finesse Dialogs answer is not acceptable XML: {exc}", status=200) from exc

    async def make_call(self, user_id: str, auth: Credentials, from_address: str, to_address: str,
                        variables: tuple[tuple[str, str], ...] = ()) -> None:
        """POST MAKE_CALL; returns once Finesse accepted it (202). The dialog arrives as a notification."""
        body = make_call_body(from_address, to_address, variables)
        await self._request("POST", self._url("User", user_id, "Dialogs"), auth, body)

    async def system_info(self, auth: Credentials) -> SystemInfo:
        """GET /finesse/api/SystemInfo: the XMPP domain and pubsub domain to use."""
        _, data = await self._request("GET", self._url("SystemInfo"), auth)
        try:
            root = parse_document(data)
        except XmlRefusedError as exc:
            raise FinesseApiError(f"Finesse SystemInfo answer is not acceptable XML: {exc}", status=200) from exc
        values = {local_name(child.tag): (child.text or "").strip() or None for child in root}
        return SystemInfo(values.get("xmppDomain"), values.get("xmppPubSubDomain"), values.get("status"))


def _api_error(method: str, status: int, data: bytes) -> FinesseApiError:
    error_type = message = None
    try:
        errors = parse_api_errors(parse_document(data)) if data.strip() else ()
    except XmlRefusedError:
        errors = ()
    if errors:
        error_type, message = errors[0].error_type, errors[0].error_message
    text = f"Finesse {method} refused with {status}" + (f": {error_type}" if error_type else "")
    cls = FinesseAuthError if status == 401 else FinesseApiError
    return cls(text, status=status, error_type=error_type, error_message=message)
