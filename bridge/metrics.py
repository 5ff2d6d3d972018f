"""Prometheus metrics of the bridge, in a registry of their own (no global state: tests can make many).

Parts report through verbs (`metrics.portal_request(...)`); values whose truth lives in a part (queue depths, live
calls, a component's own counters) are pulled at scrape time by collectors added with `add_collector`. Rates such as
PBX events per second are `rate()` queries over the counters, done in Prometheus.

All names start with `b24bridge_`; label values come from the bridge's own code (method names, kinds, codes), never
from the network, so their number stays small.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = ["Metrics"]

log = structlog.get_logger(__name__)

_NS = "b24bridge"
_PORTAL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_CARD_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
_MAX_LABEL = 80


class Metrics:
    """Every metric the operator needs, and `render()` for GET /metrics."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._collectors: list[Callable[[], None]] = []
        self._totals: dict[str, float] = {}
        if process_metrics:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)

        self._pbx_connected = Gauge("pbx_connected", "1 while the link to the PBX (AMI for Asterisk) is logged in, "
                                    "else 0", namespace=_NS, registry=reg)
        self._pbx_reconnects = Counter("pbx_reconnects", "Times the PBX link was re-established after a loss",
                                       namespace=_NS, registry=reg)
        self._pbx_events = Counter("pbx_events", "PBX events received (AMI events); events/s is rate() of this",
                                   namespace=_NS, registry=reg)
        self._pbx_events_dropped = Counter("pbx_events_dropped", "PBX events dropped because the tracker fell behind",
                                           namespace=_NS, registry=reg)
        self._active_calls = Gauge("active_calls", "Calls in progress on the PBX", namespace=_NS, registry=reg)
        self._outbox_depth = Gauge("outbox_depth", "CRM operations written but not yet sent, by kind",
                                   ["kind"], namespace=_NS, registry=reg)
        self._dead_letters = Gauge("outbox_dead_letters", "CRM operations given up on (kept for inspection)",
                                   namespace=_NS, registry=reg)
        self._portal_requests = Counter("portal_requests", "Bitrix24 REST requests by method and result",
                                        ["method", "result"], namespace=_NS, registry=reg)
        self._portal_throttled = Counter("portal_throttled", "Bitrix24 answers telling us to slow down, by HTTP code "
                                         "(503 QUERY_LIMIT_EXCEEDED, 429)", ["code"], namespace=_NS, registry=reg)
        self._portal_latency = Histogram("portal_request_seconds", "Bitrix24 REST request latency by method",
                                         ["method"], buckets=_PORTAL_BUCKETS, namespace=_NS, registry=reg)
        self._ring_to_card = Histogram("ring_to_card_seconds", "From the agent's phone ringing to the CRM card "
                                       "shown (telephony.externalcall.show answered)", buckets=_CARD_BUCKETS,
                                       namespace=_NS, registry=reg)
        self._token_expiry = Gauge("oauth_token_expiry_timestamp_seconds", "When the Bitrix24 OAuth access token "
                                   "expires (unix time; 0 when there is none, e.g. webhook mode)",
                                   namespace=_NS, registry=reg)
        self._mqtt_connected = Gauge("mqtt_connected", "1 while connected to the MQTT broker, else 0",
                                     namespace=_NS, registry=reg)
        self._mqtt_published = Counter("mqtt_published", "Call events published to MQTT", namespace=_NS, registry=reg)
        self._mqtt_dropped = Counter("mqtt_dropped", "Call events dropped (broker down or queue full)",
                                     namespace=_NS, registry=reg)

    # --- PBX ------------------------------------------------------------------------------------------------------

    def pbx_link(self, *, up: bool) -> None:
        self._pbx_connected.set(1 if up else 0)

    def pbx_reconnected(self) -> None:
        self._pbx_reconnects.inc()

    def pbx_events(self, count: int = 1) -> None:
        self._pbx_events.inc(count)

    def pbx_events_dropped(self, count: int = 1) -> None:
        self._pbx_events_dropped.inc(count)

    def pbx_totals(self, *, events: int, dropped: int, reconnects: int) -> None:
        """Bring the PBX counters up to a component's own running totals (for collectors)."""
        self._advance(self._pbx_events, "pbx_events", events)
        self._advance(self._pbx_events_dropped, "pbx_events_dropped", dropped)
        self._advance(self._pbx_reconnects, "pbx_reconnects", reconnects)

    # --- calls and outbox -------------------------------------------------------------------------------------------

    def active_calls(self, count: int) -> None:
        self._active_calls.set(count)

    def outbox_depth(self, kind: str, count: int) -> None:
        self._outbox_depth.labels(kind=_label(kind)).set(count)

    def outbox_depths(self, depths: Mapping[str, int]) -> None:
        """Replace all kinds at once (a kind missing from `depths` disappears instead of showing a stale value)."""
        self._outbox_depth.clear()
        for kind, count in depths.items():
            self.outbox_depth(kind, count)

    def dead_letters(self, count: int) -> None:
        self._dead_letters.set(count)

    # --- Bitrix24 portal --------------------------------------------------------------------------------------------

    def portal_request(self, method: str, result: str, seconds: float) -> None:
        """One REST call finished: `result` is "ok" or a short error class ("rate_limited", "auth", "network"...)."""
        self._portal_requests.labels(method=_label(method), result=_label(result)).inc()
        self._portal_latency.labels(method=_label(method)).observe(max(seconds, 0.0))

    def portal_throttled(self, code: int) -> None:
        self._portal_throttled.labels(code=str(code)).inc()

    def ring_to_card(self, seconds: float) -> None:
        self._ring_to_card.observe(max(seconds, 0.0))

    def oauth_token_expiry(self, unix_time: float | None) -> None:
        self._token_expiry.set(unix_time or 0)

    # --- MQTT -------------------------------------------------------------------------------------------------------

    def mqtt_link(self, *, up: bool) -> None:
        self._mqtt_connected.set(1 if up else 0)

    def mqtt_published(self, count: int = 1) -> None:
        self._mqtt_published.inc(count)

    def mqtt_dropped(self, count: int = 1) -> None:
        self._mqtt_dropped.inc(count)

    def mqtt_totals(self, *, published: int, dropped: int) -> None:
        """Bring the MQTT counters up to the bus's own totals (`MqttBus.counters`), for a collector."""
        self._advance(self._mqtt_published, "mqtt_published", published)
        self._advance(self._mqtt_dropped, "mqtt_dropped", dropped)

    # --- scrape -----------------------------------------------------------------------------------------------------

    def add_collector(self, collect: Callable[[], None]) -> Callable[[], None]:
        """Run `collect` before every render (to refresh gauges from live parts); returns a function that removes it."""
        self._collectors.append(collect)

        def remove() -> None:
            if collect in self._collectors:
                self._collectors.remove(collect)

        return remove

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type; a failing collector is logged and skipped, never fatal."""
        for collect in list(self._collectors):
            try:
                collect()
            except Exception:
                log.exception("metrics_collector_failed", collector=getattr(collect, "__qualname__", repr(collect)))
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    def _advance(self, counter: Counter, key: str, total: float) -> None:
        # A total below the last one means the component started again from zero: count its new total on top.
        last = self._totals.get(key, 0.0)
        delta = total - last if total >= last else total
        if delta > 0:
            counter.inc(delta)
        self._totals[key] = total


def _label(value: str) -> str:
    return value[:_MAX_LABEL] if value else "unknown"
