"""One simulated AMI session: what it asked for, how replies reach it, and what the simulator received."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from bridge.sim.ami_frames import encode_frame

__all__ = ["RecordedAction", "Replier", "SimSession", "event_classes"]


@dataclass(frozen=True, slots=True)
class RecordedAction:
    """One action as the simulator received it (headers in order, duplicates kept)."""

    headers: tuple[tuple[str, str], ...]
    session: int
    at: float

    @property
    def name(self) -> str:
        return self.get("Action") or ""

    def get(self, key: str) -> str | None:
        values = self.get_all(key)
        return values[0] if values else None

    def get_all(self, key: str) -> list[str]:
        wanted = key.lower()
        return [value for k, value in self.headers if k.lower() == wanted]


@dataclass(slots=True, eq=False)
class SimSession:
    """A connected client; events reach it only once logged in, filtered by the classes it asked for."""

    id: int
    writer: asyncio.StreamWriter
    logged_in: bool = False
    # None: every event class; empty: events off; otherwise the classes asked for.
    classes: frozenset[str] | None = None
    challenge: str | None = None
    closing: bool = False

    def wants(self, privilege: frozenset[str] | None) -> bool:
        if not self.logged_in or (self.classes is not None and not self.classes):
            return False
        if self.classes is None or privilege is None:
            return True
        return bool(self.classes & privilege) or "all" in self.classes


class Replier:
    """Writes `Response:` frames to the session that sent the action, echoing its ActionID."""

    def __init__(self, write: Callable[[SimSession, bytes], None], session: SimSession, action_id: str | None) -> None:
        self._write, self._session, self._action_id = write, session, action_id

    def send(self, response: str, *pairs: tuple[str, str]) -> None:
        head = [("Response", response)]
        if self._action_id is not None:
            head.append(("ActionID", self._action_id))
        self._write(self._session, encode_frame([*head, *pairs]))

    def error(self, message: str) -> None:
        self.send("Error", ("Message", message))


def event_classes(value: str | None) -> frozenset[str] | None:
    """Login `Events:` / `EventMask:` -> None (all classes), empty (off) or the classes named."""
    text = (value or "").strip().lower()
    if text in ("", "on", "yes", "true", "all"):
        return None
    if text in ("off", "no", "false"):
        return frozenset()
    return frozenset(part.strip() for part in text.split(",") if part.strip())
