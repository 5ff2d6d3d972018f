"""`b24-bridge outbox list|retry|drop` against a real outbox file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bridge.config import Settings, StorageSettings
from bridge.sync.operations import CrmOp, OpKind
from bridge.sync.outbox import DeadLetter, Outbox
from bridge.sync.outbox_cli import outbox_command


def settings_for(path: Path) -> Settings:
    return Settings(storage=StorageSettings(path=path))


def run(settings: Settings, action: str, *ids: int) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = outbox_command(settings, action, list(ids), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Settings, int, int]:
    path = tmp_path / "state" / "bridge.sqlite3"
    with Outbox(path) as box:
        box.enqueue([CrmOp(call_key="1732812345.42", kind=OpKind.REGISTER),
                     CrmOp(call_key="1732812345.42", kind=OpKind.FINISH)])
        box.enqueue([CrmOp(call_key="1732812399.7", kind=OpKind.SHOW)])
        register = box.take_ready(1)[0]
        box.settle(dead=[DeadLetter(register, "User is not found\nor is not active", "")])
        pending = box.list_rows("pending")[0].id
    return settings_for(path), register.id, pending


def test_list_shows_pending_work_and_dead_letters_with_reasons(filled: tuple[Settings, int, int]) -> None:
    settings, dead_id, _ = filled
    code, out, _ = run(settings, "list")
    assert code == 0
    assert "2 pending, 1 dead" in out
    assert "1732812399.7" in out and "finish" in out
    assert f"{dead_id:>8}  register" in out
    assert "User is not found or is not active" in out  # one line per letter


def test_retry_and_drop_by_id(filled: tuple[Settings, int, int]) -> None:
    settings, dead_id, pending_id = filled
    assert run(settings, "retry", dead_id)[0] == 0
    code, _, err = run(settings, "retry", dead_id)
    assert code == 1 and "not a dead letter" in err
    assert run(settings, "drop", pending_id)[0] == 0
    with Outbox(settings.storage.path) as box:
        assert box.dead_count() == 0
        assert [r.kind for r in box.list_rows("pending")] == ["register", "show"]


def test_usage_errors_and_a_missing_file(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "none" / "bridge.sqlite3")
    assert run(settings, "retry")[0] == 2
    assert run(settings, "explode", 1)[0] == 2
    code, out, _ = run(settings, "list")
    assert code == 0 and "no outbox" in out
    assert not (tmp_path / "none").exists()  # looking does not create the state directory


def test_knows_crm_call(tmp_path: Path) -> None:
    with Outbox(tmp_path / "b.sqlite3") as box:
        box.enqueue([CrmOp(call_key="pbx1", kind=OpKind.REGISTER),
                     CrmOp(call_key="externalCall.c2c", kind=OpKind.FINISH, crm_call_id="externalCall.c2c")])
        box.settle(done=[(box.take_ready(1)[0], {"CALL_ID": "externalCall.ours"})])
        assert box.knows_crm_call("externalCall.ours")
        assert box.knows_crm_call("externalCall.c2c")
        assert not box.knows_crm_call("externalCall.other")
