"""An in-memory Bitrix24 with the telephony rules the dispatcher depends on (docs/bitrix24-api.md §4-§8, §3.4).

Live calls, the 30-minute register de-duplication, "Call is not found" after a finish, show/hide answering false for
calls that are not live, attachRecord only after finish, `batch` with `$result[key][FIELD]` references, and
switches for an outage, rate limiting, a paused method, broken auth, lost answers and client bugs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bridge.crm.bitrix24.errors import (
    Bitrix24ApiError,
    Bitrix24AuthError,
    Bitrix24CallNotFound,
    Bitrix24CommandPaused,
    Bitrix24MethodPaused,
    Bitrix24RateLimited,
    Bitrix24Unavailable,
)
from bridge.sync.operations import CrmOp

NOT_FOUND = "Call is not found (call should be registered prior to finishing"
_REF = re.compile(r"^\$result\[([^\]]+)\]\[([^\]]+)\]$")


@dataclass
class LiveCall:
    call_id: str
    user_id: int
    phone: str
    call_type: int
    line: str | None
    external_id: str | None
    shown: set[int] = field(default_factory=set)


@dataclass
class FakeBatchResult:
    results: dict[str, Any]
    errors: dict[str, Bitrix24ApiError]


class FakePortal:
    def __init__(self, users: set[int] | None = None, *, clock: Callable[[], float] | None = None) -> None:
        self.users = users if users is not None else {1, 2, 3, 4, 5, 9}
        self.clock = clock or (lambda: 0.0)
        self.live: dict[str, LiveCall] = {}
        self.finished: dict[str, dict[str, Any]] = {}
        self.records: dict[str, list[str]] = {}
        self.bindings: dict[str, tuple[str, int]] = {}  # phone -> CRM entity the call binds to
        self.owners: dict[tuple[str, int], int] = {}  # CRM entity -> ASSIGNED_BY_ID
        self.requests: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = []  # what reached the portal
        self.executed: list[tuple[str, dict[str, Any]]] = []  # what the portal acted on, in order
        self.refused = 0
        self.down = False
        self.auth_broken = False
        self.rate_limit_next = 0
        self.lose_next_answers = 0
        self.crash_next = 0
        self.crash_on: Callable[[str, Mapping[str, Any]], bool] = lambda method, params: False
        self.refuse_batches = 0
        self.paused: dict[str, float] = {}
        self._counter = 0

    # --- transport (what the dispatcher calls) -----------------------------------------------------------------

    async def call(self, method: str, params: Mapping[str, Any]) -> Any:
        self._gate([method])
        if self.crash_on(method, params):
            raise TypeError("client bug: cannot encode this request")
        self.requests.append(("call", [(method, dict(params))]))
        result = self._execute(method, dict(params))
        self._maybe_lose()
        return result

    async def batch(self, commands: Mapping[str, tuple[str, Mapping[str, Any]]], *,
                    halt: bool = False) -> FakeBatchResult:
        self._gate([])
        if any(self.crash_on(m, p) for m, p in commands.values()):
            raise TypeError("client bug: cannot encode this request")
        if len(commands) > 50:
            raise Bitrix24ApiError("ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded", status=400)
        if self.refuse_batches:
            self.refuse_batches -= 1
            self.refused += 1
            raise Bitrix24ApiError("ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage")
        self.requests.append(("batch", [(m, dict(p)) for m, p in commands.values()]))
        results: dict[str, Any] = {}
        errors: dict[str, Bitrix24ApiError] = {}
        for key, (method, params) in commands.items():
            until = self.paused.get(method.lower())
            if until is not None and until > self.clock():
                errors[key] = Bitrix24CommandPaused("OPERATION_TIME_LIMIT", "Method is blocked", method=method,
                                                    until=until)
                continue
            try:
                results[key] = self._execute(method, {k: self._resolve(v, results) for k, v in params.items()})
            except Bitrix24ApiError as exc:
                errors[key] = exc
                if halt:
                    break
        self._maybe_lose()
        return FakeBatchResult(results, errors)

    async def attach(self, op: CrmOp, call_id: str) -> dict[str, Any]:
        """An attach handler: recordings only stick to finished calls."""
        self._gate(["telephony.externalCall.attachRecord"])
        self.requests.append(("attach", [("telephony.externalCall.attachRecord", {"CALL_ID": call_id})]))
        if call_id not in self.finished:
            raise Bitrix24CallNotFound("", "Call is not found in the statistic table. Looks like it is not finished "
                                           "yet.", method="telephony.externalCall.attachRecord")
        self.records.setdefault(call_id, []).append(op.record_path or "")
        self.executed.append(("telephony.externalCall.attachRecord", {"CALL_ID": call_id}))
        return {"FILE_ID": len(self.records[call_id])}

    # --- behaviour ---------------------------------------------------------------------------------------------

    def _gate(self, methods: list[str]) -> None:
        """Failures that happen before the portal runs anything."""
        if self.crash_next:
            self.crash_next -= 1
            raise RuntimeError("client bug")
        if self.down:
            self.refused += 1
            raise Bitrix24Unavailable("connection refused", status=None)
        if self.auth_broken:
            self.refused += 1
            raise Bitrix24AuthError("invalid_token", error="invalid_token", status=401)
        if self.rate_limit_next:
            self.rate_limit_next -= 1
            self.refused += 1
            raise Bitrix24RateLimited("Too many requests", retry_after=0.001)
        for method in methods:
            until = self.paused.get(method.lower())
            if until is not None and until > self.clock():
                self.refused += 1
                raise Bitrix24MethodPaused(f"{method} is paused", method=method, until=until)

    def _maybe_lose(self) -> None:
        if self.lose_next_answers:
            self.lose_next_answers -= 1
            raise Bitrix24Unavailable("read timeout: the answer was lost")

    def _resolve(self, value: Any, results: Mapping[str, Any]) -> Any:
        if isinstance(value, str) and (match := _REF.match(value)):
            found = results.get(match.group(1))
            if isinstance(found, Mapping) and match.group(2) in found:
                return found[match.group(2)]
            return ""
        return value

    def _execute(self, method: str, params: dict[str, Any]) -> Any:
        name = method.lower()
        handler = {
            "telephony.externalcall.register": self._register,
            "telephony.externalcall.show": self._show,
            "telephony.externalcall.hide": self._hide,
            "telephony.externalcall.finish": self._finish,
            "crm.contact.get": self._entity("CONTACT"),
            "crm.company.get": self._entity("COMPANY"),
            "crm.lead.get": self._entity("LEAD"),
        }.get(name)
        if handler is None:
            raise Bitrix24ApiError("ERROR_METHOD_NOT_FOUND", "Method not found!", method=method)
        result = handler(params)
        self.executed.append((method, params))
        return result

    def _user(self, params: Mapping[str, Any]) -> int:
        user = params.get("USER_ID")
        if not isinstance(user, int) or user <= 0:
            raise Bitrix24ApiError("", "USER_ID or USER_PHONE_INNER should be set")
        if user not in self.users:
            raise Bitrix24ApiError("", "User is not found or is not active")
        return user

    def _call_id(self, params: Mapping[str, Any]) -> str:
        call_id = params.get("CALL_ID")
        if not isinstance(call_id, str):
            raise Bitrix24ApiError("INVALID_ARGUMENT", "CALL_ID must be a string")
        return call_id

    def _register(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self._user(params)
        phone = "".join(ch for ch in str(params.get("PHONE_NUMBER") or "") if ch.isdigit())
        if not phone:
            raise Bitrix24ApiError("", "Unsupported phone number format")
        call_type = params.get("TYPE")
        if call_type not in (1, 2, 3, 4, 5):
            raise Bitrix24ApiError("", "Unknown TYPE")
        start = params.get("CALL_START_DATE")
        if start is not None:
            try:
                if datetime.fromisoformat(str(start)).tzinfo is None:
                    raise ValueError
            except ValueError:
                raise Bitrix24ApiError("", "CALL_START_DATE should be in the ISO-8601 format") from None
        line, external = params.get("LINE_NUMBER"), params.get("EXTERNAL_CALL_ID")
        for live in self.live.values():  # the 30-minute de-duplication key
            if (live.user_id, live.phone, live.call_type, live.line, live.external_id) == (
                    user, phone, call_type, line, external):
                return self._register_answer(live.call_id, phone)
        self._counter += 1
        digest = hashlib.md5(f"{phone}{self._counter}".encode(), usedforsecurity=False).hexdigest()
        call_id = f"externalCall.{digest}.{1_800_000_000 + self._counter}"
        self.live[call_id] = LiveCall(call_id, user, phone, int(call_type), line, external)
        if params.get("SHOW", 1):
            self.live[call_id].shown.add(user)
        return self._register_answer(call_id, phone)

    def _register_answer(self, call_id: str, phone: str) -> dict[str, Any]:
        entity_type, entity_id = self.bindings.get(phone, ("", None))
        return {"CALL_ID": call_id, "CRM_ENTITY_TYPE": entity_type, "CRM_ENTITY_ID": entity_id,
                "CRM_CREATED_LEAD": None, "CRM_CREATED_ENTITIES": []}

    def _card_users(self, params: Mapping[str, Any]) -> set[int]:
        users = params.get("USER_ID")
        listed = users if isinstance(users, list) else [users]
        if not listed or not all(isinstance(u, int) for u in listed):
            raise Bitrix24ApiError("", "USER_ID must be an integer or a list of integers")
        return set(listed)

    def _show(self, params: dict[str, Any]) -> bool:
        call = self.live.get(self._call_id(params))
        if call is None:
            return False
        call.shown |= self._card_users(params)
        return True

    def _hide(self, params: dict[str, Any]) -> bool:
        call = self.live.get(self._call_id(params))
        if call is None:
            return False
        call.shown -= self._card_users(params)
        return True

    def _finish(self, params: dict[str, Any]) -> dict[str, Any]:
        call_id = self._call_id(params)
        if call_id not in self.live:
            raise Bitrix24CallNotFound("", NOT_FOUND, method="telephony.externalcall.finish")
        user = self._user(params)
        call = self.live.pop(call_id)
        row = {"CALL_ID": call_id, "EXTERNAL_CALL_ID": call.external_id, "PORTAL_USER_ID": user,
               "CALL_DURATION": int(params.get("DURATION") or 0),
               "CALL_FAILED_CODE": str(params.get("STATUS_CODE") or ""), "CALL_FAILED_REASON":
               params.get("FAILED_REASON", ""), "shown_at_finish": sorted(call.shown - {user})}
        self.finished[call_id] = row
        return row

    def _entity(self, entity_type: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def get(params: dict[str, Any]) -> dict[str, Any]:
            entity_id = int(params.get("id") or 0)
            owner = self.owners.get((entity_type, entity_id))
            if owner is None:
                raise Bitrix24ApiError("", "Not found")
            return {"ID": entity_id, "ASSIGNED_BY_ID": str(owner)}
        return get

    # --- views for assertions ----------------------------------------------------------------------------------

    def methods(self) -> list[str]:
        return [method.rsplit(".", 1)[-1].lower() for method, _ in self.executed]


class FakeDirectory:
    def __init__(self, users: Mapping[str, int], default: int | None = None) -> None:
        self.users = dict(users)
        self.default = default

    def user_for_extension(self, extension: str) -> int | None:
        return self.users.get(extension, self.default)
