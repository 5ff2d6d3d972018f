"""aiohttp handlers: the Bitrix24 event endpoint, liveness, readiness and metrics. Thin: HTTP in, HTTP out.

The event handler refuses cheaply and early (rate limit, size, content type) before it reads the body, then hands
the pairs to the `EventDispatcher`, whose refusals are `HttpError`s rendered by the error middleware.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from aiohttp import web

from bridge.web.dispatch import EventDispatcher
from bridge.web.errors import BadRequest, PayloadTooLarge, TooManyRequests, UnsupportedMediaType
from bridge.web.events import EventFormatError, parse_form_body
from bridge.web.ports import HealthSource, MetricsRenderer
from bridge.web.ratelimit import RateLimiter

log = structlog.get_logger(__name__)

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_dumps = partial(json.dumps, default=str)


@dataclass(frozen=True, slots=True)
class WebContext:
    """Everything the handlers share, stored once in the app under `CONTEXT_KEY`."""

    dispatcher: EventDispatcher
    limiter: RateLimiter
    max_body_bytes: int
    health: HealthSource
    metrics: MetricsRenderer | None = None
    trusted_proxies: tuple[IpNetwork, ...] = ()


CONTEXT_KEY = web.AppKey("bridge_web_context", WebContext)


async def post_event(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    client = client_address(request, ctx.trusted_proxies)
    wait = ctx.limiter.acquire(client)
    if wait > 0:
        raise TooManyRequests("too many requests from this address", retry_after=wait)
    length = request.content_length
    if length is not None and length > ctx.max_body_bytes:
        raise PayloadTooLarge(f"body larger than {ctx.max_body_bytes} bytes")
    if request.content_type != FORM_CONTENT_TYPE:
        raise UnsupportedMediaType(f"expected {FORM_CONTENT_TYPE}")
    body = await request.read()  # bounded by client_max_size: larger bodies raise HTTP 413
    try:
        pairs = parse_form_body(body)
    except EventFormatError as exc:
        raise BadRequest(str(exc), error_id="malformed_body") from exc
    accepted = ctx.dispatcher.accept(pairs, source="http")
    return web.json_response({"status": accepted.status, "event": accepted.event})


async def healthz(_request: web.Request) -> web.Response:
    """Liveness: the loop answers. Nothing else is checked, so a PBX outage does not get the process restarted."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: every part reports ok (AMI logged in, Bitrix24 reachable, outbox writable, ...)."""
    ctx = request.app[CONTEXT_KEY]
    try:
        parts = dict(ctx.health())
    except Exception as exc:
        log.error("health_check_failed", error=type(exc).__name__)
        return web.json_response({"status": "not_ready", "error": "health check failed", "checks": {}}, status=503)
    checks: dict[str, Any] = {}
    for name, health in parts.items():
        entry: dict[str, Any] = {"ok": bool(health.ok), "detail": health.detail}
        if health.extra:
            entry["extra"] = health.extra
        checks[str(name)] = entry
    ready = all(entry["ok"] for entry in checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return web.json_response(body, status=200 if ready else 503, dumps=_dumps)


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    if ctx.metrics is None:
        raise web.HTTPNotFound()
    try:
        payload, content_type = ctx.metrics()
    except Exception as exc:
        log.error("metrics_render_failed", error=type(exc).__name__)
        return web.json_response({"error_id": "metrics_unavailable", "message": "metrics unavailable"}, status=503)
    return web.Response(body=payload, headers={"Content-Type": content_type})


def client_address(request: web.Request, trusted: Sequence[IpNetwork]) -> str:
    """The peer address, or, behind a trusted reverse proxy, the nearest untrusted hop of X-Forwarded-For."""
    peer = request.remote or "unknown"
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    forwarded = request.headers.get("X-Forwarded-For", "")
    for hop in reversed([part.strip() for part in forwarded.split(",") if part.strip()]):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return peer
        if not any(address in net for net in trusted):
            return str(address)
    return peer


def _is_trusted(peer: str, trusted: Sequence[IpNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in net for net in trusted)
