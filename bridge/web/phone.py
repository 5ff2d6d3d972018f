"""Phone numbers from Bitrix24 events: checked strictly, then reduced to `+` and ASCII digits.

A number from the network ends up in a dial string, so anything beyond plain formatting is refused instead of being
cleaned: a number with a line break, a dialplan separator (`&`, `,`, `|`, `/`, `@`, `;`) or a letter is an attack or
a mistake, and dialling "what is left" would call somebody else.

Accepted input: ASCII digits, spaces, `-`, `(`, `)`, `.`, one leading `+`. One documented extra: a trailing
extension written `#123`, `x123` or `ext 123` (`ext.`/`ext:` too, 1..8 digits). The extension is returned apart
and never joins the dial string; Bitrix24 itself sends it in `data[EXTENSION]` and keeps it out of
`PHONE_NUMBER_INTERNATIONAL`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_DIGITS = 3
MAX_DIGITS = 20
# Anything longer than this cannot be a formatted 20-digit number plus an extension: refuse before any regex work.
MAX_INPUT_CHARS = 64

_BODY = re.compile(r"\+?[0-9 ().-]+")
_WITH_EXTENSION = re.compile(r"(?P<body>.*?) ?(?:#|[xX]|[eE][xX][tT][.:]?) ?(?P<ext>[0-9]{1,8})")
_NON_DIGITS = re.compile(r"[^0-9]")


class PhoneNumberError(ValueError):
    """The text is not an acceptable phone number; the message says why (safe to show, never echoes the input)."""


@dataclass(frozen=True, slots=True)
class PhoneNumber:
    """A checked number: `number` is `+` and digits (or digits only), `extension` is for DTMF after answer."""

    number: str
    extension: str | None = None

    @property
    def digits(self) -> str:
        return self.number.removeprefix("+")


def parse_phone(raw: str) -> PhoneNumber:
    """Check `raw` and return the normalized number; raise PhoneNumberError on anything doubtful."""
    if not isinstance(raw, str):
        raise PhoneNumberError("phone number must be text")
    if len(raw) > MAX_INPUT_CHARS:
        raise PhoneNumberError(f"phone number is longer than {MAX_INPUT_CHARS} characters")
    text = raw.strip(" ")
    if not text:
        raise PhoneNumberError("phone number is empty")
    if not text.isascii():
        raise PhoneNumberError("phone number contains non-ASCII characters")
    if not text.isprintable():
        raise PhoneNumberError("phone number contains control characters (line breaks are never allowed)")

    extension: str | None = None
    split = _WITH_EXTENSION.fullmatch(text)
    if split is not None:
        extension = split.group("ext")
        text = split.group("body").rstrip(" ")

    if not _BODY.fullmatch(text):
        raise PhoneNumberError(
            "phone number may contain only digits, spaces, '-', '(', ')', '.', a leading '+' "
            "and a trailing extension like '#12' or 'x12'"
        )
    digits = _NON_DIGITS.sub("", text)
    if not MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        raise PhoneNumberError(f"phone number must have {MIN_DIGITS} to {MAX_DIGITS} digits, not {len(digits)}")
    number = ("+" + digits) if text.startswith("+") else digits
    return PhoneNumber(number=number, extension=extension)


def normalize_phone(raw: str) -> str:
    """`parse_phone(raw).number`: the form that may be dialled."""
    return parse_phone(raw).number
