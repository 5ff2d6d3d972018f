"""Click-to-call and callback: turn a checked Bitrix24 request into an originate, and make sure every CRM call that
the PBX never starts is still finished.

When the PBX cannot even begin the call (no extension for the user, originate refused, other site unreachable) no
PBX event will ever carry the CRM CALL_ID, so this module itself submits `CallStarted` + `CallEnded` (outbound,
failed, with `failure_reason`) into the normal event pipeline; the policy finishes the CRM call on `crm_call_id`.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from bridge.errors import OriginateError
from bridge.model import CallEnded, CallRecord, CallStarted, Direction, Disposition, OriginateRequest
from bridge.web.events import CRM_CALL_ID, ExternalCallbackStart, ExternalCallStart
from bridge.web.ports import CallbackRegistrar, Directory, EventSink, Originator, SiteRouter

log = structlog.get_logger(__name__)

EXTENSION = re.compile(r"[0-9A-Za-z_*#-]{1,32}")
# The PBX should answer an originate within its own action timeout; this bounds a hung adapter.
ACCEPT_TIMEOUT_SECONDS = 20.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class CallTarget:
    """What a failure event needs to describe the call that never was."""

    crm_call_id: str
    number: str | None
    line: str | None
    agent: str | None = None
    user_id: int | None = None


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why a call cannot be placed; becomes the CRM call's failure reason."""

    reason: str


class ClickToCall:
    def __init__(
        self,
        *,
        pbx: Originator,
        directory: Directory,
        sink: EventSink,
        callbacks: CallbackRegistrar | None = None,
        router: SiteRouter | None = None,
        callback_target: str | None = None,
        callback_user_id: int | None = None,
        pbx_kind: str = "asterisk",
        timeout_seconds: int = 30,
        accept_timeout: float = ACCEPT_TIMEOUT_SECONDS,
        clock: Callable[[], datetime] = _utcnow,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self._pbx = pbx
        self._directory = directory
        self._sink = sink
        self._callbacks = callbacks
        self._router = router
        self._callback_target = callback_target
        self._callback_user_id = callback_user_id
        self._pbx_kind = pbx_kind
        self._timeout_seconds = timeout_seconds
        self._accept_timeout = accept_timeout
        self._clock = clock
        self._new_id = new_id

    async def start_call(self, event: ExternalCallStart) -> None:
        """ONEXTERNALCALLSTART: ring the clicking user's extension, then the number; finish the CRM call on failure."""
        target = CallTarget(crm_call_id=event.crm_call_id, number=event.phone.number, line=event.line,
                            user_id=event.user_id)
        extension = self._extension_of(event.user_id)
        if isinstance(extension, _Failure):
            await self.fail(target, extension.reason)
            return
        await self._originate(CallTarget(target.crm_call_id, target.number, target.line, extension, event.user_id))

    async def start_callback(self, event: ExternalCallbackStart) -> None:
        """ONEXTERNALCALLBACKSTART: register a TYPE 4 call, then ring the callback target and the customer."""
        if self._callbacks is None:
            log.warning("callback_ignored", reason="no callback registrar configured")
            return
        user_id = event.user_id or self._callback_user_id
        try:
            crm_call_id = await self._callbacks.register_callback(
                event.phone.number, event.line, event.crm_entity_type, event.crm_entity_id, user_id)
        except Exception as exc:
            # Without a CALL_ID there is nothing in the CRM to finish; the request is lost, loudly.
            log.error("callback_register_failed", error=type(exc).__name__, detail=str(exc)[:200])
            return
        if not isinstance(crm_call_id, str) or CRM_CALL_ID.fullmatch(crm_call_id) is None:
            log.error("callback_register_failed", error="malformed CALL_ID returned")
            return
        target = CallTarget(crm_call_id=crm_call_id, number=event.phone.number, line=event.line, user_id=user_id)
        if self._callback_target is not None:
            extension: str | _Failure = self._callback_target
        elif user_id is not None:
            extension = self._extension_of(user_id)
        else:
            extension = _Failure("no callback target: set http.callback_target or bitrix24.default_user_id")
        if isinstance(extension, _Failure):
            await self.fail(target, extension.reason)
            return
        await self._originate(CallTarget(crm_call_id, target.number, target.line, extension, user_id))

    def _extension_of(self, user_id: int) -> str | _Failure:
        try:
            extension = self._directory.extension_for_user(user_id)
        except Exception as exc:
            log.error("directory_lookup_failed", user_id=user_id, error=type(exc).__name__)
            return _Failure(f"directory lookup for Bitrix24 user {user_id} failed")
        if not extension:
            return _Failure(f"no extension for Bitrix24 user {user_id}")
        if not isinstance(extension, str) or not extension.isascii() or EXTENSION.fullmatch(extension) is None:
            return _Failure(f"the extension of Bitrix24 user {user_id} is not dialable")
        return extension

    async def _originate(self, target: CallTarget) -> None:
        assert target.agent is not None and target.number is not None
        request = OriginateRequest(
            request_id=self._new_id(),
            extension=target.agent,
            number=target.number,
            crm_call_id=target.crm_call_id,
            timeout_seconds=self._timeout_seconds,
        )
        bound = log.bind(crm_call_id=target.crm_call_id, extension=target.agent, request_id=request.request_id)
        site = self._route(target.agent)
        try:
            async with asyncio.timeout(self._accept_timeout):
                if site is not None and self._router is not None:
                    await self._router.publish_originate(site, request)
                else:
                    await self._pbx.originate(request)
        except OriginateError as exc:
            bound.warning("originate_refused", reason=exc.reason)
            await self.fail(target, exc.reason)
            return
        except TimeoutError:
            bound.warning("originate_timeout", site=site)
            await self.fail(target, "the PBX did not accept the originate in time")
            return
        except Exception as exc:
            bound.error("originate_failed", site=site, error=type(exc).__name__, exc_info=True)
            where = f"site {site}" if site is not None else "the PBX"
            await self.fail(target, f"could not reach {where}: {type(exc).__name__}")
            return
        bound.info("originate_sent", site=site)

    def _route(self, extension: str) -> str | None:
        if self._router is None:
            return None
        try:
            return self._router.route(extension)
        except Exception as exc:
            log.error("site_route_failed", extension=extension, error=type(exc).__name__)
            return None

    async def fail(self, target: CallTarget, reason: str) -> None:
        """Finish a CRM call the PBX never started: CallStarted + CallEnded(failed) into the event pipeline."""
        now = self._clock()
        call_id = f"web-{self._new_id()}"
        log.warning("click_to_call_failed", crm_call_id=target.crm_call_id, reason=reason, call_id=call_id)
        record = CallRecord(
            call_id=call_id,
            pbx=self._pbx_kind,
            direction=Direction.OUTBOUND,
            external_number=target.number,
            line=target.line,
            agent=target.agent,
            agents_rung=(),
            disposition=Disposition.FAILED,
            started_at=now,
            answered_at=None,
            ended_at=now,
            talk_seconds=0,
            crm_call_id=target.crm_call_id,
            failure_reason=reason,
            crm_user_id=target.user_id,
        )
        await self._sink.submit(CallStarted(call_id=call_id, at=now, direction=Direction.OUTBOUND,
                                            external_number=target.number, line=target.line, agent=target.agent,
                                            crm_call_id=target.crm_call_id))
        await self._sink.submit(CallEnded(call_id=call_id, at=now, call=record))

    async def fail_invalid(self, crm_call_id: str, reason: str) -> None:
        """A registered CRM call whose event carried unusable data (e.g. a hostile number): finish it as failed."""
        await self.fail(CallTarget(crm_call_id=crm_call_id, number=None, line=None), reason)
