"""Phone numbers from Bitrix24 events: plain formatting is accepted, anything that could steer a dial string is not."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.web.phone import MAX_DIGITS, PhoneNumber, PhoneNumberError, normalize_phone, parse_phone


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+74951234567", "+74951234567"),
        ("+7 (495) 123-45-67", "+74951234567"),
        ("8 495 123.45.67", "84951234567"),
        ("  +1 212 555 0100  ", "+12125550100"),
        ("101", "101"),
        ("(030) 1234-5678", "03012345678"),
        ("+" + "9" * MAX_DIGITS, "+" + "9" * MAX_DIGITS),
    ],
)
def test_formatting_is_reduced_to_plus_and_digits(raw: str, expected: str) -> None:
    assert normalize_phone(raw) == expected
    assert parse_phone(raw).extension is None


@pytest.mark.parametrize(
    ("raw", "number", "extension"),
    [
        ("+49 30 1234567 x12", "+49301234567", "12"),
        ("+49 30 1234567x12", "+49301234567", "12"),
        ("4951234567#305", "4951234567", "305"),
        ("495-123-4567 ext. 7", "4951234567", "7"),
        ("495-123-4567 EXT 7", "4951234567", "7"),
    ],
)
def test_trailing_extension_is_split_off_and_not_dialled(raw: str, number: str, extension: str) -> None:
    parsed = parse_phone(raw)
    assert parsed == PhoneNumber(number=number, extension=extension)


@pytest.mark.parametrize(
    "raw",
    [
        "123\r\nAction: Command",
        "123\nAction: Command",
        "123\rCommand: core stop now",
        "74951234567&SIP/evil",
        "74951234567,1,Hangup",
        "74951234567|9",
        "PJSIP/74951234567",
        "74951234567@from-internal",
        "74951234567;evil",
        "7495abc4567",
        "call me maybe",
        "x123",
        "#123",
        "١٢٣٤٥٦٧",  # Arabic-Indic digits
        "１２３４５６７",  # fullwidth digits
        "12³45",
        "123\x00456",
        "123\t456",
        "",
        "   ",
        "+",
        "12",
        "+1 2",
        "1" * (MAX_DIGITS + 1),
        "1+23456",
        "++123456",
        "123 456 #",
        "123 x 123456789",  # extension longer than 8 digits
        "1" * 70,
        "123\u00a0456",  # non-breaking space
        "{number}",
    ],
)
def test_hostile_or_malformed_input_is_refused(raw: str) -> None:
    with pytest.raises(PhoneNumberError):
        parse_phone(raw)


def test_errors_do_not_echo_the_input() -> None:
    with pytest.raises(PhoneNumberError) as info:
        parse_phone("123\r\nAction: Command")
    assert "Action" not in str(info.value)


def test_digits_property_drops_the_plus() -> None:
    assert parse_phone("+7 495 123").digits == "7495123"


@given(st.text(max_size=80))
def test_any_text_is_refused_or_becomes_a_safe_dial_string(raw: str) -> None:
    try:
        parsed = parse_phone(raw)
    except PhoneNumberError:
        return
    assert re.fullmatch(r"\+?[0-9]{3,20}", parsed.number)
    assert parsed.extension is None or re.fullmatch(r"[0-9]{1,8}", parsed.extension)
    # Only formatting was removed: the digits are those of the input, in order, minus the extension.
    input_digits = "".join(ch for ch in raw if ch in "0123456789")
    assert input_digits == parsed.digits + (parsed.extension or "")


@given(st.from_regex(r"\+?[0-9]{3,20}", fullmatch=True))
def test_canonical_numbers_are_kept_as_they_are(raw: str) -> None:
    assert normalize_phone(raw) == raw
