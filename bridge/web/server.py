"""The aiohttp application and its embedding: `create_app()` builds it, `WebServer` runs it inside our own loop.

aiohttp is embedded, not handed the process: AppRunner + TCPSite, its signal handling off (the daemon owns signals),
a bounded shutdown. On stop the site stops accepting, requests in flight get `shutdown_timeout`, then the event work
still running in the background gets the same time before it is cancelled.
"""

from __future__ import annotations

import enum
import ipaddress
from types import TracebackType

import structlog
from aiohttp import web

from bridge.config import HttpSettings
from bridge.web.dispatch import EventDispatcher
from bridge.web.errors import error_middleware
from bridge.web.handlers import CONTEXT_KEY, WebContext, healthz, metrics, post_event, readyz
from bridge.web.ports import HealthSource, MetricsRenderer
from bridge.web.ratelimit import RateLimiter

log = structlog.get_logger(__name__)

# Burst allowed per address, as a multiple of the sustained rate (see http.rate_limit_per_ip).
BURST_FACTOR = 4.0


def create_app(
    settings: HttpSettings,
    *,
    dispatcher: EventDispatcher,
    health: HealthSource,
    metrics_renderer: MetricsRenderer | None = None,
    limiter: RateLimiter | None = None,
) -> web.Application:
    """The app: POST `settings.events_path`, GET /healthz, /readyz and (with a renderer) /metrics."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[error_middleware])
    if limiter is None:
        limiter = RateLimiter(settings.rate_limit_per_ip, max(1.0, settings.rate_limit_per_ip * BURST_FACTOR))
    app[CONTEXT_KEY] = WebContext(
        dispatcher=dispatcher,
        limiter=limiter,
        max_body_bytes=settings.max_body_bytes,
        health=health,
        metrics=metrics_renderer,
        trusted_proxies=tuple(ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies),
    )
    app.router.add_post(settings.events_path, post_event)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if metrics_renderer is not None:
        app.router.add_get("/metrics", metrics)
    timeout = settings.shutdown_timeout_seconds

    async def _drain(_app: web.Application) -> None:
        await dispatcher.drain(timeout)

    app.on_cleanup.append(_drain)
    return app


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class WebServer:
    """`async with WebServer(app, host=..., port=0) as server: server.port` — once only, no nesting."""

    def __init__(self, app: web.Application, *, host: str = "127.0.0.1", port: int = 8080,
                 shutdown_timeout: float = 5.0) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._state = _State.NEW
        self.port: int = port

    @classmethod
    def from_config(cls, app: web.Application, settings: HttpSettings) -> WebServer:
        return cls(app, host=settings.host, port=settings.port, shutdown_timeout=settings.shutdown_timeout_seconds)

    async def __aenter__(self) -> WebServer:
        if self._state is not _State.NEW:
            raise RuntimeError(f"WebServer is {self._state.value}; create a new one instead of re-entering")
        self._state = _State.RUNNING
        runner = web.AppRunner(self._app, handle_signals=False, shutdown_timeout=self._shutdown_timeout,
                               access_log=None)
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await self._close()
            raise
        self.port = _bound_port(runner, self._port)
        log.info("http_listening", host=self._host, port=self.port)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._close()

    async def _close(self) -> None:
        self._state = _State.CLOSED
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("http_stopped")


def _bound_port(runner: web.AppRunner, fallback: int) -> int:
    """The real port (port 0 asks the OS for a free one)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return fallback
