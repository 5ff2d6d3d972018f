"""What happens when the portal installs the local app: keep its tokens, then bind the telephony events.

The web layer calls this (`bridge.web.ports.Installer`). Binding is idempotent: handlers already bound are skipped,
because every app update removes them and the installer runs again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog

from bridge.crm.bitrix24.client import Bitrix24Client
from bridge.crm.bitrix24.errors import Bitrix24ApiError

__all__ = ["TELEPHONY_EVENTS", "AppInstaller"]

log = structlog.get_logger(__name__)

TELEPHONY_EVENTS = ("ONEXTERNALCALLSTART", "ONEXTERNALCALLBACKSTART")


class AppInstaller:
    def __init__(self, client: Bitrix24Client, *, events: Sequence[str] = TELEPHONY_EVENTS) -> None:
        self._client = client
        self._events = tuple(e.upper() for e in events)

    async def install(self, payload: Mapping[str, str]) -> None:
        """Store the tokens of an ONAPPINSTALL form post (`auth[access_token]`, ...)."""
        if self._client.auth is None:
            raise RuntimeError("the client uses an inbound webhook; there is no app to install")
        await self._client.auth.install(payload)

    async def bind_events(self, url: str | None) -> None:
        """Bind each telephony event to `url` (online), or for `event.offline.get` when `url` is None."""
        bound = {(str(h.get("event", "")).upper(), str(h.get("handler") or ""), int(h.get("offline") or 0))
                 for h in await self._client.event_get()}
        for event in self._events:
            wanted = (event, url or "", 0 if url else 1)
            if wanted in bound:
                continue
            try:
                await self._client.event_bind(event, url or "", "online" if url else "offline")
            except Bitrix24ApiError as exc:
                if "already" not in exc.description.lower():
                    raise
            log.info("bitrix24_event_bound", bitrix_event=event, offline=url is None)
