"""DMCC XML requests the adapter sends, built with ElementTree (so every value is escaped). Pure, no I/O.

Where element names come from ("vendor" = the shape used by Avaya's DMCC XML programmer's guide as reproduced by
public DMCC clients: f-me/dmcc `DMCC/XML/Request.hs`, rresender/csta-integration `provider/messages.go`;
"ECMA" = ECMA-323/354 names those clients also use; "assumed" = not confirmed from a primary source):

- StartApplicationSession, applicationInfo/applicationID, applicationSpecificInfo/SessionLoginInfo
  (userName, password, sessionCleanupDelay), requestedProtocolVersions/protocolVersion, requestedSessionDuration:
  vendor/ECMA-354. SessionLoginInfo/sessionID for re-attaching to a session after a link loss: assumed.
- ResetApplicationSessionTimer (sessionID, requestedSessionDuration), StopApplicationSession (sessionID,
  sessionEndReason/definedEndReason): vendor/ECMA-354.
- GetDeviceId (switchName, extension, controllableByOtherSessions), GetThirdPartyDeviceId: vendor (Avaya namespace).
  GetDeviceId/switchIPInterface: assumed.
- MonitorStart (monitorObject/deviceObject, requestedMonitorFilter/callcontrol, extensions/privateData/private/
  AvayaEvents/invertFilter), MonitorStop (monitorCrossRefID), MakeCall (callingDevice, calledDirectoryNumber):
  vendor. MakeCall/autoOriginate: ECMA-269 parameter, assumed accepted by AES.
- SnapshotDevice/snapshotObject: ECMA-323, assumed (no public DMCC client sends it).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable

NS_APPL_SESSION = "http://www.ecma-international.org/standards/ecma-354/appl_session"
NS_AVAYA = "http://www.avaya.com/csta"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
DEFAULT_PROTOCOL = "http://www.ecma-international.org/standards/ecma-323/csta/ed3/priv6"

# Call-control events the monitor asks for. With invertFilter=true (Avaya private data) "true" means "report it";
# plain ECMA filters list what to suppress.
MONITORED_EVENTS = ("callCleared", "conferenced", "connectionCleared", "delivered", "diverted", "established",
                    "failed", "held", "originated", "retrieved", "transferred")
# Control characters other than tab/CR/LF cannot appear in XML 1.0; refuse them instead of sending broken documents.
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class RequestValueError(ValueError):
    """A value that must not be spliced into a DMCC request."""


def _text(value: str, what: str) -> str:
    if _BAD_CHARS.search(value):
        raise RequestValueError(f"{what} contains control characters")
    if len(value) > 512:
        raise RequestValueError(f"{what} is too long")
    return value


def _doc(root: str, namespace: str, children: Iterable[ET.Element]) -> bytes:
    el = ET.Element(root, {"xmlns": namespace})
    el.extend(children)
    return bytes(ET.tostring(el, encoding="utf-8", xml_declaration=True))


def _leaf(tag: str, value: str, what: str | None = None, **attrs: str) -> ET.Element:
    el = ET.Element(tag, attrs)
    el.text = _text(value, what or tag)
    return el


def _node(tag: str, *children: ET.Element, **attrs: str) -> ET.Element:
    el = ET.Element(tag, attrs)
    el.extend(children)
    return el


def _device(tag: str, device_id: str) -> ET.Element:
    return _leaf(tag, device_id, tag, typeOfNumber="other", mediaClass="notKnown")


def start_application_session(*, application_id: str, username: str, password: str, protocol_version: str,
                              session_duration: int, cleanup_delay: int, session_id: str | None = None) -> bytes:
    login = ET.Element("acx:SessionLoginInfo", {"xmlns:acx": NS_AVAYA, "xmlns:xsi": NS_XSI,
                                                "xsi:type": "acx:SessionLoginInfo"})
    login.append(_leaf("acx:userName", username, "userName"))
    login.append(_leaf("acx:password", password, "password"))
    login.append(_leaf("acx:sessionCleanupDelay", str(cleanup_delay)))
    if session_id:
        login.append(_leaf("acx:sessionID", session_id, "sessionID"))
    return _doc("StartApplicationSession", NS_APPL_SESSION, [
        _node("applicationInfo", _leaf("applicationID", application_id), _node("applicationSpecificInfo", login)),
        _node("requestedProtocolVersions", _leaf("protocolVersion", protocol_version)),
        _leaf("requestedSessionDuration", str(session_duration)),
    ])


def reset_application_session_timer(session_id: str, session_duration: int) -> bytes:
    return _doc("ResetApplicationSessionTimer", NS_APPL_SESSION, [
        _leaf("sessionID", session_id), _leaf("requestedSessionDuration", str(session_duration))])


def stop_application_session(session_id: str, reason: str = "normal") -> bytes:
    return _doc("StopApplicationSession", NS_APPL_SESSION, [
        _leaf("sessionID", session_id), _node("sessionEndReason", _leaf("definedEndReason", reason))])


def get_device_id(*, switch_name: str, extension: str, switch_ip: str | None = None,
                  third_party: bool = False) -> bytes:
    children = [_leaf("switchName", switch_name), _leaf("extension", extension)]
    if third_party:
        return _doc("GetThirdPartyDeviceId", NS_AVAYA, children)
    if switch_ip:
        children.append(_leaf("switchIPInterface", switch_ip))
    children.append(_leaf("controllableByOtherSessions", "true"))
    return _doc("GetDeviceId", NS_AVAYA, children)


def monitor_start(protocol: str, device_id: str) -> bytes:
    callcontrol = _node("callcontrol", *(_leaf(name, "true") for name in MONITORED_EVENTS))
    private = _node("extensions", _node("privateData", _node("private", _node(
        "AvayaEvents", _leaf("invertFilter", "true"), xmlns=NS_AVAYA))))
    return _doc("MonitorStart", protocol, [
        _node("monitorObject", _device("deviceObject", device_id)),
        _node("requestedMonitorFilter", callcontrol),
        private,
    ])


def monitor_stop(protocol: str, monitor_id: str) -> bytes:
    return _doc("MonitorStop", protocol, [_leaf("monitorCrossRefID", monitor_id)])


def snapshot_device(protocol: str, device_id: str) -> bytes:
    return _doc("SnapshotDevice", protocol, [_device("snapshotObject", device_id)])


def make_call(protocol: str, *, calling_device: str, called_device: str, auto_originate: str | None = None) -> bytes:
    children = [_device("callingDevice", calling_device), _device("calledDirectoryNumber", called_device)]
    if auto_originate:
        children.append(_leaf("autoOriginate", auto_originate))
    return _doc("MakeCall", protocol, children)
