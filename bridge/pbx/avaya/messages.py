"""DMCC XML documents AES sends us (responses, errors, events) as plain frozen data. Pure, no I/O.

`bridge.pbx.avaya.decode.parse_message` turns one document into one of these classes (or `Unknown`).

Element names and where they come from (see requests.py for the legend):
- vendor (f-me/dmcc `DMCC/XML/Response.hs`, rresender/csta-integration, psco-tech csta): StartApplicationSession
  Pos/NegResponse (sessionID, actualProtocolVersion, actualSessionDuration), ResetApplicationSessionTimer
  PosResponse, StopApplicationSessionPosResponse, GetDeviceIdResponse/GetThirdPartyDeviceIdResponse (device),
  MonitorStartResponse (monitorCrossRefID), MakeCallResponse (callingDevice/callID, globallyUniqueCallLinkageID),
  CSTAErrorCode (operation, security, stateIncompatibility, ...), DeliveredEvent (connection, alertingDevice,
  callingDevice, calledDevice, lastRedirectionDevice, cause, distributingVDN), EstablishedEvent
  (establishedConnection, answeringDevice), OriginatedEvent (originatedConnection), FailedEvent (failedConnection),
  ConnectionClearedEvent (droppedConnection, releasingDevice), HeldEvent (heldConnection), RetrievedEvent
  (retrievedConnection), TransferedEvent and ConferencedEvent (primaryOldCall, secondaryOldCall) - note ECMA-323's
  spelling "Transfered".
- ECMA-323, assumed for AES: NegResponse errorCode/definedError texts, failingDevice, holdingDevice,
  retrievingDevice, transferringDevice, transferredToDevice, transferredConnections/connectionListItem/
  newConnection, conferencingDevice, addedParty, conferenceConnections, DivertedEvent (connection, divertingDevice,
  newDestination), CallClearedEvent (clearedCall), SnapshotDeviceResponse (crossRefIDorSnapshotData/snapshotData/
  snapshotDeviceResponseInfo/connectionIdentifier + localCallState), a server-sent StopApplicationSession.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "EVENT_TYPES", "CallClearedEvent", "ConferencedEvent", "ConnectionClearedEvent", "CstaError", "DeliveredEvent",
    "DeviceIdResponse", "DivertedEvent", "DmccEvent", "DmccMessage", "EstablishedEvent", "FailedEvent", "HeldEvent",
    "MakeCallResponse", "MonitorStartResponse", "MonitorStopResponse", "OriginatedEvent", "ResetTimerResponse",
    "RetrievedEvent", "SessionNegative", "SessionStarted", "SessionStopped", "SnapshotDeviceResponse",
    "SnapshotItem", "StopSessionResponse", "TransferredEvent", "Unknown", "device_number",
]


# ---- responses -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SessionStarted:
    session_id: str
    protocol_version: str
    session_duration: int | None


@dataclass(frozen=True, slots=True)
class SessionNegative:
    """A ...NegResponse of the session services; `request` names which (StartApplicationSession, ...)."""

    request: str
    error: str


@dataclass(frozen=True, slots=True)
class ResetTimerResponse:
    session_duration: int | None


@dataclass(frozen=True, slots=True)
class StopSessionResponse:
    pass


@dataclass(frozen=True, slots=True)
class SessionStopped:
    """AES ended our session on its own (timer expired, administrator, shutdown)."""

    session_id: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class DeviceIdResponse:
    device_id: str


@dataclass(frozen=True, slots=True)
class MonitorStartResponse:
    monitor_id: str


@dataclass(frozen=True, slots=True)
class MonitorStopResponse:
    pass


@dataclass(frozen=True, slots=True)
class SnapshotItem:
    call_id: str
    device_id: str | None
    states: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SnapshotDeviceResponse:
    items: tuple[SnapshotItem, ...]


@dataclass(frozen=True, slots=True)
class MakeCallResponse:
    call_id: str
    device_id: str | None
    ucid: str | None


@dataclass(frozen=True, slots=True)
class CstaError:
    """CSTAErrorCode: `category` is the child element (operation, security, ...), `value` its text."""

    category: str
    value: str

    def __str__(self) -> str:
        return f"{self.category}/{self.value}" if self.value else self.category


@dataclass(frozen=True, slots=True)
class Unknown:
    name: str


# ---- events (all carry the monitorCrossRefID of the monitor that reported them) -----------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveredEvent:
    monitor_id: str
    call_id: str
    connection_device: str | None
    alerting: str | None
    calling: str | None
    called: str | None
    last_redirection: str | None = None
    vdn: str | None = None
    ucid: str | None = None
    cause: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EstablishedEvent:
    monitor_id: str
    call_id: str
    connection_device: str | None
    answering: str | None
    calling: str | None
    called: str | None
    ucid: str | None = None
    cause: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OriginatedEvent:
    monitor_id: str
    call_id: str
    connection_device: str | None
    calling: str | None
    called: str | None
    ucid: str | None = None
    cause: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedEvent:
    monitor_id: str
    call_id: str
    connection_device: str | None
    failing: str | None
    called: str | None
    cause: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClearedEvent:
    monitor_id: str
    call_id: str
    connection_device: str | None
    releasing: str | None
    cause: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallClearedEvent:
    monitor_id: str
    call_id: str
    cause: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DivertedEvent:
    monitor_id: str
    call_id: str
    connection_device: str | None
    diverting: str | None
    new_destination: str | None
    cause: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldEvent:
    monitor_id: str
    call_id: str
    connection_device: str | None
    device: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrievedEvent:
    monitor_id: str
    call_id: str
    connection_device: str | None
    device: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferredEvent:
    monitor_id: str
    primary_old_call: str | None
    secondary_old_call: str | None
    transferring: str | None
    transferred_to: str | None
    new_call_ids: tuple[str, ...] = ()
    cause: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConferencedEvent:
    monitor_id: str
    primary_old_call: str | None
    secondary_old_call: str | None
    conferencing: str | None
    added_party: str | None
    new_call_ids: tuple[str, ...] = ()
    cause: str | None = None


DmccEvent: TypeAlias = (
    DeliveredEvent | EstablishedEvent | OriginatedEvent | FailedEvent | ConnectionClearedEvent | CallClearedEvent
    | DivertedEvent | HeldEvent | RetrievedEvent | TransferredEvent | ConferencedEvent
)
EVENT_TYPES = (DeliveredEvent, EstablishedEvent, OriginatedEvent, FailedEvent, ConnectionClearedEvent, CallClearedEvent,
               DivertedEvent, HeldEvent, RetrievedEvent, TransferredEvent, ConferencedEvent)
DmccMessage: TypeAlias = (
    DmccEvent | SessionStarted | SessionNegative | ResetTimerResponse | StopSessionResponse | SessionStopped
    | DeviceIdResponse | MonitorStartResponse | MonitorStopResponse | SnapshotDeviceResponse | MakeCallResponse
    | CstaError | Unknown
)


def device_number(device_id: str | None) -> str | None:
    """The dialable part of a DMCC device ID ("201:CM1:10.0.0.5:0" -> "201"); None when absent or blank."""
    if not device_id:
        return None
    number = device_id.split(":", 1)[0].strip()
    return number or None
