"""Metrics: names, labels and values in the rendered exposition; registries are independent; collectors run."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_render_shows_every_metric_with_its_labels_after_calls() -> None:
    m = Metrics(process_metrics=False)
    m.pbx_link(up=True)
    m.pbx_reconnected()
    m.pbx_events(5)
    m.pbx_events_dropped(2)
    m.active_calls(7)
    m.outbox_depth("register", 3)
    m.outbox_depth("finish", 1)
    m.dead_letters(4)
    m.portal_request("telephony.externalcall.register", "ok", 0.2)
    m.portal_request("telephony.externalcall.register", "rate_limited", 1.5)
    m.portal_throttled(503)
    m.portal_throttled(429)
    m.portal_throttled(503)
    m.ring_to_card(0.8)
    m.oauth_token_expiry(1_790_000_000.0)
    m.mqtt_link(up=False)
    m.mqtt_published(10)
    m.mqtt_dropped(3)

    s = samples(m)
    assert s[("b24bridge_pbx_connected", ())] == 1
    assert s[("b24bridge_pbx_reconnects_total", ())] == 1
    assert s[("b24bridge_pbx_events_total", ())] == 5
    assert s[("b24bridge_pbx_events_dropped_total", ())] == 2
    assert s[("b24bridge_active_calls", ())] == 7
    assert s[("b24bridge_outbox_depth", (("kind", "register"),))] == 3
    assert s[("b24bridge_outbox_depth", (("kind", "finish"),))] == 1
    assert s[("b24bridge_outbox_dead_letters", ())] == 4
    register = "telephony.externalcall.register"
    assert s[("b24bridge_portal_requests_total", (("method", register), ("result", "ok")))] == 1
    assert s[("b24bridge_portal_requests_total", (("method", register), ("result", "rate_limited")))] == 1
    assert s[("b24bridge_portal_throttled_total", (("code", "503"),))] == 2
    assert s[("b24bridge_portal_throttled_total", (("code", "429"),))] == 1
    assert s[("b24bridge_portal_request_seconds_count", (("method", register),))] == 2
    assert s[("b24bridge_portal_request_seconds_sum", (("method", register),))] == 1.7
    assert s[("b24bridge_portal_request_seconds_bucket", (("le", "0.25"), ("method", register)))] == 1
    assert s[("b24bridge_ring_to_card_seconds_count", ())] == 1
    assert s[("b24bridge_ring_to_card_seconds_bucket", (("le", "1.0"),))] == 1
    assert s[("b24bridge_ring_to_card_seconds_bucket", (("le", "0.75"),))] == 0
    assert s[("b24bridge_oauth_token_expiry_timestamp_seconds", ())] == 1_790_000_000.0
    assert s[("b24bridge_mqtt_connected", ())] == 0
    assert s[("b24bridge_mqtt_published_total", ())] == 10
    assert s[("b24bridge_mqtt_dropped_total", ())] == 3


def test_every_metric_has_help_text() -> None:
    body, _ = Metrics(process_metrics=False).render()
    names = set(re.findall(r"^# TYPE (b24bridge_\w+) ", body.decode(), re.M))
    helps = set(re.findall(r"^# HELP (b24bridge_\w+) \S", body.decode(), re.M))
    assert len(names) >= 16
    assert names == helps


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.active_calls(3)
    assert samples(a)[("b24bridge_active_calls", ())] == 3
    assert samples(b)[("b24bridge_active_calls", ())] == 0


def test_collectors_refresh_gauges_at_scrape_time_and_a_broken_one_is_skipped() -> None:
    m = Metrics(process_metrics=False)
    calls = [2]
    depths: list[dict[str, int]] = [{"register": 5, "show": 1}]

    def broken() -> None:
        raise RuntimeError("part is gone")

    m.add_collector(broken)
    m.add_collector(lambda: m.active_calls(calls[0]))
    remove = m.add_collector(lambda: m.outbox_depths(depths[0]))
    s = samples(m)
    assert s[("b24bridge_active_calls", ())] == 2
    assert s[("b24bridge_outbox_depth", (("kind", "register"),))] == 5

    calls[0] = 9
    depths[0] = {"register": 0}
    s = samples(m)
    assert s[("b24bridge_active_calls", ())] == 9
    assert s[("b24bridge_outbox_depth", (("kind", "register"),))] == 0
    assert ("b24bridge_outbox_depth", (("kind", "show"),)) not in s  # a vanished kind is not shown stale

    remove()
    depths[0] = {"register": 42}
    assert samples(m)[("b24bridge_outbox_depth", (("kind", "register"),))] == 0


def test_totals_from_a_component_advance_the_counters_and_survive_its_restart() -> None:
    m = Metrics(process_metrics=False)
    m.mqtt_totals(published=10, dropped=1)
    m.mqtt_totals(published=15, dropped=1)
    assert samples(m)[("b24bridge_mqtt_published_total", ())] == 15
    m.mqtt_totals(published=4, dropped=0)  # the bus was made anew and counts from zero
    assert samples(m)[("b24bridge_mqtt_published_total", ())] == 19
    m.pbx_totals(events=100, dropped=3, reconnects=2)
    s = samples(m)
    assert s[("b24bridge_pbx_events_total", ())] == 100
    assert s[("b24bridge_pbx_reconnects_total", ())] == 2


def test_token_expiry_unknown_is_zero_and_empty_labels_are_named() -> None:
    m = Metrics(process_metrics=False)
    m.oauth_token_expiry(None)
    m.portal_request("", "", -1.0)
    s = samples(m)
    assert s[("b24bridge_oauth_token_expiry_timestamp_seconds", ())] == 0
    assert s[("b24bridge_portal_requests_total", (("method", "unknown"), ("result", "unknown")))] == 1
