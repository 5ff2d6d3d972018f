"""Client-side leaky bucket that keeps us under the portal's request limit (2 req/s, burst 50 on most plans).

The portal adds 1 per request when the request *arrives* and drains `rate` per second; past `burst` it answers 503.
We cannot see arrival times, so a request counts fully while it is in flight and starts draining only when its answer
is back. Every arrival happens before its answer, so our level is never below the portal's: a burst can never
overflow it, whatever the network delays. One request of `margin` is kept back for clock differences.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

__all__ = ["LeakyBucket"]


class LeakyBucket:
    """Shared by every request the bridge sends to one portal: `async with bucket.slot(): <one HTTP request>`."""

    def __init__(self, rate: float, burst: int, *, margin: int = 1, initial_level: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self.capacity = max(1, burst - max(0, margin))
        self._clock = clock
        self._level = min(max(0.0, initial_level), float(self.capacity))
        self._stamp = clock()
        self._inflight = 0
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()

    def _drain(self) -> None:
        now = self._clock()
        self._level = max(0.0, self._level - (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def level(self) -> float:
        """Requests the portal may still be counting (in flight + not yet drained)."""
        self._drain()
        return self._level + self._inflight

    def available(self) -> float:
        """How many requests could start right now; the dispatcher batches when this runs low."""
        return max(0.0, self.capacity - self.level)

    def wait_time(self) -> float:
        """Seconds until one more request may start, if no in-flight request has to finish first."""
        excess = self.level + 1 - self.capacity
        return max(0.0, excess / self.rate)

    def try_acquire(self) -> bool:
        """Take room for one request if there is some now (no waiting, no queue-jumping); pair with `release()`."""
        if self._lock.locked():
            return False
        self._drain()
        if self._level + self._inflight + 1 > self.capacity:
            return False
        self._inflight += 1
        return True

    async def acquire(self) -> None:
        """Wait for room for one request (FIFO). Pair every acquire with `release()`; prefer `slot()`."""
        async with self._lock:
            while True:
                self._drain()
                excess = self._level + self._inflight + 1 - self.capacity
                if excess <= 0:
                    self._inflight += 1
                    return
                # Draining alone frees room after excess/rate s; otherwise an in-flight request must finish first.
                wait = excess / self.rate if excess <= self._level else None
                self._changed.clear()
                try:
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
                except TimeoutError:
                    pass

    def release(self) -> None:
        """The answer is back: from now on this request drains like any other."""
        self._drain()
        self._inflight = max(0, self._inflight - 1)
        self._level += 1
        self._changed.set()

    def saturate(self) -> None:
        """The portal said 503 anyway (another process shares our IP): assume it is full."""
        self._drain()
        self._level = max(self._level, float(self.capacity))
        self._changed.set()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()
