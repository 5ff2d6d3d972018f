"""The AMI Originate builder: exact headers for the FreePBX defaults, and no request data can inject anything."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import OriginateSettings
from bridge.errors import OriginateError
from bridge.model import OriginateRequest
from bridge.pbx.asterisk.originate import build_originate
from bridge.pbx.asterisk.protocol import encode_action

CALL_ID = "externalCall.0f4c8e2b9a1d4e6f8a0b1c2d3e4f5a6b.1732790000"


def _request(**overrides: object) -> OriginateRequest:
    values: dict[str, object] = {"request_id": "r1", "extension": "101", "number": "+74951234567",
                                 "crm_call_id": CALL_ID, "timeout_seconds": 30}
    values.update(overrides)
    return OriginateRequest(**values)  # type: ignore[arg-type]


def test_freepbx_defaults_give_exact_headers() -> None:
    headers = build_originate(_request(), OriginateSettings())
    assert headers == [
        ("Channel", "Local/101@from-internal"),
        ("Context", "from-internal"),
        ("Exten", "74951234567"),
        ("Priority", "1"),
        ("CallerID", '"+74951234567" <101>'),
        ("Timeout", "30000"),
        ("Async", "true"),
        ("Variable", f"B24_CALL_ID={CALL_ID}"),
        ("Variable", f"__B24_CALL_ID={CALL_ID}"),
    ]


def test_call_id_variable_name_comes_from_settings() -> None:
    headers = build_originate(_request(), OriginateSettings(), call_id_variable="CRM_CALL_ID")
    assert [v for k, v in headers if k == "Variable"] == [f"CRM_CALL_ID={CALL_ID}", f"__CRM_CALL_ID={CALL_ID}"]


def test_no_crm_call_id_means_no_variables() -> None:
    headers = build_originate(_request(crm_call_id=None), OriginateSettings())
    assert "Variable" not in dict(headers)


def test_dial_prefix_strip_plus_templates_timeout_and_channel_id() -> None:
    settings = OriginateSettings(channel="PJSIP/{extension}", context="outbound-ctc", caller_id="CTC <{extension}>",
                                 dial_prefix="8", strip_plus=False)
    headers = dict(build_originate(_request(extension="2001", timeout_seconds=45), settings,
                                   channel_id="c2c-4f1a"))
    assert headers["Channel"] == "PJSIP/2001"
    assert headers["Context"] == "outbound-ctc"
    assert headers["Exten"] == "8+74951234567"
    assert headers["CallerID"] == "CTC <2001>"
    assert headers["Timeout"] == "45000"
    assert headers["ChannelId"] == "c2c-4f1a"


def test_local_number_without_plus_is_dialled_as_is() -> None:
    headers = dict(build_originate(_request(number="5551000"), OriginateSettings(dial_prefix="9")))
    assert headers["Exten"] == "95551000"


def test_headers_encode_to_exactly_one_action() -> None:
    wire = encode_action("Originate", build_originate(_request(), OriginateSettings()))
    assert wire.count(b"\r\n\r\n") == 1
    assert wire.count(b"Action:") == 1


@pytest.mark.parametrize(
    "extension",
    ["101\r\nAction: Command", "101&PJSIP/200", "101,1", "101|x", "101/x", "101@ctx", "101;x", "", "1" * 33,
     "10 1", "١٠١", "101\n", "{number}"],
)
def test_hostile_extension_is_refused(extension: str) -> None:
    with pytest.raises(OriginateError):
        build_originate(_request(extension=extension), OriginateSettings())


@pytest.mark.parametrize(
    "number",
    ["123\r\nAction: Command", "74951234567&SIP/evil", "7495,1", "7495|1", "7495/1", "7495@x", "7495;x",
     "7495abc", "+", "12", "1" * 21, "+7 495 123", "١٢٣٤٥", "74951234567\n", "++7495123"],
)
def test_hostile_number_is_refused(number: str) -> None:
    with pytest.raises(OriginateError):
        build_originate(_request(number=number), OriginateSettings())


@pytest.mark.parametrize(
    "crm_call_id",
    ["externalCall.x\r\nAction: Command", "a,b", "a&b", "a|b", "a/b", "a@b", "a;b", "a b", "", "x" * 129, "a=b"],
)
def test_hostile_crm_call_id_is_refused(crm_call_id: str) -> None:
    with pytest.raises(OriginateError):
        build_originate(_request(crm_call_id=crm_call_id), OriginateSettings())


@pytest.mark.parametrize("name", ["B24 CALL", "__B24", "B24=1", "B24\r\nX", "1B24", ""])
def test_bad_variable_name_is_refused(name: str) -> None:
    with pytest.raises(OriginateError):
        build_originate(_request(), OriginateSettings(), call_id_variable=name)


@pytest.mark.parametrize("channel_id", ["a b", "a\r\nb", "a/b", "x" * 65, ""])
def test_bad_channel_id_is_refused(channel_id: str) -> None:
    with pytest.raises(OriginateError):
        build_originate(_request(), OriginateSettings(), channel_id=channel_id)


@pytest.mark.parametrize("timeout", [0, -5, 601])
def test_timeout_out_of_range_is_refused(timeout: int) -> None:
    with pytest.raises(OriginateError):
        build_originate(_request(timeout_seconds=timeout), OriginateSettings())


@pytest.mark.parametrize(
    "overrides",
    [
        {"channel": "Local/{extension.__class__}@x"},
        {"caller_id": "{0}"},
        {"channel": "Local/{extension}@x\r\nAction: Command"},
        {"context": "from-internal,evil"},
        {"dial_prefix": "8;"},
    ],
)
def test_unsafe_settings_are_refused_even_if_validation_was_bypassed(overrides: dict[str, str]) -> None:
    settings = OriginateSettings.model_construct(**{**OriginateSettings().model_dump(), **overrides})
    with pytest.raises(OriginateError):
        build_originate(_request(), settings)


@pytest.mark.parametrize(
    "overrides",
    [{"channel": "Local/{extension.real}@x"}, {"channel": "Local/101@x"}, {"caller_id": "{name}"},
     {"caller_id": "a\nb"}, {"context": "a b"}],
)
def test_unsafe_templates_fail_at_start_up(overrides: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"originate|context"):
        OriginateSettings(**overrides)


def test_refusal_reason_does_not_echo_the_input() -> None:
    with pytest.raises(OriginateError) as info:
        build_originate(_request(number="123\r\nAction: Command"), OriginateSettings())
    assert "Action" not in str(info.value)
    assert info.value.reason == "invalid number"


_FORBIDDEN = set("\r\n\x00,|&;")


@given(extension=st.text(max_size=40), number=st.text(max_size=30), crm_call_id=st.text(max_size=140))
def test_whatever_the_request_holds_nothing_unsafe_reaches_the_headers(
    extension: str, number: str, crm_call_id: str
) -> None:
    try:
        headers = build_originate(_request(extension=extension, number=number, crm_call_id=crm_call_id),
                                  OriginateSettings())
    except OriginateError:
        return
    for key, value in headers:
        assert not (_FORBIDDEN & set(value)), (key, value)
        assert value.isascii()
    encode_action("Originate", headers)  # would raise on CR/LF/NUL
    exten = dict(headers)["Exten"]
    assert exten.isdigit()
