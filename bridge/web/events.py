"""Bitrix24 event payloads: form bytes -> nested dict -> typed events. Pure; nothing here touches the network.

Bitrix24 posts `application/x-www-form-urlencoded` bodies with PHP-style bracket keys (`data[CALL_ID]`,
`auth[application_token]`, `data[CRM_CREATED_ENTITIES][0][ENTITY_TYPE]`). Parsing is strict: a repeated key, a key
that is both a value and a group, or too many/too deep keys make the whole body malformed, so no parameter pollution
can decide which of two values is used.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qsl

from bridge.web.phone import PhoneNumber, PhoneNumberError, parse_phone

MAX_FIELDS = 256
MAX_DEPTH = 5
MAX_VALUE_CHARS = 8192

CALL_START = "ONEXTERNALCALLSTART"
CALLBACK_START = "ONEXTERNALCALLBACKSTART"
APP_INSTALL = "ONAPPINSTALL"

_KEY = re.compile(r"(?P<name>[A-Za-z0-9_.-]{1,64})(?P<subs>(?:\[[A-Za-z0-9_.-]{1,64}\])*)")
_SUB = re.compile(r"\[([A-Za-z0-9_.-]{1,64})\]")
_EVENT_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
CRM_CALL_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_USER_ID = re.compile(r"[0-9]{1,10}")
_ENTITY_TYPE = re.compile(r"[A-Za-z_]{1,32}")
_ENTITY_ID = re.compile(r"[0-9]{1,12}")
_DTMF = re.compile(r"[0-9*#]{1,16}")
MAX_LINE_CHARS = 64

Form: TypeAlias = dict[str, Any]


class EventFormatError(ValueError):
    """The body or a field is malformed. `field` names the form key; `crm_call_id` is set when the event was
    otherwise identifiable, so the caller can still finish the CRM call Bitrix24 already registered."""

    def __init__(self, message: str, *, field: str | None = None, crm_call_id: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.crm_call_id = crm_call_id


# ---------------------------------------------------------------------------------------------------------- forms


def parse_form_body(body: bytes) -> list[tuple[str, str]]:
    """Split an urlencoded body into (key, value) pairs; bad UTF-8 or too many fields is an error."""
    try:
        text = body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict",
                         max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError as exc:
        raise EventFormatError("body is not valid UTF-8 form data") from exc
    except ValueError as exc:
        raise EventFormatError(f"body has more than {MAX_FIELDS} fields") from exc


def nest_form(pairs: Iterable[tuple[str, str]]) -> Form:
    """`[("data[CALL_ID]", "x")]` -> `{"data": {"CALL_ID": "x"}}`; see the module docstring for what is refused."""
    root: Form = {}
    for count, (key, value) in enumerate(pairs, start=1):
        if count > MAX_FIELDS:
            raise EventFormatError(f"more than {MAX_FIELDS} fields")
        if not isinstance(key, str) or not isinstance(value, str):
            raise EventFormatError("form keys and values must be text")
        if len(value) > MAX_VALUE_CHARS:
            raise EventFormatError(f"a form value is longer than {MAX_VALUE_CHARS} characters")
        match = _KEY.fullmatch(key)
        if match is None:
            raise EventFormatError("malformed form key (expected name or name[sub]...)")
        path = [match.group("name"), *_SUB.findall(match.group("subs"))]
        if len(path) > MAX_DEPTH:
            raise EventFormatError(f"form key nested deeper than {MAX_DEPTH} levels")
        _insert(root, path, value, key)
    return root


def _insert(root: Form, path: list[str], value: str, key: str) -> None:
    node = root
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise EventFormatError(f"form key {_shown(key)} conflicts with a plain value", field=key)
        node = child
    last = path[-1]
    if last in node:
        raise EventFormatError(f"form key {_shown(key)} appears more than once", field=key)
    node[last] = value


def flatten_form(nested: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """The inverse of `nest_form`, for payloads that arrive as JSON (offline events): scalars become text."""
    out: list[tuple[str, str]] = []
    items: Iterable[tuple[Any, Any]] = nested.items()
    for name, value in items:
        key = f"{prefix}[{name}]" if prefix else str(name)
        if isinstance(value, Mapping):
            out.extend(flatten_form(value, key))
        elif isinstance(value, list | tuple):
            out.extend(flatten_form({str(i): item for i, item in enumerate(value)}, key))
        elif value is None:
            continue
        elif isinstance(value, bool):
            out.append((key, "Y" if value else "N"))
        else:
            out.append((key, str(value)))
    return out


def _shown(key: str) -> str:
    """A key is echoed only when it is short and plain (it passed `_KEY`), never values."""
    return repr(key[:80])


# --------------------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ExternalCallStart:
    """ONEXTERNALCALLSTART: Bitrix24 registered an outgoing call and asks the PBX to place it."""

    crm_call_id: str
    user_id: int
    phone: PhoneNumber
    line: str | None = None
    crm_entity_type: str | None = None
    crm_entity_id: int | None = None
    call_list_id: int | None = None
    is_mobile: bool = False
    dtmf: str | None = None


@dataclass(frozen=True, slots=True)
class ExternalCallbackStart:
    """ONEXTERNALCALLBACKSTART: a CRM form asks to be called back; nothing is registered yet."""

    phone: PhoneNumber
    line: str | None = None
    crm_entity_type: str | None = None
    crm_entity_id: int | None = None
    user_id: int | None = None
    text: str | None = None
    ts: str | None = None


@dataclass(frozen=True, slots=True)
class AppInstall:
    """ONAPPINSTALL: the portal hands over the app's tokens; `payload` is the flat form, as received."""

    application_token: str
    payload: dict[str, str]


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    name: str


BitrixEvent: TypeAlias = ExternalCallStart | ExternalCallbackStart | AppInstall | UnknownEvent


def event_name(form: Form) -> str:
    """The upper-cased `event` field; missing or odd -> EventFormatError."""
    name = form.get("event")
    if not isinstance(name, str) or _EVENT_NAME.fullmatch(name) is None:
        raise EventFormatError("field 'event' is missing or malformed", field="event")
    return name.upper()


def auth_fields(form: Form) -> dict[str, str]:
    """The `auth[...]` group as plain strings (empty when absent or malformed; callers then refuse)."""
    auth = form.get("auth")
    if not isinstance(auth, dict):
        return {}
    return {k: v for k, v in auth.items() if isinstance(v, str)}


def decode_event(form: Form, flat: Iterable[tuple[str, str]] = ()) -> BitrixEvent:
    """The typed event for `form`; `flat` (the original pairs) is kept only for ONAPPINSTALL."""
    name = event_name(form)
    if name == CALL_START:
        return _call_start(_data(form))
    if name == CALLBACK_START:
        return _callback_start(_data(form), form.get("ts"))
    if name == APP_INSTALL:
        token = auth_fields(form).get("application_token", "")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{8,256}", token):
            raise EventFormatError("auth[application_token] is missing or malformed", field="auth[application_token]")
        return AppInstall(application_token=token, payload=dict(flat))
    return UnknownEvent(name=name)


def _data(form: Form) -> dict[str, Any]:
    data = form.get("data")
    if not isinstance(data, dict):
        raise EventFormatError("field group 'data[...]' is missing", field="data")
    return data


def _call_start(data: dict[str, Any]) -> ExternalCallStart:
    call_id = _required(data, "CALL_ID", CRM_CALL_ID)
    try:
        user_id = _positive(_required(data, "USER_ID", _USER_ID), "USER_ID")
        return ExternalCallStart(
            crm_call_id=call_id,
            user_id=user_id,
            phone=_phone(data),
            line=_line(data),
            crm_entity_type=_optional(data, "CRM_ENTITY_TYPE", _ENTITY_TYPE, upper=True),
            crm_entity_id=_optional_id(data, "CRM_ENTITY_ID"),
            call_list_id=_optional_id(data, "CALL_LIST_ID"),
            is_mobile=_optional_text(data, "IS_MOBILE") in {"1", "Y", "y"},
            dtmf=_optional(data, "EXTENSION", _DTMF),
        )
    except EventFormatError as exc:
        raise EventFormatError(str(exc), field=exc.field, crm_call_id=call_id) from exc


def _callback_start(data: dict[str, Any], ts: object) -> ExternalCallbackStart:
    user = _optional(data, "USER_ID", _USER_ID)
    text = _optional_text(data, "TEXT")
    return ExternalCallbackStart(
        phone=_phone(data),
        line=_line(data),
        crm_entity_type=_optional(data, "CRM_ENTITY_TYPE", _ENTITY_TYPE, upper=True),
        crm_entity_id=_optional_id(data, "CRM_ENTITY_ID"),
        user_id=_positive(user, "USER_ID") if user is not None else None,
        text=text or None,
        ts=ts if isinstance(ts, str) and ts.isdigit() and len(ts) <= 12 else None,
    )


def _phone(data: dict[str, Any]) -> PhoneNumber:
    """Dial the E.164 form Bitrix24 parsed; fall back to the number as clicked only when that is absent."""
    field = "PHONE_NUMBER_INTERNATIONAL"
    raw = _optional_text(data, field)
    if not raw:
        field = "PHONE_NUMBER"
        raw = _optional_text(data, field)
    if not raw:
        raise EventFormatError("data[PHONE_NUMBER] is missing", field="data[PHONE_NUMBER]")
    try:
        return parse_phone(raw)
    except PhoneNumberError as exc:
        raise EventFormatError(f"data[{field}]: {exc}", field=f"data[{field}]") from exc


def _line(data: dict[str, Any]) -> str | None:
    line = _optional_text(data, "LINE_NUMBER")
    if not line:
        return None
    if len(line) > MAX_LINE_CHARS or not line.isprintable():
        raise EventFormatError("data[LINE_NUMBER] is malformed", field="data[LINE_NUMBER]")
    return line


def _optional_text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise EventFormatError(f"data[{key}] must be a plain value", field=f"data[{key}]")
    return value


def _required(data: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = _optional_text(data, key)
    if not value:
        raise EventFormatError(f"data[{key}] is missing", field=f"data[{key}]")
    if not value.isascii() or pattern.fullmatch(value) is None:
        raise EventFormatError(f"data[{key}] is malformed", field=f"data[{key}]")
    return value


def _optional(data: dict[str, Any], key: str, pattern: re.Pattern[str], *, upper: bool = False) -> str | None:
    value = _optional_text(data, key)
    if not value:
        return None
    if not value.isascii() or pattern.fullmatch(value) is None:
        raise EventFormatError(f"data[{key}] is malformed", field=f"data[{key}]")
    return value.upper() if upper else value


def _optional_id(data: dict[str, Any], key: str) -> int | None:
    """Bitrix24 sends "0" for "none"."""
    value = _optional(data, key, _ENTITY_ID)
    if value is None or int(value) == 0:
        return None
    return int(value)


def _positive(value: str, key: str) -> int:
    number = int(value)
    if number <= 0:
        raise EventFormatError(f"data[{key}] must be a positive number", field=f"data[{key}]")
    return number
