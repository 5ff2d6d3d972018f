"""The SQLite outbox: order per call, priority, durability across restarts and crashes, dead letters, errors."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.errors import StoreError
from bridge.model import Direction
from bridge.sync.operations import CrmOp, OpenCallState, OpKind, PolicyStep
from bridge.sync.outbox import DeadLetter, Outbox, OutboxState, StoredOp

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def op(call_key: str, kind: OpKind, **extra: object) -> CrmOp:
    return CrmOp(call_key=call_key, kind=kind, **extra)  # type: ignore[arg-type]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "bridge.sqlite3"


@pytest.fixture
def box(path: Path) -> Iterator[Outbox]:
    outbox = Outbox(path)
    outbox.open()
    yield outbox
    outbox.close()


def take_all(outbox: Outbox, limit: int = 50) -> list[StoredOp]:
    return outbox.take_ready(limit)


def complete(outbox: Outbox, ops: list[StoredOp], result: object = True) -> None:
    outbox.settle(done=[(s, result) for s in ops])


def kinds(ops: list[StoredOp]) -> list[tuple[str, str]]:
    return [(s.call_key, s.kind.value) for s in ops]


# --- order and priority ------------------------------------------------------------------------------------------

def test_one_call_goes_strictly_in_order(box: Outbox) -> None:
    box.enqueue([op("a", OpKind.REGISTER), op("a", OpKind.SHOW), op("a", OpKind.FINISH)])
    seen: list[str] = []
    while batch := take_all(box):
        assert len(batch) == 1  # only the head of a call is ready
        seen.append(batch[0].kind.value)
        complete(box, batch)
    assert seen == ["register", "show", "finish"]
    assert box.pending_count() == 0


def test_cards_go_before_older_finishes_and_calls_are_independent(box: Outbox) -> None:
    box.enqueue([op("old1", OpKind.FINISH)])
    box.enqueue([op("old2", OpKind.ATTACH_RECORD)])
    box.enqueue([op("old3", OpKind.HIDE)])
    box.enqueue([op("new", OpKind.REGISTER), op("new", OpKind.SHOW)])
    box.enqueue([op("new2", OpKind.SHOW)])
    assert kinds(take_all(box)) == [("new", "register"), ("new2", "show"), ("old3", "hide"), ("old1", "finish"),
                                    ("old2", "attach_record")]


def test_leased_ops_are_not_handed_out_twice_and_release_keeps_their_place(box: Outbox) -> None:
    box.enqueue([op("a", OpKind.REGISTER), op("a", OpKind.FINISH)])
    box.enqueue([op("b", OpKind.FINISH)])
    first = box.take_ready(1)
    assert kinds(first) == [("a", "register")]
    assert kinds(take_all(box)) == [("b", "finish")]
    assert take_all(box) == []
    assert box.in_flight_count() == 2
    box.release(first)
    again = take_all(box)
    assert [s.id for s in again] == [first[0].id]


def test_accept_filter_and_followers(box: Outbox) -> None:
    box.enqueue([op("a", OpKind.REGISTER), op("a", OpKind.SHOW), op("a", OpKind.FINISH),
                 op("a", OpKind.ATTACH_RECORD)])
    box.enqueue([op("b", OpKind.SHOW)])
    chained = box.take_ready(10, accept=lambda s: s.call_key == "a",
                             follow=lambda prev, nxt: nxt.kind is not OpKind.ATTACH_RECORD)
    assert kinds(chained) == [("a", "register"), ("a", "show"), ("a", "finish")]
    assert kinds(take_all(box)) == [("b", "show")]  # b was skipped by accept, not lost
    complete(box, chained)
    assert kinds(take_all(box)) == [("a", "attach_record")]


def test_limit_is_respected_including_followers(box: Outbox) -> None:
    for i in range(5):
        box.enqueue([op(f"c{i}", OpKind.REGISTER), op(f"c{i}", OpKind.SHOW)])
    got = box.take_ready(3, follow=lambda prev, nxt: True)
    assert kinds(got) == [("c0", "register"), ("c0", "show"), ("c1", "register")]


def test_settling_tells_listeners_when_it_makes_a_calls_next_op_ready(box: Outbox) -> None:
    heard: list[str] = []
    box.add_listener(lambda: heard.append("wake"))
    box.enqueue([op("a", OpKind.FINISH), op("a", OpKind.ATTACH_RECORD)])
    box.enqueue([op("b", OpKind.REGISTER), op("b", OpKind.FINISH)])
    box.enqueue([op("c", OpKind.FINISH)])
    assert len(heard) == 3  # each write
    first = take_all(box)
    assert kinds(first) == [("b", "register"), ("a", "finish"), ("c", "finish")]
    complete(box, [first[2]])  # c had nothing behind it: no new work for anybody
    assert len(heard) == 3
    complete(box, [first[1]])  # the attach behind a's finish is ready now: the attach lane may be asleep
    assert len(heard) == 4
    assert kinds(take_all(box)) == [("a", "attach_record")]
    box.settle(dead=[DeadLetter(first[0], "refused")])  # a dead letter unblocks its call's next op too
    assert len(heard) == 5
    assert kinds(take_all(box)) == [("b", "finish")]


# --- what is stored ----------------------------------------------------------------------------------------------

def test_register_result_stores_the_call_id_and_finish_marks_the_call(box: Outbox, path: Path) -> None:
    box.enqueue([op("a", OpKind.REGISTER), op("a", OpKind.FINISH)])
    register = take_all(box)
    complete(box, register, {"CALL_ID": "externalCall.1", "CRM_ENTITY_TYPE": "CONTACT", "CRM_ENTITY_ID": 5})
    assert box.crm_call_id("a") == "externalCall.1"
    assert box.register_result("a") == {"CALL_ID": "externalCall.1", "CRM_ENTITY_TYPE": "CONTACT",
                                        "CRM_ENTITY_ID": 5}
    complete(box, take_all(box), {"ID": 1})
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT registered, finished FROM crm_calls WHERE call_key='a'").fetchone() == (1, 1)


def test_click_to_call_id_is_known_without_register(box: Outbox) -> None:
    box.enqueue([op("externalCall.9", OpKind.FINISH, crm_call_id="externalCall.9")])
    assert box.crm_call_id("externalCall.9") == "externalCall.9"
    assert box.crm_call_id("unknown") is None
    assert box.register_result("unknown") is None


def state(call_key: str) -> OpenCallState:
    return OpenCallState(call_id=call_key, call_key=call_key, direction=Direction.INBOUND, external_number="+1555",
                         line="100", started_at=datetime(2026, 11, 28, 10, tzinfo=UTC), registered=True,
                         shown=("101",))


def test_write_keeps_open_call_state_until_the_call_closes(box: Outbox) -> None:
    box.write(PolicyStep("a", (op("a", OpKind.REGISTER),), state("a")))
    box.write(PolicyStep("b", (), state("b")))
    assert [s.call_key for s in box.open_calls()] == ["a", "b"]
    assert box.open_calls()[0] == state("a")
    box.write(PolicyStep("a", (op("a", OpKind.FINISH),), None, closed=True))
    assert [s.call_key for s in box.open_calls()] == ["b"]
    box.forget_call("b")
    assert box.open_calls() == []
    assert box.write(PolicyStep(None, note="ignored")) == []


def test_depth_by_kind(box: Outbox) -> None:
    box.enqueue([op("a", OpKind.REGISTER), op("a", OpKind.SHOW), op("a", OpKind.FINISH)])
    box.enqueue([op("b", OpKind.FINISH)])
    depth = box.depth_by_kind()
    assert depth == {"register": 1, "show": 1, "hide": 0, "finish": 2, "attach_record": 0}


# --- durability --------------------------------------------------------------------------------------------------

def test_pending_work_survives_close_and_reopen_in_order_with_attempted_flag(path: Path) -> None:
    first = Outbox(path)
    first.open()
    first.enqueue([op("a", OpKind.REGISTER), op("a", OpKind.SHOW, agents=("101", "102"))])
    first.enqueue([op("b", OpKind.FINISH, params={"DURATION": 5, "STATUS_CODE": "200"})])
    register = first.take_ready(1)
    complete(first, register, {"CALL_ID": "externalCall.a"})
    finish_b = first.take_ready(5)
    first.mark_attempted([s for s in finish_b if s.call_key == "b"])
    first.close()

    second = Outbox(path)
    second.open()
    ready = take_all(second)
    assert kinds(ready) == [("a", "show"), ("b", "finish")]
    assert ready[0].op.agents == ("101", "102")
    assert (ready[0].attempted, ready[1].attempted, ready[1].attempts) == (False, True, 1)
    assert ready[1].op.params == {"DURATION": 5, "STATUS_CODE": "200"}
    assert second.crm_call_id("a") == "externalCall.a"
    second.close()


CRASH_SCRIPT = """
import os, sys
from pathlib import Path
from bridge.sync.operations import CrmOp, OpKind
from bridge.sync.outbox import Outbox
box = Outbox(Path(sys.argv[1]))
box.open()
for i in range(200):
    box.enqueue([CrmOp(call_key=f"c{i}", kind=OpKind.REGISTER), CrmOp(call_key=f"c{i}", kind=OpKind.FINISH)])
ready = box.take_ready(10)
box.settle(done=[(s, {"CALL_ID": f"externalCall.{s.call_key}"}) for s in ready[:5]])
box.mark_attempted(ready[5:])
print("ready", flush=True)
os._exit(9)  # no close, no checkpoint: as if killed
"""


def test_a_process_killed_after_committing_loses_nothing(path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 9, done.stderr
    assert Path(f"{path}-wal").exists()  # the work is still in the WAL, never checkpointed
    box = Outbox(path)
    box.open()
    assert box.pending_count() == 395
    rows = box.list_rows("pending", limit=1000)
    assert sum(r.attempted for r in rows) == 5
    assert box.crm_call_id("c0") == "externalCall.c0"
    assert kinds(box.take_ready(1)) == [("c5", "register")]  # c0..c4 registered: their finishes wait behind
    box.close()


def test_a_second_connection_sees_committed_work_and_its_retry_reaches_the_first(path: Path) -> None:
    daemon = Outbox(path)
    daemon.open()
    daemon.enqueue([op("a", OpKind.REGISTER), op("a", OpKind.SHOW)])
    reg = daemon.take_ready(1)
    daemon.settle(dead=[DeadLetter(reg[0], "User is not found or is not active", "")])
    assert kinds(take_all(daemon)) == [("a", "show")]

    with Outbox(path) as cli:  # e.g. `b24-bridge outbox retry` while the bridge runs
        dead = cli.list_rows("dead")
        assert [(r.kind, r.reason) for r in dead] == [("register", "User is not found or is not active")]
        assert cli.retry(dead[0].id)
    # the daemon notices the other process's change and puts the register back first
    assert daemon.pending_count() == 1
    assert kinds(take_all(daemon)) == [("a", "register")]
    assert daemon.pending_count() == 2
    daemon.close()


# --- dead letters ------------------------------------------------------------------------------------------------

def test_dead_letters_retry_and_drop(box: Outbox) -> None:
    box.enqueue([op("a", OpKind.REGISTER), op("a", OpKind.SHOW), op("a", OpKind.FINISH)])
    reg = take_all(box)
    box.settle(dead=[DeadLetter(reg[0], "User is not found or is not active", "")])
    assert box.dead_count() == 1
    show = take_all(box)
    box.settle(dead=[DeadLetter(show[0], "no CALL_ID")])
    assert box.dead_count() == 2
    finish = take_all(box)
    assert kinds(finish) == [("a", "finish")]  # dead ops do not block the rest of their call
    box.release(finish)
    box.release(finish)  # releasing twice is harmless

    assert box.retry_call("a") == 2
    assert box.dead_count() == 0
    # revived ops keep their original place: register, show, then the finish
    order: list[str] = []
    while batch := take_all(box):
        order.extend(s.kind.value for s in batch)
        complete(box, batch, {"CALL_ID": "x"})
    assert order == ["register", "show", "finish"]

    box.enqueue([op("b", OpKind.HIDE)])
    hide = take_all(box)
    box.settle(dead=[DeadLetter(hide[0], "bad")])
    row = box.list_rows("dead")[0]
    assert box.retry(999_999) is False
    assert box.drop(row.id) is True
    assert box.drop(row.id) is False
    assert box.dead_count() == 0
    assert box.list_rows("all", call_key="b") == []


def test_drop_of_a_pending_op_unblocks_its_call(box: Outbox) -> None:
    box.enqueue([op("a", OpKind.REGISTER), op("a", OpKind.SHOW)])
    head = box.list_rows("pending")[0]
    assert box.drop(head.id)
    assert kinds(take_all(box)) == [("a", "show")]


def test_unreadable_stored_op_becomes_a_dead_letter_at_open(path: Path) -> None:
    with Outbox(path) as box:
        box.enqueue([op("a", OpKind.REGISTER), op("a", OpKind.SHOW)])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE ops SET payload = '{not json' WHERE kind = 'register'")
    with Outbox(path) as box:
        assert box.dead_count() == 1
        assert box.list_rows("dead")[0].reason == "unreadable stored operation"
        assert kinds(take_all(box)) == [("a", "show")]


# --- pruning -----------------------------------------------------------------------------------------------------

def test_prune_removes_only_old_done_rows_and_closed_calls(path: Path) -> None:
    clock = Clock()
    box = Outbox(path, keep_done_hours=1, clock=clock)
    box.open()
    box.write(PolicyStep("old", (op("old", OpKind.REGISTER),), state("old")))
    complete(box, take_all(box), {"CALL_ID": "externalCall.old"})
    box.write(PolicyStep("old", (), None, closed=True))
    box.write(PolicyStep("live", (op("live", OpKind.REGISTER),), state("live")))
    complete(box, take_all(box), {"CALL_ID": "externalCall.live"})
    box.enqueue([op("dead", OpKind.HIDE)])
    box.settle(dead=[DeadLetter(take_all(box)[0], "bad")])
    box.enqueue([op("waiting", OpKind.FINISH)])

    clock.now += 1800
    assert box.prune() == 0
    clock.now += 3600
    assert box.prune() == 2  # the two done registers
    assert box.crm_call_id("old") is None  # closed and unreferenced: gone
    assert box.crm_call_id("live") == "externalCall.live"  # still live: kept
    assert [s.call_key for s in box.open_calls()] == ["live"]
    assert box.dead_count() == 1
    assert box.pending_count() == 1
    box.close()


# --- lifecycle and errors ----------------------------------------------------------------------------------------

def state_of(box: Outbox) -> OutboxState:
    return box.state


async def test_async_context_manager_and_state(path: Path) -> None:
    box = Outbox(path)
    assert state_of(box) is OutboxState.UNOPENED
    with pytest.raises(RuntimeError, match="unopened"):
        box.enqueue([op("a", OpKind.SHOW)])
    async with box:
        assert state_of(box) is OutboxState.OPEN
        with pytest.raises(RuntimeError, match="already open"):
            box.open()
        box.enqueue([op("a", OpKind.SHOW)])
    assert state_of(box) is OutboxState.CLOSED
    with pytest.raises(RuntimeError, match="closed"):
        box.open()
    with pytest.raises(RuntimeError, match="closed"):
        box.pending_count() and box.dead_count()


def test_state_directory_is_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "bridge.sqlite3"
    with Outbox(target):
        pass
    assert target.is_file()


def test_parent_that_is_a_file_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    target = tmp_path / "blocker" / "bridge.sqlite3"
    with pytest.raises(StoreError) as info:
        Outbox(target).open()
    assert str(target.parent) in str(info.value)
    assert "storage.path" in str(info.value)
    assert info.value.path == str(target)


OPEN_SCRIPT = """
import sys
from pathlib import Path
from bridge.errors import StoreError
from bridge.sync.outbox import Outbox
try:
    Outbox(Path(sys.argv[1])).open()
except StoreError as exc:
    print("STORE_ERROR", exc)
else:
    print("OPENED")
"""


def _without_root_powers() -> list[str]:
    """Root ignores file modes; drop its capabilities so a read-only directory really is read-only."""
    if os.geteuid() != 0:
        return []
    tool = shutil.which("setpriv")
    if tool is None:
        pytest.skip("running as root without setpriv: cannot make a directory read-only for this process")
    return [tool, "--inh-caps=-all", "--bounding-set=-all", "--"]


@pytest.mark.parametrize("existing", [False, True])
def test_read_only_state_directory_gives_a_clear_error(existing: bool) -> None:
    base = Path(tempfile.mkdtemp(prefix="b24-ro-"))
    try:
        directory = base / "state"
        directory.mkdir()
        target = directory / "bridge.sqlite3"
        if existing:
            with Outbox(target):
                pass
            target.chmod(0o444)
        directory.chmod(0o555)
        run = subprocess.run([*_without_root_powers(), sys.executable, "-c", OPEN_SCRIPT, str(target)], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("STORE_ERROR"), run.stdout
        assert str(directory) in run.stdout
        assert "writ" in run.stdout  # "not writable" / "write access"
    finally:
        (base / "state").chmod(0o755)
        shutil.rmtree(base)


def test_corrupt_file_names_the_file_and_the_recovery_command(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not an sqlite database at all\n" * 200)
    with pytest.raises(StoreError) as info:
        Outbox(path).open()
    message = str(info.value)
    assert f"mv {path} {path}.corrupt" in message


def test_damaged_pages_are_reported_as_corrupt(path: Path) -> None:
    with Outbox(path) as box:
        for i in range(300):
            box.enqueue([op(f"c{i}", OpKind.REGISTER, params={"PHONE_NUMBER": "x" * 200})])
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    data = bytearray(path.read_bytes())
    assert len(data) > 8192
    data[4096:8192] = b"\xa5" * 4096  # scribble over the second page
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as info:
        Outbox(path).open()
    assert ".corrupt" in str(info.value)


def test_full_disk_gives_a_clear_error_and_keeps_earlier_work(box: Outbox, path: Path) -> None:
    box.enqueue([op("a", OpKind.REGISTER)])
    db = box._db
    assert db is not None
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: SQLite answers SQLITE_FULL
    big = [op(f"b{i}", OpKind.FINISH, params={"FAILED_REASON": "y" * 3000}) for i in range(50)]
    with pytest.raises(StoreError) as info:
        box.enqueue(big)
    assert "no space" in str(info.value)
    assert str(path) in str(info.value)
    assert box.pending_count() == 1  # nothing half-written reached the index
    assert kinds(take_all(box)) == [("a", "register")]


def test_newer_schema_is_refused(path: Path) -> None:
    with Outbox(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer"):
        Outbox(path).open()


def test_results_are_stored_truncated_and_unserialisable_results_do_not_fail(box: Outbox, path: Path) -> None:
    box.enqueue([op("a", OpKind.SHOW), op("b", OpKind.SHOW)])
    a, b = take_all(box)
    box.settle(done=[(a, {"huge": "z" * 10_000}), (b, object())])
    with sqlite3.connect(path) as db:
        rows = dict(db.execute("SELECT call_key, result FROM ops").fetchall())
    assert len(rows["a"]) < 5000
    assert isinstance(json.loads(rows["b"]), str)
