"""XML documents the Avaya AES simulator sends: session answers, device/monitor answers, errors and call events.

Shapes follow the adapter's notes in `bridge/pbx/avaya/messages.py` (vendor names where public clients confirm them,
ECMA-323 names elsewhere), so the simulator and the adapter agree by construction; what real AES sends differently
is listed in docs/avaya.md as unverified.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable

from bridge.pbx.avaya.requests import NS_APPL_SESSION, NS_AVAYA


def _doc(root: str, namespace: str, *children: ET.Element | None) -> bytes:
    el = ET.Element(root, {"xmlns": namespace})
    el.extend(c for c in children if c is not None)
    return bytes(ET.tostring(el, encoding="utf-8", xml_declaration=True))


def leaf(tag: str, text: str) -> ET.Element:
    el = ET.Element(tag)
    el.text = text
    return el


def node(tag: str, *children: ET.Element | None) -> ET.Element:
    el = ET.Element(tag)
    el.extend(c for c in children if c is not None)
    return el


def connection(tag: str, call_id: str, device_id: str) -> ET.Element:
    dev = leaf("deviceID", device_id)
    dev.set("typeOfNumber", "other")
    dev.set("mediaClass", "notKnown")
    return node(tag, leaf("callID", call_id), dev)


def subject(tag: str, device_id: str | None) -> ET.Element | None:
    if device_id is None:
        return None
    return node(tag, leaf("deviceIdentifier", device_id))


def _ucid(ucid: str | None) -> ET.Element | None:
    if ucid is None:
        return None
    return node("callLinkageData", node("globalCallData", node("globalCallLinkageID",
                                                              leaf("globallyUniqueCallLinkageID", ucid))))


# ---- session and service answers -----------------------------------------------------------------------------------

def session_started(session_id: str, protocol: str, duration: int) -> bytes:
    return _doc("StartApplicationSessionPosResponse", NS_APPL_SESSION, leaf("sessionID", session_id),
                leaf("actualProtocolVersion", protocol), leaf("actualSessionDuration", str(duration)))


def session_negative(request: str, error: str) -> bytes:
    return _doc(f"{request}NegResponse", NS_APPL_SESSION, node("errorCode", leaf("definedError", error)))


def reset_timer_ok(duration: int) -> bytes:
    return _doc("ResetApplicationSessionTimerPosResponse", NS_APPL_SESSION, leaf("actualSessionDuration",
                                                                                 str(duration)))


def stop_session_ok() -> bytes:
    return _doc("StopApplicationSessionPosResponse", NS_APPL_SESSION)


def stop_session(session_id: str, reason: str) -> bytes:
    """Server-initiated end of a session (timer expiry)."""
    return _doc("StopApplicationSession", NS_APPL_SESSION, leaf("sessionID", session_id),
                node("sessionEndReason", leaf("definedEndReason", reason)))


def device_id_response(request: str, device_id: str) -> bytes:
    return _doc(f"{request}Response", NS_AVAYA, leaf("device", device_id))


def monitor_started(protocol: str, monitor_id: str) -> bytes:
    return _doc("MonitorStartResponse", protocol, leaf("monitorCrossRefID", monitor_id))


def monitor_stopped(protocol: str) -> bytes:
    return _doc("MonitorStopResponse", protocol)


def snapshot(protocol: str, items: Iterable[tuple[str, str, str]]) -> bytes:
    """items: (callID, deviceID, localConnectionState)."""
    infos = [node("snapshotDeviceResponseInfo", connection("connectionIdentifier", call_id, device_id),
                  node("localCallState", node("compoundCallState", leaf("localConnectionState", state))))
             for call_id, device_id, state in items]
    return _doc("SnapshotDeviceResponse", protocol, node("crossRefIDorSnapshotData", node("snapshotData", *infos)))


def make_call_ok(protocol: str, call_id: str, device_id: str, ucid: str) -> bytes:
    return _doc("MakeCallResponse", protocol, connection("callingDevice", call_id, device_id),
                node("extensions", node("privateData", node("private", _ucid(ucid)))))


def csta_error(protocol: str, category: str, value: str) -> bytes:
    return _doc("CSTAErrorCode", protocol, leaf(category, value))


# ---- events --------------------------------------------------------------------------------------------------------

def event(name: str, protocol: str, monitor_id: str, *children: ET.Element | None) -> bytes:
    return _doc(name, protocol, leaf("monitorCrossRefID", monitor_id), *children)


def delivered(protocol: str, monitor_id: str, *, call_id: str, alerting: str, calling: str | None, called: str | None,
              ucid: str | None, vdn: str | None = None, cause: str = "newCall") -> bytes:
    private = None
    if vdn is not None:
        private = node("extensions", node("privateData", node("private", subject("distributingVDN", vdn))))
    return event("DeliveredEvent", protocol, monitor_id, connection("connection", call_id, alerting),
                 subject("alertingDevice", alerting), subject("callingDevice", calling),
                 subject("calledDevice", called), node("lastRedirectionDevice", node("notRequired")),
                 leaf("localConnectionInfo", "alerting"), leaf("cause", cause), _ucid(ucid), private)


def established(protocol: str, monitor_id: str, *, call_id: str, answering: str, calling: str | None,
                called: str | None, ucid: str | None, cause: str = "normal") -> bytes:
    return event("EstablishedEvent", protocol, monitor_id, connection("establishedConnection", call_id, answering),
                 subject("answeringDevice", answering), subject("callingDevice", calling),
                 subject("calledDevice", called), leaf("localConnectionInfo", "connected"), leaf("cause", cause),
                 _ucid(ucid))


def originated(protocol: str, monitor_id: str, *, call_id: str, calling: str, called: str) -> bytes:
    return event("OriginatedEvent", protocol, monitor_id, connection("originatedConnection", call_id, calling),
                 subject("callingDevice", calling), subject("calledDevice", called),
                 leaf("localConnectionInfo", "connected"), leaf("cause", "newCall"))


def failed(protocol: str, monitor_id: str, *, call_id: str, failing: str, called: str | None, cause: str) -> bytes:
    return event("FailedEvent", protocol, monitor_id, connection("failedConnection", call_id, failing),
                 subject("failingDevice", failing), subject("calledDevice", called),
                 leaf("localConnectionInfo", "fail"), leaf("cause", cause))


def connection_cleared(protocol: str, monitor_id: str, *, call_id: str, releasing: str, cause: str) -> bytes:
    return event("ConnectionClearedEvent", protocol, monitor_id, connection("droppedConnection", call_id, releasing),
                 subject("releasingDevice", releasing), leaf("localConnectionInfo", "null"), leaf("cause", cause))


def diverted(protocol: str, monitor_id: str, *, call_id: str, diverting: str, new_destination: str,
             cause: str = "redirected") -> bytes:
    return event("DivertedEvent", protocol, monitor_id, connection("connection", call_id, diverting),
                 subject("divertingDevice", diverting), subject("newDestination", new_destination),
                 leaf("cause", cause))


def held(protocol: str, monitor_id: str, *, call_id: str, holding: str) -> bytes:
    return event("HeldEvent", protocol, monitor_id, connection("heldConnection", call_id, holding),
                 subject("holdingDevice", holding), leaf("localConnectionInfo", "hold"), leaf("cause", "normal"))


def transferred(protocol: str, monitor_id: str, *, primary: str, secondary: str, transferring: str,
                transferred_to: str, new_call: str, endpoints: Iterable[str]) -> bytes:
    items = [node("connectionListItem", connection("newConnection", new_call, dev), node("endpoint",
                                                                                         leaf("deviceID", dev)))
             for dev in endpoints]
    return event("TransferedEvent", protocol, monitor_id, node("primaryOldCall", leaf("callID", primary)),
                 node("secondaryOldCall", leaf("callID", secondary)), subject("transferringDevice", transferring),
                 subject("transferredToDevice", transferred_to), node("transferredConnections", *items),
                 leaf("cause", "transfer"))
