"""Is this event really from our portal? Checks `auth[application_token]`, `auth[member_id]`, `auth[domain]`.

The expected token is read through a callable on every request, so a token stored at install time takes effect
without a restart. Comparisons run in constant time on bytes (`hmac.compare_digest` refuses non-ASCII `str`, and a
hostile non-ASCII token must be a 401, not a crash). Nothing here logs or returns a token.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from bridge.web.errors import Unauthorized

TokenSource = Callable[[], str | None]


class TokenHolder:
    """The current application token in memory: the configured one, replaced by the one an install brings."""

    def __init__(self, token: str | None = None) -> None:
        self._token = token or None

    def __call__(self) -> str | None:
        return self._token

    def set(self, token: str) -> None:
        self._token = token


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def normalize_domain(domain: str) -> str:
    """`https://Portal.Bitrix24.com/` -> `portal.bitrix24.com` (config may hold a URL, events carry a host)."""
    text = domain.strip().lower()
    for scheme in ("https://", "http://"):
        text = text.removeprefix(scheme)
    return text.split("/", 1)[0]


class EventVerifier:
    """Refuses (`Unauthorized`) events without the right token, or from another portal when one is configured."""

    def __init__(self, *, expected_token: TokenSource, member_id: str | None = None, domain: str | None = None) -> None:
        self._expected_token = expected_token
        self._member_id = member_id or None
        self._domain = normalize_domain(domain) if domain else None

    @property
    def pins_portal(self) -> bool:
        """True when member_id or domain is configured (needed to accept a re-install with a new token)."""
        return self._member_id is not None or self._domain is not None

    def verify(self, auth: Mapping[str, str]) -> None:
        """An ordinary event: the token must match the current one; no current token means nothing is accepted."""
        expected = self._expected_token()
        given = auth.get("application_token", "")
        if not expected:
            raise Unauthorized("no application token is configured or installed yet; events are refused",
                               error_id="no_application_token")
        if not given or not _same(given, expected):
            raise Unauthorized("auth[application_token] is missing or wrong", error_id="bad_application_token")
        self.verify_portal(auth)

    def verify_portal(self, auth: Mapping[str, str]) -> None:
        if self._member_id is not None and not _same(auth.get("member_id", ""), self._member_id):
            raise Unauthorized("auth[member_id] is not the configured portal", error_id="wrong_portal")
        if self._domain is not None and not _same(normalize_domain(auth.get("domain", "")), self._domain):
            raise Unauthorized("auth[domain] is not the configured portal", error_id="wrong_portal")

    def verify_install(self, auth: Mapping[str, str], new_token: str) -> None:
        """ONAPPINSTALL brings a new token, so it cannot be checked against the old one. Accept it when the portal is
        pinned by config (member_id/domain) and matches, or on first use (no token known yet), or when it repeats
        the token already known. Otherwise anybody could replace the token and then forge click-to-call events."""
        self.verify_portal(auth)
        if self.pins_portal:
            return
        expected = self._expected_token()
        if expected and not _same(new_token, expected):
            raise Unauthorized("an install with a new token is refused while a token is known and no portal is "
                               "pinned; set bitrix24.member_id (or bitrix24.domain) to allow re-installs",
                               error_id="install_refused")
