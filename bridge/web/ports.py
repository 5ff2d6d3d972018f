"""What the web layer needs from the rest of the bridge, as small protocols (the composition root wires them).

Keeping these here lets `bridge.web` be built and tested without the AMI connection, the Bitrix24 client, the
directory or the outbox, and keeps those parts free of HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from bridge.model import CallEvent, OriginateRequest
from bridge.pbx.base import Health


class Originator(Protocol):
    async def originate(self, request: OriginateRequest) -> None:
        """Ring the agent, then dial; raise `bridge.errors.OriginateError` when the PBX refuses."""
        ...


class Directory(Protocol):
    def extension_for_user(self, user_id: int) -> str | None:
        """The extension of a Bitrix24 user, from the cached directory; None when the user has none."""
        ...


class EventSink(Protocol):
    async def submit(self, event: CallEvent) -> None:
        """Hand a CallEvent to the same pipeline PBX events go through (policy -> outbox)."""
        ...


class CallbackRegistrar(Protocol):
    async def register_callback(self, phone: str, line: str | None, crm_entity_type: str | None,
                                crm_entity_id: int | None, user_id: int | None) -> str:
        """Register a TYPE 4 (callback) call in Bitrix24; return its CALL_ID."""
        ...


class Installer(Protocol):
    async def install(self, payload: Mapping[str, str]) -> None:
        """Store the tokens of an ONAPPINSTALL payload (flat form keys such as `auth[access_token]`)."""
        ...

    async def bind_events(self, url: str | None) -> None:
        """`event.bind` the telephony events to `url`; None binds them offline (`event.offline.get`)."""
        ...


class OfflineEventSource(Protocol):
    async def fetch_offline_events(self) -> list[Mapping[str, str]]:
        """Queued events as flat form mappings (`event`, `data[CALL_ID]`, ...); see `events.flatten_form`."""
        ...


class SiteRouter(Protocol):
    def route(self, extension: str) -> str | None:
        """The id of another site whose PBX hosts `extension`, or None when it is local."""
        ...

    async def publish_originate(self, site: str, request: OriginateRequest) -> None:
        """Send the originate to that site (MQTT); raise on failure."""
        ...


HealthSource = Callable[[], Mapping[str, Health]]
# Returns (body, content type), e.g. prometheus_client.generate_latest() and CONTENT_TYPE_LATEST.
MetricsRenderer = Callable[[], tuple[bytes, str]]
