"""The MQTT bus's running totals (also shown in `health().extra` and fed to Prometheus by a collector)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BusCounters"]


@dataclass(slots=True)
class BusCounters:
    """Totals since start. `commands_received` counts every message on our command topic (duplicates, malformed and
    expired ones included); `commands_sent` counts publishes of our own commands, resends included."""

    published: int = 0
    dropped_events: int = 0
    reconnects: int = 0
    commands_sent: int = 0
    commands_delivered: int = 0
    commands_failed: int = 0
    commands_received: int = 0
    commands_duplicate: int = 0
    commands_malformed: int = 0
    commands_expired: int = 0
