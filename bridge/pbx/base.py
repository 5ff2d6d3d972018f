"""What every PBX adapter offers, so that policy, outbox, dispatcher, MQTT and HTTP never know which PBX is behind.

An adapter is an async context manager: entering it starts its background loops (connect, login, keep-alive,
reconnect, resync); leaving it stops them. While entered it yields normalized `CallEvent`s in PBX order and accepts
`OriginateRequest`s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from bridge.model import CallEvent, OriginateRequest


@dataclass(frozen=True, slots=True)
class Health:
    """One part's answer to "are you well?"; `/readyz` and the systemd watchdog combine these."""

    ok: bool
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class PbxAdapter(Protocol):
    #: Short name of the PBX kind, written into `CallRecord.pbx` ("asterisk", "avaya", "cisco").
    kind: str

    async def __aenter__(self) -> PbxAdapter: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def events(self) -> AsyncIterator[CallEvent]:
        """Normalized events in PBX order, across reconnects; ends only when the adapter is closed."""
        ...

    async def originate(self, request: OriginateRequest) -> None:
        """Place the call (agent first, then `request.number`); return once the PBX has accepted it.

        Raises `OriginateError` when the PBX refuses at once. A later failure (agent never answers, number
        unreachable) arrives as an ordinary `CallEnded` carrying `crm_call_id`, so the CRM call is always finished.
        """
        ...

    def health(self) -> Health: ...
