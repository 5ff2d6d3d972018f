"""The outbox's SQLite file: opening it (WAL, synchronous=NORMAL), its schema, and errors an operator can act on.

WAL with synchronous=NORMAL keeps every committed transaction across a crash of the process (not across a power
cut of the machine, which would cost the last few commits) while a commit costs no fsync. Every sqlite3 error is turned
into a `StoreError` that names the file and says what to do.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from bridge.errors import StoreBusy, StoreError

__all__ = ["RUNNING_BUSY_TIMEOUT_MS", "SCHEMA_VERSION", "describe_error", "guard", "open_database", "transaction"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ops (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: the order of a call's ops survives pruning
    call_key    TEXT NOT NULL,
    leg         INTEGER NOT NULL DEFAULT 0,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,                       -- CrmOp.to_json()
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'dead')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    attempted   INTEGER NOT NULL DEFAULT 0,          -- 1 once a send began: the portal may have acted on it
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    result      TEXT
);
CREATE INDEX IF NOT EXISTS ops_pending ON ops (call_key, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS ops_done ON ops (updated_at) WHERE status = 'done';
CREATE INDEX IF NOT EXISTS ops_call ON ops (call_key);
CREATE TABLE IF NOT EXISTS dead_letters (
    op_id      INTEGER PRIMARY KEY REFERENCES ops (id) ON DELETE CASCADE,
    reason     TEXT NOT NULL,
    error      TEXT NOT NULL DEFAULT '',
    failed_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    call_key    TEXT PRIMARY KEY,
    direction   TEXT,
    state       TEXT,                                -- OpenCallState JSON while the call is live, NULL once closed
    opened_at   REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS crm_calls (
    call_key         TEXT NOT NULL,
    leg              INTEGER NOT NULL,
    crm_call_id      TEXT,
    registered       INTEGER NOT NULL DEFAULT 0,
    finished         INTEGER NOT NULL DEFAULT 0,
    register_result  TEXT,
    updated_at       REAL NOT NULL,
    PRIMARY KEY (call_key, leg)
);
CREATE INDEX IF NOT EXISTS crm_calls_id ON crm_calls (crm_call_id);
"""

_CORRUPT = ("not a database", "malformed", "corrupt")
_READ_ONLY = ("readonly", "read-only")
_FULL = ("disk is full", "database or disk is full")
_BUSY = ("locked", "busy")


def describe_error(exc: BaseException, path: Path) -> StoreError:
    """The operator's view of a sqlite3/OS error on `path`: what is wrong and the command or setting that fixes it."""
    text = str(exc)
    low = text.lower()
    directory = path.parent
    if any(word in low for word in _CORRUPT):
        message = (f"{path} is damaged or not an SQLite database ({text}). Stop the bridge, move the file aside "
                   f"and restart: mv {path} {path}.corrupt (pending Bitrix24 operations in it are not replayed; "
                   "keep the copy for inspection)")
    elif any(word in low for word in _FULL):
        message = f"no space left for {path} ({text}): free disk space on the file system of {directory}"
    elif any(word in low for word in _READ_ONLY):
        message = (f"{path} is read-only ({text}): give the bridge's user write access to {path} and {directory} "
                   "(and check the file system is not mounted read-only)")
    elif any(word in low for word in _BUSY):
        return StoreBusy(f"{path} is locked by another process ({text}): is a second bridge or a sqlite3 shell "
                         "using the same storage.path?", path=str(path))
    else:
        message = (f"cannot use {path} ({text}): check that {directory} exists and is writable by the bridge's "
                   "user, or set storage.path to a writable location")
    return StoreError(message, path=str(path))


@contextmanager
def guard(path: Path) -> Iterator[None]:
    """Run sqlite3 calls; any failure leaves as a `StoreError` naming `path`."""
    try:
        yield
    except sqlite3.Error as exc:
        raise describe_error(exc, path) from exc


@contextmanager
def transaction(db: sqlite3.Connection, path: Path) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT; rolled back on any exception (the connection runs in autocommit mode)."""
    with guard(path):
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back already (e.g. SQLITE_FULL)
                with suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise


# The daemon's default: it runs on the event loop and retries later; a command-line tool can afford to wait.
RUNNING_BUSY_TIMEOUT_MS = 50


def open_database(path: Path, *, busy_timeout_ms: int = RUNNING_BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """Create the state directory and the schema if needed, check the file is sound, and return the connection."""
    _prepare_directory(path)
    db: sqlite3.Connection | None = None
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        db.execute("PRAGMA busy_timeout = 5000")
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            first = str(check[0] if check else "no answer").splitlines()[0][:160]
            raise sqlite3.DatabaseError(f"database disk image is malformed: quick_check says {first!r}")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path} was written by a newer bridge (schema {version} > {SCHEMA_VERSION}): "
                             "run that version, or move the file aside", path=str(path))
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        if version < SCHEMA_VERSION:  # a second process (the CLI) opening a current file writes nothing
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        # Running, the store is used from the event loop: never wait long for a lock someone else holds; the
        # callers retry a StoreBusy later instead, so the AMI reader and the HTTP server keep going meanwhile.
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    except StoreError:
        if db is not None:
            db.close()
        raise
    except (sqlite3.Error, OSError) as exc:
        if db is not None:
            db.close()
        raise describe_error(exc, path) from exc
    return db


def _prepare_directory(path: Path) -> None:
    directory = path.parent
    try:
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the state directory {directory} ({exc.strerror or exc}): create it and "
                         "let the bridge's user write to it, or set storage.path elsewhere", path=str(path)) from exc
    if path.exists() and not path.is_file():
        raise StoreError(f"{path} exists but is not a file: remove it or set storage.path to a file path",
                         path=str(path))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreError(f"the state directory {directory} is not writable by this user: give the bridge's user "
                         "write access (SQLite creates its -wal and -shm files there) or set storage.path elsewhere",
                         path=str(path))
