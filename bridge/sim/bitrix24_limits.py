"""The portal's two limits, as the simulator enforces them: the request leaky bucket and the per-method time budget.

Pure state machines with injectable clocks, so tests can drive them without sleeping.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OperatingBudget", "ServerBucket"]


class ServerBucket:
    """+1 per accepted request, drains `rate`/s; a request that would lift the level above `burst` is refused."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._level = 0.0
        self._stamp = clock()
        self.refused = 0
        self.peak = 0.0

    @property
    def level(self) -> float:
        now = self._clock()
        self._level = max(0.0, self._level - (now - self._stamp) * self.rate)
        self._stamp = now
        return self._level

    def admit(self) -> bool:
        if self.level + 1 > self.burst + 1e-9:
            self.refused += 1
            return False
        self._level += 1
        self.peak = max(self.peak, self._level)
        return True

    def reset(self) -> None:
        self._level = 0.0
        self._stamp = self._clock()
        self.refused = 0
        self.peak = 0.0


@dataclass(slots=True)
class _Slot:
    start: float
    seconds: float


class OperatingBudget:
    """Execution seconds per (caller, method) in `slots` buckets of `slot_seconds`; blocked once the sum passes `limit`.

    Wall-clock based, because `operating_reset_at` is a unix time the client compares with its own clock.
    """

    def __init__(self, limit: float, *, slot_seconds: float = 60.0, slots: int = 10,
                 clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.slot_seconds = slot_seconds
        self.window = slot_seconds * slots
        self._clock = clock
        self._used: dict[tuple[str, str], deque[_Slot]] = {}

    def _slots(self, key: tuple[str, str]) -> deque[_Slot]:
        slots = self._used.setdefault(key, deque())
        horizon = self._clock() - self.window
        while slots and slots[0].start <= horizon:
            slots.popleft()
        return slots

    def operating(self, caller: str, method: str) -> float:
        return sum(s.seconds for s in self._slots((caller, method)))

    def reset_at(self, caller: str, method: str) -> float:
        """When the oldest bucket leaves the window (now + window if nothing is counted)."""
        slots = self._slots((caller, method))
        return (slots[0].start if slots else self._clock()) + self.window

    def blocked(self, caller: str, method: str) -> bool:
        return self.operating(caller, method) > self.limit

    def add(self, caller: str, method: str, seconds: float) -> None:
        slots = self._slots((caller, method))
        now = self._clock()
        if slots and now - slots[-1].start < self.slot_seconds:
            slots[-1].seconds += seconds
        else:
            slots.append(_Slot(now, seconds))

    def reset(self) -> None:
        self._used.clear()
