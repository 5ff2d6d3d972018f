"""One entry for every Bitrix24 event, whether POSTed to us or fetched offline: check it, then do the work later.

`accept()` is synchronous and cheap: parse, verify, validate, de-duplicate, schedule. The slow part (directory,
originate, REST calls) runs in a background task, because Bitrix24 throttles slow handlers and never redelivers.
Refusals are `HttpError`s, so the HTTP handler can answer with their status and the poller can log them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import structlog

from bridge.config import Bitrix24Settings, HttpSettings, OriginateSettings
from bridge.web.auth import EventVerifier, TokenHolder, TokenSource
from bridge.web.clicktocall import ClickToCall
from bridge.web.dedup import RecentKeys
from bridge.web.errors import BadRequest
from bridge.web.events import (
    APP_INSTALL,
    CALL_START,
    AppInstall,
    EventFormatError,
    ExternalCallbackStart,
    ExternalCallStart,
    UnknownEvent,
    auth_fields,
    decode_event,
    event_name,
    nest_form,
)
from bridge.web.ports import CallbackRegistrar, Directory, EventSink, Installer, Originator, SiteRouter
from bridge.web.tasks import TaskSet

log = structlog.get_logger(__name__)

DUPLICATE_WINDOW_SECONDS = 30.0
Status = Literal["accepted", "duplicate", "ignored"]
Source = Literal["http", "offline"]


@dataclass(frozen=True, slots=True)
class Accepted:
    status: Status
    event: str


class EventDispatcher:
    def __init__(
        self,
        *,
        click_to_call: ClickToCall,
        verifier: EventVerifier,
        installer: Installer | None = None,
        public_url: str | None = None,
        remember_token: TokenHolder | None = None,
        dedup: RecentKeys | None = None,
        tasks: TaskSet | None = None,
    ) -> None:
        self._calls = click_to_call
        self._verifier = verifier
        self._installer = installer
        self._public_url = public_url
        self._remember_token = remember_token
        self._dedup = dedup if dedup is not None else RecentKeys(DUPLICATE_WINDOW_SECONDS)
        self.tasks = tasks if tasks is not None else TaskSet("web.events")

    @classmethod
    def from_config(
        cls,
        http: HttpSettings,
        bitrix24: Bitrix24Settings,
        originate: OriginateSettings,
        *,
        pbx: Originator,
        directory: Directory,
        sink: EventSink,
        pbx_kind: str = "asterisk",
        callbacks: CallbackRegistrar | None = None,
        installer: Installer | None = None,
        router: SiteRouter | None = None,
        expected_token: TokenSource | None = None,
    ) -> EventDispatcher:
        """Wire from settings. Without `expected_token`, the configured `http.application_token` is used and an
        install replaces it in memory (pass a store-backed callable to keep it across restarts)."""
        holder: TokenHolder | None = None
        if expected_token is None:
            configured = http.application_token.get_secret_value() if http.application_token else None
            holder = TokenHolder(configured)
            expected_token = holder
        return cls(
            click_to_call=ClickToCall(
                pbx=pbx, directory=directory, sink=sink, callbacks=callbacks, router=router,
                callback_target=http.callback_target, callback_user_id=bitrix24.default_user_id,
                pbx_kind=pbx_kind, timeout_seconds=originate.timeout_seconds,
            ),
            verifier=EventVerifier(expected_token=expected_token, member_id=bitrix24.member_id,
                                   domain=bitrix24.domain),
            installer=installer,
            public_url=http.public_url,
            remember_token=holder,
        )

    def accept(self, pairs: Iterable[tuple[str, str]], *, source: Source = "http") -> Accepted:
        """Check one event and schedule its work. Raises BadRequest (400) or Unauthorized (401).

        Offline events are fetched by us over an authenticated REST call, so they skip the token check.
        """
        flat = list(pairs)
        try:
            form = nest_form(flat)
            name = event_name(form)
        except EventFormatError as exc:
            raise BadRequest(str(exc), error_id="malformed_event") from exc
        auth = auth_fields(form)
        if name != APP_INSTALL and source == "http":
            self._verifier.verify(auth)
        try:
            event = decode_event(form, flat)
        except EventFormatError as exc:
            if name == CALL_START and exc.crm_call_id is not None and not self._dedup.seen(exc.crm_call_id):
                # Bitrix24 registered this call already; finish it, or it stays open in the CRM forever.
                self.tasks.spawn(self._calls.fail_invalid(exc.crm_call_id, f"rejected by the bridge: {exc}"),
                                 "finish_invalid")
            raise BadRequest(str(exc), error_id="invalid_field",
                             details={"field": exc.field} if exc.field else None) from exc

        match event:
            case ExternalCallStart():
                if self._dedup.seen(event.crm_call_id):
                    log.info("click_to_call_duplicate", crm_call_id=event.crm_call_id)
                    return Accepted("duplicate", name)
                log.info("click_to_call_accepted", crm_call_id=event.crm_call_id, user_id=event.user_id,
                         source=source)
                self.tasks.spawn(self._calls.start_call(event), "click_to_call")
            case ExternalCallbackStart():
                key = f"callback|{event.phone.number}|{event.crm_entity_type}|{event.crm_entity_id}|{event.ts}"
                if event.ts is not None and self._dedup.seen(key):
                    log.info("callback_duplicate", crm_entity_type=event.crm_entity_type,
                             crm_entity_id=event.crm_entity_id)
                    return Accepted("duplicate", name)
                log.info("callback_accepted", crm_entity_type=event.crm_entity_type,
                         crm_entity_id=event.crm_entity_id, source=source)
                self.tasks.spawn(self._calls.start_callback(event), "callback")
            case AppInstall():
                if source != "http" or self._installer is None:
                    log.warning("app_install_ignored", reason="no installer (webhook mode)" if source == "http"
                                else "install events are not taken from the offline queue")
                    return Accepted("ignored", name)
                self._verifier.verify_install(auth, event.application_token)
                log.info("app_install_accepted", domain=auth.get("domain"), member_id=auth.get("member_id"))
                self.tasks.spawn(self._install(event, self._installer), "install")
            case UnknownEvent():
                log.info("event_ignored", event_name=event.name[:64], source=source)
                return Accepted("ignored", name)
        return Accepted("accepted", name)

    async def _install(self, event: AppInstall, installer: Installer) -> None:
        try:
            await installer.install(event.payload)
        except Exception as exc:
            log.error("app_install_failed", error=type(exc).__name__)
            return
        if self._remember_token is not None:
            self._remember_token.set(event.application_token)
        try:
            await installer.bind_events(self._public_url)
        except Exception as exc:
            log.error("event_bind_failed", error=type(exc).__name__, url=self._public_url)
            return
        log.info("app_installed", url=self._public_url)

    async def drain(self, timeout: float) -> None:
        await self.tasks.drain(timeout)
