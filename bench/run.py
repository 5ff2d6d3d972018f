"""Run every benchmark: `python -m bench.run` (a few minutes; writes bench/results.json and bench/RESULTS.md) or
`python -m bench.run --smoke` (seconds; CI runs it so the benchmarks never rot: it only checks that each benchmark
runs and produces numbers, judges no target, and writes files only with --out).

Exit status: 0 when every benchmark ran (whether or not its targets were met), 1 when one crashed.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType

from bench import card_latency, clicktocall, ingest, memory, recovery, throughput
from bench.machine import machine_info
from bench.report import render_markdown
from bench.result import BenchResult
from bridge.log import configure_logging

MODULES: tuple[ModuleType, ...] = (ingest, card_latency, throughput, memory, clicktocall, recovery)
HERE = Path(__file__).resolve().parent


async def _run_one(module: ModuleType, smoke: bool) -> BenchResult:
    runner: Callable[[bool], Awaitable[BenchResult]] = module.run
    started = time.monotonic()
    try:
        result = await runner(smoke)
    except Exception as exc:
        result = BenchResult(module.NAME, module.TITLE, error=f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    result.seconds = round(time.monotonic() - started, 1)
    result.method = inspect.cleandoc(module.__doc__ or "")
    return result


def _print(result: BenchResult) -> None:
    print(f"== {result.title} ({result.seconds:.1f} s)", flush=True)
    if result.error:
        print(f"   ERROR {result.error}", flush=True)
    for check in result.checks:
        verdict = {True: "met", False: "MISSED", None: "-"}[check.met]
        print(f"   {check.label}: {check.measured} [target {check.target}: {verdict}]", flush=True)
    for note in result.notes:
        print(f"   note: {note}", flush=True)


async def main_async(smoke: bool, only: Sequence[str]) -> list[BenchResult]:
    results = []
    for module in MODULES:
        if only and module.NAME not in only:
            continue
        result = await _run_one(module, smoke)
        _print(result)
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run that only checks the benchmarks work")
    parser.add_argument("--only", action="append", default=[], choices=[m.NAME for m in MODULES],
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for results.json and RESULTS.md (default: bench/ for a complete full "
                             "run, nothing with --smoke or --only)")
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    machine = machine_info()
    started = time.monotonic()
    results = asyncio.run(main_async(args.smoke, args.only))
    total = time.monotonic() - started
    print(f"total {total:.0f} s on {machine['cpu']} ({machine['cores']} cores), {machine['python']}", flush=True)
    # Only a complete full run replaces the committed results.
    out: Path | None = args.out if args.out is not None else (None if args.smoke or args.only else HERE)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        payload = {"machine": machine, "smoke": args.smoke, "total_seconds": round(total, 1),
                   "results": [r.to_json() for r in results]}
        (out / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        (out / "RESULTS.md").write_text(render_markdown(payload), encoding="utf-8")
        print(f"wrote {out / 'results.json'} and {out / 'RESULTS.md'}", flush=True)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
