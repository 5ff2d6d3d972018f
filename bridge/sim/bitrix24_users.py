"""The simulator's users and `user.get`: filters with operators, sorting, 50-row pages with `total`/`next`.

Filter keys outside the allowed list, and keys the test marked as dropped, are ignored silently, as the portal does
for keys the caller's scope does not cover.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PAGE", "SimUser", "query_users"]

PAGE = 50
_FILTERABLE = frozenset({"ID", "ACTIVE", "NAME", "LAST_NAME", "UF_PHONE_INNER", "USER_TYPE", "EMAIL", "IS_ONLINE"})
_OPERATORS = ("!@", "@", ">=", "<=", "!=", ">", "<", "!", "=")


@dataclass(slots=True)
class SimUser:
    id: int
    name: str = ""
    last_name: str = ""
    phone_inner: str = ""
    active: bool = True
    user_type: str = "employee"

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> SimUser:
        return cls(id=int(raw["ID"]), name=str(raw.get("NAME", "")), last_name=str(raw.get("LAST_NAME", "")),
                   phone_inner=str(raw.get("UF_PHONE_INNER") or ""), active=bool(raw.get("ACTIVE", True)),
                   user_type=str(raw.get("USER_TYPE", "employee")))

    def as_rest(self) -> dict[str, Any]:
        return {"ID": str(self.id), "ACTIVE": self.active, "NAME": self.name, "LAST_NAME": self.last_name,
                "UF_PHONE_INNER": self.phone_inner or None, "USER_TYPE": self.user_type,
                "EMAIL": f"user{self.id}@example.invalid", "IS_ONLINE": "N"}


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        return default


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "y", "true", "yes")


def query_users(users: Iterable[SimUser], params: Mapping[str, Any], *,
                dropped: set[str]) -> tuple[list[dict[str, Any]], int, int | None]:
    """One page of matching users as REST rows, the total, and the next offset (None on the last page)."""
    p = {str(k).upper(): v for k, v in params.items()}
    raw_filter = p.get("FILTER")
    conditions = {str(k).upper(): v for k, v in raw_filter.items()} if isinstance(raw_filter, Mapping) else {}
    found = [u for u in users if all(_matches(u, key, value, dropped) for key, value in conditions.items())]
    sort_key = str(p.get("SORT") or "ID").upper()
    found.sort(key=lambda u: _sort_value(u, sort_key), reverse=str(p.get("ORDER") or "ASC").upper() == "DESC")
    start = max(0, _int(p.get("START")))
    page = found[start:start + PAGE]
    select = p.get("SELECT")
    fields = {str(f).upper() for f in select} if isinstance(select, list) and "*" not in select else None
    rows = [{k: v for k, v in u.as_rest().items() if fields is None or k in fields or k == "ID"} for u in page]
    following = start + PAGE if start + PAGE < len(found) else None
    return rows, len(found), following


def _matches(user: SimUser, key: str, value: Any, dropped: set[str]) -> bool:
    op = next((o for o in _OPERATORS if key.startswith(o)), "")
    name = key[len(op):]
    if name not in _FILTERABLE or name in dropped:
        return True
    actual = user.as_rest().get(name)
    if op in (">", "<", ">=", "<="):
        return _compare(actual, value, op)
    if name == "ACTIVE":
        equal = user.active == (value if isinstance(value, bool) else _truthy(value))
    elif op in ("@", "!@"):
        values = value if isinstance(value, list) else [value]
        equal = str(actual or "") in {str(v) for v in values}
    else:
        equal = str(actual or "") == str(value)
    return not equal if op in ("!", "!=", "!@") else equal


def _sort_value(user: SimUser, key: str) -> tuple[int, str]:
    value = user.as_rest().get(key)
    text = "" if value is None else str(value)
    return (int(text), "") if text.isdigit() else (1 << 62, text)


def _compare(actual: Any, value: Any, op: str) -> bool:
    try:
        left, right = float(str(actual)), float(str(value))
    except ValueError:
        return False
    return {">": left > right, "<": left < right, ">=": left >= right, "<=": left <= right}[op]
