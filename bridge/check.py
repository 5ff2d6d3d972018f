"""`b24-bridge check`: find configuration and connectivity problems before the daemon meets them.

Offline it only reads the settings (the file already parsed and validated when we get here) and the local paths.
Online it also logs in to the PBX and asks Bitrix24 two read-only questions: `user.get` (the extension directory,
scope `user`) and `telephony.externalLine.get` (scope `telephony`). Nothing is created, registered or originated.
Each line says what was checked, ok or FAIL, and what to do about a failure; the exit code is 0 only if all passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypeVar

from bridge.app import build_adapter, state_file
from bridge.config import Settings, check_required
from bridge.crm.bitrix24.client import Bitrix24Client
from bridge.crm.bitrix24.directory import Directory
from bridge.errors import BridgeError
from bridge.log import redact_text
from bridge.pbx.base import Health

__all__ = ["Finding", "offline_findings", "run_check"]

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
PBX_WAIT_SECONDS = 10.0
POLL_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class Finding:
    """One checked thing; a `warning` is worth reading but does not fail the check."""

    what: str
    ok: bool
    detail: str
    warning: bool = False


async def run_check(settings: Settings, *, offline: bool, out: TextIO) -> int:
    findings = offline_findings(settings)
    _print(out, findings)
    if not offline:
        for probe in (_check_pbx, _check_portal):
            found = await probe(settings)
            _print(out, found)
            findings.extend(found)
    failed = [f for f in findings if not f.ok]
    note = " (offline: nothing was contacted)" if offline else ""
    print(f"\n{len(findings) - len(failed)} ok, {len(failed)} failed{note}", file=out)
    return EXIT_OK if not failed else EXIT_FAILED


def offline_findings(settings: Settings) -> list[Finding]:
    """What can be judged from the settings and the local file system alone."""
    found = [Finding("settings", False, problem) for problem in check_required(settings)]
    if not found:
        found.append(Finding("settings", True, f"pbx {settings.pbx.kind}, Bitrix24 "
                             f"{'webhook' if settings.bitrix24.webhook_url is not None else 'local app'}"))
    found.append(_writable_dir("storage.path", settings.storage.path.parent))
    rec = settings.recordings
    if rec.enabled:
        if not rec.root.is_dir():
            found.append(Finding("recordings.root", False, f"{rec.root} is not a directory: set recordings.root to "
                                 "the PBX's recording folder, or recordings.enabled = false"))
        elif not os.access(rec.root, os.R_OK | os.X_OK):
            found.append(Finding("recordings.root", False, f"{rec.root} is not readable by this user"))
        else:
            found.append(Finding("recordings.root", True, str(rec.root)))
        if rec.mode == "url" and not settings.http.public_url:
            found.append(Finding("recordings.mode", False, "mode url needs http.public_url (the address Bitrix24 "
                                 "downloads from); set it or use mode = upload"))
    if settings.bitrix24.webhook_url is not None and settings.http.application_token is None:
        found.append(Finding("http.application_token", True, "not set: click-to-call events will be refused; copy "
                             "the outgoing webhook's token here to use click-to-call", warning=True))
    return found


def _writable_dir(key: str, directory: Path) -> Finding:
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return Finding(key, False, f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        return Finding(key, False, f"{existing} is not writable by this user: fix the permissions or move "
                       f"{key} to a writable place")
    return Finding(key, True, f"{directory} is writable" if existing == directory else f"{directory} can be created")


async def _check_pbx(settings: Settings) -> list[Finding]:
    """Start the configured adapter and wait until it reports a working link (login done), a failed first attempt
    (`last_error`, e.g. refused login), or the end of the wait."""
    what = f"pbx ({settings.pbx.kind})"
    try:
        adapter = build_adapter(settings)
    except (BridgeError, ValueError) as exc:
        return [Finding(what, False, str(exc))]
    try:
        async with adapter:
            await _until(lambda: _conclusive(adapter.health()), PBX_WAIT_SECONDS)
            health = adapter.health()
    except (BridgeError, OSError) as exc:
        return [Finding(what, False, f"{type(exc).__name__}: {exc}")]
    if health.ok:
        return [Finding(what, True, health.detail)]
    return [Finding(what, False, f"no working link: {health.detail}")]


def _conclusive(health: Health) -> bool:
    return health.ok or bool(health.extra.get("last_error"))


async def _check_portal(settings: Settings) -> list[Finding]:
    """One directory load (user.get) and one line listing (telephony scope): both read-only."""
    token_path = state_file(settings, "tokens.json", settings.bitrix24.token_path)
    try:
        client = Bitrix24Client.from_settings(settings.bitrix24, token_path=token_path)
    except (BridgeError, ValueError) as exc:
        return [Finding("bitrix24", False, str(exc))]
    async with client:
        directory = Directory(client, default_user_id=settings.bitrix24.default_user_id, cache_path=None)
        users = await _ask("bitrix24 user.get", directory.refresh,
                           lambda n: f"{n} active users with an extension (UF_PHONE_INNER)")
        if not users.ok:
            return [users]
        lines = await _ask("bitrix24 telephony", client.external_line_get,
                           lambda rows: f"telephony.externalLine.get answered ({len(rows)} external lines)")
        found = [users, lines]
        default = settings.bitrix24.default_user_id
        if default is not None and directory.extension_for_user(default) is None:
            found.append(Finding("bitrix24.default_user_id", True, f"user {default} is not an active user with an "
                                 "extension (missed calls can still go to it if the user exists)", warning=True))
        return found


async def _ask(what: str, request: Callable[[], Awaitable[T]], describe: Callable[[T], str]) -> Finding:
    try:
        return Finding(what, True, describe(await request()))
    except BridgeError as exc:
        return Finding(what, False, f"{type(exc).__name__}: {exc}")


async def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - adapters expose health, not a common "connected" event
                await asyncio.sleep(POLL_SECONDS)
            return True
    return False


def _print(out: TextIO, findings: list[Finding]) -> None:
    for finding in findings:
        mark = "FAIL" if not finding.ok else "warn" if finding.warning else "ok"
        # Error texts can quote URLs; the webhook URL is a secret (registered by the CLI), so it is masked here too.
        print(f"{mark:<4}  {finding.what:<26} {redact_text(finding.detail)}", file=out, flush=True)
