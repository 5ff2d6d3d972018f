"""Typed wrappers over the REST methods the bridge uses; the transport (`call`, `call_full`, `post_file`) is abstract.

`Bitrix24Client` supplies the transport. Keeping the wrappers apart keeps the client about HTTP only.
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from bridge.crm.bitrix24.errors import Bitrix24ApiError
from bridge.crm.bitrix24.telephony import (
    ATTACH_RECORD,
    FINISH,
    HIDE,
    REGISTER,
    SEARCH_CRM,
    SHOW,
    FinishedCall,
    RegisteredCall,
    attach_base64_params,
    attach_upload_params,
    attach_url_params,
    finish_params,
    parse_file_id,
    parse_finish,
    parse_register,
    register_params,
    show_params,
)

__all__ = ["USER_FIELDS", "Bitrix24Api"]

USER_FIELDS = ("ID", "NAME", "LAST_NAME", "UF_PHONE_INNER", "ACTIVE")
PAGE_SIZE = 50
_MAX_PAGES = 10_000


def _dicts(result: Any) -> list[dict[str, Any]]:
    return [dict(item) for item in result if isinstance(item, Mapping)] if isinstance(result, list) else []


class Bitrix24Api(ABC):
    @abstractmethod
    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any: ...

    @abstractmethod
    async def call_full(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]: ...

    @abstractmethod
    async def post_file(self, url: str, path: Path, filename: str, field: str) -> dict[str, Any]:
        """multipart/form-data POST of one file to a signed upload URL; the decoded JSON body."""

    # --- telephony.externalcall.* -------------------------------------------------------------------------------

    async def register_call(self, *, phone_number: str, call_type: int, user_id: int | None = None,
                            user_phone_inner: str | None = None, call_start_date: datetime | str | None = None,
                            line_number: str | None = None, external_call_id: str | None = None,
                            crm_create: bool | None = None, crm_source: str | None = None,
                            crm_entity_type: str | None = None, crm_entity_id: int | None = None,
                            show: bool | None = None, add_to_chat: bool | None = None,
                            call_list_id: int | None = None) -> RegisteredCall:
        params = register_params(
            phone_number=phone_number, call_type=call_type, user_id=user_id, user_phone_inner=user_phone_inner,
            call_start_date=call_start_date, line_number=line_number, external_call_id=external_call_id,
            crm_create=crm_create, crm_source=crm_source, crm_entity_type=crm_entity_type,
            crm_entity_id=crm_entity_id, show=show, add_to_chat=add_to_chat, call_list_id=call_list_id)
        return parse_register(await self.call(REGISTER, params))

    async def show_call(self, call_id: str, user_ids: int | Sequence[int] | None) -> bool:
        """True: the card was pushed; False: the call is not live (unknown or already finished)."""
        return bool(await self.call(SHOW, show_params(call_id, user_ids)))

    async def hide_call(self, call_id: str, user_ids: int | Sequence[int] | None) -> bool:
        return bool(await self.call(HIDE, show_params(call_id, user_ids)))

    async def finish_call(self, call_id: str, *, user_id: int | None = None, user_phone_inner: str | None = None,
                          duration: int = 0, status_code: str | None = None, cost: float | None = None,
                          cost_currency: str | None = None, failed_reason: str | None = None,
                          vote: int | None = None, add_to_chat: bool | None = None) -> FinishedCall:
        """Raises `Bitrix24CallNotFound` when the call is unknown or was finished already."""
        params = finish_params(call_id, user_id=user_id, user_phone_inner=user_phone_inner, duration=duration,
                               status_code=status_code, cost=cost, cost_currency=cost_currency,
                               failed_reason=failed_reason, vote=vote, add_to_chat=add_to_chat)
        return parse_finish(call_id, await self.call(FINISH, params))

    async def attach_record_url(self, call_id: str, filename: str | None, url: str) -> int | None:
        """The portal downloads `url` itself during the request; returns the Drive FILE_ID."""
        return parse_file_id(await self.call(ATTACH_RECORD, attach_url_params(call_id, filename, url)))

    async def attach_record_base64(self, call_id: str, filename: str, data: bytes) -> int | None:
        content = base64.b64encode(data).decode("ascii")
        return parse_file_id(await self.call(ATTACH_RECORD, attach_base64_params(call_id, filename, content)))

    async def attach_record_upload(self, call_id: str, path: Path, filename: str) -> int | None:
        """Two steps: ask for an upload URL, then POST the file there as multipart (streamed from disk)."""
        answer = await self.call(ATTACH_RECORD, attach_upload_params(call_id, filename))
        if isinstance(answer, Mapping) and answer.get("FILE_ID") is not None:
            return parse_file_id(answer)
        url = answer.get("uploadUrl") if isinstance(answer, Mapping) else None
        if not isinstance(url, str) or not url:
            raise Bitrix24ApiError("BAD_ANSWER", "attachRecord gave no uploadUrl", method=ATTACH_RECORD)
        field = answer.get("fieldName") or "file"
        body = await self.post_file(url, path, filename, str(field))
        return parse_file_id(body.get("result"))

    async def search_crm_entities(self, phone: str) -> list[dict[str, Any]]:
        return _dicts(await self.call(SEARCH_CRM, {"PHONE_NUMBER": phone}))

    # --- lines, users, events -----------------------------------------------------------------------------------

    async def external_line_get(self) -> list[dict[str, Any]]:
        return _dicts(await self.call("telephony.externalLine.get"))

    async def external_line_add(self, number: str, name: str | None = None) -> int | None:
        params = {"NUMBER": number} if name is None else {"NUMBER": number, "NAME": name}
        result = await self.call("telephony.externalLine.add", params)
        return int(result["ID"]) if isinstance(result, Mapping) and str(result.get("ID", "")).isdigit() else None

    async def iter_users(self, filter: Mapping[str, Any] | None = None, *,
                         select: Sequence[str] = USER_FIELDS, sort: str | None = None,
                         order: Literal["ASC", "DESC"] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every user matching `filter`, page by page (50 each, `start`/`next`)."""
        start = 0
        for _ in range(_MAX_PAGES):
            params: dict[str, Any] = {"FILTER": dict(filter or {}), "select": list(select), "start": start}
            if sort:
                params["sort"] = sort
            if order:
                params["order"] = order
            body = await self.call_full("user.get", params)
            for user in _dicts(body.get("result")):
                yield user
            following = body.get("next")
            if not isinstance(following, int) or following <= start:
                return
            start = following

    async def event_bind(self, event: str, handler: str,
                         event_type: Literal["online", "offline"] = "online") -> bool:
        params: dict[str, Any] = {"event": event, "event_type": event_type}
        if event_type == "online":
            params["handler"] = handler
        return bool(await self.call("event.bind", params))

    async def event_get(self) -> list[dict[str, Any]]:
        return _dicts(await self.call("event.get"))

    async def event_offline_get(self, *, clear: bool = True, limit: int = PAGE_SIZE,
                                process_id: str | None = None) -> dict[str, Any]:
        """Queued offline events: `{"events": [...], "process_id": ...}` (with clear=False, confirm later)."""
        params: dict[str, Any] = {"clear": int(clear), "limit": limit}
        if process_id:
            params["process_id"] = process_id
        result = await self.call("event.offline.get", params)
        return dict(result) if isinstance(result, Mapping) else {"events": []}
