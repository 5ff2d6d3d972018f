"""The durable outbox: every Bitrix24 operation is written here before it is sent and marked done after the answer.

- `write(step)` / `enqueue(ops)` store one event's ops and the call's state in one transaction.
- `take_ready` hands the dispatcher the ops that may go now (per call strictly in order, cards first);
  `mark_attempted` records that a send begins; `settle` records what the portal said.
- A CALL_ID returned by register is stored with the call (`crm_call_id`), so nothing is registered twice.
- Permanent failures become dead letters with the portal's text; `list_rows`, `retry`, `retry_call` and `drop` back
  the `b24-bridge outbox` command and may run from another process while the bridge runs.
- `open_calls` lists calls that were live when the process stopped, for `CallPolicy.close_orphan`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import structlog

from bridge.config import StorageSettings
from bridge.errors import StoreError
from bridge.sync.operations import CrmOp, OpenCallState, OpKind, PolicyStep
from bridge.sync.ready import Accept, Follow, ReadyIndex, StoredOp
from bridge.sync.store import RUNNING_BUSY_TIMEOUT_MS, guard, open_database, transaction

__all__ = ["DeadLetter", "Outbox", "OutboxRow", "OutboxState", "StoredOp"]

log = structlog.get_logger(__name__)

_RESULT_LIMIT = 4000
RowStatus = Literal["pending", "dead", "done", "all"]


class OutboxState(Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    stored: StoredOp
    reason: str
    error: str = ""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One op as `b24-bridge outbox list` shows it; `op` is None when the stored payload is unreadable."""

    id: int
    call_key: str
    leg: int
    kind: str
    status: str
    attempts: int
    attempted: bool
    created_at: float
    updated_at: float
    reason: str | None
    op: CrmOp | None


class Outbox:
    def __init__(self, path: Path, *, keep_done_hours: float = 72.0, prune_interval: float = 600.0,
                 clock: Callable[[], float] = time.time, busy_timeout_ms: int = RUNNING_BUSY_TIMEOUT_MS) -> None:
        """`busy_timeout_ms`: how long a write waits for another process's lock before StoreBusy (the daemon keeps
        it short because it runs on the event loop; command-line tools wait longer)."""
        if keep_done_hours <= 0 or prune_interval <= 0:
            raise ValueError("keep_done_hours and prune_interval must be positive")
        self._path = Path(path)
        self._keep_seconds = keep_done_hours * 3600.0
        self._prune_interval = prune_interval
        self._clock = clock
        self._busy_timeout_ms = busy_timeout_ms
        self._db: sqlite3.Connection | None = None
        self._state = OutboxState.UNOPENED
        self._index = ReadyIndex()
        self._data_version = 0
        self._listeners: list[Callable[[], None]] = []
        self._prune_task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, storage: StorageSettings) -> Outbox:
        return cls(storage.path, keep_done_hours=storage.keep_done_hours)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def state(self) -> OutboxState:
        return self._state

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Open (creating the directory and schema) and load pending work; raises StoreError with the fix."""
        if self._state is OutboxState.OPEN:
            raise RuntimeError("the outbox is already open")
        if self._state is OutboxState.CLOSED:
            raise RuntimeError("the outbox was closed; create a new Outbox to open it again")
        self._db = open_database(self._path, busy_timeout_ms=self._busy_timeout_ms)
        self._state = OutboxState.OPEN
        self._reload()
        log.info("outbox_opened", path=str(self._path), pending=len(self._index), dead=self.dead_count())

    def close(self) -> None:
        if self._state is not OutboxState.OPEN:
            self._state = OutboxState.CLOSED
            return
        self._state = OutboxState.CLOSED
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        self.open()
        try:
            self.prune()
        except StoreError as exc:
            log.warning("outbox_prune_failed", error=str(exc))
        self._prune_task = asyncio.create_task(self._prune_loop(), name="outbox.prune")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        task, self._prune_task = self._prune_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.close()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """`callback()` runs after new or retried work lands, or settling made a call's next op ready (the
        dispatcher's `wake`)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    # --- writing work ------------------------------------------------------------------------------------------

    def write(self, step: PolicyStep) -> list[int]:
        """Store one event's outcome: its ops, and the call's live state (cleared when the call closed)."""
        if step.call_key is None:
            return self.enqueue(step.ops)
        return self.enqueue(step.ops, open_call=step.open_state, close=[step.call_key] if step.closed else ())

    def enqueue(self, ops: Sequence[CrmOp], *, open_call: OpenCallState | None = None,
                close: Iterable[str] = ()) -> list[int]:
        """Write `ops` (in order) and call state in one transaction; the ops are ready for the dispatcher after it."""
        db = self._require_open()
        close = list(close)
        if not ops and open_call is None and not close:
            return []
        now = self._clock()
        added: list[StoredOp] = []
        with transaction(db, self._path):
            for op in ops:
                payload = json.dumps(op.to_json(), ensure_ascii=False, separators=(",", ":"))
                cursor = db.execute(
                    "INSERT INTO ops (call_key, leg, kind, payload, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (op.call_key, op.leg, op.kind.value, payload, now, now))
                assert cursor.lastrowid is not None
                added.append(StoredOp(cursor.lastrowid, op, created_at=now))
                if op.crm_call_id:
                    db.execute(
                        "INSERT OR IGNORE INTO crm_calls (call_key, leg, crm_call_id, registered, updated_at) "
                        "VALUES (?, ?, ?, 1, ?)", (op.call_key, op.leg, op.crm_call_id, now))
            if open_call is not None:
                state = json.dumps(open_call.to_json(), ensure_ascii=False, separators=(",", ":"))
                db.execute(
                    "INSERT INTO calls (call_key, direction, state, opened_at, updated_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (call_key) DO UPDATE SET direction = excluded.direction, state = excluded.state, "
                    "updated_at = excluded.updated_at",
                    (open_call.call_key, open_call.direction.value, state, now, now))
            for key in close:
                db.execute("UPDATE calls SET state = NULL, updated_at = ? WHERE call_key = ?", (now, key))
        for stored in added:
            self._index.add(stored)
        if added:
            self._notify()
        return [stored.id for stored in added]

    # --- the dispatcher's side ---------------------------------------------------------------------------------

    def take_ready(self, limit: int, *, accept: Accept | None = None, follow: Follow | None = None) -> list[StoredOp]:
        """Lease up to `limit` ops that may be sent now (see `ReadyIndex.take`); settle or release each later."""
        self._require_open()
        self._sync_external_changes()
        return self._index.take(limit, accept or _accept_all, follow)

    def release(self, ops: Iterable[StoredOp]) -> None:
        """Put leased ops back unchanged (transient failure, paused method): same place in their call's order."""
        for stored in ops:
            self._index.release(stored)

    def mark_attempted(self, ops: Sequence[StoredOp]) -> None:
        """Record, before sending, that the portal may act on these ops from now on."""
        db = self._require_open()
        now = self._clock()
        with transaction(db, self._path):
            db.executemany("UPDATE ops SET attempted = 1, attempts = attempts + 1, updated_at = ? WHERE id = ?",
                           [(now, stored.id) for stored in ops])
        for stored in ops:
            stored.attempted = True
            stored.attempts += 1

    def settle(self, *, done: Sequence[tuple[StoredOp, Any]] = (), dead: Sequence[DeadLetter] = ()) -> None:
        """Record the portal's answers in one transaction: done ops (with their result) and dead letters.

        When that makes a call's next op ready (e.g. the attach behind a finish), listeners hear of it: the other
        sender may be idle, waiting for exactly that op.
        """
        db = self._require_open()
        if not done and not dead:
            return
        now = self._clock()
        with transaction(db, self._path):
            for stored, result in done:
                self._write_done(db, stored, result, now)
            for letter in dead:
                db.execute("UPDATE ops SET status = 'dead', updated_at = ? WHERE id = ?", (now, letter.stored.id))
                db.execute("INSERT OR REPLACE INTO dead_letters (op_id, reason, error, failed_at) VALUES (?, ?, ?, ?)",
                           (letter.stored.id, letter.reason, letter.error, now))
        unblocked = False
        for stored, _ in done:
            unblocked = self._index.remove(stored) or unblocked
        for letter in dead:
            unblocked = self._index.remove(letter.stored) or unblocked
            log.warning("crm_op_dead_letter", op_id=letter.stored.id, call_key=letter.stored.call_key,
                        kind=letter.stored.kind.value, reason=letter.reason)
        if unblocked:
            self._notify()

    def _write_done(self, db: sqlite3.Connection, stored: StoredOp, result: Any, now: float) -> None:
        text = _result_text(result)
        db.execute("UPDATE ops SET status = 'done', updated_at = ?, result = ? WHERE id = ?", (now, text, stored.id))
        op = stored.op
        if op.kind is OpKind.REGISTER and isinstance(result, Mapping) and isinstance(result.get("CALL_ID"), str):
            db.execute(
                "INSERT INTO crm_calls (call_key, leg, crm_call_id, registered, register_result, updated_at) "
                "VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (call_key, leg) DO UPDATE SET "
                "crm_call_id = excluded.crm_call_id, registered = 1, register_result = excluded.register_result, "
                "updated_at = excluded.updated_at",
                (op.call_key, op.leg, result["CALL_ID"], text, now))
        elif op.kind is OpKind.FINISH:
            db.execute("UPDATE crm_calls SET finished = 1, updated_at = ? WHERE call_key = ? AND leg = ?",
                       (now, op.call_key, op.leg))

    def crm_call_id(self, call_key: str, leg: int = 0) -> str | None:
        row = self._fetchone("SELECT crm_call_id FROM crm_calls WHERE call_key = ? AND leg = ?", (call_key, leg))
        return None if row is None or row[0] is None else str(row[0])

    def knows_crm_call(self, crm_call_id: str) -> bool:
        """Is this a Bitrix24 CALL_ID of one of our calls (registered by us, or a click-to-call we handle)?"""
        return self._fetchone("SELECT 1 FROM crm_calls WHERE crm_call_id = ? LIMIT 1", (crm_call_id,)) is not None

    def register_result(self, call_key: str, leg: int = 0) -> dict[str, Any] | None:
        """What register answered for this CRM call (CRM_ENTITY_TYPE/ID for the `owner` rule), if known."""
        row = self._fetchone("SELECT register_result FROM crm_calls WHERE call_key = ? AND leg = ?", (call_key, leg))
        if row is None or not row[0]:
            return None
        try:
            value = json.loads(row[0])
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    # --- state for metrics and recovery ------------------------------------------------------------------------

    def pending_count(self) -> int:
        return len(self._index)

    def in_flight_count(self) -> int:
        return self._index.leased

    def depth_by_kind(self) -> dict[str, int]:
        return self._index.depth_by_kind()

    def dead_count(self) -> int:
        row = self._fetchone("SELECT count(*) FROM dead_letters", ())
        return int(row[0]) if row else 0

    def open_calls(self) -> list[OpenCallState]:
        """Calls that were live when the process stopped (their end was never written)."""
        out: list[OpenCallState] = []
        for key, text in self._fetchall("SELECT call_key, state FROM calls WHERE state IS NOT NULL ORDER BY opened_at"):
            try:
                out.append(OpenCallState.from_json(json.loads(text)))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("outbox_bad_call_state", call_key=key, error=str(exc))
        return out

    def forget_call(self, call_key: str) -> None:
        """Mark a call closed without ops (e.g. an open call the operator decided not to finish)."""
        self.enqueue((), close=[call_key])

    # --- operator commands (b24-bridge outbox list|retry|drop) -------------------------------------------------

    def list_rows(self, status: RowStatus = "pending", *, limit: int = 100, call_key: str | None = None) -> list[
            OutboxRow]:
        sql = ("SELECT o.id, o.call_key, o.leg, o.kind, o.status, o.attempts, o.attempted, o.created_at, "
               "o.updated_at, d.reason, o.payload FROM ops o LEFT JOIN dead_letters d ON d.op_id = o.id")
        where: list[str] = []
        args: list[Any] = []
        if status != "all":
            where.append("o.status = ?")
            args.append(status)
        if call_key is not None:
            where.append("o.call_key = ?")
            args.append(call_key)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY o.id LIMIT ?"
        args.append(max(0, limit))
        return [OutboxRow(id=r[0], call_key=r[1], leg=r[2], kind=r[3], status=r[4], attempts=r[5],
                          attempted=bool(r[6]), created_at=r[7], updated_at=r[8], reason=r[9], op=_parse_op(r[10]))
                for r in self._fetchall(sql, tuple(args))]

    def retry(self, op_id: int) -> bool:
        """Move one dead letter back to pending, in its original place in its call's order."""
        return self._revive("id = ?", (op_id,)) > 0

    def retry_call(self, call_key: str) -> int:
        """Move every dead letter of a call back (e.g. after fixing the user a register failed on)."""
        return self._revive("call_key = ?", (call_key,))

    def drop(self, op_id: int) -> bool:
        """Delete an op (pending or dead) for good."""
        db = self._require_open()
        with transaction(db, self._path):
            deleted = db.execute("DELETE FROM ops WHERE id = ? AND status != 'done'", (op_id,)).rowcount
        if deleted:
            self._reload()
        return deleted > 0

    def prune(self) -> int:
        """Delete done ops older than keep_done_hours, and closed calls nothing refers to any more."""
        db = self._require_open()
        cutoff = self._clock() - self._keep_seconds
        with transaction(db, self._path):
            removed = db.execute("DELETE FROM ops WHERE status = 'done' AND updated_at < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM calls WHERE state IS NULL AND updated_at < ? AND NOT EXISTS "
                       "(SELECT 1 FROM ops WHERE ops.call_key = calls.call_key)", (cutoff,))
            db.execute("DELETE FROM crm_calls WHERE updated_at < ? AND NOT EXISTS "
                       "(SELECT 1 FROM ops WHERE ops.call_key = crm_calls.call_key) AND NOT EXISTS "
                       "(SELECT 1 FROM calls WHERE calls.call_key = crm_calls.call_key AND calls.state IS NOT NULL)",
                       (cutoff,))
        if removed:
            log.info("outbox_pruned", removed=removed)
        return removed

    # --- internals ---------------------------------------------------------------------------------------------

    def _revive(self, where: str, args: tuple[Any, ...]) -> int:
        db = self._require_open()
        now = self._clock()
        with transaction(db, self._path):
            ids = [r[0] for r in db.execute(f"SELECT id FROM ops WHERE status = 'dead' AND {where}", args)]  # noqa: S608
            db.executemany("UPDATE ops SET status = 'pending', updated_at = ? WHERE id = ?", [(now, i) for i in ids])
            db.executemany("DELETE FROM dead_letters WHERE op_id = ?", [(i,) for i in ids])
        if ids:
            self._reload()
            self._notify()
        return len(ids)

    def _reload(self) -> None:
        """Rebuild the ready index from the file (at open, and after changes made by another process)."""
        db = self._require_open()
        stored: list[StoredOp] = []
        broken: list[DeadLetter] = []
        with guard(self._path):
            rows = db.execute("SELECT id, payload, attempts, attempted, created_at FROM ops "
                              "WHERE status = 'pending' ORDER BY id").fetchall()
            self._data_version = int(db.execute("PRAGMA data_version").fetchone()[0])
        for op_id, payload, attempts, attempted, created_at in rows:
            op = _parse_op(payload)
            if op is None:
                placeholder = StoredOp(op_id, CrmOp(call_key="?", kind=OpKind.SHOW))
                broken.append(DeadLetter(placeholder, "unreadable stored operation", str(payload)[:200]))
                continue
            stored.append(StoredOp(op_id, op, attempts=attempts, attempted=bool(attempted), created_at=created_at))
        self._index.rebuild(stored)
        if broken:
            self.settle(dead=broken)

    def _sync_external_changes(self) -> None:
        db = self._require_open()
        with guard(self._path):
            version = int(db.execute("PRAGMA data_version").fetchone()[0])
        if version != self._data_version:
            self._reload()

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(self._prune_interval)
            try:
                self.prune()
            except StoreError as exc:
                log.warning("outbox_prune_failed", error=str(exc))

    def _notify(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:  # a listener's bug must not undo a committed write
                log.exception("outbox_listener_failed")

    def _fetchone(self, sql: str, args: tuple[Any, ...]) -> Any:
        db = self._require_open()
        with guard(self._path):
            return db.execute(sql, args).fetchone()

    def _fetchall(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        db = self._require_open()
        with guard(self._path):
            return db.execute(sql, args).fetchall()

    def _require_open(self) -> sqlite3.Connection:
        if self._state is not OutboxState.OPEN or self._db is None:
            raise RuntimeError(f"the outbox is {self._state.value}, not open")
        return self._db


def _accept_all(_: StoredOp) -> bool:
    return True


def _parse_op(payload: Any) -> CrmOp | None:
    try:
        data = json.loads(payload)
        return CrmOp.from_json(data) if isinstance(data, Mapping) else None
    except (ValueError, KeyError, TypeError):
        return None


def _result_text(result: Any) -> str | None:
    if result is None:
        return None
    try:
        text = json.dumps(result, ensure_ascii=False, default=str, separators=(",", ":"))
    except (TypeError, ValueError):
        text = json.dumps(str(result))
    return text if len(text) <= _RESULT_LIMIT else json.dumps(text[:_RESULT_LIMIT])
