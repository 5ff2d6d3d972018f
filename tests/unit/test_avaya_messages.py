"""DMCC XML: requests we build, documents we read, and hostile or broken payloads refused (never a crash)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.pbx.avaya import requests
from bridge.pbx.avaya.decode import XmlRefused, parse_message
from bridge.pbx.avaya.messages import (
    ConnectionClearedEvent,
    CstaError,
    DeliveredEvent,
    DeviceIdResponse,
    EstablishedEvent,
    MakeCallResponse,
    SessionNegative,
    SessionStarted,
    SessionStopped,
    SnapshotDeviceResponse,
    TransferredEvent,
    Unknown,
    device_number,
)
from bridge.pbx.avaya.xmlsafe import parse_xml
from bridge.sim import avaya_xml as X

P = requests.DEFAULT_PROTOCOL


# ---- hostile and broken input -------------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<DeliveredEvent><monitorCrossRefID>&lol2;</monitorCrossRefID></DeliveredEvent>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<CSTAErrorCode><operation>&xxe;</operation></CSTAErrorCode>"""


@pytest.mark.parametrize("payload", [
    BILLION_LAUGHS,
    EXTERNAL_ENTITY,
    b'<!doctype x SYSTEM "http://example.invalid/x.dtd"><x/>',
    # Encoded in UTF-16 the ASCII pre-check cannot see the DOCTYPE; the parser's handler must refuse it anyway.
    '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'.encode("utf-16"),
    b"<MonitorStartResponse><monitorCrossRefID>1</monitorCross",  # truncated
    b"<a><b></a>",  # not well-formed
    b"<x>&undefined;</x>",  # entity never declared
    b"\xff\xfe\x00garbage",
    b"",
    b"<" + b"<d>" * 100 + b"x" + b"</d>" * 100 + b">",
])
def test_hostile_or_broken_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(XmlRefused):
        parse_message(payload)


def test_deep_nesting_is_refused() -> None:
    deep = b"<a>" * 100 + b"</a>" * 100
    with pytest.raises(XmlRefused, match="nesting"):
        parse_xml(deep)


def test_known_message_missing_its_key_is_refused() -> None:
    with pytest.raises(XmlRefused, match="sessionID"):
        parse_message(b"<StartApplicationSessionPosResponse><actualProtocolVersion>x</actualProtocolVersion>"
                      b"</StartApplicationSessionPosResponse>")
    with pytest.raises(XmlRefused, match="monitorCrossRefID"):
        parse_message(b"<DeliveredEvent><connection><callID>1</callID></connection></DeliveredEvent>")


@given(st.binary(max_size=400))
def test_random_bytes_either_parse_or_are_refused(data: bytes) -> None:
    try:
        message = parse_message(b"<DeliveredEvent>" + data)
    except XmlRefused:
        return
    assert isinstance(message, (DeliveredEvent, Unknown))


# ---- reading what AES sends ---------------------------------------------------------------------------------------

def test_vendor_shaped_delivered_event_with_prefixes_and_private_data() -> None:
    doc = b"""<?xml version="1.0" encoding="UTF-8"?>
<csta:DeliveredEvent xmlns:csta="http://www.ecma-international.org/standards/ecma-323/csta/ed3/priv6">
  <csta:monitorCrossRefID>17</csta:monitorCrossRefID>
  <csta:connection><csta:callID>1234</csta:callID>
    <csta:deviceID typeOfNumber="other" mediaClass="notKnown">201:CM1:10.0.0.5:0</csta:deviceID></csta:connection>
  <csta:alertingDevice><csta:deviceIdentifier>201:CM1:10.0.0.5:0</csta:deviceIdentifier></csta:alertingDevice>
  <csta:callingDevice><csta:deviceIdentifier>5557654321::10.0.0.5:0</csta:deviceIdentifier></csta:callingDevice>
  <csta:calledDevice><csta:deviceIdentifier>5001:CM1:10.0.0.5:0</csta:deviceIdentifier></csta:calledDevice>
  <csta:lastRedirectionDevice><csta:notRequired/></csta:lastRedirectionDevice>
  <csta:cause>newCall</csta:cause>
  <csta:extensions><csta:privateData><csta:private>
    <ns1:DeliveredEventPrivateData xmlns:ns1="http://www.avaya.com/csta">
      <ns1:distributingVDN><ns1:deviceIdentifier>5001:CM1:10.0.0.5:0</ns1:deviceIdentifier></ns1:distributingVDN>
      <ns1:globallyUniqueCallLinkageID>00001002611700000001</ns1:globallyUniqueCallLinkageID>
    </ns1:DeliveredEventPrivateData></csta:private></csta:privateData></csta:extensions>
</csta:DeliveredEvent>"""
    ev = parse_message(doc)
    assert ev == DeliveredEvent(monitor_id="17", call_id="1234", connection_device="201:CM1:10.0.0.5:0",
                                alerting="201:CM1:10.0.0.5:0", calling="5557654321::10.0.0.5:0",
                                called="5001:CM1:10.0.0.5:0", last_redirection=None, vdn="5001:CM1:10.0.0.5:0",
                                ucid="00001002611700000001", cause="newCall")


def test_simulator_documents_read_back_as_the_same_data() -> None:
    assert parse_message(X.session_started("S1", P, 120)) == SessionStarted("S1", P, 120)
    assert parse_message(X.session_negative("StartApplicationSession", "invalidApplicationInfo")) == \
        SessionNegative("StartApplicationSession", "definedError/invalidApplicationInfo")
    assert parse_message(X.device_id_response("GetDeviceId", "201:CM:1.2.3.4:0")) == DeviceIdResponse(
        "201:CM:1.2.3.4:0")
    assert parse_message(X.csta_error(P, "operation", "invalidDeviceID")) == CstaError("operation", "invalidDeviceID")
    assert parse_message(X.make_call_ok(P, "42", "201:CM:1.2.3.4:0", "0007")) == MakeCallResponse(
        "42", "201:CM:1.2.3.4:0", "0007")
    assert parse_message(X.stop_session("S1", "applicationTimeout")) == SessionStopped("S1", "applicationTimeout")
    snap = parse_message(X.snapshot(P, [("7", "201:CM:x:0", "connected"), ("8", "201:CM:x:0", "alerting")]))
    assert isinstance(snap, SnapshotDeviceResponse)
    assert [(i.call_id, i.states) for i in snap.items] == [("7", ("connected",)), ("8", ("alerting",))]
    est = parse_message(X.established(P, "3", call_id="9", answering="202:CM:x:0", calling="555:CM:x:0",
                                      called="202:CM:x:0", ucid="U9"))
    assert isinstance(est, EstablishedEvent) and est.answering == "202:CM:x:0" and est.ucid == "U9"
    cleared = parse_message(X.connection_cleared(P, "3", call_id="9", releasing="555:CM:x:0", cause="normalClearing"))
    assert cleared == ConnectionClearedEvent(monitor_id="3", call_id="9", connection_device="555:CM:x:0",
                                             releasing="555:CM:x:0", cause="normalClearing")
    xfer = parse_message(X.transferred(P, "3", primary="9", secondary="10", transferring="201:CM:x:0",
                                       transferred_to="202:CM:x:0", new_call="9", endpoints=["555:CM:x:0"]))
    assert isinstance(xfer, TransferredEvent)
    assert (xfer.primary_old_call, xfer.secondary_old_call, xfer.new_call_ids) == ("9", "10", ("9",))


def test_unknown_documents_are_named_not_refused() -> None:
    assert parse_message(b"<AgentLoggedOnEvent><monitorCrossRefID>1</monitorCrossRefID></AgentLoggedOnEvent>") == \
        Unknown("AgentLoggedOnEvent")


def test_device_number_takes_the_dialable_part() -> None:
    assert device_number("201:CM1:10.0.0.5:0") == "201"
    assert device_number("T5063#1") == "T5063#1"
    assert device_number(":CM:x:0") is None
    assert device_number(None) is None


# ---- building requests --------------------------------------------------------------------------------------------

def test_start_session_carries_credentials_and_the_previous_session_for_reattach() -> None:
    payload = requests.start_application_session(application_id="b24", username="cti<user>", password="p&w",
                                                 protocol_version=P, session_duration=180, cleanup_delay=60,
                                                 session_id="ABC")
    root = parse_xml(payload)
    assert root.tag == "StartApplicationSession"
    assert root.findtext(".//userName") == "cti<user>"  # escaped on the wire, intact after parsing
    assert root.findtext(".//password") == "p&w"
    assert root.findtext(".//sessionID") == "ABC"
    assert root.findtext("requestedProtocolVersions/protocolVersion") == P
    assert b"cti&lt;user&gt;" in payload


def test_requests_refuse_control_characters() -> None:
    with pytest.raises(requests.RequestValueError):
        requests.get_device_id(switch_name="CM", extension="201\x00")
    with pytest.raises(requests.RequestValueError):
        requests.make_call(P, calling_device="201:CM::0", called_device="5\x1b55")


def test_monitor_start_asks_for_call_control_events_with_the_inverted_filter() -> None:
    root = parse_xml(requests.monitor_start(P, "201:CM:10.0.0.1:0"))
    assert root.findtext("monitorObject/deviceObject") == "201:CM:10.0.0.1:0"
    assert root.findtext("requestedMonitorFilter/callcontrol/delivered") == "true"
    assert root.findtext(".//AvayaEvents/invertFilter") == "true"
