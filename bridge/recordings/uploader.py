"""Attach a finished call's recording to its Bitrix24 call (`telephony.externalCall.attachRecord`).

Called by the dispatcher for `attach_record` operations, after `finish` succeeded. It never waits in place: a file
that is still being written (Asterisk sends no "file closed" event after a hangup) raises `RecordingNotReady` with
the time to wait, and the outbox retries it later, so one slow recording never holds up other calls' cards.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote

import structlog

from bridge.config import RecordingsSettings
from bridge.errors import BridgeError
from bridge.recordings.paths import EMPTY_WAV_BYTES, RecordingRejected, resolve_recording, upload_name
from bridge.recordings.signing import RecordingSigner
from bridge.recordings.transcode import TranscodeFailed, discard, ffmpeg_path, transcode_to_mp3

log = structlog.get_logger(__name__)


class RecordingNotReady(BridgeError):
    """The file is missing or still growing; try again after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RecordingFailed(BridgeError):
    """Permanent: the recording cannot be attached (dead letter with this reason)."""


class RecordingClient(Protocol):
    async def attach_record_upload(self, call_id: str, path: Path, filename: str) -> Any: ...

    async def attach_record_url(self, call_id: str, filename: str, url: str) -> Any: ...

    async def attach_record_base64(self, call_id: str, filename: str, data: bytes) -> Any: ...


Outcome = Literal["attached", "skipped_empty"]


@dataclass(frozen=True, slots=True)
class FileState:
    size: int
    age: float


class RecordingUploader:
    def __init__(self, client: RecordingClient, settings: RecordingsSettings, *, public_base_url: str | None = None,
                 signer: RecordingSigner | None = None, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._settings = settings
        self._public_base = public_base_url.rstrip("/") if public_base_url else None
        key = settings.signing_key.get_secret_value().encode() if settings.signing_key else secrets.token_bytes(32)
        self.signer = signer or RecordingSigner(key)
        self._clock = clock
        self._transcode = settings.transcode_mp3 and ffmpeg_path() is not None
        if settings.transcode_mp3 and not self._transcode:
            log.warning("recording_transcode_unavailable", reason="ffmpeg not found; WAV files are sent as they are")

    async def attach(self, path_text: str, crm_call_id: str, *, ended_at: float,
                     queued_at: float | None = None) -> Outcome:
        """Attach one recording, or raise RecordingNotReady / RecordingFailed.

        A file that is missing or still growing is given up `give_up_seconds` after the earlier of `ended_at` (the
        call's end by the PBX's clock) and `queued_at` (when the attach was queued, by ours), so neither a clock
        running ahead nor a restart postpones giving up.
        """
        root = self._settings.root
        try:
            path = resolve_recording(root, path_text)
        except RecordingRejected as exc:
            raise RecordingFailed(str(exc)) from exc
        state = self._stat(path, ended_at if queued_at is None else min(ended_at, queued_at))
        if state.size <= EMPTY_WAV_BYTES:
            log.info("recording_skipped_empty", crm_call_id=crm_call_id, path=str(path), size=state.size)
            return "skipped_empty"
        if state.age < self._settings.settle_seconds:
            raise RecordingNotReady(f"{path.name} changed {state.age:.1f} s ago",
                                    retry_after=self._settings.settle_seconds - state.age + 0.1)
        await self._send(path, crm_call_id)
        log.info("recording_attached", crm_call_id=crm_call_id, path=str(path), size=state.size,
                 mode=self._settings.mode)
        return "attached"

    def _stat(self, path: Path, ended_at: float) -> FileState:
        now = self._clock()
        try:
            st = path.stat()
        except FileNotFoundError:
            waited = now - ended_at
            if waited > self._settings.give_up_seconds:
                raise RecordingFailed(f"recording {path} never appeared ({waited:.0f} s after the call)") from None
            raise RecordingNotReady(f"{path.name} does not exist yet",
                                    retry_after=max(1.0, self._settings.settle_seconds)) from None
        except OSError as exc:
            raise RecordingFailed(f"recording {path} is unreadable: {exc.strerror}") from exc
        if not path.is_file():
            raise RecordingFailed(f"recording {path} is not a regular file")
        age = now - st.st_mtime
        if age < self._settings.settle_seconds and now - ended_at > self._settings.give_up_seconds:
            raise RecordingFailed(f"recording {path} still growing {now - ended_at:.0f} s after the call")
        return FileState(st.st_size, age)

    async def _send(self, path: Path, crm_call_id: str) -> None:
        mode = self._settings.mode
        if mode == "url":
            await self._client.attach_record_url(crm_call_id, upload_name(path), self.link_for(crm_call_id, path))
            return
        source = path
        if self._transcode and path.suffix.lower() == ".wav":
            try:
                source = await transcode_to_mp3(path, self._settings.mp3_bitrate)
            except TranscodeFailed as exc:
                log.warning("recording_transcode_failed", crm_call_id=crm_call_id, error=str(exc))
                source = path
        try:
            if mode == "base64":
                size = source.stat().st_size
                if size > self._settings.base64_max_bytes:
                    raise RecordingFailed(f"{source.name} is {size} bytes, over recordings.base64_max_bytes; "
                                          "use mode = upload")
                await self._client.attach_record_base64(crm_call_id, upload_name(source), source.read_bytes())
            else:
                await self._client.attach_record_upload(crm_call_id, source, upload_name(source))
        except OSError as exc:
            raise RecordingFailed(f"recording {source} is unreadable: {exc.strerror}") from exc
        finally:
            if source != path:
                discard(source)

    def link_for(self, crm_call_id: str, path: Path) -> str:
        if not self._public_base:
            raise RecordingFailed("recordings.mode = url needs http.public_url (the address Bitrix24 can reach)")
        relative = str(path.relative_to(Path(_real(self._settings.root))))
        token = self.signer.sign(crm_call_id, relative, int(self._clock()) + self._settings.url_ttl_seconds)
        return f"{self._public_base}/recordings/{quote(token)}/{quote(upload_name(path))}"


def _real(path: Path) -> str:
    return os.path.realpath(path)
