"""Unguessable, expiring links to recordings for `RECORD_URL` mode (Bitrix24 downloads the file from the bridge).

A link names the CRM call and the file's path relative to the recordings root, with an expiry time, signed with
HMAC-SHA256. The signature is checked in constant time; the path is checked again against the root when served.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class SignedRecording:
    crm_call_id: str
    relative_path: str
    expires: int


class LinkRejected(ValueError):
    pass


class RecordingSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("recording signing key must be at least 16 bytes")
        self._key = key

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("utf-8"), hashlib.sha256).digest())

    def sign(self, crm_call_id: str, relative_path: str, expires: int) -> str:
        """The token to put in the URL path: payload and signature, both URL-safe."""
        payload = _b64(f"{expires}\n{crm_call_id}\n{relative_path}".encode())
        return f"{payload}.{self._mac(payload)}"

    def verify(self, token: str, now: float) -> SignedRecording:
        payload, sep, mac = token.partition(".")
        if not sep or not payload or not mac:
            raise LinkRejected("malformed recording link")
        if not hmac.compare_digest(self._mac(payload), mac):
            raise LinkRejected("bad recording link signature")
        try:
            expires_text, crm_call_id, relative_path = _unb64(payload).decode("utf-8").split("\n", 2)
            expires = int(expires_text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LinkRejected("malformed recording link payload") from exc
        if now > expires:
            raise LinkRejected("recording link expired")
        return SignedRecording(crm_call_id, relative_path, expires)
