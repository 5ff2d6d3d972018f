"""Recording paths arrive from AMI and are untrusted: only regular files below the configured root are ever read.

The check is made on the fully resolved path (symlinks followed), so neither `..` segments nor a symlink that points
outside the root can make the bridge read or upload another file.
"""

from __future__ import annotations

import os
from pathlib import Path

ALLOWED_SUFFIXES = (".wav", ".mp3")
# MixMonitor starts before Dial, so an unanswered call leaves a bare WAV header: nothing worth attaching.
EMPTY_WAV_BYTES = 44


class RecordingRejected(ValueError):
    """The path is not one the bridge may read; the message says why (dead-letter reason)."""


def resolve_recording(root: Path, candidate: str) -> Path:
    """Return the real path of `candidate` if it is a file under `root`, else raise RecordingRejected."""
    if not candidate or "\x00" in candidate:
        raise RecordingRejected("empty or NUL-containing recording path")
    raw = Path(candidate)
    if ".." in raw.parts:
        raise RecordingRejected(f"recording path {candidate!r} contains '..'")
    full = raw if raw.is_absolute() else root / raw
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(full))
    if real != real_root and real_root not in real.parents:
        raise RecordingRejected(f"recording path {candidate!r} is outside the recordings root {root}")
    if real.suffix.lower() not in ALLOWED_SUFFIXES:
        raise RecordingRejected(f"recording {real.name!r} is not .wav or .mp3 (Bitrix24 accepts only those)")
    return real


def upload_name(path: Path) -> str:
    """The file name Bitrix24 sees: the base name with a lower-case suffix (it checks the extension)."""
    return path.stem + path.suffix.lower()
