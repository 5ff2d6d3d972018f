"""What a benchmark hands back to `bench.run`: numbers, target checks and notes, all JSON-serialisable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BenchResult", "Check"]


@dataclass(slots=True)
class Check:
    """One target: what was wanted, what was measured, and whether it was met (None: not judged, e.g. smoke)."""

    label: str
    target: str
    measured: str
    met: bool | None


@dataclass(slots=True)
class BenchResult:
    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    method: str = ""  # how it was measured (the module docstring), for RESULTS.md

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
