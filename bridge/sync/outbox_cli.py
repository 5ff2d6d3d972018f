"""`b24-bridge outbox list|retry|drop`: look into the outbox and act on dead letters, even while the bridge runs.

A running bridge notices the change on its next look at the outbox (SQLite tells it another process wrote).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

from bridge.config import Settings
from bridge.sync.outbox import Outbox, OutboxRow

__all__ = ["outbox_command"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# A running daemon holds the write lock only for milliseconds at a time; wait for it rather than fail.
CLI_BUSY_TIMEOUT_MS = 5000
_SHOW_PENDING = 50
_SHOW_DEAD = 200


def outbox_command(settings: Settings, action: str, ids: Sequence[int], *, out: TextIO,
                   err: TextIO = sys.stderr) -> int:
    """Run one action; raises StoreError (the CLI prints it) when the file cannot be used."""
    path = settings.storage.path
    if action not in ("list", "retry", "drop"):
        print(f"unknown action {action!r}: use list, retry or drop", file=err)
        return EXIT_USAGE
    if action != "list" and not ids:
        print(f"`outbox {action}` needs the ids of dead letters (see `b24-bridge outbox list`)", file=err)
        return EXIT_USAGE
    if not path.exists():
        print(f"no outbox at {path} yet (the bridge has not run with this storage.path)", file=out)
        return EXIT_OK if action == "list" else EXIT_FAILED
    with Outbox(path, busy_timeout_ms=CLI_BUSY_TIMEOUT_MS) as outbox:
        if action == "list":
            _print_list(outbox, out)
            return EXIT_OK
        failed = 0
        for op_id in ids:
            ok = outbox.retry(op_id) if action == "retry" else outbox.drop(op_id)
            verb = "queued again" if action == "retry" else "dropped"
            if ok:
                print(f"{op_id}: {verb}", file=out)
            else:
                failed += 1
                what = "a dead letter" if action == "retry" else "a pending or dead operation"
                print(f"{op_id}: not {what}", file=err)
        return EXIT_OK if failed == 0 else EXIT_FAILED


def _print_list(outbox: Outbox, out: TextIO) -> None:
    now = time.time()
    pending = outbox.list_rows("pending", limit=_SHOW_PENDING + 1)
    dead = outbox.list_rows("dead", limit=_SHOW_DEAD + 1)
    total_pending, total_dead = outbox.pending_count(), outbox.dead_count()
    print(f"outbox {outbox.path}: {total_pending} pending, {total_dead} dead", file=out)
    if pending:
        print("\npending (oldest first):", file=out)
        print(f"  {'ID':>8}  {'KIND':<13} {'LEG':>3} {'TRIES':>5} {'AGE':>8}  CALL", file=out)
        for row in pending[:_SHOW_PENDING]:
            print(f"  {row.id:>8}  {row.kind:<13} {row.leg:>3} {row.attempts:>5} {_age(now, row.created_at):>8}  "
                  f"{row.call_key}", file=out)
        _more(out, total_pending, _SHOW_PENDING)
    if dead:
        print("\ndead letters (retry: b24-bridge outbox retry ID..., drop: b24-bridge outbox drop ID...):", file=out)
        print(f"  {'ID':>8}  {'KIND':<13} {'LEG':>3} {'TRIES':>5} {'AGE':>8}  CALL / REASON", file=out)
        for row in dead[:_SHOW_DEAD]:
            print(f"  {row.id:>8}  {row.kind:<13} {row.leg:>3} {row.attempts:>5} {_age(now, row.updated_at):>8}  "
                  f"{row.call_key}", file=out)
            print(f"  {'':>8}  {_reason(row)}", file=out)
        _more(out, total_dead, _SHOW_DEAD)


def _reason(row: OutboxRow) -> str:
    text = " ".join((row.reason or "").split())  # the portal's text may hold newlines: one line per letter
    return text[:300] or "(no reason stored)"


def _more(out: TextIO, total: int, shown: int) -> None:
    if total > shown:
        print(f"  ... and {total - shown} more", file=out)


def _age(now: float, then: float) -> str:
    seconds = max(0, int(now - then))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
