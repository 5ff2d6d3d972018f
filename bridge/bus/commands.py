"""Originate commands between sites and their receipts, as JSON on MQTT; pure (no I/O, clocks passed in).

A command (`{prefix}/{site}/commands/originate`):

    {"v": 1, "type": "originate", "id": "<32 hex>", "from": "pbx1", "sent_at": 1712.5, "expires_at": 1832.5,
     "request": {"request_id": "...", "extension": "250", "number": "+4930123", "crm_call_id": "...",
                 "caller_id_name": null, "timeout_seconds": 30}}

A receipt (`{prefix}/{from}/commands/ack`): `{"v": 1, "id": "...", "site": "pbx2", "status": "accepted"}` or
`"rejected"` with a `reason`. Payloads come from the network: everything is checked, unknown keys are ignored, and
any problem raises `CommandFormatError` (never another exception).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from bridge.bus.errors import CommandFormatError
from bridge.bus.sites import SITE_ID
from bridge.model import OriginateRequest

__all__ = [
    "CommandAck",
    "OriginateCommand",
    "RecentIds",
    "decode_ack",
    "decode_command",
    "encode_ack",
    "encode_command",
    "new_command",
]

VERSION = 1
MAX_PAYLOAD_BYTES = 16 * 1024
_COMMAND_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_EXTENSION = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NUMBER = re.compile(r"\+?[0-9]{1,32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # control characters and lone surrogates
_MIN_TIMEOUT, _MAX_TIMEOUT = 5, 300

AckStatus = Literal["accepted", "rejected"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OriginateCommand:
    id: str
    origin: str
    sent_at: float
    expires_at: float
    request: OriginateRequest

    def expired(self, now: float) -> bool:
        return now > self.expires_at


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandAck:
    id: str
    site: str
    status: AckStatus
    reason: str | None = None


def new_command(request: OriginateRequest, *, origin: str, now: float, ttl: float) -> OriginateCommand:
    """A command with a fresh random id; the receiver ignores it after `ttl` seconds (wall clock)."""
    return OriginateCommand(id=uuid.uuid4().hex, origin=origin, sent_at=now, expires_at=now + ttl, request=request)


def encode_command(command: OriginateCommand) -> bytes:
    req = command.request
    body = {
        "v": VERSION,
        "type": "originate",
        "id": command.id,
        "from": command.origin,
        "sent_at": command.sent_at,
        "expires_at": command.expires_at,
        "request": {
            "request_id": req.request_id,
            "extension": req.extension,
            "number": req.number,
            "crm_call_id": req.crm_call_id,
            "caller_id_name": req.caller_id_name,
            "timeout_seconds": req.timeout_seconds,
        },
    }
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def decode_command(payload: bytes) -> OriginateCommand:
    data = _load_object(payload)
    command_id = _match(data, "id", _COMMAND_ID)
    origin = _match(data, "from", SITE_ID)
    try:
        if data.get("type") != "originate":
            raise CommandFormatError(f"unknown command type {str(data.get('type'))[:40]!r}")
        raw = data.get("request")
        if not isinstance(raw, dict):
            raise CommandFormatError("request must be an object")
        request = OriginateRequest(
            request_id=_text(raw, "request_id", 128),
            extension=_match(raw, "extension", _EXTENSION),
            number=_match(raw, "number", _NUMBER),
            crm_call_id=_optional_text(raw, "crm_call_id", 256),
            caller_id_name=_optional_text(raw, "caller_id_name", 128),
            timeout_seconds=_timeout(raw.get("timeout_seconds", 30)),
        )
        return OriginateCommand(id=command_id, origin=origin, sent_at=_finite(data, "sent_at"),
                                expires_at=_finite(data, "expires_at"), request=request)
    except CommandFormatError as exc:
        raise CommandFormatError(str(exc), command_id=command_id, origin=origin) from None


def encode_ack(ack: CommandAck) -> bytes:
    body: dict[str, Any] = {"v": VERSION, "id": ack.id, "site": ack.site, "status": ack.status}
    if ack.reason is not None:
        body["reason"] = ack.reason
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def decode_ack(payload: bytes) -> CommandAck:
    data = _load_object(payload)
    status = data.get("status")
    if status not in ("accepted", "rejected"):
        raise CommandFormatError("ack status must be 'accepted' or 'rejected'")
    reason = _optional_text(data, "reason", 512)
    return CommandAck(id=_match(data, "id", _COMMAND_ID), site=_match(data, "site", SITE_ID),
                      status="accepted" if status == "accepted" else "rejected", reason=reason)


class RecentIds:
    """Command ids seen in the last `ttl` seconds (at most `max_size`, oldest forgotten first): drops repeats."""

    def __init__(self, *, ttl: float, max_size: int = 10_000) -> None:
        if ttl <= 0 or max_size < 1:
            raise ValueError("RecentIds needs ttl > 0 and max_size >= 1")
        self._ttl = ttl
        self._max_size = max_size
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen_before(self, command_id: str, now: float) -> bool:
        """True if `command_id` was already recorded (and still remembered); otherwise record it and return False."""
        self._expire(now)
        if command_id in self._seen:
            return True
        self._seen[command_id] = now
        while len(self._seen) > self._max_size:
            self._seen.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: float) -> None:
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self._ttl:
                return
            del self._seen[oldest]


def _load_object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandFormatError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise CommandFormatError(f"payload is not JSON: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise CommandFormatError("payload must be a JSON object")
    if data.get("v", VERSION) != VERSION:
        raise CommandFormatError(f"unsupported version {str(data.get('v'))[:20]!r}")
    return data


def _text(data: dict[str, Any], key: str, max_len: int) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len or _CONTROL.search(value):
        raise CommandFormatError(f"{key} must be 1-{max_len} characters without control characters")
    return value


def _optional_text(data: dict[str, Any], key: str, max_len: int) -> str | None:
    return None if data.get(key) is None else _text(data, key, max_len)


def _match(data: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise CommandFormatError(f"{key} is missing or malformed")
    return value


def _finite(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    try:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(key)
        number = float(value)  # OverflowError for integers beyond float range
        if not math.isfinite(number):
            raise ValueError(key)
    except (TypeError, ValueError, OverflowError):
        raise CommandFormatError(f"{key} must be a number (unix time)") from None
    return number


def _timeout(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not _MIN_TIMEOUT <= value <= _MAX_TIMEOUT:
        raise CommandFormatError(f"timeout_seconds must be an integer {_MIN_TIMEOUT}-{_MAX_TIMEOUT}")
    return value
