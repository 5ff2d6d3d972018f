"""Read one DMCC XML document into the data classes of `messages.py`. Pure, no I/O.

`parse_message(payload)` uses the defused parser (no DTDs, no entities) and raises `XmlRefused` for hostile or broken
input, or for a known message that lacks its key fields; the caller logs and skips it. Documents we do not use come
back as `Unknown`. Element names and their sources are listed in `messages.py`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from bridge.pbx.avaya.messages import (
    CallClearedEvent,
    ConferencedEvent,
    ConnectionClearedEvent,
    CstaError,
    DeliveredEvent,
    DeviceIdResponse,
    DivertedEvent,
    DmccMessage,
    EstablishedEvent,
    FailedEvent,
    HeldEvent,
    MakeCallResponse,
    MonitorStartResponse,
    MonitorStopResponse,
    OriginatedEvent,
    ResetTimerResponse,
    RetrievedEvent,
    SessionNegative,
    SessionStarted,
    SessionStopped,
    SnapshotDeviceResponse,
    SnapshotItem,
    StopSessionResponse,
    TransferredEvent,
    Unknown,
)
from bridge.pbx.avaya.xmlsafe import XmlRefused, parse_xml

__all__ = ["XmlRefused", "parse_message"]


def _text(root: ET.Element, path: str) -> str | None:
    el = root.find(path)
    if el is None or el.text is None:
        return None
    value = el.text.strip()
    return value or None


def _anywhere(root: ET.Element, name: str) -> str | None:
    return _text(root, f".//{name}")


def _subject(root: ET.Element, name: str) -> str | None:
    """A device named by an ExtendedDeviceID (`<x><deviceIdentifier>..`), or directly by text (`<x>..</x>`)."""
    el = root.find(name)
    if el is None:
        return None
    inner = _text(el, "deviceIdentifier")
    if inner is not None:
        return inner
    nested = _text(el, "numberDialed")  # RedirectionDeviceID form
    if nested is not None:
        return nested
    text = (el.text or "").strip()
    return text or None


def _connection(root: ET.Element, name: str) -> tuple[str | None, str | None]:
    return _text(root, f"{name}/callID"), _text(root, f"{name}/deviceID")


def _int(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 9:
        return None
    return int(value)


def _new_calls(root: ET.Element, list_name: str) -> tuple[str, ...]:
    out: list[str] = []
    for item in root.iterfind(f"{list_name}/connectionListItem"):
        call = _text(item, "newConnection/callID")
        if call and call not in out:
            out.append(call)
    return tuple(out)


def _negative(name: str, root: ET.Element) -> SessionNegative:
    code = root.find("errorCode")
    error = "unspecified"
    if code is not None:
        child = next(iter(code), None)
        if child is not None:
            error = f"{child.tag}/{(child.text or '').strip()}"
    return SessionNegative(name.removesuffix("NegResponse"), error)


def _csta_error(root: ET.Element) -> CstaError:
    child = next(iter(root), None)
    if child is None:
        return CstaError("unspecified", (root.text or "").strip())
    return CstaError(child.tag, (child.text or "").strip())


def _snapshot(root: ET.Element) -> SnapshotDeviceResponse:
    items: list[SnapshotItem] = []
    for info in root.iter("snapshotDeviceResponseInfo"):
        call_id, device_id = _connection(info, "connectionIdentifier")
        if call_id is None:
            continue
        state_el = info.find("localCallState")
        states = tuple(t.strip() for t in state_el.itertext() if t.strip()) if state_el is not None else ()
        items.append(SnapshotItem(call_id, device_id, states))
    return SnapshotDeviceResponse(tuple(items))


class _MissingField(ValueError):
    pass


def _need(value: str | None, what: str) -> str:
    if value is None:
        raise _MissingField(what)
    return value


def _event(name: str, root: ET.Element) -> DmccMessage:
    mon = _need(_text(root, "monitorCrossRefID"), "monitorCrossRefID")
    cause = _text(root, "cause")
    ucid = _anywhere(root, "globallyUniqueCallLinkageID")
    match name:
        case "DeliveredEvent":
            call, dev = _connection(root, "connection")
            return DeliveredEvent(monitor_id=mon, call_id=_need(call, "connection/callID"), connection_device=dev,
                                  alerting=_subject(root, "alertingDevice"), calling=_subject(root, "callingDevice"),
                                  called=_subject(root, "calledDevice"),
                                  last_redirection=_subject(root, "lastRedirectionDevice"),
                                  vdn=_anywhere(root, "distributingVDN/deviceIdentifier")
                                  or _anywhere(root, "distributingVDN"),
                                  ucid=ucid, cause=cause)
        case "EstablishedEvent":
            call, dev = _connection(root, "establishedConnection")
            return EstablishedEvent(monitor_id=mon, call_id=_need(call, "establishedConnection/callID"),
                                    connection_device=dev, answering=_subject(root, "answeringDevice"),
                                    calling=_subject(root, "callingDevice"), called=_subject(root, "calledDevice"),
                                    ucid=ucid, cause=cause)
        case "OriginatedEvent":
            call, dev = _connection(root, "originatedConnection")
            return OriginatedEvent(monitor_id=mon, call_id=_need(call, "originatedConnection/callID"),
                                   connection_device=dev, calling=_subject(root, "callingDevice"),
                                   called=_subject(root, "calledDevice"), ucid=ucid, cause=cause)
        case "FailedEvent":
            call, dev = _connection(root, "failedConnection")
            return FailedEvent(monitor_id=mon, call_id=_need(call, "failedConnection/callID"), connection_device=dev,
                               failing=_subject(root, "failingDevice"), called=_subject(root, "calledDevice"),
                               cause=cause)
        case "ConnectionClearedEvent":
            call, dev = _connection(root, "droppedConnection")
            return ConnectionClearedEvent(monitor_id=mon, call_id=_need(call, "droppedConnection/callID"),
                                          connection_device=dev, releasing=_subject(root, "releasingDevice"),
                                          cause=cause)
        case "CallClearedEvent":
            return CallClearedEvent(monitor_id=mon, call_id=_need(_text(root, "clearedCall/callID"), "clearedCall"),
                                    cause=cause)
        case "DivertedEvent":
            call, dev = _connection(root, "connection")
            return DivertedEvent(monitor_id=mon, call_id=_need(call, "connection/callID"), connection_device=dev,
                                 diverting=_subject(root, "divertingDevice"),
                                 new_destination=_subject(root, "newDestination"), cause=cause)
        case "HeldEvent":
            call, dev = _connection(root, "heldConnection")
            return HeldEvent(monitor_id=mon, call_id=_need(call, "heldConnection/callID"), connection_device=dev,
                             device=_subject(root, "holdingDevice"))
        case "RetrievedEvent":
            call, dev = _connection(root, "retrievedConnection")
            return RetrievedEvent(monitor_id=mon, call_id=_need(call, "retrievedConnection/callID"),
                                  connection_device=dev, device=_subject(root, "retrievingDevice"))
        case "TransferedEvent" | "TransferredEvent":
            return TransferredEvent(monitor_id=mon, primary_old_call=_text(root, "primaryOldCall/callID"),
                                    secondary_old_call=_text(root, "secondaryOldCall/callID"),
                                    transferring=_subject(root, "transferringDevice"),
                                    transferred_to=_subject(root, "transferredToDevice"),
                                    new_call_ids=_new_calls(root, "transferredConnections"), cause=cause)
        case "ConferencedEvent":
            return ConferencedEvent(monitor_id=mon, primary_old_call=_text(root, "primaryOldCall/callID"),
                                    secondary_old_call=_text(root, "secondaryOldCall/callID"),
                                    conferencing=_subject(root, "conferencingDevice"),
                                    added_party=_subject(root, "addedParty"),
                                    new_call_ids=_new_calls(root, "conferenceConnections"), cause=cause)
        case _:
            pass
    return Unknown(name)


_EVENT_NAMES = frozenset({
    "DeliveredEvent", "EstablishedEvent", "OriginatedEvent", "FailedEvent", "ConnectionClearedEvent",
    "CallClearedEvent", "DivertedEvent", "HeldEvent", "RetrievedEvent", "TransferedEvent", "TransferredEvent",
    "ConferencedEvent",
})


def parse_message(payload: bytes) -> DmccMessage:
    """One DMCC document as data. Raises XmlRefused for hostile/broken XML or a known message missing its keys."""
    root = parse_xml(payload)
    name = root.tag
    try:
        if name in _EVENT_NAMES:
            return _event(name, root)
        match name:
            case "StartApplicationSessionPosResponse":
                return SessionStarted(session_id=_need(_text(root, "sessionID"), "sessionID"),
                                      protocol_version=_text(root, "actualProtocolVersion") or "",
                                      session_duration=_int(_text(root, "actualSessionDuration")))
            case ("StartApplicationSessionNegResponse" | "ResetApplicationSessionTimerNegResponse"
                  | "StopApplicationSessionNegResponse"):
                return _negative(name, root)
            case "ResetApplicationSessionTimerPosResponse":
                return ResetTimerResponse(_int(_text(root, "actualSessionDuration")))
            case "StopApplicationSessionPosResponse":
                return StopSessionResponse()
            case "StopApplicationSession":
                return SessionStopped(_text(root, "sessionID"), _anywhere(root, "definedEndReason"))
            case "GetDeviceIdResponse" | "GetThirdPartyDeviceIdResponse":
                return DeviceIdResponse(_need(_text(root, "device"), "device"))
            case "MonitorStartResponse":
                return MonitorStartResponse(_need(_text(root, "monitorCrossRefID"), "monitorCrossRefID"))
            case "MonitorStopResponse":
                return MonitorStopResponse()
            case "SnapshotDeviceResponse":
                return _snapshot(root)
            case "MakeCallResponse":
                return MakeCallResponse(call_id=_need(_text(root, "callingDevice/callID"), "callingDevice/callID"),
                                        device_id=_text(root, "callingDevice/deviceID"),
                                        ucid=_anywhere(root, "globallyUniqueCallLinkageID"))
            case "CSTAErrorCode":
                return _csta_error(root)
            case _:
                pass
    except _MissingField as exc:
        raise XmlRefused(f"{name} without {exc}") from None
    return Unknown(name)
