"""The outbox's in-memory view of pending work: which op of each call may go next, cards first.

Per call, ops wait in a queue in id order and only the head is ready; the heads sit in one heap per priority, so
picking the next batch costs O(batch x log calls) however large a backlog an outage left behind. Ops handed out are
leased until the dispatcher settles them, so nothing is sent twice at once. SQLite stays the truth: this index is
rebuilt from it at open and whenever another process changed the file.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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


@dataclass(slots=True)
class _Pick:
    """One `take` in progress: what it leased so far, and per priority the followers waiting for that priority's
    turn as (op id, call key, position in the call's queue)."""

    limit: int
    follow: Follow | None
    trailing: dict[int, list[tuple[int, str, int]]]
    out: list[StoredOp] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return len(self.out) >= self.limit


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
        ride along behind a head, in order, for one batch request. A follower rides only at its own priority: every
        ready card (register/show, of any call) is taken before a hide or finish that merely trails another card, so
        one call's tail never pushes other calls' waiting cards into the next request.
        """
        pick = _Pick(limit, follow, {p: [] for p in self._heaps})
        deferred: list[tuple[int, int, str]] = []
        for priority, heap in self._heaps.items():
            tails = pick.trailing[priority]
            while (heap or tails) and not pick.full:
                if tails and (not heap or tails[0][0] < heap[0][0]):
                    _, key, position = heapq.heappop(tails)
                    chain = self._queues[key]
                    self._lease(pick, chain[position])
                    self._take_followers(pick, chain, position, priority)
                    continue
                op_id, key = heapq.heappop(heap)
                queue = self._queues.get(key)
                if not queue or queue[0].id != op_id or op_id in self._leased:
                    continue  # stale entry: settled, leased or no longer the head
                head = queue[0]
                if not accept(head):
                    deferred.append((priority, op_id, key))
                    continue
                self._lease(pick, head)
                self._take_followers(pick, queue, 0, priority)
            if pick.full:
                break
        for priority, op_id, key in deferred:
            heapq.heappush(self._heaps[priority], (op_id, key))
        return pick.out

    def _lease(self, pick: _Pick, stored: StoredOp) -> None:
        self._leased.add(stored.id)
        pick.out.append(stored)

    def _take_followers(self, pick: _Pick, queue: deque[StoredOp], position: int, priority: int) -> None:
        """Take the ops behind `queue[position]` while `follow` allows and they rank at `priority` or better; the
        first one that ranks lower waits in `pick.trailing` for its own priority's turn (if there is room then)."""
        if pick.follow is None:
            return
        previous = queue[position]
        for index in range(position + 1, len(queue)):
            nxt = queue[index]
            if pick.full or nxt.id in self._leased or not pick.follow(previous, nxt):
                return
            if nxt.op.priority > priority:
                heapq.heappush(pick.trailing[nxt.op.priority], (nxt.id, nxt.call_key, index))
                return
            self._lease(pick, nxt)
            previous = nxt

    def remove(self, stored: StoredOp) -> bool:
        """Forget a settled op (done, dead or dropped); the call's next op becomes ready. True when it did (a
        sender idle for want of work may have something now)."""
        self._leased.discard(stored.id)
        queue = self._queues.get(stored.call_key)
        if not queue:
            return False
        was_head = queue[0].id == stored.id
        for index, item in enumerate(queue):
            if item.id == stored.id:
                del queue[index]
                self._by_kind[item.kind] -= 1
                self._size -= 1
                break
        else:
            return False
        if not queue:
            del self._queues[stored.call_key]
        elif was_head and queue[0].id not in self._leased:
            self._push(queue[0])
            return True
        return False

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
