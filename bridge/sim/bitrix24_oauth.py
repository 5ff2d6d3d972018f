"""The simulator's OAuth side: token pairs that expire, single-use refresh tokens, the `/oauth/token/` answer.

No HTTP here; `bridge.sim.bitrix24` routes requests to `check()` and `refresh()`.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from bridge.sim.bitrix24_portal import SimApiError

__all__ = ["TokenIssuer"]


class TokenIssuer:
    def __init__(self, *, client_id: str, client_secret: str, lifetime: float, member_id: str,
                 endpoints: Callable[[], tuple[str, str, str]]) -> None:
        """`endpoints()` gives (domain, client_endpoint, server_endpoint) as they are at issue time."""
        self.client_id = client_id
        self.client_secret = client_secret
        self.lifetime = lifetime
        self.member_id = member_id
        self.application_token = secrets.token_hex(16)
        self._endpoints = endpoints
        self._access: dict[str, float] = {}  # access token -> expiry (unix)
        self._refresh: set[str] = set()
        self.refreshes = 0

    def _new_pair(self) -> dict[str, Any]:
        access, refresh = secrets.token_hex(20), secrets.token_hex(20)
        expires = time.time() + self.lifetime
        self._access[access] = expires
        self._refresh.add(refresh)
        domain, client_endpoint, server_endpoint = self._endpoints()
        return {"access_token": access, "refresh_token": refresh, "expires": int(expires),
                "expires_in": int(self.lifetime), "scope": "crm,telephony,user,basic", "domain": domain,
                "server_endpoint": server_endpoint, "status": "L", "client_endpoint": client_endpoint,
                "member_id": self.member_id, "user_id": 1, "application_token": self.application_token}

    def install_payload(self) -> dict[str, str]:
        """A fresh token pair in the shape of an ONAPPINSTALL form post."""
        payload = {"event": "ONAPPINSTALL", "data[VERSION]": "1", "data[ACTIVE]": "Y", "data[INSTALLED]": "Y",
                   "data[LANGUAGE_ID]": "en", "ts": str(int(time.time()))}
        payload.update({f"auth[{k}]": str(v) for k, v in self._new_pair().items()})
        return payload

    def check(self, token: Any) -> None:
        """Raise the portal's 401 for a missing, unknown or expired access token."""
        if not isinstance(token, str) or not token:
            raise SimApiError(401, "NO_AUTH_FOUND", "Wrong authorization data")
        expires = self._access.get(token)
        if expires is None:
            raise SimApiError(401, "invalid_token", "The access token provided is invalid.")
        if expires <= time.time():
            raise SimApiError(401, "expired_token", "The access token provided has expired.")

    def refresh(self, params: Mapping[str, str]) -> dict[str, Any]:
        """grant_type=refresh_token: rotate the pair (the old refresh token dies) or raise the OAuth error."""
        if params.get("client_id") != self.client_id or not hmac.compare_digest(
                params.get("client_secret", ""), self.client_secret):
            raise SimApiError(401, "invalid_client", "Invalid client")
        refresh = params.get("refresh_token", "")
        if params.get("grant_type") != "refresh_token" or refresh not in self._refresh:
            raise SimApiError(400, "invalid_grant", "Invalid grant")
        self._refresh.discard(refresh)
        self.refreshes += 1
        return self._new_pair()

    def expire_all(self) -> None:
        for token in self._access:
            self._access[token] = 0.0

    def revoke_refresh_tokens(self) -> None:
        self._refresh.clear()
