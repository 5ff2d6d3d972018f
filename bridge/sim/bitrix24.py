"""A Bitrix24 portal simulator over real HTTP, for tests, benchmarks and the demo.

It speaks the REST conventions the bridge relies on (webhook and OAuth-app auth, JSON/form/query parameters, `batch`
with `$result[...]`, the leaky bucket, the per-method time budget, 302 portal moves) and records every request.
Faults are switched on from Python (`sim.fail_next(...)`) or, across processes, through `POST /_fault`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import socket
import struct
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NamedTuple

import aiohttp
import structlog
from aiohttp import web

from bridge.crm.bitrix24.encoding import decode_pairs
from bridge.sim.bitrix24_batch import run_batch
from bridge.sim.bitrix24_faults import Failure, Faults
from bridge.sim.bitrix24_limits import OperatingBudget, ServerBucket
from bridge.sim.bitrix24_oauth import TokenIssuer
from bridge.sim.bitrix24_portal import Caller, Portal, Reply, SimApiError, SimCall, SimUser

__all__ = ["Bitrix24Simulator", "SimCommand", "SimRequest", "serve"]

log = structlog.get_logger(__name__)

DEFAULT_USERS: tuple[dict[str, Any], ...] = (
    {"ID": 1, "NAME": "Anna", "LAST_NAME": "Admin", "UF_PHONE_INNER": "100", "ACTIVE": True},
    {"ID": 5, "NAME": "Boris", "LAST_NAME": "Sales", "UF_PHONE_INNER": "101", "ACTIVE": True},
    {"ID": 7, "NAME": "Vera", "LAST_NAME": "Support", "UF_PHONE_INNER": "102", "ACTIVE": True},
    {"ID": 9, "NAME": "Gleb", "LAST_NAME": "Former", "UF_PHONE_INNER": "103", "ACTIVE": False},
)
_HTML = "<html><head><title>{status} Error</title></head><body><h1>{status}</h1><p>nginx</p></body></html>"
_DEFAULT_ERRORS = {500: ("INTERNAL_SERVER_ERROR", "Internal server error"),
                   503: ("QUERY_LIMIT_EXCEEDED", "Too many requests")}


class SimRequest(NamedTuple):
    t: float
    method: str
    params: dict[str, Any]
    http_status: int
    error: str | None


class SimCommand(NamedTuple):
    t: float
    key: str
    method: str
    params: dict[str, Any]
    error: str | None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).astimezone().isoformat(timespec="seconds")


class Bitrix24Simulator:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, rate: float = 2.0, burst: int = 50,
                 latency: float = 0.0, webhook_user: int = 1, webhook_secret: str | None = None,
                 users: list[dict[str, Any]] | None = None, operating_limit: float = 480.0,
                 method_cost: float = 0.05, method_costs: Mapping[str, float] | None = None,
                 client_id: str = "local.sim0000000000.00000000", client_secret: str | None = None,
                 token_lifetime: float = 3600.0, crm: Mapping[str, tuple[str, int]] | None = None,
                 crm_owners: Mapping[tuple[str, int], int] | None = None,
                 member_id: str = "simmember0000000000000000000000") -> None:
        self.host, self._port = host, port
        self.latency = latency
        self.webhook_user = webhook_user
        self.webhook_secret = webhook_secret or secrets.token_hex(10)
        self.oauth = TokenIssuer(client_id=client_id, client_secret=client_secret or secrets.token_hex(12),
                                 lifetime=token_lifetime, member_id=member_id, endpoints=self._endpoints)
        self.portal = Portal([SimUser.parse(u) for u in (users if users is not None else DEFAULT_USERS)],
                             crm=crm, crm_owners=crm_owners)
        self.bucket = ServerBucket(rate, burst)
        self.budget = OperatingBudget(operating_limit)
        self.method_cost = method_cost
        self.method_costs = {k.lower(): v for k, v in (method_costs or {}).items()}
        self.requests: list[SimRequest] = []
        self.commands: list[SimCommand] = []
        self.faults = Faults()
        self.prefix = ""
        self._runner: web.AppRunner | None = None
        self._fetch_session: aiohttp.ClientSession | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Bitrix24Simulator:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port, reuse_address=True)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        self._fetch_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.portal.fetch = self._fetch
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._fetch_session is not None:
            await self._fetch_session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The portal's current address (changes after `move()`), without a trailing slash."""
        return f"http://{self.host}:{self._port}{self.prefix}"

    @property
    def rest_url(self) -> str:
        return f"{self.url}/rest/"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/rest/{self.webhook_user}/{self.webhook_secret}/"

    # --- views ----------------------------------------------------------------------------------------------------

    @property
    def calls(self) -> dict[str, SimCall]:
        return self.portal.calls

    @property
    def counts(self) -> Counter[str]:
        """HTTP requests per method (lower case; a batch counts once, as "batch")."""
        return Counter(r.method for r in self.requests)

    @property
    def command_counts(self) -> Counter[str]:
        """Executed method calls, single requests and batch commands alike."""
        singles = Counter(r.method for r in self.requests if r.method not in ("batch", "upload", "oauth.token"))
        return singles + Counter(c.method for c in self.commands)

    def count(self, method: str) -> int:
        return self.command_counts[method.lower()]

    # --- faults and controls ------------------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, *, html: bool = False, error: str | None = None) -> None:
        self.faults.fail_next(n, status, html=html, error=error)

    def go_down(self, seconds: float) -> None:
        """Every connection is reset for `seconds`."""
        self.faults.go_down(seconds)

    def slow(self, seconds: float, *, count: int | None = None) -> None:
        """Add `seconds` to every answer (or only the next `count`); `slow(0)` ends it."""
        self.faults.slow(seconds, count)

    def expire_tokens(self) -> None:
        self.oauth.expire_all()

    def revoke_refresh_tokens(self) -> None:
        self.oauth.revoke_refresh_tokens()

    def issue_tokens(self) -> dict[str, str]:
        """A fresh token pair in the shape of an ONAPPINSTALL form post."""
        return self.oauth.install_payload()

    def _endpoints(self) -> tuple[str, str, str]:
        return f"{self.host}:{self._port}", self.rest_url, f"http://{self.host}:{self._port}/rest/"

    @property
    def client_id(self) -> str:
        return self.oauth.client_id

    @property
    def client_secret(self) -> str:
        return self.oauth.client_secret

    @property
    def refreshes(self) -> int:
        return self.oauth.refreshes

    @property
    def application_token(self) -> str:
        """What the portal puts in `auth[application_token]` of the events it sends this app."""
        return self.oauth.application_token

    @property
    def member_id(self) -> str:
        return self.oauth.member_id

    def pause_method(self, method: str, seconds: float) -> None:
        self.faults.pause(method, seconds)

    def move(self, prefix: str = "/moved") -> None:
        """The portal changes its address: requests to the old one get 302 to the same path at the new one."""
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""

    def drop_filter(self, key: str) -> None:
        """Silently ignore `user.get` filter `key`, as a portal does for a key outside the scope."""
        self.portal.dropped_filter_keys.add(key.upper())

    def queue_offline_event(self, event: str, data: Mapping[str, Any]) -> None:
        self.portal.queue_offline_event(event, data)

    def reset(self) -> None:
        """Forget requests, calls and faults; users and tokens stay."""
        self.requests.clear()
        self.commands.clear()
        self.portal.reset_calls()
        self.bucket.reset()
        self.budget.reset()
        self.faults.clear()

    # --- HTTP entry -----------------------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_"):
            return await self._control(request)
        if self.faults.down:
            return self._reset_connection(request, path)
        delay = self.latency + self.faults.take_delay()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            if path.rstrip("/") == "/oauth/token":
                return await self._oauth(request)
            return await self._rest(request, path)
        except ConnectionError:  # the client gave up (timeout) while we were still reading its body
            self._record(path.rsplit("/", 1)[-1].lower(), {}, 0, "client_gone")
            return web.Response(status=499)

    def _reset_connection(self, request: web.Request, path: str) -> web.StreamResponse:
        self._record(path.rsplit("/", 1)[-1].lower(), {}, 0, "connection_reset")
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return web.Response(status=500)

    def _record(self, method: str, params: Mapping[str, Any], status: int, error: str | None) -> None:
        clean = {k: v for k, v in params.items() if str(k).lower() != "auth"}
        self.requests.append(SimRequest(time.time(), method, clean, status, error))

    async def _rest(self, request: web.Request, path: str) -> web.StreamResponse:
        method = path.rsplit("/", 1)[-1].lower().removesuffix(".json")
        failure = self.faults.take_failure()
        if failure is not None:
            return self._fail(method, failure)
        marker = path.find("/rest/")
        if marker < 0:
            return self._error(method, {}, 404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        if path[:marker] != self.prefix:
            target = f"http://{request.host}{self.prefix}{path[marker:]}"
            if request.query_string:
                target += "?" + request.query_string
            self._record(method, {}, 302, None)
            return web.Response(status=302, headers={"Location": target})
        if not self.bucket.admit():
            return self._error(method, {}, 503, "QUERY_LIMIT_EXCEEDED", "Too many requests")
        tail = path[marker + len("/rest/"):]
        if tail.lower() in ("upload.json", "upload"):
            return await self._upload(request)
        try:
            params = await self._params(request)
        except SimApiError as exc:
            return self._error(method, {}, exc.status, exc.code, exc.description)
        try:
            caller, method = self._authenticate(tail, params)
            if method == "batch":
                body = await self._batch(params, caller)
            else:
                reply, time_info = await self._run(method, params, caller)
                body = {"result": reply.result, "time": time_info}
                if reply.total is not None:
                    body["total"] = reply.total
                if reply.next is not None:
                    body["next"] = reply.next
        except SimApiError as exc:
            return self._error(method, params, exc.status, exc.code, exc.description, time_info=exc.time_info)
        self._record(method, params, 200, None)
        return web.json_response(body)

    def _fail(self, method: str, failure: Failure) -> web.Response:
        if failure.html:
            self._record(method, {}, failure.status, "html")
            return web.Response(status=failure.status, text=_HTML.format(status=failure.status),
                                content_type="text/html")
        code, text = _DEFAULT_ERRORS.get(failure.status, ("ERROR_UNEXPECTED_ANSWER", "Server error"))
        return self._error(method, {}, failure.status, failure.error or code, text)

    def _error(self, method: str, params: Mapping[str, Any], status: int, code: str, description: str, *,
               time_info: dict[str, Any] | None = None) -> web.Response:
        self._record(method, params, status, code or description)
        body: dict[str, Any] = {"error": code, "error_description": description}
        if time_info is not None:
            body["time"] = time_info
        return web.json_response(body, status=status)

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params = decode_pairs(request.query.items())
        if not request.can_read_body:
            return params
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError as exc:
                raise SimApiError(400, "INVALID_REQUEST", "Request body is not valid JSON") from exc
            if not isinstance(body, dict):
                raise SimApiError(400, "INVALID_REQUEST", "Request body must be a JSON object")
            params.update(body)
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            params.update(decode_pairs((k, v) for k, v in form.items() if isinstance(v, str)))
        return params

    def _authenticate(self, tail: str, params: Mapping[str, Any]) -> tuple[Caller, str]:
        parts = [p for p in tail.split("/") if p]
        upload_base = self.rest_url
        if len(parts) == 3 and parts[0].isdigit():
            method = parts[2].lower().removesuffix(".json")
            if int(parts[0]) != self.webhook_user or not hmac.compare_digest(parts[1], self.webhook_secret):
                raise SimApiError(401, "INVALID_CREDENTIALS", "Invalid request credentials")
            return Caller(f"webhook:{self.webhook_user}", self.webhook_user, False, upload_base), method
        if len(parts) != 1:
            raise SimApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        method = parts[0].lower().removesuffix(".json")
        self.oauth.check(params.get("auth") or params.get("AUTH"))
        return Caller(f"app:{self.client_id}", 1, True, upload_base), method

    def _time_info(self, caller: Caller, method: str, started: float) -> dict[str, Any]:
        finished = time.time()
        return {"start": started, "finish": finished, "duration": finished - started,
                "processing": finished - started, "date_start": _iso(started), "date_finish": _iso(finished),
                "operating_reset_at": self.budget.reset_at(caller.identity, method),
                "operating": round(self.budget.operating(caller.identity, method), 4)}

    def _check_budget(self, caller: Caller, method: str) -> None:
        paused = self.faults.paused_until(method)
        now = time.time()
        if paused is not None:
            info = self._time_info(caller, method, now)
            info["operating_reset_at"] = paused
            raise SimApiError(429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.",
                           time_info=info)
        if self.budget.blocked(caller.identity, method):
            raise SimApiError(429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.",
                           time_info=self._time_info(caller, method, now))

    async def _run(self, method: str, params: dict[str, Any], caller: Caller) -> tuple[Reply, dict[str, Any]]:
        handler = self.portal.methods.get(method)
        if handler is None:
            raise SimApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        self._check_budget(caller, method)
        started = time.time()
        try:
            reply = await handler({k: v for k, v in params.items() if str(k).lower() != "auth"}, caller)
        except SimApiError as exc:
            self.budget.add(caller.identity, method, self.method_costs.get(method, self.method_cost))
            raise SimApiError(exc.status, exc.code, exc.description,
                           time_info=self._time_info(caller, method, started)) from exc
        self.budget.add(caller.identity, method, self.method_costs.get(method, self.method_cost))
        return reply, self._time_info(caller, method, started)

    # --- batch ----------------------------------------------------------------------------------------------------

    async def _batch(self, params: Mapping[str, Any], caller: Caller) -> dict[str, Any]:
        started = time.time()

        async def run(method: str, sub: dict[str, Any]) -> tuple[Reply, dict[str, Any]]:
            return await self._run(method, sub, caller)

        def observe(key: str, method: str, sub: dict[str, Any], error: str | None) -> None:
            self.commands.append(SimCommand(time.time(), key, method, sub, error))

        result = await run_batch(params, run, observe)
        finished = time.time()
        return {"result": result, "time": {"start": started, "finish": finished, "duration": finished - started,
                                           "processing": finished - started, "date_start": _iso(started),
                                           "date_finish": _iso(finished)}}

    # --- uploads, OAuth, control --------------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        call = self.portal.take_upload(request.query.get("token", ""))
        if call is None:
            return self._error("upload", {}, 401, "INVALID_TOKEN", "Upload token is invalid or used")
        if request.content_type != "multipart/form-data":
            return self._error("upload", {}, 400, "", "File content is empty.")
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, aiohttp.BodyPartReader) and part.name == "file":
                filename = part.filename or ""
                if not filename.lower().endswith((".wav", ".mp3")):
                    return self._error("upload", {}, 400, "", "Wrong file extension. Only wav and mp3 are allowed")
                data = bytes(await part.read())
                result = self.portal.store_record(call, filename, data)
                self._record("upload", {"CALL_ID": call.call_id, "filename": filename, "size": len(data)}, 200, None)
                return web.json_response({"result": result})
        return self._error("upload", {}, 400, "", "File content is empty.")

    async def _oauth(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        if request.can_read_body and request.content_type == "application/x-www-form-urlencoded":
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        shown = {k: v for k, v in params.items() if k == "grant_type"}
        try:
            answer = self.oauth.refresh(params)
        except SimApiError as exc:
            self._record("oauth.token", shown, exc.status, exc.code)
            return web.json_response({"error": exc.code, "error_description": exc.description}, status=exc.status)
        self._record("oauth.token", shown, 200, None)
        return web.json_response(answer)

    async def _fetch(self, url: str) -> tuple[int, bytes]:
        assert self._fetch_session is not None
        try:
            async with self._fetch_session.get(url) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return 0, b""

    async def _control(self, request: web.Request) -> web.Response:
        path = request.path.rstrip("/")
        if path == "/_requests" and request.method == "GET":
            return web.json_response([r._asdict() for r in self.requests], dumps=_dumps)
        if path == "/_calls" and request.method == "GET":
            return web.json_response({cid: _call_view(c) for cid, c in self.calls.items()}, dumps=_dumps)
        if path == "/_info" and request.method == "GET":
            return web.json_response({"url": self.url, "rest_url": self.rest_url, "webhook_url": self.webhook_url,
                                      "client_id": self.client_id, "client_secret": self.client_secret,
                                      "member_id": self.member_id, "application_token": self.application_token})
        if path == "/_reset" and request.method == "POST":
            self.reset()
            return web.json_response({"ok": True})
        if path == "/_tokens" and request.method == "POST":
            return web.json_response(self.issue_tokens())
        if path == "/_fault" and request.method == "POST":
            try:
                spec = await request.json()
                kind = self.faults.apply(spec)
                if kind == "expire_tokens":
                    self.expire_tokens()
                elif kind == "move":
                    self.move(str(spec.get("prefix", "/moved")))
            except (ValueError, TypeError, KeyError) as exc:
                return web.json_response({"ok": False, "error": str(exc)}, status=400)
            return web.json_response({"ok": True})
        return web.json_response({"ok": False, "error": "unknown control endpoint"}, status=404)

def _call_view(call: SimCall) -> dict[str, Any]:
    return {"call_id": call.call_id, "user_id": call.user_id, "phone_number": call.phone_number,
            "type": call.call_type, "line_number": call.line_number, "external_call_id": call.external_call_id,
            "registrations": call.registrations, "shows": call.shows, "hides": call.hides, "finish": call.finish,
            "records": [{"filename": name, "size": len(data)} for name, data in call.records]}


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


async def serve(host: str = "127.0.0.1", port: int = 8089, **opts: Any) -> None:
    """Run a simulator until cancelled (`b24-bridge sim bitrix24 --port N`)."""
    async with Bitrix24Simulator(host=host, port=port, **opts) as sim:
        log.info("bitrix24_sim_listening", url=sim.url, webhook_user=sim.webhook_user, client_id=sim.client_id)
        # The simulator's credentials are not secrets; print them whole so a demo can be wired by hand.
        print(f"Bitrix24 simulator: webhook URL {sim.webhook_url} (GET {sim.url}/_info for the app credentials)",
              flush=True)
        await asyncio.Event().wait()
