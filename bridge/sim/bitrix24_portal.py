"""The simulated portal's data and REST methods, with the real parameter checks and error texts (no HTTP here).

Methods take the decoded parameters and a `Caller` and return a `Reply` or raise `SimApiError`; the HTTP side
(`bridge.sim.bitrix24`) does auth, limits, batch and recording.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from bridge.sim.bitrix24_users import PAGE, SimUser, query_users

__all__ = ["Caller", "Portal", "Reply", "SimApiError", "SimCall", "SimUser"]

DEDUP_SECONDS = 30 * 60
STATUS_CODES = frozenset({"200", "304", "603", "603-S", "403", "404", "486", "484", "503", "480", "402", "423",
                          "OTHER"})
KNOWN_EVENTS = frozenset({"ONEXTERNALCALLSTART", "ONEXTERNALCALLBACKSTART", "ONAPPINSTALL", "ONAPPUNINSTALL",
                          "ONVOXIMPLANTCALLINIT", "ONVOXIMPLANTCALLSTART", "ONVOXIMPLANTCALLEND", "ONUSERADD"})

Fetcher = Callable[[str], Awaitable[tuple[int, bytes]]]


class SimApiError(Exception):
    """An error answer: HTTP status, `error` code (often empty for telephony) and `error_description`."""

    def __init__(self, status: int, code: str, description: str, *, time_info: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {description}")
        self.status = status
        self.code = code
        self.description = description
        self.time_info = time_info


def _bad(description: str, code: str = "") -> SimApiError:
    """Telephony errors: HTTP 400 with an empty code, the text is what matters."""
    return SimApiError(400, code, description)


@dataclass(frozen=True, slots=True)
class Caller:
    identity: str  # "webhook:<user>" or "app:<client_id>"
    user_id: int
    is_app: bool
    upload_base: str  # where signed upload URLs point


@dataclass(frozen=True, slots=True)
class Reply:
    result: Any
    total: int | None = None
    next: int | None = None


@dataclass(slots=True)
class SimCall:
    call_id: str
    user_id: int
    phone_number: str
    call_type: int
    line_number: str | None
    external_call_id: str | None
    caller: str
    registered_at: float
    start_date: str
    params: dict[str, Any]
    crm_entity_type: str = ""
    crm_entity_id: int | None = None
    registrations: int = 1
    shows: list[list[int]] = field(default_factory=list)
    hides: list[list[int]] = field(default_factory=list)
    finish: dict[str, Any] | None = None
    records: list[tuple[str, bytes]] = field(default_factory=list)  # the current record (at most one)
    record_uploads: int = 0  # how many times a record was attached (each replaced the previous one)

    @property
    def live(self) -> bool:
        return self.finish is None

    @property
    def record_filename(self) -> str | None:
        return self.records[-1][0] if self.records else None

    @property
    def record_bytes(self) -> bytes | None:
        return self.records[-1][1] if self.records else None


def _upper(params: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).upper(): v for k, v in params.items()}


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        return default


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "y", "true", "yes")


def normalize_phone(value: Any) -> str:
    return re.sub(r"[^0-9+#*]", "", str(value or "")) if isinstance(value, (str, int)) else ""


def _audio_name_ok(name: str) -> bool:
    return name.lower().endswith((".wav", ".mp3"))


class Portal:
    def __init__(self, users: list[SimUser], *, crm: Mapping[str, tuple[str, int]] | None = None,
                 crm_owners: Mapping[tuple[str, int], int] | None = None) -> None:
        self.users = {u.id: u for u in users}
        self.crm_owners: dict[tuple[str, int], int] = dict(crm_owners or {})
        self.calls: dict[str, SimCall] = {}
        self.lines: dict[str, dict[str, dict[str, Any]]] = {}
        self.handlers: list[dict[str, Any]] = []
        self.offline_events: list[dict[str, Any]] = []
        self.crm: dict[str, tuple[str, int]] = {normalize_phone(k): v for k, v in (crm or {}).items()}
        self.uploads: dict[str, str] = {}  # upload token -> CALL_ID
        self.dropped_filter_keys: set[str] = set()
        self._ids = itertools.count(1000)
        self.fetch: Fetcher | None = None
        self.methods: dict[str, Callable[[dict[str, Any], Caller], Awaitable[Reply]]] = {
            "telephony.externalcall.register": self.register,
            "telephony.externalcall.show": self.show,
            "telephony.externalcall.hide": self.hide,
            "telephony.externalcall.finish": self.finish,
            "telephony.externalcall.attachrecord": self.attach_record,
            "telephony.externalcall.searchcrmentities": self.search_crm,
            "telephony.externalline.get": self.line_get,
            "telephony.externalline.add": self.line_add,
            "user.get": self.user_get,
            "crm.contact.get": self.crm_getter("CONTACT"),
            "crm.company.get": self.crm_getter("COMPANY"),
            "crm.lead.get": self.crm_getter("LEAD"),
            "event.bind": self.event_bind,
            "event.get": self.event_get,
            "event.offline.get": self.event_offline_get,
        }

    def reset_calls(self) -> None:
        self.calls.clear()
        self.uploads.clear()

    # --- users ----------------------------------------------------------------------------------------------------

    def _active(self, user_id: int) -> SimUser | None:
        user = self.users.get(user_id)
        return user if user is not None and user.active and user.user_type == "employee" else None

    def _by_extension(self, extension: str) -> SimUser | None:
        return next((u for u in sorted(self.users.values(), key=lambda u: u.id)
                     if u.active and u.phone_inner and u.phone_inner == extension), None)

    def _resolve_user(self, p: Mapping[str, Any]) -> SimUser:
        user_id = _int(p.get("USER_ID"))
        if user_id > 0:
            user = self._active(user_id)
            if user is None:
                raise _bad("User is not found or is not active")
            return user
        inner = p.get("USER_PHONE_INNER")
        user = self._by_extension(str(inner).strip()) if inner not in (None, "") else None
        if user is None:
            raise _bad("USER_ID or USER_PHONE_INNER should be set")
        return user

    # --- telephony.externalcall.* -------------------------------------------------------------------------------

    async def register(self, p: dict[str, Any], caller: Caller) -> Reply:
        user = self._resolve_user(p)
        call_type = _int(p.get("TYPE"), -1)
        if call_type not in range(1, 6):
            raise _bad("Unknown TYPE")
        start = p.get("CALL_START_DATE")
        if start not in (None, ""):
            try:
                parsed = datetime.fromisoformat(str(start))
            except ValueError:
                parsed = None
            if parsed is None or parsed.tzinfo is None:
                raise _bad("CALL_START_DATE should be in the ISO-8601 format")
        phone = normalize_phone(p.get("PHONE_NUMBER"))
        if not phone:
            raise _bad("Unsupported phone number format")
        line = str(p["LINE_NUMBER"]).strip()[:50] if p.get("LINE_NUMBER") not in (None, "") else None
        external = str(p["EXTERNAL_CALL_ID"]) if p.get("EXTERNAL_CALL_ID") not in (None, "") else None
        existing = self._duplicate(caller, user.id, phone, call_type, line=line, external=external)
        if existing is not None:
            existing.registrations += 1
            if _truthy(p.get("SHOW", 1)):
                existing.shows.append([user.id])
            return Reply(self._register_result(existing, None))
        now = time.time()
        call_id = f"externalCall.{hashlib.md5(secrets.token_bytes(16)).hexdigest()}.{int(now)}"  # noqa: S324
        call = SimCall(call_id=call_id, user_id=user.id, phone_number=phone, call_type=call_type, line_number=line,
                       external_call_id=external, caller=caller.identity, registered_at=now,
                       start_date=str(start or datetime.now().astimezone().isoformat(timespec="seconds")),
                       params=dict(p))
        created = self._bind_crm(call, p)
        if line is not None:
            self.lines.setdefault(caller.identity, {}).setdefault(
                line, {"NUMBER": line, "NAME": line, "CRM_AUTO_CREATE": "Y"})
        self.calls[call_id] = call
        if _truthy(p.get("SHOW", 1)):
            call.shows.append([user.id])
        return Reply(self._register_result(call, created))

    def _duplicate(self, caller: Caller, user_id: int, phone: str, call_type: int, *, line: str | None,
                   external: str | None) -> SimCall | None:
        horizon = time.time() - DEDUP_SECONDS
        for call in self.calls.values():
            if (call.live and call.caller == caller.identity and call.registered_at >= horizon
                    and call.user_id == user_id and call.phone_number == phone and call.call_type == call_type
                    and (line is None or call.line_number == line)
                    and (external is None or call.external_call_id == external)):
                return call
        return None

    def _bind_crm(self, call: SimCall, p: Mapping[str, Any]) -> int | None:
        entity_type, entity_id = str(p.get("CRM_ENTITY_TYPE") or ""), _int(p.get("CRM_ENTITY_ID"))
        if entity_type in ("CONTACT", "COMPANY", "LEAD") and entity_id > 0:
            call.crm_entity_type, call.crm_entity_id = entity_type, entity_id
            return None
        internal = any(u.active and u.phone_inner == call.phone_number for u in self.users.values())
        found = self.crm.get(call.phone_number)
        if found is not None:
            call.crm_entity_type, call.crm_entity_id = found
            return None
        if internal or not _truthy(p.get("CRM_CREATE", 0)):
            return None
        lead_id = next(self._ids)
        self.crm[call.phone_number] = ("LEAD", lead_id)
        call.crm_entity_type, call.crm_entity_id = "LEAD", lead_id
        return lead_id

    @staticmethod
    def _register_result(call: SimCall, created_lead: int | None) -> dict[str, Any]:
        return {
            "CALL_ID": call.call_id,
            "CRM_CREATED_LEAD": created_lead,
            "CRM_CREATED_ENTITIES": [{"ENTITY_TYPE": "LEAD", "ENTITY_ID": created_lead}] if created_lead else [],
            "CRM_ENTITY_TYPE": call.crm_entity_type,
            "CRM_ENTITY_ID": call.crm_entity_id,
        }

    def _card_users(self, p: Mapping[str, Any], call: SimCall) -> list[int]:
        value = p.get("USER_ID")
        if value in (None, "", []):
            return [call.user_id]
        items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
        return [uid for uid in (_int(v) for v in items) if uid > 0]

    async def show(self, p: dict[str, Any], caller: Caller) -> Reply:
        call = self.calls.get(str(p.get("CALL_ID", "")))
        if call is None or not call.live:
            return Reply(False)
        call.shows.append(self._card_users(p, call))
        return Reply(True)

    async def hide(self, p: dict[str, Any], caller: Caller) -> Reply:
        call = self.calls.get(str(p.get("CALL_ID", "")))
        if call is None or not call.live:
            return Reply(False)
        call.hides.append(self._card_users(p, call))
        return Reply(True)

    async def finish(self, p: dict[str, Any], caller: Caller) -> Reply:
        call_id = p.get("CALL_ID")
        if not isinstance(call_id, str):
            raise SimApiError(400, "INVALID_ARGUMENT", "CALL_ID must be a string")
        user = self._resolve_user(p)
        call = self.calls.get(call_id)
        if call is None or not call.live:
            raise _bad("Call is not found (call should be registered prior to finishing")
        duration = max(0, _int(p.get("DURATION")))
        status = str(p.get("STATUS_CODE") or ("200" if duration > 0 else "304"))
        row: dict[str, Any] = {
            "ID": str(next(self._ids)), "CALL_ID": call.call_id, "EXTERNAL_CALL_ID": call.external_call_id or "",
            "PORTAL_USER_ID": str(user.id), "PHONE_NUMBER": call.phone_number,
            "PORTAL_NUMBER": call.line_number or "REST_APP:1", "INCOMING": str(call.call_type),
            "CALL_DURATION": str(duration), "CALL_START_DATE": {}, "CALL_STATUS": 1 if duration > 0 else 0,
            "CALL_VOTE": _int(p.get("VOTE")) or None, "COST": str(p.get("COST") or "0.0000"),
            "COST_CURRENCY": str(p.get("COST_CURRENCY") or ""), "CALL_FAILED_CODE": status,
            "CALL_FAILED_REASON": str(p.get("FAILED_REASON") or ""), "REST_APP_ID": None, "REST_APP_NAME": None,
            "CRM_ACTIVITY_ID": str(next(self._ids)), "COMMENT": None,
            "CRM_ENTITY_TYPE": call.crm_entity_type, "CRM_ENTITY_ID": call.crm_entity_id,
        }
        call.finish = {**row, "_params": dict(p)}
        return Reply(row)

    async def attach_record(self, p: dict[str, Any], caller: Caller) -> Reply:
        call = self.calls.get(str(p.get("CALL_ID", "")))
        if call is None or call.live:
            raise _bad("Call is not found in the statistic table. Looks like it is not finished yet.")
        url = p.get("RECORD_URL")
        if url not in (None, ""):
            return Reply(await self._attach_url(call, str(url), p.get("FILENAME")))
        if "FILENAME" not in p:
            raise _bad("Required parameters are not set. Request should contain or URL or FILENAME parameter")
        filename = str(p.get("FILENAME") or "").strip()
        if not filename:
            raise _bad("File name is empty")
        if not _audio_name_ok(filename):
            raise _bad("Wrong file extension. Only wav and mp3 are allowed")
        if "FILE_CONTENT" not in p:
            token = secrets.token_hex(16)
            self.uploads[token] = call.call_id
            return Reply({"uploadUrl": f"{caller.upload_base}upload.json?auth={secrets.token_hex(8)}"
                                       f"&token=telephony%7C{token}", "fieldName": "file"})
        content = str(p.get("FILE_CONTENT") or "")
        if not content:
            raise _bad("File content is empty.")
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad("File content is not properly encoded. Base64 encoding is expected.") from exc
        return Reply(self.store_record(call, filename, data))

    async def _attach_url(self, call: SimCall, url: str, filename: Any) -> dict[str, Any]:
        name = str(filename or "").strip() or urlsplit(url).path.rsplit("/", 1)[-1]
        if not _audio_name_ok(name):
            raise _bad("Wrong file extension. Only wav and mp3 are allowed")
        if self.fetch is None:
            raise _bad("Server returns HTTP error code 0")
        status, data = await self.fetch(url)
        if status != 200:
            raise _bad(f"Server returns HTTP error code {status}")
        return self.store_record(call, name, data)

    def store_record(self, call: SimCall, filename: str, data: bytes) -> dict[str, Any]:
        """As the portal does: attaching again replaces the call's record (the old file is deleted)."""
        call.records[:] = [(filename, data)]
        call.record_uploads += 1
        return {"FILE_ID": next(self._ids)}

    def take_upload(self, token: str) -> SimCall | None:
        call_id = self.uploads.pop(token.removeprefix("telephony|"), None)
        return self.calls.get(call_id) if call_id else None

    async def search_crm(self, p: dict[str, Any], caller: Caller) -> Reply:
        phone = normalize_phone(p.get("PHONE_NUMBER"))
        if not phone:
            raise _bad("PHONE_NUMBER is empty")
        found = self.crm.get(phone)
        if found is None:
            return Reply([])
        owner = self.users.get(caller.user_id)
        return Reply([{"CRM_ENTITY_TYPE": found[0], "CRM_ENTITY_ID": found[1], "ASSIGNED_BY_ID": caller.user_id,
                       "NAME": f"{found[0].title()} {found[1]}",
                       "ASSIGNED_BY": {"ID": str(caller.user_id), "TIMEMAN_STATUS": "NOT_INSTALLED",
                                       "USER_PHONE_INNER": owner.phone_inner if owner else "",
                                       "WORK_PHONE": "", "PERSONAL_PHONE": "", "PERSONAL_MOBILE": ""}}])

    def crm_getter(self, entity_type: str) -> Callable[[dict[str, Any], Caller], Awaitable[Reply]]:
        """`crm.<type>.get` with `id`: the entity with its responsible user (`ASSIGNED_BY_ID`)."""

        async def get(params: dict[str, Any], caller: Caller) -> Reply:
            entity_id = _int(_upper(params).get("ID"))
            if entity_id <= 0:
                raise SimApiError(400, "", "ID is not defined or invalid.")
            if (entity_type, entity_id) not in set(self.crm.values()):
                raise SimApiError(400, "", "Not found")
            owner = self.crm_owners.get((entity_type, entity_id), caller.user_id)
            return Reply({"ID": str(entity_id), "ASSIGNED_BY_ID": str(owner), "TITLE": f"{entity_type} {entity_id}"})

        return get

    async def line_get(self, p: dict[str, Any], caller: Caller) -> Reply:
        return Reply(list(self.lines.get(caller.identity, {}).values()))

    async def line_add(self, p: dict[str, Any], caller: Caller) -> Reply:
        number = str(p.get("NUMBER") or "").strip()
        if not number:
            raise _bad("NUMBER should not be empty")
        lines = self.lines.setdefault(caller.identity, {})
        if number in lines:
            raise _bad("Line already exists")
        line_id = next(self._ids)
        lines[number] = {"NUMBER": number, "NAME": str(p.get("NAME") or number),
                         "CRM_AUTO_CREATE": "N" if str(p.get("CRM_AUTO_CREATE", "Y")).upper() == "N" else "Y"}
        return Reply({"ID": line_id})

    # --- user.get ------------------------------------------------------------------------------------------------

    async def user_get(self, params: dict[str, Any], caller: Caller) -> Reply:
        rows, total, following = query_users(self.users.values(), params, dropped=self.dropped_filter_keys)
        return Reply(rows, total=total, next=following)

    # --- events ---------------------------------------------------------------------------------------------------

    async def event_bind(self, params: dict[str, Any], caller: Caller) -> Reply:
        if not caller.is_app:
            raise SimApiError(403, "WRONG_AUTH_TYPE", "Current authorization type is denied for this method")
        p = _upper(params)
        event = str(p.get("EVENT") or "").upper()
        offline = str(p.get("EVENT_TYPE") or "online").lower() == "offline"
        handler = str(p.get("HANDLER") or "")
        if event not in KNOWN_EVENTS:
            raise SimApiError(400, "ERROR_EVENT_NOT_FOUND", "Event not found")
        if not offline and not handler.startswith(("http://", "https://")):
            raise SimApiError(400, "WRONG_HANDLER_URL", "Wrong handler URL")
        entry = {"event": event, "handler": "" if offline else handler, "auth_type": "0", "offline": int(offline)}
        if entry in self.handlers:
            raise SimApiError(400, "ERROR_EVENT_HANDLER_ALREADY_BINDED", "Handler already binded")
        self.handlers.append(entry)
        return Reply(True)

    async def event_get(self, params: dict[str, Any], caller: Caller) -> Reply:
        return Reply([dict(h) for h in self.handlers])

    async def event_offline_get(self, params: dict[str, Any], caller: Caller) -> Reply:
        if not caller.is_app:
            raise SimApiError(403, "WRONG_AUTH_TYPE", "Current authorization type is denied for this method")
        p = _upper(params)
        limit = min(max(1, _int(p.get("LIMIT"), PAGE)), 1000)
        taken = self.offline_events[:limit]
        if _truthy(p.get("CLEAR", 1)):
            del self.offline_events[:limit]
        return Reply({"process_id": None if not taken else secrets.token_hex(8), "events": taken})

    def queue_offline_event(self, event: str, data: Mapping[str, Any]) -> None:
        self.offline_events.append({"ID": str(next(self._ids)), "TIMESTAMP_X": datetime.now().astimezone().isoformat(),
                                    "EVENT_NAME": event.upper(), "EVENT_DATA": dict(data),
                                    "EVENT_ADDITIONAL": {}, "MESSAGE_ID": secrets.token_hex(8)})
