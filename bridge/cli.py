"""`b24-bridge` commands. This module only parses arguments, loads settings, configures logging and runs.

Exit codes: 0 success, 1 a check or run failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bridge import __version__
from bridge.config import DEFAULT_CONFIG_PATH, Settings, load_settings
from bridge.errors import ConfigError, StoreError
from bridge.log import configure_logging, register_secrets

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def _add_config(parser: argparse.ArgumentParser, *, default: Path | None = DEFAULT_CONFIG_PATH) -> None:
    parser.add_argument("--config", type=Path, default=default,
                        help=f"TOML settings file (default {DEFAULT_CONFIG_PATH}); B24BRIDGE_* variables override it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="b24-bridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the bridge (AMI -> Bitrix24, HTTP endpoint)")
    _add_config(run)

    check = sub.add_parser("check", help="validate settings and try the PBX and the portal")
    _add_config(check)
    check.add_argument("--offline", action="store_true", help="only validate the settings, connect to nothing")

    replay = sub.add_parser("replay", help="print the Call records of a recorded AMI stream as JSON lines")
    replay.add_argument("trace", type=Path, help="raw AMI byte stream (FILE.ami)")
    replay.add_argument("--timing", type=Path, default=None, help="FILE.timing.jsonl with arrival times")
    _add_config(replay, default=None)

    capture = sub.add_parser("capture", help="record a live AMI stream (for bug reports)")
    capture.add_argument("--out", type=Path, required=True, help="FILE.ami to write (timing goes to FILE.timing.jsonl)")
    capture.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    _add_config(capture)

    demo = sub.add_parser("demo", help="run the bridge between the built-in AMI and Bitrix24 simulators")
    demo.add_argument("--duration", type=float, default=20.0, help="seconds of synthetic traffic (default 20)")
    demo.add_argument("--calls", type=int, default=30, help="synthetic calls to place (default 30)")
    demo.add_argument("--speed", type=float, default=20.0, help="how much faster than real time traces replay")

    sim = sub.add_parser("sim", help="run a simulator standalone")
    sim.add_argument("which", choices=["ami", "bitrix24"])
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=0)

    outbox = sub.add_parser("outbox", help="inspect the outbox: list, retry or drop dead letters")
    outbox.add_argument("action", choices=["list", "retry", "drop"])
    outbox.add_argument("ids", nargs="*", type=int, help="dead-letter ids for retry/drop")
    _add_config(outbox)

    status = sub.add_parser("status", help="print the live state of the running daemon")
    status.add_argument("--json", action="store_true", help="print the raw status document")
    _add_config(status)

    sub.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = _COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"b24-bridge: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        print(f"b24-bridge: storage error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


def _settings(args: argparse.Namespace, *, log: bool = True) -> Settings:
    path: Path | None = args.config
    if path == DEFAULT_CONFIG_PATH and not path.exists():
        # Without the default file, run on defaults + environment (containers, tests); a named file must exist.
        path = None
    settings = load_settings(path)
    register_secrets(_secret_values(settings))
    if log:
        configure_logging(settings.log.level, settings.log.format)
    return settings


def _secret_values(settings: Settings) -> list[str | None]:
    values: list[str | None] = [settings.ami.secret.get_secret_value()]
    for secret in (settings.bitrix24.webhook_url, settings.bitrix24.client_secret, settings.http.application_token,
                   settings.mqtt.password, settings.recordings.signing_key):
        if secret is not None:
            values.append(secret.get_secret_value())
    return values


def _cmd_version(_args: argparse.Namespace) -> int:
    print(f"b24-bridge {__version__}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from bridge.app import run_daemon

    return asyncio.run(run_daemon(settings))


def _cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args, log=False)
    from bridge.check import run_check

    # The report says what failed and why; the parts' own log lines would only repeat it.
    configure_logging("critical", settings.log.format)
    code: int = asyncio.run(run_check(settings, offline=args.offline, out=sys.stdout))
    return code


def _cmd_replay(args: argparse.Namespace) -> int:
    from bridge.pbx.asterisk.classify import Classifier
    from bridge.pbx.asterisk.replay import replay

    settings = load_settings(args.config) if args.config else Settings()
    configure_logging("error", "json", stream=sys.stderr)
    if not args.trace.is_file():
        raise ConfigError(f"trace file {args.trace} not found", key="trace")
    timing = args.timing
    if timing is None:
        guess = args.trace.with_suffix(".timing.jsonl")
        timing = guess if guess.is_file() else None
    for record in replay(args.trace, timing, Classifier(settings.asterisk)):
        print(json.dumps(record.to_json(), ensure_ascii=False))
    return EXIT_OK


def _cmd_capture(args: argparse.Namespace) -> int:
    from bridge.pbx.asterisk.capture import capture_from_settings

    settings = _settings(args)
    return asyncio.run(capture_from_settings(settings.ami, args.out, duration=args.duration))


def _cmd_demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo

    configure_logging("warning", "console")
    return asyncio.run(run_demo(duration=args.duration, calls=args.calls, speed=args.speed, out=sys.stdout))


def _cmd_sim(args: argparse.Namespace) -> int:
    configure_logging("info", "console")
    if args.which == "ami":
        from bridge.sim.ami import serve as serve_ami

        return asyncio.run(serve_ami(args.host, args.port))
    from bridge.sim.bitrix24 import serve as serve_b24

    asyncio.run(serve_b24(args.host, args.port))
    return EXIT_OK


def _cmd_outbox(args: argparse.Namespace) -> int:
    from bridge.sync.outbox_cli import outbox_command

    settings = _settings(args, log=False)
    return outbox_command(settings, args.action, args.ids, out=sys.stdout)


def _cmd_status(args: argparse.Namespace) -> int:
    from bridge.status import print_status

    settings = _settings(args, log=False)
    code: int = asyncio.run(print_status(settings, out=sys.stdout, as_json=args.json))
    return code


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run,
    "check": _cmd_check,
    "replay": _cmd_replay,
    "capture": _cmd_capture,
    "demo": _cmd_demo,
    "sim": _cmd_sim,
    "outbox": _cmd_outbox,
    "status": _cmd_status,
    "version": _cmd_version,
}


if __name__ == "__main__":
    sys.exit(main())
