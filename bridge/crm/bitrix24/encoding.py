"""PHP bracket encoding, both ways: Bitrix24 reads nested parameters as `FILTER[UF_PHONE_INNER]=101`, `ID[]=5`.

The portal parses query strings with PHP's `parse_str`, so `batch` commands (`"user.get?FILTER[ID]=1"`), form bodies
and the events it POSTs to us all use this syntax. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any
from urllib.parse import parse_qsl, quote

__all__ = ["batch_command", "decode_pairs", "decode_query", "encode_query", "flatten", "format_scalar"]

#: A value referring to an earlier command of the batch; kept readable (the portal decodes before substituting).
_RESULT_REF = re.compile(r"^\$result\[[^\]]*\](\[[^\]]*\])*$")
_MAX_DEPTH = 16
_MAX_LIST_INDEX = 10_000


def format_scalar(value: Any) -> str:
    """The text PHP's `http_build_query` would send: booleans as 1/0, dates in ISO-8601."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def flatten(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested mappings/sequences -> `(bracket_key, text)` pairs. None values are left out, as PHP does.

    A list of scalars becomes `KEY[]=a&KEY[]=b`; a list holding mappings or lists needs indexes (`KEY[0][SIDE]=...`).
    """
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        _flatten_into(out, f"{prefix}[{key}]" if prefix else str(key), value, 0)
    return out


def _flatten_into(out: list[tuple[str, str]], key: str, value: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"parameter {key!r} is nested too deeply")
    if value is None:
        return
    if isinstance(value, Mapping):
        for sub_key, sub_value in value.items():
            _flatten_into(out, f"{key}[{sub_key}]", sub_value, depth + 1)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        indexed = any(isinstance(v, (Mapping, list, tuple)) for v in value)
        for index, item in enumerate(value):
            _flatten_into(out, f"{key}[{index}]" if indexed else f"{key}[]", item, depth + 1)
    elif isinstance(value, (bytes, bytearray)):
        raise TypeError(f"parameter {key!r}: bytes cannot be sent as text; base64-encode them first")
    else:
        out.append((key, format_scalar(value)))


def _quote_value(text: str) -> str:
    return quote(text, safe="$[]" if _RESULT_REF.match(text) else "")


def encode_query(params: Mapping[str, Any]) -> str:
    """URL-encoded bracket query: `FILTER[UF_PHONE_INNER]=101&select[]=ID` (brackets in keys left readable)."""
    return "&".join(f"{quote(k, safe='[]')}={_quote_value(v)}" for k, v in flatten(params))


def batch_command(method: str, params: Mapping[str, Any] | None) -> str:
    """One `cmd` entry of a batch request: `method?query` (the query encoded once)."""
    if not method or any(c in method for c in "?&= \r\n"):
        raise ValueError(f"invalid method name {method!r}")
    query = encode_query(params or {})
    return f"{method}?{query}" if query else method


_KEY_PART = re.compile(r"\[([^\[\]]*)\]")


def _split_key(raw: str) -> list[str] | None:
    """`a[b][]` -> ["a", "b", ""]; None when the key cannot be used (PHP would mangle it; we drop it)."""
    head, sep, _ = raw.partition("[")
    if not head:
        return None
    if not sep:
        return [head]
    parts = [head]
    pos = len(head)
    for match in _KEY_PART.finditer(raw, pos):
        if match.start() != pos:
            break
        parts.append(match.group(1))
        pos = match.end()
    if pos == len(head):  # "a[" without a closing bracket: PHP keeps it as a plain key
        return [head]
    return parts[: _MAX_DEPTH + 1]


def decode_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Bracket pairs -> nested dicts/lists. Hostile input never raises: bad keys are dropped, conflicts overwrite."""
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        parts = _split_key(raw_key)
        if parts is None:
            continue
        _assign(root, parts, value)
    return {k: _listify(v) for k, v in root.items()}


def _assign(node: dict[str, Any], parts: list[str], value: str) -> None:
    for index, raw_part in enumerate(parts):
        last = index == len(parts) - 1
        part = raw_part or str(_next_index(node))
        if not raw_part and int(part) > _MAX_LIST_INDEX:
            return
        if last:
            node[part] = value
            return
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child


def _next_index(node: dict[str, Any]) -> int:
    numeric = [int(k) for k in node if k.isdigit() and len(k) < 8]
    return max(numeric) + 1 if numeric else 0


def _listify(value: Any) -> Any:
    """Dicts whose keys are exactly "0".."n-1" become lists, as a PHP list would arrive in JSON."""
    if not isinstance(value, dict):
        return value
    converted = {k: _listify(v) for k, v in value.items()}
    if converted and all(k.isdigit() for k in converted) and sorted(int(k) for k in converted) == list(
        range(len(converted))
    ):
        return [converted[str(i)] for i in range(len(converted))]
    return converted


def decode_query(query: str) -> dict[str, Any]:
    """A query string (`FILTER[ID]=1&select[]=ID`) -> nested structure, the way the portal reads it."""
    return decode_pairs(parse_qsl(query, keep_blank_values=True))
