"""Multi-site routing: which PBX hosts an extension, so a click-to-call for it is sent to that site's bridge.

Entries come from `mqtt.sites` in the settings, e.g. `{"pbx2": ["200-299", "3001"]}`:

- `"200-299"` is an inclusive numeric range. Leading zeros are significant: an extension written with a leading
  zero (`"0250"`) only matches a range whose bounds are written with the same width (`"0200-0299"`).
- Anything else is one exact extension (`"3001"`, `"sales"`).

Entries of different sites must not overlap, so every extension has one owner; that is checked when the router is
built (and when the settings are loaded). Pure logic: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SiteRouter", "parse_site_entry", "validate_sites"]

SITE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_EXACT = re.compile(r"[A-Za-z0-9_.*#+-]{1,32}")
_RANGE = re.compile(r"([0-9]{1,18})-([0-9]{1,18})")
_DIGITS_AND_DASHES = re.compile(r"[0-9-]+")


@dataclass(frozen=True, slots=True)
class _Range:
    low: int
    high: int
    # Digits every matching extension has when the bounds are zero-padded; None for plain numbers.
    width: int | None

    def matches(self, extension: str) -> bool:
        if not (extension.isascii() and extension.isdigit()) or len(extension) > 18:
            return False
        if self.width is not None:
            if len(extension) != self.width:
                return False
        elif len(extension) > 1 and extension.startswith("0"):
            return False
        return self.low <= int(extension) <= self.high

    def overlaps(self, other: _Range) -> bool:
        low, high = max(self.low, other.low), min(self.high, other.high)
        if self.width == other.width:
            return low <= high
        if self.width is not None and other.width is not None:
            return False
        # A padded range matches only `width`-digit strings; a plain one only numbers written without leading zeros.
        width = self.width if self.width is not None else other.width
        assert width is not None
        low = max(low, 0 if width == 1 else int(10 ** (width - 1)))
        high = min(high, int(10**width) - 1)
        return low <= high


_Entry = _Range | str


def parse_site_entry(entry: str) -> _Entry:
    """One config entry as a range or an exact extension; ValueError says what is wrong with it."""
    text = entry.strip()
    found = _RANGE.fullmatch(text)
    if found:
        low_text, high_text = found.groups()
        low, high = int(low_text), int(high_text)
        if low > high:
            raise ValueError(f"range {entry!r} runs backwards; write it low-high")
        padded = (len(low_text) > 1 and low_text.startswith("0")) or (len(high_text) > 1 and high_text.startswith("0"))
        if padded and len(low_text) != len(high_text):
            raise ValueError(f"range {entry!r}: zero-padded bounds must have the same number of digits")
        return _Range(low, high, len(low_text) if padded else None)
    if "-" in text and _DIGITS_AND_DASHES.fullmatch(text):
        raise ValueError(f"range {entry!r} is malformed; write it like 200-299")
    if _EXACT.fullmatch(text):
        return text
    raise ValueError(f"entry {entry!r} is neither an extension (letters, digits, _ . * # + -) nor a range like 200-299")


def validate_sites(sites: dict[str, tuple[str, ...]]) -> None:
    """Raise ValueError naming the site and entry when a site id or entry is invalid or two sites overlap."""
    parsed: list[tuple[str, str, _Entry]] = []
    for site, entries in sites.items():
        if not SITE_ID.fullmatch(site):
            raise ValueError(f"site id {site!r} must be 1-64 letters, digits, '_', '.' or '-'")
        for entry in entries:
            parsed.append((site, entry, parse_site_entry(entry)))
    for i, (site_a, text_a, a) in enumerate(parsed):
        for site_b, text_b, b in parsed[i + 1 :]:
            if site_a != site_b and _clash(a, b):
                raise ValueError(f"{site_a} entry {text_a!r} overlaps {site_b} entry {text_b!r}; "
                                 "every extension must belong to one site")


def _clash(a: _Entry, b: _Entry) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, str):
        assert isinstance(b, _Range)
        return b.matches(a)
    if isinstance(b, str):
        return a.matches(b)
    return a.overlaps(b)


class SiteRouter:
    """Answers "which other site hosts this extension?" (`None`: this site, or nobody we know of)."""

    def __init__(self, sites: dict[str, tuple[str, ...]], local_site: str) -> None:
        validate_sites(sites)
        self.local_site = local_site
        self._exact: dict[str, str] = {}
        self._ranges: list[tuple[_Range, str]] = []
        for site, entries in sites.items():
            for entry in entries:
                parsed = parse_site_entry(entry)
                if isinstance(parsed, str):
                    self._exact[parsed] = site
                else:
                    self._ranges.append((parsed, site))

    def site_of(self, extension: str) -> str | None:
        """The configured site for `extension`, local or not; None when no entry covers it."""
        site = self._exact.get(extension)
        if site is not None:
            return site
        for rng, owner in self._ranges:
            if rng.matches(extension):
                return owner
        return None

    def route(self, extension: str) -> str | None:
        """The other site that hosts `extension`, or None when it is ours or unknown (then dial it locally)."""
        site = self.site_of(extension)
        return None if site is None or site == self.local_site else site

    @property
    def sites(self) -> frozenset[str]:
        return frozenset(self._exact.values()) | {site for _, site in self._ranges}
