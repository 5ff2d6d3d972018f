"""RESULTS.md from the results payload: the machine, a target table, then the details of each benchmark."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["render_markdown"]

_VERDICT = {True: "met", False: "**missed**", None: "-"}


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)
    return lines


def _doc_markdown(doc: str) -> list[str]:
    """A module docstring as Markdown: paragraphs reflowed onto one line each, `- ` bullets kept as a list."""
    out: list[str] = []
    for paragraph in doc.split("\n\n"):
        items: list[str] = []
        for line in paragraph.splitlines():
            text = line.strip()
            if text.startswith("- ") or not items:
                items.append(text)
            else:
                items[-1] += " " + text
        out.extend(items)
        out.append("")
    return out


def _ingest(data: Mapping[str, Any]) -> list[str]:
    rates = data.get("events_per_s", {})
    per_pass = data.get("seconds_per_pass", {})
    rows = [(name, f"{rate:,}", ", ".join(f"{s:.3f}" for s in per_pass.get(name, []))) for name, rate in rates.items()]
    return [f"{data.get('frames', 0):,} AMI frames, {data.get('bytes', 0) / 1e6:.1f} MB in "
            f"{data.get('chunk_bytes', 0)}-byte chunks, {data.get('repetitions', 0)} alternating repetitions.", "",
            *_table(("path", "events/s (median)", "seconds per pass"), rows)]


def _throughput(data: Mapping[str, Any]) -> list[str]:
    rows = []
    for run in data.get("runs", []):
        rows.append(("probe" if run.get("probe") else "", "on" if run["batching"] else "off", f"{run['scale']:g}",
                     f"{run['rate_per_hour']:,}", run["calls_offered"], run["calls_finished_in_portal"],
                     f"{run['backlog_p90_2nd_quarter']} / {run['backlog_p90_last_quarter']} / {run['backlog_max']}",
                     run["drain_seconds_after_load"], run["methods_per_call"], run["portal_requests"],
                     f"{run['bridge_cpu_share']:.0%}", "yes" if run["carried"] else f"no: {run['verdict']}"))
    return [f"Operations per call {data.get('methods_per_call')}; portal ceilings: "
            f"{data.get('ceiling_off_per_hour', 0):,} calls/h one request per operation, "
            f"{data.get('ceiling_on_per_hour', 0):,} calls/h with 50-command batches.", "",
            *_table(("", "batching", "k", "calls/h (sim)", "offered", "finished", "backlog p90 q2 / p90 q4 / max",
                     "drain s (sim)", "ops/call", "requests", "bridge CPU", "carried"), rows)]


def _memory(data: Mapping[str, Any]) -> list[str]:
    rows = [(f"{r['calls']:,}", f"{r.get('tracked', 0):,}", r["rss_mb"]) for r in data.get("readings", [])]
    return [*_table(("calls in progress", "tracked by the bridge", "RSS MB"), rows), "",
            f"Peak RSS {data.get('peak_rss_mb')} MB; about {data.get('kb_per_open_call')} kB per open call."]


def _generic(data: Mapping[str, Any]) -> list[str]:
    skip = {"backlog_series"}
    return [f"- `{key}`: {json.dumps(value, default=str)}" for key, value in data.items() if key not in skip]


_DETAILS = {"ingest": _ingest, "throughput": _throughput, "memory": _memory}


def render_markdown(payload: Mapping[str, Any]) -> str:
    machine = payload.get("machine", {})
    results = payload.get("results", [])
    lines = ["# Benchmark results", "",
             f"Measured {machine.get('date')} on **{machine.get('cpu')}**, {machine.get('cores')} cores usable "
             f"({machine.get('logical_cpus')} logical CPUs), {machine.get('python')}, {machine.get('os')}. "
             f"Whole run {payload.get('total_seconds')} s (`make bench`, i.e. `.venv/bin/python -m bench.run`; "
             "`make bench-smoke` runs the same benchmarks for seconds and judges nothing).",
             "", "The machine is shared and noisy: compare numbers measured side by side in one run, not across runs.",
             "", "## Targets", ""]
    rows = []
    for result in results:
        if result.get("error"):
            rows.append((result["title"], f"ERROR: {result['error']}", "", "**missed**"))
        for check in result.get("checks", []):
            rows.append((check["label"], check["measured"], check["target"], _VERDICT[check["met"]]))
    lines += _table(("measurement", "result", "target", "met"), rows)
    lines += ["", "## Details", ""]
    for result in results:
        lines += [f"### {result['title']} ({result.get('seconds', 0)} s)", ""]
        if result.get("method"):
            lines += _doc_markdown(result["method"])
        render = _DETAILS.get(result["name"], _generic)
        lines += render(result.get("data", {}))
        if result.get("notes"):
            lines += ["", *(f"- note: {note}" for note in result["notes"])]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
