"""The simulator's `batch`: commands in order, `$result[key][FIELD]` substitution, halt, per-command errors.

`run` executes one command the way a single request would (budget, method checks) and raises `SimApiError`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bridge.crm.bitrix24.encoding import decode_query
from bridge.sim.bitrix24_portal import Reply, SimApiError

__all__ = ["MAX_BATCH", "run_batch"]

MAX_BATCH = 50
_RESULT_REF = re.compile(r"\$result\[([^\]]+)\]((?:\[[^\]]*\])*)")

Runner = Callable[[str, dict[str, Any]], Awaitable[tuple[Reply, dict[str, Any]]]]
Observer = Callable[[str, str, dict[str, Any], str | None], None]


def _commands(params: Mapping[str, Any]) -> list[tuple[str, Any]]:
    cmd = params.get("cmd", params.get("CMD"))
    if isinstance(cmd, Mapping):
        return [(str(k), v) for k, v in cmd.items()]
    if isinstance(cmd, list):
        return [(str(i), v) for i, v in enumerate(cmd)]
    return []


async def run_batch(params: Mapping[str, Any], run: Runner, observe: Observer) -> dict[str, Any]:
    """The inner `result` of a batch answer; empty maps come out as `[]`, as PHP serialises them."""
    items = _commands(params)
    if len(items) > MAX_BATCH:
        raise SimApiError(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
    halt = str(params.get("halt", params.get("HALT", 0))).lower() in ("1", "true", "y")
    out: dict[str, dict[str, Any]] = {name: {} for name in ("result", "result_error", "result_total", "result_next",
                                                             "result_time")}
    for key, command in items:
        method, _, query = str(command).partition("?")
        method = method.strip().lower().removesuffix(".json")
        sub = substitute(decode_query(query), out["result"])
        try:
            if method == "batch":
                raise SimApiError(405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage")
            reply, out["result_time"][key] = await run(method, sub)
        except SimApiError as exc:
            out["result_error"][key] = {"error": exc.code, "error_description": exc.description}
            if exc.status == 429 and exc.time_info is not None:
                out["result_time"][key] = exc.time_info
            observe(key, method, sub, exc.code or exc.description)
            if halt:
                break
            continue
        observe(key, method, sub, None)
        out["result"][key] = reply.result
        if reply.total is not None:
            out["result_total"][key] = reply.total
        if reply.next is not None:
            out["result_next"][key] = reply.next
    return {name: value or [] for name, value in out.items()}


def substitute(value: Any, results: Mapping[str, Any]) -> Any:
    """Replace `$result[key][FIELD]...` with earlier results; unresolvable references stay as they are."""
    if isinstance(value, dict):
        return {k: substitute(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, results) for v in value]
    if not isinstance(value, str) or "$result[" not in value:
        return value
    whole = _RESULT_REF.fullmatch(value)
    if whole is not None:
        found = _resolve(whole, results)
        return value if found is None else found
    return _RESULT_REF.sub(lambda m: str(v) if (v := _resolve(m, results)) is not None else m.group(0), value)


def _resolve(match: re.Match[str], results: Mapping[str, Any]) -> Any:
    node: Any = results.get(match.group(1))
    for step in re.findall(r"\[([^\]]*)\]", match.group(2)):
        if isinstance(node, dict):
            node = node.get(step)
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            return None
    return node
