"""Turning stored ops into REST commands at send time: the CALL_ID and the USER_ID are filled in only now.

Resolving late means a directory refresh, a register answered a moment ago, or the owner of the CRM entity the portal
bound the call to, all count. An op that cannot be completed becomes a dead letter whose reason says what to fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from bridge.crm.bitrix24.errors import Bitrix24ApiError, Bitrix24MethodPaused, Bitrix24Unavailable
from bridge.sync.operations import CrmOp, OpKind
from bridge.sync.outbox import DeadLetter, Outbox, StoredOp
from bridge.sync.ports import Bitrix24Port, DirectoryPort

__all__ = ["Command", "CommandBuilder"]

log = structlog.get_logger(__name__)

_OWNER_METHODS = {"CONTACT": "crm.contact.get", "COMPANY": "crm.company.get", "LEAD": "crm.lead.get"}


@dataclass(slots=True)
class Command:
    """One REST command; `depends_on` is the batch key of the register whose CALL_ID it references."""

    stored: StoredOp
    key: str
    method: str
    params: dict[str, Any]
    depends_on: str | None = None


class CommandBuilder:
    def __init__(self, outbox: Outbox, client: Bitrix24Port, directory: DirectoryPort) -> None:
        self._outbox = outbox
        self._client = client
        self._directory = directory

    async def build(self, ops: Sequence[StoredOp]) -> tuple[list[Command], list[DeadLetter]]:
        """Commands in the order of `ops`, plus the ops that cannot be sent. A register earlier in `ops` lends its
        CALL_ID to the same CRM call's later ops through `$result[key][CALL_ID]`.

        Raises what the client raises when the owner lookup fails transiently (the caller retries everything).
        """
        commands: list[Command] = []
        dead: list[DeadLetter] = []
        registers: dict[tuple[str, int], str] = {}
        for stored in ops:
            op = stored.op
            key = f"op{stored.id}"
            params: dict[str, Any] = dict(op.params)
            depends_on: str | None = None
            if op.kind is not OpKind.REGISTER:
                call_id = op.crm_call_id or self._outbox.crm_call_id(op.call_key, op.leg)
                if call_id is None:
                    depends_on = registers.get((op.call_key, op.leg))
                    if depends_on is None:
                        dead.append(DeadLetter(stored, "no CALL_ID: this call's register did not succeed (see its "
                                                       "dead letter; `outbox retry` the whole call after fixing it)"))
                        continue
                    call_id = f"$result[{depends_on}][CALL_ID]"
                params["CALL_ID"] = call_id
            user: int | list[int] | None
            if op.kind in (OpKind.SHOW, OpKind.HIDE):
                user = self.card_users(op) or None
            else:
                user = await self.user_for(op)
            if user is None:
                dead.append(DeadLetter(stored, no_user_reason(op)))
                continue
            params["USER_ID"] = user
            if op.kind is OpKind.REGISTER:
                registers[(op.call_key, op.leg)] = key
            commands.append(Command(stored, key, op.method, params, depends_on))
        return commands, dead

    def card_users(self, op: CrmOp) -> list[int]:
        """Everyone a show/hide reaches: each agent the directory knows, plus the fixed user."""
        users = [self._directory.user_for_extension(ext) for ext in op.agents]
        if op.user_id is not None:
            users.append(op.user_id)
        return list(dict.fromkeys(u for u in users if u is not None))

    async def user_for(self, op: CrmOp) -> int | None:
        """The one user of a register/finish: the CRM owner (owner rule), the fixed user, then the first agent."""
        if op.owner_first:
            owner = await self.owner_of(op.call_key, op.leg)
            if owner is not None:
                return owner
        if op.user_id is not None:
            return op.user_id
        for ext in op.agents:
            user = self._directory.user_for_extension(ext)
            if user is not None:
                return user
        return None

    async def owner_of(self, call_key: str, leg: int) -> int | None:
        """ASSIGNED_BY_ID of the CRM entity the portal bound the call to, read from the stored register answer."""
        bound = self._outbox.register_result(call_key, leg) or {}
        method = _OWNER_METHODS.get(str(bound.get("CRM_ENTITY_TYPE") or "").upper())
        entity_id = bound.get("CRM_ENTITY_ID")
        if method is None or not entity_id:
            return None
        try:
            entity = await self._client.call(method, {"id": entity_id})
        except Bitrix24MethodPaused as exc:  # hold the finish (with backoff) rather than pick another user
            raise Bitrix24Unavailable(f"{method} is paused by the portal", method=method) from exc
        except Bitrix24ApiError as exc:
            log.warning("crm_owner_lookup_failed", call_key=call_key, method=method, error=str(exc))
            return None
        owner = entity.get("ASSIGNED_BY_ID") if isinstance(entity, Mapping) else None
        try:
            return int(owner) if owner not in (None, "", 0, "0") else None
        except (TypeError, ValueError):
            return None


def no_user_reason(op: CrmOp) -> str:
    who = ", ".join(op.agents) if op.agents else "nobody"
    return (f"no Bitrix24 user for {op.kind.value} (extensions: {who}): set UF_PHONE_INNER on the users, "
            "or bitrix24.default_user_id")
