"""`FinesseAdapter`: the `PbxAdapter` for Cisco UCCE/UCCX through the Finesse agent desktop API.

Wiring only: XMPP sessions (bridge.pbx.cisco.xmpp) deliver Dialog notifications, the REST client
(bridge.pbx.cisco.rest) resyncs each agent's Dialogs after every (re)connect and places MAKE_CALL, and the pure
tracker turns both into CallEvents, which leave through one queue in the order they were produced.

Visibility limit: Finesse only tells an agent about dialogs its own device takes part in while the agent is signed
in, so calls waiting in a queue, ringing unmonitored phones or reaching signed-out agents are invisible here.
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import structlog

from bridge.config import Settings
from bridge.errors import ConfigError, OriginateError
from bridge.log import register_secrets
from bridge.model import CallEvent, OriginateRequest
from bridge.pbx.base import Health
from bridge.pbx.cisco.errors import FinesseApiError, FinesseError, FinesseUnavailableError
from bridge.pbx.cisco.notifications import dialogs_node, extract_notifications
from bridge.pbx.cisco.rest import Credentials, FinesseRest, tls_context
from bridge.pbx.cisco.tracker import FinesseTracker, PendingOriginate
from bridge.pbx.cisco.xmpp import SessionState, XmppConfig, XmppSession

__all__ = ["FinesseAdapter", "FinesseAgent"]

log = structlog.get_logger(__name__)

_NUMBER = re.compile(r"^\+?[0-9]{2,32}$")


@dataclass(frozen=True, slots=True)
class FinesseAgent:
    user_id: str
    extension: str
    password: str | None = field(default=None, repr=False)

    @property
    def credentials(self) -> Credentials | None:
        return Credentials(self.user_id, self.password) if self.password else None


class _State(StrEnum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class FinesseAdapter:
    """Cisco Finesse behind the neutral adapter interface; see docs/cisco.md."""

    kind = "cisco"

    def __init__(self, *, finesse_url: str, agents: Sequence[FinesseAgent], xmpp: XmppConfig,
                 auth_mode: Literal["agent", "admin"] = "agent", admin: Credentials | None = None,
                 request_timeout: float = 10.0, verify_tls: bool = True, ca_file: Path | None = None,
                 orphan_grace: float = 30.0, crm_call_id_variable: str | None = None, dial_prefix: str = "",
                 strip_plus: bool = True, discover_domain: bool = False, tick_interval: float = 1.0) -> None:
        if not agents:
            raise ValueError("at least one Finesse agent is needed")
        if auth_mode == "admin" and admin is None:
            raise ValueError("auth_mode 'admin' needs admin credentials")
        if auth_mode == "agent" and any(a.password is None for a in agents):
            raise ValueError("auth_mode 'agent' needs every agent's password")
        self._agents = {a.user_id: a for a in agents}
        self._by_ext = {a.extension: a for a in agents}
        self._mode = auth_mode
        self._admin = admin
        self._xmpp = xmpp
        self._discover = discover_domain
        self._rest = FinesseRest(finesse_url, timeout=request_timeout, verify_tls=verify_tls, ca_file=ca_file)
        self._tracker = FinesseTracker(agents={a.user_id: a.extension for a in agents}, pbx=self.kind,
                                       crm_call_id_variable=crm_call_id_variable, orphan_grace=orphan_grace)
        self._variable = crm_call_id_variable
        self._dial_prefix = dial_prefix
        self._strip_plus = strip_plus
        self._tick = tick_interval
        self._queue: asyncio.Queue[CallEvent | None] = asyncio.Queue()  # None = closed
        self._sessions: list[XmppSession] = []
        self._runner: asyncio.Task[None] | None = None
        self._state = _State.UNOPENED
        self.events_received = 0
        self._originated: OrderedDict[str, None] = OrderedDict()

    @classmethod
    def from_config(cls, settings: Settings) -> FinesseAdapter:
        """Build from `settings.cisco`; raise ConfigError naming the key when something needed is missing."""
        cfg = settings.cisco
        if not cfg.agents:
            raise ConfigError("cisco.agents: empty; list every Finesse agent (user_id, extension, password)",
                              key="cisco.agents")
        agents = [FinesseAgent(a.user_id, a.extension, a.password.get_secret_value() if a.password else None)
                  for a in cfg.agents]
        if cfg.auth_mode == "agent":
            for index, agent in enumerate(agents):
                if not agent.password:
                    raise ConfigError(f"cisco.agents[{index}].password: missing for {agent.user_id}; auth_mode "
                                      "'agent' logs in as each agent", key=f"cisco.agents.{index}.password")
        admin = None
        if cfg.admin_user and cfg.admin_password:
            admin = Credentials(cfg.admin_user, cfg.admin_password.get_secret_value())
        register_secrets([a.password for a in agents] + [admin.password if admin else None])
        host = cfg.xmpp_host or urlparse(cfg.finesse_url).hostname or "localhost"
        domain = cfg.xmpp_domain or host
        xmpp = XmppConfig(host=host, port=cfg.xmpp_port, domain=domain,
                          pubsub_domain=cfg.pubsub_domain or f"pubsub.{domain}", resource=cfg.xmpp_resource,
                          tls=cfg.tls,
                          ssl_context=tls_context(cfg.verify_tls, cfg.ca_file) if cfg.tls != "off" else None,
                          connect_timeout=cfg.connect_timeout, ping_interval=cfg.ping_interval,
                          ping_timeout=cfg.ping_timeout, reconnect_min=cfg.reconnect_min,
                          reconnect_max=cfg.reconnect_max)
        return cls(finesse_url=cfg.finesse_url, agents=agents, xmpp=xmpp, auth_mode=cfg.auth_mode, admin=admin,
                   request_timeout=cfg.request_timeout, verify_tls=cfg.verify_tls, ca_file=cfg.ca_file,
                   orphan_grace=cfg.orphan_grace_seconds, crm_call_id_variable=cfg.crm_call_id_variable,
                   dial_prefix=cfg.dial_prefix, strip_plus=cfg.strip_plus, discover_domain=cfg.xmpp_domain is None)

    # ---- lifecycle -----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> FinesseAdapter:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"FinesseAdapter cannot be entered when {self._state.value}")
        self._state = _State.OPEN
        await self._rest.__aenter__()
        self._runner = asyncio.create_task(self._run(), name="finesse.run")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._state is not _State.OPEN:
            return
        self._state = _State.CLOSED
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        await self._rest.__aexit__()
        self._queue.put_nowait(None)

    async def _run(self) -> None:
        if self._discover:
            await self._discover_domain()
        self._sessions = self._build_sessions()
        async with asyncio.TaskGroup() as group:
            for session in self._sessions:
                group.create_task(self._keep(session.name, session.run), name=f"finesse[{session.name}].xmpp")
            group.create_task(self._keep("tick", self._tick_loop), name="finesse.tick")

    async def _keep(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """A bug in one loop must not take the others down: log it and restart the loop."""
        while True:
            try:
                await body()
                return
            except Exception:
                log.exception("finesse_loop_crashed", loop=name)
                await asyncio.sleep(self._xmpp.reconnect_max)

    async def _discover_domain(self) -> None:
        creds = self._admin or next(a.credentials for a in self._agents.values() if a.credentials)
        try:
            info = await self._rest.system_info(creds)
        except FinesseError as exc:
            log.warning("finesse_systeminfo_failed", error=str(exc), domain=self._xmpp.domain)
            return
        if info.xmpp_domain:
            pubsub = info.pubsub_domain or f"pubsub.{info.xmpp_domain}"
            self._xmpp = replace(self._xmpp, domain=info.xmpp_domain, pubsub_domain=pubsub)

    def _build_sessions(self) -> list[XmppSession]:
        if self._mode == "admin":
            assert self._admin is not None
            agents = list(self._agents.values())
            return [XmppSession("admin", self._xmpp, self._admin, on_message=self._on_message,
                                on_ready=self._resync_callback(agents, self._admin),
                                subscribe_nodes=[dialogs_node(a.user_id) for a in agents])]
        sessions = []
        for agent in self._agents.values():
            creds = agent.credentials
            assert creds is not None
            sessions.append(XmppSession(agent.user_id, self._xmpp, creds, on_message=self._on_message,
                                        on_ready=self._resync_callback([agent], creds)))
        return sessions

    # ---- events --------------------------------------------------------------------------------------------------

    def _emit(self, events: Sequence[CallEvent]) -> None:
        for event in events:
            self._queue.put_nowait(event)

    def _on_message(self, stanza: ET.Element, received_at: datetime) -> None:
        self.events_received += 1
        for note in extract_notifications(stanza):
            if note.user_id not in self._agents:
                log.debug("finesse_foreign_node", node=note.node[:120])
                continue
            self._emit(self._tracker.apply(note.user_id, note.update, received_at))

    def _resync_callback(self, agents: Sequence[FinesseAgent], creds: Credentials) -> Callable[[], Awaitable[None]]:
        async def resync() -> None:
            for agent in agents:
                dialogs = await self._rest.get_dialogs(agent.user_id, creds)
                self._emit(self._tracker.resync(agent.user_id, dialogs, datetime.now(UTC)))
                log.info("finesse_resynced", user_id=agent.user_id, dialogs=len(dialogs))
        return resync

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            self._emit(self._tracker.tick(datetime.now(UTC)))

    async def events(self) -> AsyncIterator[CallEvent]:
        """Normalized events in the order the tracker produced them; ends when the adapter is closed."""
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)
                return
            yield item

    # ---- actions -------------------------------------------------------------------------------------------------

    async def originate(self, request: OriginateRequest) -> None:
        """MAKE_CALL as the agent (Finesse dials from the agent's device); returns once Finesse accepted it."""
        if self._state is not _State.OPEN:
            raise OriginateError("the Finesse adapter is not running", reason="not_running")
        if request.request_id in self._originated:
            return
        agent = self._by_ext.get(request.extension)
        if agent is None:
            raise OriginateError(f"extension {request.extension!r} is not a configured Finesse agent",
                                 reason="unknown_extension")
        creds = agent.credentials
        if creds is None:
            raise OriginateError(f"no Finesse password configured for agent {agent.user_id}",
                                 reason="no_credentials")
        if not _NUMBER.match(request.number):
            raise OriginateError("the number to dial is not + and digits", reason="invalid_number")
        number = request.number[1:] if self._strip_plus and request.number.startswith("+") else request.number
        dialed = self._dial_prefix + number
        now = datetime.now(UTC)
        self._tracker.expect_originate(PendingOriginate(
            request_id=request.request_id, extension=agent.extension, number=request.number, dialed=dialed,
            crm_call_id=request.crm_call_id, at=now, deadline=now + timedelta(seconds=request.timeout_seconds)))
        variables = ((self._variable, request.crm_call_id),) if self._variable and request.crm_call_id else ()
        try:
            await self._rest.make_call(agent.user_id, creds, agent.extension, dialed, variables)
        except FinesseApiError as exc:
            self._tracker.cancel_originate(request.request_id)
            raise OriginateError(f"Finesse refused MAKE_CALL ({exc.status})",
                                 reason=exc.error_message or exc.error_type or f"HTTP {exc.status}") from exc
        except FinesseUnavailableError as exc:
            self._tracker.cancel_originate(request.request_id)
            raise OriginateError("Finesse is unreachable", reason="unavailable") from exc
        self._originated[request.request_id] = None
        while len(self._originated) > 1000:
            self._originated.popitem(last=False)
        log.info("finesse_make_call_accepted", request_id=request.request_id, extension=agent.extension)

    # ---- health --------------------------------------------------------------------------------------------------

    def health(self) -> Health:
        states = {s.name: s.state.value for s in self._sessions}
        ready = sum(1 for s in self._sessions if s.state is SessionState.READY)
        ok = self._state is _State.OPEN and bool(self._sessions) and ready == len(self._sessions)
        errors = {s.name: s.last_error for s in self._sessions if s.last_error}
        detail = f"{ready}/{len(self._sessions)} Finesse notification sessions ready"
        # events_received / dropped_events / reconnects: the PBX counters every adapter reports (see /metrics).
        reconnects = sum(max(0, s.connects - 1) for s in self._sessions)
        return Health(ok=ok, detail=detail, extra={"sessions": states, "errors": errors,
                                                   "events_received": self.events_received, "dropped_events": 0,
                                                   "reconnects": reconnects,
                                                   "live_calls": self._tracker.live_calls,
                                                   "pending_originates": self._tracker.pending_originates})

