"""The state directory is read-only or full at start, or the SQLite file is corrupt: `b24-bridge run` says so.

Each case runs the real command as a child process and reads its stderr and exit code: one clear line naming the
path and what to do, a non-zero exit, no traceback, nothing sent to the PBX or the portal, and no half state that
would stand in the way once the operator has fixed the cause (the next start then works).

A read-only or full file system is a tmpfs mounted for the test when this runs as root; otherwise the directory is
made read-only with chmod, and "full" becomes RLIMIT_FSIZE on the child.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.sync.operations import CrmOp, OpKind
from bridge.sync.outbox import Outbox
from tests.fault.conftest import (
    Daemon,
    Stack,
    daemon_config,
    free_port,
    run_cli,
    simulators,
    toml_text,
    until,
)

IS_ROOT = os.geteuid() == 0


@contextlib.contextmanager
def tmpfs(path: Path, *, size: str, read_only: bool = False) -> Iterator[bool]:
    """Mount a tmpfs at `path` for the block; yields False (nothing mounted) when mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if not IS_ROOT or not shutil.which("mount"):
        yield False
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _fill(directory: Path) -> None:
    """Write a filler file until the file system refuses another byte."""
    block = b"\0" * 4096
    with contextlib.suppress(OSError), (directory / "filler").open("wb", buffering=0) as fh:
        while True:
            fh.write(block)


def _write_config(stack: Stack, tmp: Path, storage: Path) -> Path:
    config = daemon_config(stack.ami, stack.portal, tmp, http_port=free_port(),
                           extra={"storage": {"path": str(storage)}})
    path = tmp / "config.toml"
    path.write_text(toml_text(config))
    return path


def _assert_clear_failure(code: int, err: str, stack: Stack, *, names: Path, says: str) -> None:
    assert code != 0, f"exit code {code}\n{err}"
    assert "Traceback" not in err, err
    assert str(names) in err, f"the error does not name {names}:\n{err}"
    assert re.search(says, err, re.I), f"the error does not say {says!r}:\n{err}"
    # Nothing half-started: no AMI login, no portal request.
    assert stack.ami.stats.sessions_served == 0, "the bridge connected to the PBX although it cannot store anything"
    assert not stack.portal.requests, "the bridge talked to the portal although it cannot store anything"


async def _starts_cleanly(stack: Stack, config: Path, logs: Path) -> None:
    """The daemon gets as far as an AMI login, then stops cleanly on SIGTERM."""
    daemon = Daemon(config, logs)
    await daemon.start()
    try:
        await until(lambda: stack.ami.sessions >= 1, 20,
                    message=lambda: f"the daemon did not come up after the fix:\n{daemon.output()[-3000:]}")
    finally:
        code = await daemon.stop()
    assert code == 0, daemon.output()[-3000:]


async def test_read_only_state_directory(tmp_path: Path) -> None:
    async with simulators(tmp_path) as stack:
        state = tmp_path / "ro"
        storage = state / "bridge.sqlite3"
        with tmpfs(state, size="1m", read_only=True) as mounted:
            if not mounted:
                if IS_ROOT:
                    pytest.skip("running as root without permission to mount a read-only tmpfs")
                state.chmod(0o555)
            config = _write_config(stack, tmp_path, storage)
            code, _out, err = await run_cli(["run", "--config", str(config)])
            _assert_clear_failure(code, err, stack, names=state, says=r"not writable|read-only")
            assert not any(state.iterdir()), f"files were left in the read-only directory: {list(state.iterdir())}"
            if not mounted:
                state.chmod(0o755)
        # Once the directory is writable (the mount is gone) the same configuration works.
        await _starts_cleanly(stack, config, tmp_path / "logs")


async def test_missing_state_directory_on_read_only_fs(tmp_path: Path) -> None:
    """storage.path below a directory that cannot be created: the message names the directory to create."""
    async with simulators(tmp_path) as stack:
        parent = tmp_path / "ro"
        storage = parent / "state" / "bridge.sqlite3"
        with tmpfs(parent, size="1m", read_only=True) as mounted:
            if not mounted:
                if IS_ROOT:
                    pytest.skip("running as root without permission to mount a read-only tmpfs")
                parent.chmod(0o555)
            config = _write_config(stack, tmp_path, storage)
            code, _out, err = await run_cli(["run", "--config", str(config)])
            _assert_clear_failure(code, err, stack, names=parent / "state", says=r"cannot create|read-only")
            if not mounted:
                parent.chmod(0o755)


async def test_full_file_system(tmp_path: Path) -> None:
    async with simulators(tmp_path) as stack:
        state = tmp_path / "full"
        storage = state / "bridge.sqlite3"
        with tmpfs(state, size="1m") as mounted:
            preexec: Callable[[], None] | None = None
            says = r"no space left|disk is full"
            if mounted:
                _fill(state)
            else:
                def preexec() -> None:  # the child may not grow any file: SQLite cannot write its header
                    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
                says = r"disk I/O|cannot use"
            config = _write_config(stack, tmp_path, storage)
            code, _out, err = await run_cli(["run", "--config", str(config)], preexec=preexec)
            _assert_clear_failure(code, err, stack, names=storage, says=says)
            # What is left (at most an empty database file) must not stand in the way once there is space again.
            if storage.exists():
                assert storage.stat().st_size == 0, "a partly written database was left behind"
            if mounted:
                (state / "filler").unlink()
                await _starts_cleanly(stack, config, tmp_path / "logs")


def _damaged_pages(path: Path) -> None:
    """A real outbox with pending work whose b-tree pages were overwritten (a bad disk, a half copied backup)."""
    with Outbox(path) as outbox:
        for n in range(300):
            outbox.enqueue([CrmOp(call_key=f"call-{n}", kind=OpKind.SHOW, params={"pad": "x" * 100})])
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    for offset in range(8192, len(data), 4096):
        data[offset + 100:offset + 400] = b"\xff" * 300
    path.write_bytes(bytes(data))


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(20_000))


CORRUPTIONS: dict[str, Callable[[Path], None]] = {"not_a_database": _garbage, "damaged_pages": _damaged_pages}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
async def test_corrupt_database(tmp_path: Path, kind: str) -> None:
    async with simulators(tmp_path) as stack:
        state = tmp_path / "state"
        state.mkdir()
        storage = state / "bridge.sqlite3"
        CORRUPTIONS[kind](storage)
        config = _write_config(stack, tmp_path, storage)
        code, _out, err = await run_cli(["run", "--config", str(config)])
        _assert_clear_failure(code, err, stack, names=storage, says=r"damaged|not an SQLite")
        move = re.search(r"mv (\S+) (\S+\.corrupt)", err)
        assert move is not None, f"no recovery command in:\n{err}"
        assert Path(move.group(1)) == storage
        # Following the printed command is all it takes.
        os.rename(move.group(1), move.group(2))
        await _starts_cleanly(stack, config, tmp_path / "logs")
        assert Path(move.group(2)).is_file(), "the damaged copy was not kept for inspection"


async def test_corrupt_database_error_is_short(tmp_path: Path) -> None:
    """An operator reads the error in `systemctl status`: it must fit in a few lines."""
    storage = tmp_path / "bridge.sqlite3"
    _damaged_pages(storage)
    async with simulators(tmp_path) as stack:
        config = _write_config(stack, tmp_path, storage)
        code, _out, err = await run_cli(["run", "--config", str(config)])
    error = next(line for line in err.splitlines() if "storage error" in line)
    assert code != 0
    assert len(error) < 800 and "\\n" not in error, f"{len(error)} characters:\n{error[:300]}..."


async def test_store_error_is_the_only_output(tmp_path: Path) -> None:
    """The operator sees one line, nothing else (no warnings about coroutines never awaited, no traceback)."""
    async with simulators(tmp_path) as stack:
        storage = tmp_path / "state" / "bridge.sqlite3"
        storage.parent.mkdir()
        _garbage(storage)
        config = _write_config(stack, tmp_path, storage)
        code, _out, err = await run_cli(["run", "--config", str(config)])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("b24-bridge: storage error:"), err
