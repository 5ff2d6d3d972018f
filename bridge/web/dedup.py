"""Remember keys for a while, to drop repeats of one event (Bitrix24 CALL_IDs within 30 s, as asterlink does).

Pure apart from the injected clock; bounded in size (oldest first out).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class RecentKeys:
    def __init__(self, window_seconds: float = 30.0, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        self._window = window_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen(self, key: str) -> bool:
        """True if `key` was added within the window; otherwise remember it now and return False."""
        now = self._clock()
        self._expire(now)
        if key in self._seen:
            return True
        self._seen[key] = now
        if len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
        return False

    def _expire(self, now: float) -> None:
        # Insertion order is time order, so expired keys sit at the front.
        while self._seen:
            key, at = next(iter(self._seen.items()))
            if now - at < self._window:
                break
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)
