"""Channel classification: trunks, agent phones, Local halves, helpers; numbers in Dial strings and interfaces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bridge.config import AsteriskSettings
from bridge.pbx.asterisk.classify import ChannelKind, Classifier, is_number, known_value

C = Classifier()


@pytest.mark.parametrize(
    ("name", "context", "kind", "endpoint", "extension"),
    [
        ("PJSIP/101-0000001a", "from-internal", ChannelKind.DEVICE, "101", "101"),
        ("SIP/2001-0a0b0c0d", None, ChannelKind.DEVICE, "2001", "2001"),
        ("IAX2/105-12345", None, ChannelKind.DEVICE, "105", "105"),
        ("PJSIP/provider-00000046", "from-provider", ChannelKind.TRUNK, "provider", None),
        ("PJSIP/fpbx-trunk-00000090", None, ChannelKind.TRUNK, "fpbx-trunk", None),  # endpoint pattern
        ("PJSIP/trunk-moscow-00000001", None, ChannelKind.TRUNK, "trunk-moscow", None),  # `trunk.*`
        ("PJSIP/carrier2-00000001", "from-pstn", ChannelKind.TRUNK, "carrier2", None),  # context
        ("PJSIP/5551000-00000001", "from-trunk", ChannelKind.TRUNK, "5551000", None),  # context beats digits
        ("DAHDI/i1/79161234567-1a", None, ChannelKind.TRUNK, "79161234567", None),  # technology
        ("DAHDI/3-1", None, ChannelKind.TRUNK, "3", None),
        ("PJSIP/reception-00000001", "from-internal", ChannelKind.OTHER, "reception", None),
        ("PJSIP/101-0000001a<ZOMBIE>", None, ChannelKind.DEVICE, "101", "101"),
    ],
)
def test_device_channels(
    name: str, context: str | None, kind: ChannelKind, endpoint: str, extension: str | None
) -> None:
    info = C.classify(name, context)
    assert (info.kind, info.endpoint, info.extension) == (kind, endpoint, extension)
    assert not info.is_local
    assert info.is_agent == (kind is ChannelKind.DEVICE)


@pytest.mark.parametrize(
    ("name", "kind", "extension", "context", "half"),
    [
        ("Local/101@from-queue-00000015;1", ChannelKind.LOCAL_AGENT, "101", "from-queue", 1),
        ("Local/103@from-queue-00000017;2", ChannelKind.LOCAL_AGENT, "103", "from-queue", 2),
        ("Local/101@from-internal-0000001c;1", ChannelKind.LOCAL_AGENT, "101", "from-internal", 1),
        ("Local/102@from-internal-xfer-0000abcd;2", ChannelKind.LOCAL_AGENT, "102", "from-internal-xfer", 2),
        ("Local/89162220005@from-internal-0000001d;1", ChannelKind.LOCAL, None, "from-internal", 1),
        ("Local/101@my-custom-ctx-0000001e;1", ChannelKind.LOCAL, None, "my-custom-ctx", 1),
        ("Local/s@callback-0000001f;2", ChannelKind.LOCAL, None, "callback", 2),
    ],
)
def test_local_halves(name: str, kind: ChannelKind, extension: str | None, context: str, half: int) -> None:
    info = C.classify(name)
    assert (info.kind, info.extension, info.local_context, info.local_half) == (kind, extension, context, half)
    assert info.local_base == name.rsplit(";", 1)[0]
    assert info.is_local


def test_halves_of_one_pair_share_a_base() -> None:
    one = C.classify("Local/101@from-queue-00000015;1")
    two = C.classify("Local/101@from-queue-00000015;2")
    other = C.classify("Local/101@from-queue-00000016;1")
    assert one.local_base == two.local_base != other.local_base


@pytest.mark.parametrize("name", ["Message/ast_msg_queue", "Announcer/ARI-1234", "CBAnn/conf-00000001",
                                  "Recorder/rec-1", "Snoop/1795909697.108-00000001"])
def test_helper_channels_are_never_parties(name: str) -> None:
    assert C.classify(name).kind is ChannelKind.HELPER


@pytest.mark.parametrize("name", ["", "garbage", "PJSIP/", "/", "Local/", "Local/abc", "Local/@;1", "\x00\xff",
                                  "PJSIP/101", "Local/101@from-queue;3"])
def test_odd_names_do_not_raise(name: str) -> None:
    info = C.classify(name, "from-internal")
    assert info.kind in (ChannelKind.OTHER, ChannelKind.LOCAL, ChannelKind.DEVICE)


@given(st.text(max_size=80), st.one_of(st.none(), st.text(max_size=20)))
def test_any_name_classifies(name: str, context: str | None) -> None:
    info = C.classify(name, context)
    assert isinstance(info.kind, ChannelKind)
    assert info.extension is None or info.is_agent


def test_endpoint_map_and_custom_patterns() -> None:
    classifier = Classifier(AsteriskSettings(
        endpoint_extensions={"a0b1c2d3e4f5": "201"},
        trunk_endpoints=("sbc-.*",),
        trunk_contexts=("incoming",),
        agent_endpoint_pattern=r"ext(\d{3})",
        trunk_technologies=(),
    ))
    assert classifier.classify("PJSIP/a0b1c2d3e4f5-00000001").extension == "201"
    assert classifier.classify("PJSIP/ext305-00000001").extension == "305"
    assert classifier.classify("PJSIP/305-00000001").kind is ChannelKind.OTHER
    assert classifier.classify("PJSIP/sbc-east-00000001").kind is ChannelKind.TRUNK
    assert classifier.classify("PJSIP/provider-00000001").kind is ChannelKind.OTHER  # not a trunk any more
    assert classifier.classify("PJSIP/provider-00000001", "incoming").kind is ChannelKind.TRUNK
    assert classifier.classify("DAHDI/1-1").kind is ChannelKind.OTHER


def test_pattern_without_group_uses_whole_match() -> None:
    classifier = Classifier(AsteriskSettings(agent_endpoint_pattern=r"\d{4}"))
    assert classifier.classify("PJSIP/2001-00000001").extension == "2001"
    assert classifier.classify("PJSIP/201-00000001").extension is None


@pytest.mark.parametrize("key", ["agent_endpoint_pattern", "external_number_pattern"])
def test_bad_patterns_fail_at_startup(key: str) -> None:
    with pytest.raises(ValidationError):
        AsteriskSettings(**{key: "(unclosed"})
    with pytest.raises(ValidationError):
        AsteriskSettings(trunk_endpoints=("ok", "[bad"))


@pytest.mark.parametrize(
    ("interface", "agent"),
    [
        ("Local/101@from-queue/n", "101"),
        ("Local/102@from-internal", "102"),
        ("Local/103@any-context/n", "103"),  # a queue member is an agent whatever its context
        ("PJSIP/104", "104"),
        ("SIP/105", "105"),
        ("PJSIP/provider", None),
        ("Local/s@from-queue/n", None),
        ("", None),
        (None, None),
        ("nonsense", None),
    ],
)
def test_agent_from_queue_interface(interface: str | None, agent: str | None) -> None:
    assert C.agent_from_interface(interface) == agent


@pytest.mark.parametrize(
    ("dial_string", "number"),
    [
        ("79162220001@provider", "79162220001"),
        ("79162220005@fpbx-trunk", "79162220005"),
        ("provider/sip:+79161234567@10.0.0.1:5060", "+79161234567"),
        ("provider/79161234567", "79161234567"),
        ("g0/84951234567", "84951234567"),
        ("provider/sip:user@host", None),
        ("", None),
        (None, None),
    ],
)
def test_number_from_dial_string(dial_string: str | None, number: str | None) -> None:
    assert C.number_from_dial_string(dial_string) == number


def test_number_helpers() -> None:
    assert C.looks_external("79161234567") and C.looks_external("+79161234567")
    assert not C.looks_external("101") and not C.looks_external("*97") and not C.looks_external(None)
    assert known_value("<unknown>") is None and known_value("s") is None and known_value("") is None
    assert known_value(" 5551000 ") == "5551000" and known_value(None) is None
    assert is_number("5551000") and is_number("+7916") and not is_number("s") and not is_number("_X.")
