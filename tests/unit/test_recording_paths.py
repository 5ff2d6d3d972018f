"""Recording paths from AMI are untrusted: every escape attempt is refused; signed links expire and resist forgery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.recordings.paths import RecordingRejected, resolve_recording, upload_name
from bridge.recordings.signing import LinkRejected, RecordingSigner


@pytest.fixture
def root(tmp_path: Path) -> Path:
    monitor = tmp_path / "monitor"
    (monitor / "2026" / "11" / "28").mkdir(parents=True)
    (monitor / "2026" / "11" / "28" / "in-5551001-791611-20261128-101502-1.2.wav").write_bytes(b"x" * 100)
    (tmp_path / "secret.wav").write_bytes(b"private")
    return monitor


def test_file_under_root_accepted_absolute_and_relative(root: Path) -> None:
    rel = "2026/11/28/in-5551001-791611-20261128-101502-1.2.wav"
    assert resolve_recording(root, str(root / rel)) == Path(os.path.realpath(root / rel))
    assert resolve_recording(root, rel) == Path(os.path.realpath(root / rel))


@pytest.mark.parametrize("attempt", [
    "../secret.wav",
    "2026/../../secret.wav",
    "/etc/passwd",
    "/etc/shadow.wav",
    "",
    "2026/11/28/x.wav\x00.txt",
])
def test_escape_attempts_rejected(root: Path, attempt: str) -> None:
    with pytest.raises(RecordingRejected):
        resolve_recording(root, attempt)


def test_absolute_path_outside_root_rejected(root: Path, tmp_path: Path) -> None:
    with pytest.raises(RecordingRejected, match="outside"):
        resolve_recording(root, str(tmp_path / "secret.wav"))


def test_symlink_escape_rejected(root: Path, tmp_path: Path) -> None:
    link = root / "2026" / "11" / "28" / "evil.wav"
    link.symlink_to(tmp_path / "secret.wav")
    with pytest.raises(RecordingRejected, match="outside"):
        resolve_recording(root, str(link))


def test_symlinked_directory_escape_rejected(root: Path, tmp_path: Path) -> None:
    (root / "2026" / "link").symlink_to(tmp_path)
    with pytest.raises(RecordingRejected, match="outside"):
        resolve_recording(root, "2026/link/secret.wav")


def test_only_wav_and_mp3(root: Path) -> None:
    (root / "call.gsm").write_bytes(b"x" * 100)
    with pytest.raises(RecordingRejected, match=r"\.wav or \.mp3"):
        resolve_recording(root, "call.gsm")
    assert upload_name(Path("/x/call.WAV")) == "call.wav"


def test_signed_link_roundtrip_and_expiry() -> None:
    signer = RecordingSigner(b"k" * 32)
    token = signer.sign("externalCall.abc.1", "2026/11/28/a.wav", expires=1000)
    link = signer.verify(token, now=999)
    assert (link.crm_call_id, link.relative_path) == ("externalCall.abc.1", "2026/11/28/a.wav")
    with pytest.raises(LinkRejected, match="expired"):
        signer.verify(token, now=1001)


def test_forged_or_tampered_links_rejected() -> None:
    signer = RecordingSigner(b"k" * 32)
    token = signer.sign("externalCall.abc.1", "a.wav", expires=10**10)
    payload, _, mac = token.partition(".")
    other = RecordingSigner(b"z" * 32).sign("externalCall.abc.1", "../../etc/passwd.wav", expires=10**10)
    for bad in (other, payload + "." + mac[:-2] + "AA", "garbage", "", "." + mac, payload + "."):
        with pytest.raises(LinkRejected):
            signer.verify(bad, now=0)
    with pytest.raises(ValueError):
        RecordingSigner(b"short")
