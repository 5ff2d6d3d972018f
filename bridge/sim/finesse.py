"""Cisco Finesse simulator: REST (aiohttp) + XMPP notifications, per-agent dialogs, scripted calls, faults.

    async with FinesseSim(users=[SimUser("agent1", "pw", "1001")]) as sim:
        sim.rest_url, sim.xmpp_port            # where the adapter connects
        dialog = sim.create_dialog(...)        # drive calls step by step (see bridge.sim.finesse_scenarios)
        sim.requests, sim.stanzas              # everything clients sent, for assertions

Behaviour follows the Finesse developer guide: a user sees a dialog while its extension is a live participant;
gaining it publishes POST (source .../User/{id}/Dialogs, data <dialogs>), changes publish PUT (source
/finesse/api/Dialog/{id}, data <Dialog>), losing it publishes a last PUT and then DELETE. MAKE_CALL answers 202 and
creates an outbound dialog from the agent's extension. Errors: 401 and 400 with ApiErrors XML, CTI errors as
apiErrors notifications, link drops and refused reconnects.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Literal
from xml.sax.saxutils import escape

from aiohttp import web

from bridge.sim.finesse_xmpp import XmppServer

__all__ = ["FinesseSim", "RecordedRequest", "SimDialog", "SimParticipant", "SimUser", "render_dialog"]

_OVER = ("DROPPED", "FAILED")


@dataclass
class SimUser:
    user_id: str
    password: str
    extension: str | None = None  # None: not an agent (an administrator)
    admin: bool = False
    signed_in: bool = True


@dataclass
class SimParticipant:
    address: str
    state: str
    address_type: str | None
    start: datetime
    changed: datetime
    cause: str | None = None


@dataclass
class SimDialog:
    id: str
    from_address: str
    to_address: str
    call_type: str
    dnis: str | None
    dialed_number: str | None
    state: str
    participants: dict[str, SimParticipant] = field(default_factory=dict)
    variables: list[tuple[str, str]] = field(default_factory=list)
    secondary_id: str | None = None
    associated_id: str | None = None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    user: str | None
    body: str
    status: int


def _t(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_dialog(d: SimDialog) -> str:
    """A Dialog object as Finesse would serialize it (voice)."""
    variables = "".join(f"<CallVariable><name>{escape(k)}</name><value>{escape(v)}</value></CallVariable>"
                        for k, v in d.variables)
    parts = []
    for p in d.participants.values():
        kind = f"<mediaAddressType>{p.address_type}</mediaAddressType>" if p.address_type else ""
        parts.append(
            f"<Participant><actions><action>DROP</action></actions><mediaAddress>{escape(p.address)}</mediaAddress>"
            f"{kind}<startTime>{_t(p.start)}</startTime><state>{p.state}</state>"
            f"<stateCause>{escape(p.cause or '')}</stateCause><stateChangeTime>{_t(p.changed)}</stateChangeTime>"
            "</Participant>")
    assoc = f"/finesse/api/Dialog/{d.associated_id}" if d.associated_id else ""
    return (
        f"<Dialog><associatedDialogUri>{assoc}</associatedDialogUri><fromAddress>{escape(d.from_address)}"
        f"</fromAddress><id>{d.id}</id><mediaProperties><DNIS>{escape(d.dnis or '')}</DNIS>"
        f"<callType>{d.call_type}</callType><dialedNumber>{escape(d.dialed_number or '')}</dialedNumber>"
        f"<outboundClassification></outboundClassification><callvariables>{variables}</callvariables>"
        f"</mediaProperties><mediaType>Voice</mediaType><participants>{''.join(parts)}</participants>"
        f"<secondaryId>{d.secondary_id or ''}</secondaryId><state>{d.state}</state>"
        f"<toAddress>{escape(d.to_address)}</toAddress><uri>/finesse/api/Dialog/{d.id}</uri></Dialog>"
    )


def _api_errors(error_type: str, message: str, data: str = "") -> str:
    return (f"<ApiErrors><ApiError><ErrorType>{escape(error_type)}</ErrorType><ErrorMessage>{escape(message)}"
            f"</ErrorMessage><ErrorData>{escape(data)}</ErrorData></ApiError></ApiErrors>")


class FinesseSim:
    """One simulated Finesse node (REST + notification service) on 127.0.0.1 with ephemeral ports."""

    def __init__(self, *, users: Sequence[SimUser], domain: str = "finesse.sim",
                 flavor: Literal["ucce", "uccx"] = "ucce", start: datetime | None = None,
                 host: str = "127.0.0.1", xmpp_tls: Literal["off", "starttls", "direct"] = "off",
                 xmpp_ssl: ssl.SSLContext | None = None) -> None:
        self.users = {u.user_id: u for u in users}
        self.domain = domain
        self.flavor = flavor
        self.host = host
        self.now = start or datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)
        self.dialogs: dict[str, SimDialog] = {}
        self.visible: dict[str, set[str]] = {u: set() for u in self.users}
        self.requests: list[RecordedRequest] = []
        self.stanzas: list[tuple[str | None, ET.Element]] = []
        self.published: list[tuple[str, str, str]] = []  # (user_id, event, dialog id or "")
        self.made_calls: asyncio.Queue[str] = asyncio.Queue()
        self.refuse_xmpp = False
        self.next_rest_error: tuple[int, str, str] | None = None
        self.next_make_call_cti_error: tuple[str, str] | None = None
        self._ids = count(16804377)
        self.xmpp = XmppServer(self, ssl_context=xmpp_ssl, tls=xmpp_tls)
        self._runner: web.AppRunner | None = None
        self.rest_port = 0
        self.xmpp_port = 0

    # ---- lifecycle -----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> FinesseSim:
        app = web.Application()
        app.router.add_get("/finesse/api/User/{user}/Dialogs", self._get_dialogs)
        app.router.add_post("/finesse/api/User/{user}/Dialogs", self._post_dialog)
        app.router.add_get("/finesse/api/SystemInfo", self._system_info)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.rest_port = int(self._runner.addresses[0][1])
        self.xmpp_port = await self.xmpp.start(self.host)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.xmpp.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    # ---- Directory protocol for the XMPP server ------------------------------------------------------------------

    def check_password(self, user: str, password: str) -> bool:
        known = self.users.get(user)
        return known is not None and known.password == password

    def may_subscribe(self, user: str, node: str) -> bool:
        known = self.users.get(user)
        return known is not None and (known.admin or node == f"/finesse/api/User/{user}/Dialogs")

    def record_stanza(self, user: str | None, stanza: ET.Element) -> None:
        self.stanzas.append((user, stanza))

    # ---- faults --------------------------------------------------------------------------------------------------

    async def drop_links(self) -> None:
        await self.xmpp.drop_all()

    def send_raw(self, user_id: str, data: bytes) -> int:
        """Write bytes as they are to every notification session of `user_id` (spoofing and garbage tests)."""
        sessions = [s for s in self.xmpp.sessions if s.user == user_id]
        for session in sessions:
            session.writer.write(data)
        return len(sessions)

    def fail_next_request(self, status: int, error_type: str, message: str) -> None:
        self.next_rest_error = (status, error_type, message)

    def publish_cti_error(self, user_id: str, dialog_id: str, code: str, message: str) -> None:
        update = (f"<Update><data><apiErrors><apiError><errorData>{escape(code)}</errorData><errorMessage>"
                  f"{escape(message)}</errorMessage><errorType>Call Operation Failure</errorType></apiError>"
                  f"</apiErrors></data><event>PUT</event><requestId></requestId>"
                  f"<source>/finesse/api/Dialog/{dialog_id}</source></Update>")
        self.xmpp.publish(user_id, f"/finesse/api/User/{user_id}/Dialogs", update)
        self.published.append((user_id, "ERROR", dialog_id))

    # ---- call state ----------------------------------------------------------------------------------------------

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    def is_agent(self, address: str) -> bool:
        return any(u.extension == address for u in self.users.values())

    def create_dialog(self, *, from_address: str, to_address: str, call_type: str, state: str,
                      participants: dict[str, str], dnis: str | None = None, dialed_number: str | None = None,
                      variables: Sequence[tuple[str, str]] = (), associated_id: str | None = None) -> str:
        dialog_id = str(next(self._ids))
        d = SimDialog(dialog_id, from_address, to_address, call_type, dnis, dialed_number, state,
                      variables=list(variables), associated_id=associated_id)
        for address, leg_state in participants.items():
            d.participants[address] = self._participant(address, leg_state)
        self.dialogs[dialog_id] = d
        self._publish(d)
        return dialog_id

    def _participant(self, address: str, state: str, cause: str | None = None) -> SimParticipant:
        kind = "AGENT_DEVICE" if self.is_agent(address) else None
        return SimParticipant(address, state, kind, self.now, self.now, cause)

    def set_participant(self, dialog_id: str, address: str, state: str, *, cause: str | None = None,
                        dialog_state: str | None = None) -> None:
        d = self.dialogs[dialog_id]
        current = d.participants.get(address)
        if current is None:
            d.participants[address] = self._participant(address, state, cause)
        else:
            current.state, current.cause, current.changed = state, cause, self.now
        if dialog_state is not None:
            d.state = dialog_state
        self._publish(d)

    def remove_participant(self, dialog_id: str, address: str) -> None:
        d = self.dialogs[dialog_id]
        d.participants.pop(address, None)
        self._publish(d)

    def update_dialog(self, dialog_id: str, *, state: str | None = None, secondary_id: str | None = None) -> None:
        d = self.dialogs[dialog_id]
        d.state = state or d.state
        d.secondary_id = secondary_id or d.secondary_id
        self._publish(d)

    def end_dialog(self, dialog_id: str, *, state: str = "DROPPED", cause: str | None = None) -> None:
        """Everyone hangs up: every live participant DROPPED (or FAILED), the dialog leaves every collection."""
        d = self.dialogs[dialog_id]
        for p in d.participants.values():
            if p.state not in _OVER:
                p.state, p.changed = ("FAILED" if state == "FAILED" else "DROPPED"), self.now
                p.cause = cause or p.cause
        d.state = state
        self._publish(d)
        del self.dialogs[dialog_id]

    def dialogs_of(self, user_id: str) -> list[SimDialog]:
        return [self.dialogs[i] for i in sorted(self.visible.get(user_id, ())) if i in self.dialogs]

    def _sees(self, user: SimUser, d: SimDialog) -> bool:
        if not user.signed_in or user.extension is None or d.state in _OVER:
            return False
        leg = d.participants.get(user.extension)
        return leg is not None and leg.state not in _OVER

    def _publish(self, d: SimDialog) -> None:
        body = render_dialog(d)
        for user in self.users.values():
            collection = f"/finesse/api/User/{user.user_id}/Dialogs"
            had = d.id in self.visible[user.user_id]
            has = self._sees(user, d)
            if has and not had:
                self.visible[user.user_id].add(d.id)
                self._send(user.user_id, "POST", f"<dialogs>{body}</dialogs>", collection, d.id)
            elif had:
                self._send(user.user_id, "PUT", body, f"/finesse/api/Dialog/{d.id}", d.id)
                if not has:
                    self.visible[user.user_id].discard(d.id)
                    self._send(user.user_id, "DELETE", f"<dialogs>{body}</dialogs>", collection, d.id)

    def _send(self, user_id: str, event: str, data: str, source: str, dialog_id: str) -> None:
        update = (f"<Update><data>{data}</data><event>{event}</event><requestId></requestId>"
                  f"<source>{source}</source></Update>")
        self.xmpp.publish(user_id, f"/finesse/api/User/{user_id}/Dialogs", update)
        self.published.append((user_id, event, dialog_id))

    # ---- REST ----------------------------------------------------------------------------------------------------

    def _auth(self, request: web.Request) -> SimUser | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return self.users[user] if self.check_password(user, password) else None

    async def _record(self, request: web.Request, response: web.Response, user: SimUser | None) -> web.Response:
        body = await request.text() if request.body_exists else ""
        self.requests.append(RecordedRequest(request.method, request.path, user.user_id if user else None, body,
                                             response.status))
        return response

    def _xml(self, text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, status=status, content_type="application/xml")

    def _injected(self) -> web.Response | None:
        if self.next_rest_error is None:
            return None
        status, error_type, message = self.next_rest_error
        self.next_rest_error = None
        return self._xml(_api_errors(error_type, message), status)

    async def _get_dialogs(self, request: web.Request) -> web.Response:
        user = self._auth(request)
        target = self.users.get(request.match_info["user"])
        if user is None or target is None or not (user.admin or user is target):
            return await self._record(request, self._xml(_api_errors("Authorization Failure", "UNAUTHORIZED"), 401),
                                      user)
        injected = self._injected()
        if injected is not None:
            return await self._record(request, injected, user)
        body = "".join(render_dialog(d) for d in self.dialogs_of(target.user_id))
        return await self._record(request, self._xml(f"<Dialogs>{body}</Dialogs>"), user)

    async def _post_dialog(self, request: web.Request) -> web.Response:
        user = self._auth(request)
        if user is None or request.match_info["user"] != user.user_id:
            return await self._record(request, self._xml(_api_errors("Authorization Failure", "UNAUTHORIZED"), 401),
                                      user)
        injected = self._injected()
        if injected is not None:
            return await self._record(request, injected, user)
        try:
            root = ET.fromstring(await request.text())  # noqa: S314 - the simulator's own trusted test input
        except ET.ParseError:
            return await self._record(request, self._xml(_api_errors("Invalid Input", "Malformed XML"), 400), user)
        action = root.findtext("requestedAction")
        src, dst = root.findtext("fromAddress") or "", root.findtext("toAddress") or ""
        variables = [(v.findtext("name") or "", v.findtext("value") or "")
                     for v in root.iterfind("mediaProperties/callvariables/CallVariable")]
        problem = None
        if action != "MAKE_CALL":
            problem = ("Invalid Input", f"Unsupported requestedAction {action!r}")
        elif src != user.extension:
            problem = ("Invalid Input", "fromAddress is not the extension of the signed-in user")
        elif not dst.isdigit():
            problem = ("Invalid Input", "toAddress must be digits")
        elif dst == src:
            problem = ("Invalid Destination", "toAddress equals fromAddress")
        elif variables and self.flavor == "uccx":
            problem = ("Invalid Input", "Call variables are not supported on MAKE_CALL")
        if problem is not None:
            return await self._record(request, self._xml(_api_errors(*problem), 400), user)
        response = web.Response(status=202)
        await self._record(request, response, user)
        asyncio.get_running_loop().call_soon(self._make_call, user, dst, variables)
        return response

    def _make_call(self, user: SimUser, dst: str, variables: list[tuple[str, str]]) -> None:
        assert user.extension is not None
        if self.next_make_call_cti_error is not None:
            code, message = self.next_make_call_cti_error
            self.next_make_call_cti_error = None
            self.publish_cti_error(user.user_id, str(next(self._ids)), code, message)
            return
        dialog_id = self.create_dialog(from_address=user.extension, to_address=dst, call_type="AGENT_OUT",
                                       state="INITIATED", dialed_number=dst, variables=variables,
                                       participants={user.extension: "INITIATED"})
        self.made_calls.put_nowait(dialog_id)

    async def _system_info(self, request: web.Request) -> web.Response:
        user = self._auth(request)
        if user is None:
            return await self._record(request, self._xml(_api_errors("Authorization Failure", "UNAUTHORIZED"), 401),
                                      user)
        info = (f"<SystemInfo><status>IN_SERVICE</status><xmppDomain>{self.domain}</xmppDomain>"
                f"<xmppPubSubDomain>pubsub.{self.domain}</xmppPubSubDomain></SystemInfo>")
        return await self._record(request, self._xml(info), user)

    async def _not_found(self, request: web.Request) -> web.Response:
        return await self._record(request, self._xml(_api_errors("Not Found", "Resource not found"), 404),
                                  self._auth(request))
