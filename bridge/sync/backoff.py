"""Jittered, capped exponential backoff: how long a sender waits after a failure before trying again."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays grow base, 2*base, 4*base ... up to `cap`, each drawn from its upper half so that restarts
    of several bridges do not retry in step. `reset()` after a success."""

    def __init__(self, base: float = 0.5, cap: float = 60.0, *, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, at_least: float = 0.0) -> float:
        """Count one more failure and return the wait; `at_least` (e.g. a portal's retry-after) is honoured up to
        the cap."""
        self.failures += 1
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 32))
        delay = self._rng.uniform(ceiling / 2.0, ceiling)
        return max(delay, min(max(at_least, 0.0), self.cap))

    def reset(self) -> None:
        self.failures = 0
