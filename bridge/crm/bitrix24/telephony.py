"""Parameters and results of the telephony methods, as plain data (usable for single calls and for `batch`).

Keys are upper-case because the telephony methods read them that way. Builders leave out what is None, so the
portal's own defaults apply. Result parsers accept what the portal sends and keep the raw answer alongside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any

from bridge.crm.bitrix24.errors import Bitrix24ApiError

__all__ = [
    "ATTACH_RECORD", "FINISH", "HIDE", "REGISTER", "SEARCH_CRM", "SHOW",
    "CallType", "FinishedCall", "RegisteredCall", "attach_base64_params", "attach_upload_params", "attach_url_params",
    "finish_params", "parse_file_id", "parse_finish", "parse_register", "register_params", "show_params",
]

REGISTER = "telephony.externalcall.register"
SHOW = "telephony.externalcall.show"
HIDE = "telephony.externalcall.hide"
FINISH = "telephony.externalcall.finish"
ATTACH_RECORD = "telephony.externalCall.attachRecord"
SEARCH_CRM = "telephony.externalCall.searchCrmEntities"


class CallType(IntEnum):
    OUTGOING = 1
    INCOMING = 2
    INCOMING_REDIRECTED = 3
    CALLBACK = 4
    INFO = 5


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(bool(value))


def _drop_none(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _user(user_id: int | None, user_phone_inner: str | None) -> dict[str, Any]:
    if not user_id and not user_phone_inner:
        raise ValueError("user_id or user_phone_inner is required")
    return {"USER_ID": user_id} if user_id else {"USER_PHONE_INNER": user_phone_inner}


def _iso(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("call_start_date must carry a UTC offset (the portal rejects naive times)")
    return value.isoformat(timespec="seconds")


def register_params(*, phone_number: str, call_type: int, user_id: int | None = None,
                    user_phone_inner: str | None = None, call_start_date: datetime | str | None = None,
                    line_number: str | None = None, external_call_id: str | None = None,
                    crm_create: bool | None = None, crm_source: str | None = None,
                    crm_entity_type: str | None = None, crm_entity_id: int | None = None,
                    show: bool | None = None, add_to_chat: bool | None = None,
                    call_list_id: int | None = None) -> dict[str, Any]:
    return _drop_none({
        **_user(user_id, user_phone_inner),
        "PHONE_NUMBER": phone_number,
        "TYPE": int(call_type),
        "CALL_START_DATE": _iso(call_start_date),
        "LINE_NUMBER": line_number,
        "EXTERNAL_CALL_ID": external_call_id,
        "CRM_CREATE": _flag(crm_create),
        "CRM_SOURCE": crm_source,
        "CRM_ENTITY_TYPE": crm_entity_type if crm_entity_id else None,
        "CRM_ENTITY_ID": crm_entity_id if crm_entity_type else None,
        "SHOW": _flag(show),
        "ADD_TO_CHAT": _flag(add_to_chat),
        "CALL_LIST_ID": call_list_id,
    })


def show_params(call_id: str, user_ids: int | Sequence[int] | None) -> dict[str, Any]:
    """For show and hide. A list of ids reaches every listed user with one request."""
    users: int | list[int] | None = user_ids if user_ids is None or isinstance(user_ids, int) else list(user_ids)
    return _drop_none({"CALL_ID": call_id, "USER_ID": users})


def finish_params(call_id: str, *, user_id: int | None = None, user_phone_inner: str | None = None,
                  duration: int = 0, status_code: str | None = None, cost: float | None = None,
                  cost_currency: str | None = None, failed_reason: str | None = None, vote: int | None = None,
                  add_to_chat: bool | None = None) -> dict[str, Any]:
    return _drop_none({
        "CALL_ID": call_id,
        **_user(user_id, user_phone_inner),
        "DURATION": max(0, int(duration)),
        "STATUS_CODE": status_code,
        "COST": cost,
        "COST_CURRENCY": cost_currency,
        "FAILED_REASON": failed_reason,
        "VOTE": vote,
        "ADD_TO_CHAT": _flag(add_to_chat),
    })


def attach_url_params(call_id: str, filename: str | None, url: str) -> dict[str, Any]:
    return _drop_none({"CALL_ID": call_id, "FILENAME": filename, "RECORD_URL": url})


def attach_base64_params(call_id: str, filename: str, content_b64: str) -> dict[str, Any]:
    return {"CALL_ID": call_id, "FILENAME": filename, "FILE_CONTENT": content_b64}


def attach_upload_params(call_id: str, filename: str) -> dict[str, Any]:
    """FILENAME without FILE_CONTENT: the portal answers with an `uploadUrl` for a multipart POST."""
    return {"CALL_ID": call_id, "FILENAME": filename}


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class RegisteredCall:
    call_id: str
    crm_entity_type: str = ""
    crm_entity_id: int | None = None
    crm_created_lead: int | None = None
    crm_created_entities: tuple[tuple[str, int], ...] = ()
    lead_creation_error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def parse_register(result: Any) -> RegisteredCall:
    if not isinstance(result, Mapping) or not isinstance(result.get("CALL_ID"), str) or not result["CALL_ID"]:
        raise Bitrix24ApiError("BAD_ANSWER", f"register returned no CALL_ID: {str(result)[:200]}", method=REGISTER)
    created: list[tuple[str, int]] = []
    entities = result.get("CRM_CREATED_ENTITIES")
    for item in entities if isinstance(entities, list) else ():
        entity_id = _int_or_none(item.get("ENTITY_ID")) if isinstance(item, Mapping) else None
        if entity_id is not None:
            created.append((str(item.get("ENTITY_TYPE") or ""), entity_id))
    error = result.get("LEAD_CREATION_ERROR")
    return RegisteredCall(
        call_id=result["CALL_ID"],
        crm_entity_type=str(result.get("CRM_ENTITY_TYPE") or ""),
        crm_entity_id=_int_or_none(result.get("CRM_ENTITY_ID")),
        crm_created_lead=_int_or_none(result.get("CRM_CREATED_LEAD")),
        crm_created_entities=tuple(created),
        lead_creation_error=str(error) if error else None,
        raw=dict(result),
    )


@dataclass(frozen=True, slots=True)
class FinishedCall:
    """The statistics row the portal wrote."""

    call_id: str
    external_call_id: str = ""
    crm_activity_id: int | None = None
    duration: int | None = None
    failed_code: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def parse_finish(call_id: str, result: Any) -> FinishedCall:
    row = result if isinstance(result, Mapping) else {}
    return FinishedCall(
        call_id=str(row.get("CALL_ID") or call_id),
        external_call_id=str(row.get("EXTERNAL_CALL_ID") or ""),
        crm_activity_id=_int_or_none(row.get("CRM_ACTIVITY_ID")),
        duration=_int_or_none(row.get("CALL_DURATION")),
        failed_code=str(row.get("CALL_FAILED_CODE") or ""),
        raw=dict(row),
    )


def parse_file_id(result: Any) -> int | None:
    return _int_or_none(result.get("FILE_ID")) if isinstance(result, Mapping) else None
