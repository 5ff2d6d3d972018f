"""The dispatcher's attach handler (`RecordingAttach` over `RecordingUploader`) on real files: a file not ready yet is
`AttachNotReady` for that op alone, and giving up counts from the earlier of the PBX's end time and the time the op
was written, so neither a PBX clock running ahead nor a restart postpones it."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.config import RecordingsSettings
from bridge.crm.bitrix24.errors import Bitrix24ApiError
from bridge.recordings.uploader import RecordingFailed, RecordingNotReady, RecordingUploader
from bridge.sync.operations import CrmOp, OpKind
from bridge.sync.ports import AttachNotReady
from bridge.wiring import RecordingAttach

SETTLE = 2.0
GIVE_UP = 10.0
CALL_ID = "externalCall.abc.1"
HOUR = 3600.0


class Client:
    """Records what reached the portal; only uploads are expected (mode = upload)."""

    def __init__(self) -> None:
        self.uploads: list[tuple[str, bytes, str]] = []

    async def attach_record_upload(self, call_id: str, path: Path, filename: str) -> Any:
        self.uploads.append((call_id, path.read_bytes(), filename))
        return {"FILE_ID": len(self.uploads)}

    async def attach_record_url(self, call_id: str, filename: str, url: str) -> Any:
        raise AssertionError("mode is upload")

    async def attach_record_base64(self, call_id: str, filename: str, data: bytes) -> Any:
        raise AssertionError("mode is upload")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "monitor"
    path.mkdir()
    return path


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def uploader(root: Path, client: Client) -> RecordingUploader:
    settings = RecordingsSettings(enabled=True, root=root, mode="upload", settle_seconds=SETTLE,
                                  give_up_seconds=GIVE_UP)
    return RecordingUploader(client, settings)


def op_for(path: Path | str | None, ended: float | None) -> CrmOp:
    return CrmOp(call_key="c1", kind=OpKind.ATTACH_RECORD, record_path=None if path is None else str(path),
                 at=None if ended is None else datetime.fromtimestamp(ended, UTC))


def recording(root: Path, name: str, age: float) -> Path:
    path = root / name
    path.write_bytes(b"RIFF" + bytes(4000))
    mtime = time.time() - age
    os.utime(path, (mtime, mtime))
    return path


# (PBX end, written to the outbox) relative to now, and whether a missing file is given up
CLOCKS = [
    pytest.param(+HOUR, -GIVE_UP - 5, True, id="pbx-clock-ahead-but-written-long-ago"),
    pytest.param(-GIVE_UP - 5, -1.0, True, id="ended-long-ago-written-just-now"),
    pytest.param(None, -GIVE_UP - 5, True, id="no-end-time-written-long-ago"),
    pytest.param(-1.0, -2.0, False, id="both-recent"),
    pytest.param(+HOUR, -1.0, False, id="pbx-clock-ahead-written-just-now"),
    pytest.param(None, -1.0, False, id="no-end-time-written-just-now"),
]


@pytest.mark.parametrize(("ended", "written", "given_up"), CLOCKS)
async def test_a_missing_file_is_given_up_after_the_earlier_of_the_call_end_and_the_write(
        ended: float | None, written: float, given_up: bool, root: Path, uploader: RecordingUploader) -> None:
    now = time.time()
    handler = RecordingAttach(uploader)
    op = op_for(root / "missing.wav", None if ended is None else now + ended)
    if given_up:
        with pytest.raises(Bitrix24ApiError, match="never appeared"):
            await handler(op, CALL_ID, now + written)
    else:
        with pytest.raises(AttachNotReady) as raised:
            await handler(op, CALL_ID, now + written)
        assert raised.value.retry_after >= 1.0


@pytest.mark.parametrize(("ended", "written", "given_up"), CLOCKS)
async def test_a_file_still_growing_is_given_up_on_the_same_clock(
        ended: float | None, written: float, given_up: bool, root: Path, uploader: RecordingUploader,
        client: Client) -> None:
    now = time.time()
    path = recording(root, "growing.wav", age=0.0)
    op = op_for(path, None if ended is None else now + ended)
    if given_up:
        with pytest.raises(Bitrix24ApiError, match="still growing"):
            await RecordingAttach(uploader)(op, CALL_ID, now + written)
    else:
        with pytest.raises(AttachNotReady) as raised:
            await RecordingAttach(uploader)(op, CALL_ID, now + written)
        assert 0 < raised.value.retry_after <= SETTLE + 0.1  # until the file has been quiet for settle_seconds
    assert client.uploads == []


async def test_a_settled_file_is_uploaded_to_the_call(root: Path, uploader: RecordingUploader, client: Client) -> None:
    now = time.time()
    path = recording(root, "done.wav", age=SETTLE + 5)
    result = await RecordingAttach(uploader)(op_for(path, now - 20), CALL_ID, now - 20)
    assert result == "attached"
    assert client.uploads == [(CALL_ID, path.read_bytes(), "done.wav")]


async def test_an_op_never_written_by_the_outbox_counts_from_the_call_end_alone(
        root: Path, uploader: RecordingUploader) -> None:
    now = time.time()
    with pytest.raises(AttachNotReady):
        await RecordingAttach(uploader)(op_for(root / "missing.wav", now - 1), CALL_ID, 0.0)
    with pytest.raises(Bitrix24ApiError, match="never appeared"):
        await RecordingAttach(uploader)(op_for(root / "missing.wav", now - GIVE_UP - 5), CALL_ID, 0.0)


@pytest.mark.parametrize("path", [None, "", "/etc/passwd.wav", "../outside.wav", "bad\x00.wav", "notes.txt"])
async def test_bad_paths_are_permanent_failures(path: str | None, root: Path, uploader: RecordingUploader,
                                                client: Client) -> None:
    with pytest.raises(Bitrix24ApiError):
        await RecordingAttach(uploader)(op_for(path, time.time()), CALL_ID, time.time())
    assert client.uploads == []


async def test_the_uploader_counts_from_the_earlier_of_its_two_clocks(root: Path, uploader: RecordingUploader) -> None:
    now = time.time()
    missing = str(root / "missing.wav")
    with pytest.raises(RecordingNotReady):
        await uploader.attach(missing, CALL_ID, ended_at=now + HOUR)
    with pytest.raises(RecordingFailed, match="never appeared"):
        await uploader.attach(missing, CALL_ID, ended_at=now + HOUR, queued_at=now - GIVE_UP - 5)
    with pytest.raises(RecordingFailed, match="never appeared"):
        await uploader.attach(missing, CALL_ID, ended_at=now - GIVE_UP - 5, queued_at=now)
