"""Fault injection for the simulator: error answers, outages (connection resets), slow answers, paused methods.

Plain state; the HTTP side asks it what to do with each request. `apply()` takes the JSON of `POST /_fault`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Failure", "Faults"]


@dataclass(slots=True)
class Failure:
    remaining: int
    status: int
    html: bool
    error: str | None


class Faults:
    def __init__(self) -> None:
        self._failures: list[Failure] = []
        self._down_until = 0.0
        self._slow = 0.0
        self._slow_count: int | None = None
        self.paused: dict[str, float] = {}  # method (lower case) -> unix time

    def fail_next(self, n: int, status: int, *, html: bool, error: str | None) -> None:
        self._failures.append(Failure(n, status, html, error))

    def go_down(self, seconds: float) -> None:
        self._down_until = time.monotonic() + seconds

    def slow(self, seconds: float, count: int | None) -> None:
        self._slow, self._slow_count = seconds, count

    def pause(self, method: str, seconds: float) -> None:
        self.paused[method.lower()] = time.time() + seconds

    def paused_until(self, method: str) -> float | None:
        until = self.paused.get(method)
        return until if until is not None and until > time.time() else None

    @property
    def down(self) -> bool:
        return time.monotonic() < self._down_until

    def take_delay(self) -> float:
        if self._slow <= 0:
            return 0.0
        delay = self._slow
        if self._slow_count is not None:
            self._slow_count -= 1
            if self._slow_count <= 0:
                self._slow, self._slow_count = 0.0, None
        return delay

    def take_failure(self) -> Failure | None:
        while self._failures and self._failures[0].remaining <= 0:
            self._failures.pop(0)
        if not self._failures:
            return None
        self._failures[0].remaining -= 1
        return self._failures[0]

    def clear(self) -> None:
        self._failures.clear()
        self._down_until = 0.0
        self._slow, self._slow_count = 0.0, None
        self.paused.clear()

    def apply(self, spec: Any) -> str:
        """A fault from JSON (`{"kind": "fail_next", "n": 3, "status": 502, "html": true}`); returns the kind."""
        if not isinstance(spec, dict):
            raise TypeError("fault spec must be a JSON object")
        kind = spec["kind"]
        if kind == "fail_next":
            self.fail_next(int(spec.get("n", 1)), int(spec.get("status", 500)), html=bool(spec.get("html")),
                           error=spec.get("error"))
        elif kind == "go_down":
            self.go_down(float(spec["seconds"]))
        elif kind == "slow":
            count = spec.get("count")
            self.slow(float(spec["seconds"]), None if count is None else int(count))
        elif kind == "pause_method":
            self.pause(str(spec["method"]), float(spec["seconds"]))
        elif kind not in ("expire_tokens", "move"):
            raise ValueError(f"unknown fault kind {kind!r}")
        return str(kind)
