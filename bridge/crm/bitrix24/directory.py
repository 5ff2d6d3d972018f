"""Extension <-> Bitrix24 user, from `user.get` (`UF_PHONE_INNER`), kept in memory and in a small JSON file.

Lookups are synchronous and never touch the network, so call handling does not wait on the portal. The file lets
a restart map extensions while the portal is down. Results are re-checked: a filter the portal does not allow for
our scope is silently dropped, and then `user.get` answers with every user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from bridge.crm.bitrix24.api import Bitrix24Api
from bridge.errors import Bitrix24Error
from bridge.pbx.base import Health

__all__ = ["Directory", "DirectoryUser", "normalize_extension"]

log = structlog.get_logger(__name__)

_SELECT = ("ID", "NAME", "LAST_NAME", "UF_PHONE_INNER", "ACTIVE")
_MAX_EXTENSION = 32
_CACHE_VERSION = 1


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    user_id: int
    extension: str
    name: str = ""


def normalize_extension(value: Any) -> str | None:
    """The extension as text, or None when the value cannot be one (empty, too long, not a scalar)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value).strip()
    if not text or len(text) > _MAX_EXTENSION or any(c.isspace() or not c.isprintable() for c in text):
        return None
    return text


def _user_from(raw: Mapping[str, Any]) -> DirectoryUser | None:
    if raw.get("ACTIVE") is False or str(raw.get("ACTIVE", "")).upper() in ("N", "FALSE", "0"):
        return None
    extension = normalize_extension(raw.get("UF_PHONE_INNER"))
    try:
        user_id = int(str(raw.get("ID")))
    except ValueError:
        return None
    if extension is None or user_id <= 0:
        return None
    name = " ".join(str(raw.get(k) or "").strip() for k in ("NAME", "LAST_NAME")).strip()
    return DirectoryUser(user_id, extension, name[:200])


class Directory:
    def __init__(self, client: Bitrix24Api, *, default_user_id: int | None, cache_path: Path | None) -> None:
        self._client = client
        self.default_user_id = default_user_id
        self.cache_path = cache_path
        self._by_ext: dict[str, DirectoryUser] = {}
        self._by_user: dict[int, DirectoryUser] = {}
        self.refreshed_at: float | None = None
        self.last_error: str | None = None
        if cache_path is not None:
            self._load_cache(cache_path)

    # --- synchronous lookups --------------------------------------------------------------------------------------

    def user_for_extension(self, extension: str) -> int | None:
        """The user behind `extension`, else the configured default user (None if there is none)."""
        ext = normalize_extension(extension)
        user = self._by_ext.get(ext) if ext else None
        return user.user_id if user else self.default_user_id

    def extension_for_user(self, user_id: int) -> str | None:
        user = self._by_user.get(user_id)
        return user.extension if user else None

    def known(self, extension: str) -> bool:
        ext = normalize_extension(extension)
        return ext is not None and ext in self._by_ext

    def name_for_user(self, user_id: int) -> str | None:
        user = self._by_user.get(user_id)
        return user.name if user else None

    def users(self) -> list[DirectoryUser]:
        return sorted(self._by_ext.values(), key=lambda u: u.user_id)

    def health(self) -> Health:
        extra = {"users": len(self._by_ext), "refreshed_at": self.refreshed_at}
        if self.refreshed_at is None:
            return Health(False, f"extension directory empty: {self.last_error or 'not loaded yet'}", extra)
        return Health(True, f"{len(self._by_ext)} extensions", extra)

    # --- refresh ------------------------------------------------------------------------------------------------

    async def refresh(self) -> int:
        """Reload every active employee with an extension; the old map stays if the portal fails (raises)."""
        raws: list[dict[str, Any]] = []
        try:
            async for raw in self._client.iter_users({"ACTIVE": True, "USER_TYPE": "employee"}, select=_SELECT,
                                                     sort="ID", order="ASC"):
                raws.append(raw)
        except Bitrix24Error as exc:
            self.last_error = str(exc)[:300]
            raise
        self._install((u for raw in raws if (u := _user_from(raw)) is not None), time.time())
        log.info("bitrix24_directory_refreshed", users=len(self._by_ext), seen=len(raws))
        if self.cache_path is not None:
            await asyncio.to_thread(self._write_cache, self.cache_path)
        return len(self._by_ext)

    async def lookup(self, extension: str) -> int | None:
        """Ask the portal about one extension (for one not in the map yet); adds it when found."""
        ext = normalize_extension(extension)
        if ext is None:
            return None
        async for raw in self._client.iter_users({"UF_PHONE_INNER": ext, "ACTIVE": True, "USER_TYPE": "employee"},
                                                 select=_SELECT):
            user = _user_from(raw)
            if user is not None and user.extension == ext:  # re-check: a dropped filter returns everybody
                self._by_ext[ext] = user
                self._by_user[user.user_id] = user
                return user.user_id
        return None

    async def run_periodic(self, interval: float, *, retry: float = 30.0) -> None:
        """Refresh now and then every `interval` s (sooner after a failure) until cancelled."""
        while True:
            try:
                await self.refresh()
                delay = interval
            except Bitrix24Error as exc:
                log.warning("bitrix24_directory_refresh_failed", error=str(exc)[:300],
                            cached_users=len(self._by_ext))
                delay = min(interval, retry)
            await asyncio.sleep(delay)

    def _install(self, users: Iterable[DirectoryUser], refreshed_at: float) -> None:
        by_ext: dict[str, DirectoryUser] = {}
        for user in sorted(users, key=lambda u: u.user_id):
            other = by_ext.get(user.extension)
            if other is not None:
                log.warning("bitrix24_duplicate_extension", extension=user.extension, kept_user=other.user_id,
                            ignored_user=user.user_id)
                continue
            by_ext[user.extension] = user
        self._by_ext = by_ext
        self._by_user = {u.user_id: u for u in by_ext.values()}
        self.refreshed_at = refreshed_at
        self.last_error = None

    # --- cache file ---------------------------------------------------------------------------------------------

    def _load_cache(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("bitrix24_directory_cache_unreadable", path=str(path), error=str(exc))
            return
        if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or not isinstance(data.get("users"),
                                                                                                  list):
            return
        users = [
            DirectoryUser(item["id"], ext, str(item.get("name") or ""))
            for item in data["users"]
            if isinstance(item, dict) and isinstance(item.get("id"), int) and not isinstance(item["id"], bool)
            and (ext := normalize_extension(item.get("ext"))) is not None
        ]
        stamp = data.get("refreshed_at")
        self._install(users, float(stamp) if isinstance(stamp, (int, float)) else 0.0)
        log.info("bitrix24_directory_cache_loaded", users=len(self._by_ext))

    def _write_cache(self, path: Path) -> None:
        data = {"version": _CACHE_VERSION, "refreshed_at": self.refreshed_at,
                "users": [{"id": u.user_id, "ext": u.extension, "name": u.name} for u in self.users()]}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".directory.", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(data, fh, ensure_ascii=False)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("bitrix24_directory_cache_write_failed", path=str(path), error=str(exc))
