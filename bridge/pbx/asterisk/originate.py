"""AMI `Originate` headers for click-to-call: ring the agent's extension, then dial the customer.

Pure: request + settings in, a list of (header, value) pairs out. Every piece of request data is checked again here
against a narrow pattern, even though the web layer checked it already, because requests also arrive from other
sites over MQTT. Nothing that could end an AMI header (CR, LF) or separate dialplan arguments (`,` `|` `&` `;`) or
channel parts (`/` `@`) can pass. Anything doubtful raises `OriginateError`; nothing is cleaned up and used anyway.
"""

from __future__ import annotations

import re

from bridge.config import OriginateSettings, template_problem
from bridge.errors import OriginateError
from bridge.model import OriginateRequest

EXTENSION_PATTERN = re.compile(r"[0-9A-Za-z_*#-]{1,32}")
NUMBER_PATTERN = re.compile(r"\+?[0-9]{3,20}")
CALL_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
CHANNEL_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
VARIABLE_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
CONTEXT_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,80}")
_DIAL_PREFIX_PATTERN = re.compile(r"[0-9*#]{0,16}")
_PLACEHOLDER = re.compile(r"\{(extension|number)\}")
MAX_TIMEOUT_SECONDS = 600

Headers = list[tuple[str, str]]


def build_originate(
    request: OriginateRequest,
    settings: OriginateSettings,
    *,
    call_id_variable: str = "B24_CALL_ID",
    channel_id: str | None = None,
) -> Headers:
    """Headers for `Action: Originate` (without ActionID, which the connection adds).

    `call_id_variable` is `asterisk.crm_call_id_variable`; it is set twice: plain on the originated channel and with
    `__` so that every descendant (Local `;2`, the trunk leg) inherits it and the tracker can tie the call to the CRM.
    `channel_id` (optional) becomes the Uniqueid of the originated channel.
    """
    extension = _checked(request.extension, EXTENSION_PATTERN, "extension")
    number = _checked(request.number, NUMBER_PATTERN, "number")
    if not 1 <= request.timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise OriginateError(f"originate timeout must be 1..{MAX_TIMEOUT_SECONDS} s", reason="invalid timeout")
    exten = _dial_string(number, settings)
    values = {"extension": extension, "number": number}

    headers: Headers = [
        ("Channel", _render(settings.channel, values, "channel")),
        ("Context", _checked(settings.context, CONTEXT_PATTERN, "context")),
        ("Exten", exten),
        ("Priority", "1"),
        ("CallerID", _render(settings.caller_id, values, "caller_id")),
        ("Timeout", str(request.timeout_seconds * 1000)),
        ("Async", "true"),
    ]
    if channel_id is not None:
        headers.append(("ChannelId", _checked(channel_id, CHANNEL_ID_PATTERN, "channel id")))
    if request.crm_call_id is not None:
        name = _checked(call_id_variable, VARIABLE_NAME_PATTERN, "CALL_ID variable name")
        crm_call_id = _checked(request.crm_call_id, CALL_ID_PATTERN, "CRM CALL_ID")
        headers.append(("Variable", f"{name}={crm_call_id}"))
        headers.append(("Variable", f"__{name}={crm_call_id}"))
    return headers


def _dial_string(number: str, settings: OriginateSettings) -> str:
    """The `Exten` to dial: the prefix, then the number (without `+` when `strip_plus`)."""
    prefix = _checked(settings.dial_prefix, _DIAL_PREFIX_PATTERN, "dial prefix", allow_empty=True)
    body = number.removeprefix("+") if settings.strip_plus else number
    return prefix + body


def _render(template: str, values: dict[str, str], key: str) -> str:
    """Substitute only `{extension}`/`{number}` (no `str.format`: no attribute or index lookups from a template)."""
    problem = template_problem(template)
    if problem is not None:
        raise OriginateError(f"originate.{key} template: {problem}", reason="bad template")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _checked(value: object, pattern: re.Pattern[str], what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise OriginateError(f"{what} must be text", reason=f"invalid {what}")
    if allow_empty and value == "":
        return value
    if not value.isascii() or pattern.fullmatch(value) is None:
        # The value is not echoed: it may be an injection attempt, and it may end up in logs and CRM fields.
        raise OriginateError(f"refusing to originate: {what} has characters or a length that are not allowed",
                             reason=f"invalid {what}")
    return value
