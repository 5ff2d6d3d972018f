"""The outbox's in-memory view of pending work: which op of each call may go next, cards first.

Per call, ops wait in a queue in id order and only the head is ready; the heads sit in one heap per priority, so
picking the next batch costs O(batch x log calls) however large a backlog an outage left behind. Ops handed out are
leased until the dispatcher settles them, so nothing is sent twice at once. SQLite stays the truth: this index is
rebuilt from it at open and whenever another process changed the file.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bridge.sync.operations import PRIORITIES, CrmOp, OpKind

__all__ = ["ReadyIndex", "StoredOp"]


@dataclass(slots=True)
class StoredOp:
    """An op as the outbox holds it. `attempted`: a send began once, so the portal may already have acted on it."""

    id: int
    op: CrmOp
    attempts: int = 0
    attempted: bool = False
    created_at: float = 0.0

    @property
    def call_key(self) -> str:
        return self.op.call_key

    @property
    def kind(self) -> OpKind:
        return self.op.kind


Accept = Callable[[StoredOp], bool]
Follow = Callable[[StoredOp, StoredOp], bool]


class ReadyIndex:
    def __init__(self) -> None:
        self._queues: dict[str, deque[StoredOp]] = {}
        self._heaps: dict[int, list[tuple[int, str]]] = {}
        self._leased: set[int] = set()
        self._by_kind: Counter[OpKind] = Counter()
        self._size = 0
        self._reset()

    def _reset(self) -> None:
        self._queues = {}
        self._heaps = {p: [] for p in sorted(set(PRIORITIES.values()))}
        self._leased = set()
        self._by_kind = Counter()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def leased(self) -> int:
        return len(self._leased)

    def depth_by_kind(self) -> dict[str, int]:
        return {kind.value: self._by_kind[kind] for kind in OpKind}

    def rebuild(self, ops: Iterable[StoredOp]) -> None:
        """Replace the contents (ops in id order); leases of ops still present are kept."""
        leased = self._leased
        self._reset()
        for stored in ops:
            if stored.id in leased:
                self._leased.add(stored.id)
            self.add(stored)

    def add(self, stored: StoredOp) -> None:
        """Append an op; ids must grow within a call (new ops) — `rebuild` handles anything else."""
        queue = self._queues.setdefault(stored.call_key, deque())
        queue.append(stored)
        self._by_kind[stored.kind] += 1
        self._size += 1
        if len(queue) == 1 and stored.id not in self._leased:
            self._push(stored)

    def take(self, limit: int, accept: Accept, follow: Follow | None = None) -> list[StoredOp]:
        """Lease up to `limit` ready ops, lowest priority value first, then oldest.

        `accept` filters heads (e.g. paused methods); `follow(previous, next)` lets the next ops of the same call
        ride along behind a head, in order, for one batch request.
        """
        out: list[StoredOp] = []
        deferred: list[tuple[int, int, str]] = []
        for priority, heap in self._heaps.items():
            while heap and len(out) < limit:
                op_id, key = heapq.heappop(heap)
                queue = self._queues.get(key)
                if not queue or queue[0].id != op_id or op_id in self._leased:
                    continue  # stale entry: settled, leased or no longer the head
                head = queue[0]
                if not accept(head):
                    deferred.append((priority, op_id, key))
                    continue
                self._leased.add(op_id)
                out.append(head)
                if follow is not None:
                    self._take_followers(queue, limit, follow, out)
            if len(out) >= limit:
                break
        for priority, op_id, key in deferred:
            heapq.heappush(self._heaps[priority], (op_id, key))
        return out

    def _take_followers(self, queue: deque[StoredOp], limit: int, follow: Follow, out: list[StoredOp]) -> None:
        previous = queue[0]
        for nxt in itertools.islice(queue, 1, None):
            if len(out) >= limit or nxt.id in self._leased or not follow(previous, nxt):
                return
            self._leased.add(nxt.id)
            out.append(nxt)
            previous = nxt

    def remove(self, stored: StoredOp) -> None:
        """Forget a settled op (done, dead or dropped); the call's next op becomes ready."""
        self._leased.discard(stored.id)
        queue = self._queues.get(stored.call_key)
        if not queue:
            return
        was_head = queue[0].id == stored.id
        for index, item in enumerate(queue):
            if item.id == stored.id:
                del queue[index]
                self._by_kind[item.kind] -= 1
                self._size -= 1
                break
        else:
            return
        if not queue:
            del self._queues[stored.call_key]
        elif was_head and queue[0].id not in self._leased:
            self._push(queue[0])

    def release(self, stored: StoredOp) -> None:
        """Give a leased op back untouched: it keeps its place and is ready again if it heads its call."""
        if stored.id not in self._leased:
            return
        self._leased.discard(stored.id)
        queue = self._queues.get(stored.call_key)
        if queue and queue[0].id == stored.id:
            self._push(queue[0])

    def _push(self, stored: StoredOp) -> None:
        heapq.heappush(self._heaps[stored.op.priority], (stored.id, stored.call_key))
