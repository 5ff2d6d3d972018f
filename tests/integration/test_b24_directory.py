"""Extension directory: refresh from the simulated portal, re-checks, default user, cache across a restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.crm.bitrix24 import Bitrix24Client, Directory, LeakyBucket
from bridge.crm.bitrix24.errors import Bitrix24Unavailable
from bridge.sim.bitrix24 import Bitrix24Simulator

USERS: list[dict[str, Any]] = [
    {"ID": 1, "NAME": "Anna", "LAST_NAME": "Admin", "UF_PHONE_INNER": "100", "ACTIVE": True},
    {"ID": 5, "NAME": "Boris", "LAST_NAME": "Sales", "UF_PHONE_INNER": " 101 ", "ACTIVE": True},
    {"ID": 7, "NAME": "Vera", "LAST_NAME": "", "UF_PHONE_INNER": "102", "ACTIVE": True},
    {"ID": 8, "NAME": "NoPhone", "LAST_NAME": "", "UF_PHONE_INNER": "", "ACTIVE": True},
    {"ID": 9, "NAME": "Gone", "LAST_NAME": "", "UF_PHONE_INNER": "103", "ACTIVE": False},
    {"ID": 11, "NAME": "Dup", "LAST_NAME": "", "UF_PHONE_INNER": "102", "ACTIVE": True},
    {"ID": 12, "NAME": "Bot", "LAST_NAME": "", "UF_PHONE_INNER": "104", "ACTIVE": True, "USER_TYPE": "extranet"},
]


@pytest.fixture
async def sim() -> AsyncIterator[Bitrix24Simulator]:
    async with Bitrix24Simulator(users=USERS, rate=1000, burst=1000) as simulator:
        yield simulator


@pytest.fixture
async def b24(sim: Bitrix24Simulator) -> AsyncIterator[Bitrix24Client]:
    async with Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=LeakyBucket(1000, 1000)) as client:
        yield client


async def test_refresh_maps_active_employees(b24: Bitrix24Client, sim: Bitrix24Simulator) -> None:
    directory = Directory(b24, default_user_id=1, cache_path=None)
    assert not directory.health().ok
    assert await directory.refresh() == 3
    assert directory.user_for_extension("101") == 5
    assert directory.user_for_extension("102") == 7  # the duplicate with the higher id is ignored
    assert directory.extension_for_user(5) == "101"
    assert directory.name_for_user(5) == "Boris Sales"
    assert directory.known("100") and not directory.known("103") and not directory.known("104")
    assert directory.user_for_extension("103") == 1  # inactive -> default user
    assert directory.user_for_extension("999") == 1
    assert directory.extension_for_user(9) is None
    assert directory.health().ok
    sent = sim.requests[-1].params
    assert sent["FILTER"] == {"ACTIVE": True, "USER_TYPE": "employee"}
    assert set(sent["select"]) >= {"ID", "NAME", "LAST_NAME", "UF_PHONE_INNER"}


async def test_no_default_user(b24: Bitrix24Client) -> None:
    directory = Directory(b24, default_user_id=None, cache_path=None)
    await directory.refresh()
    assert directory.user_for_extension("999") is None
    assert directory.user_for_extension("") is None


async def test_dropped_filters_are_rechecked(b24: Bitrix24Client, sim: Bitrix24Simulator) -> None:
    sim.drop_filter("UF_PHONE_INNER")
    sim.drop_filter("ACTIVE")
    directory = Directory(b24, default_user_id=None, cache_path=None)
    assert await directory.lookup("102") == 7  # the portal answered with every user; only 102 counts
    assert await directory.lookup("555") is None
    assert await directory.lookup("103") is None  # inactive, although the portal ignored ACTIVE
    await directory.refresh()
    assert not directory.known("103")


async def test_paging_over_50_users(tmp_path: Path) -> None:
    users = [{"ID": i, "NAME": f"U{i}", "LAST_NAME": "", "UF_PHONE_INNER": str(2000 + i), "ACTIVE": True}
             for i in range(1, 151)]
    async with Bitrix24Simulator(users=users, rate=1000, burst=1000) as sim, \
            Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=LeakyBucket(1000, 1000)) as b24:
        directory = Directory(b24, default_user_id=None, cache_path=None)
        assert await directory.refresh() == 150
        assert directory.user_for_extension("2150") == 150
        assert sim.counts["user.get"] == 3


async def test_cache_survives_restart_with_portal_down(b24: Bitrix24Client, sim: Bitrix24Simulator,
                                                       tmp_path: Path) -> None:
    cache = tmp_path / "dir" / "directory.json"
    await Directory(b24, default_user_id=None, cache_path=cache).refresh()
    assert cache.exists()

    sim.go_down(60)
    restarted = Directory(b24, default_user_id=None, cache_path=cache)
    with pytest.raises(Bitrix24Unavailable):
        await restarted.refresh()
    assert restarted.user_for_extension("101") == 5
    assert restarted.extension_for_user(7) == "102"
    assert restarted.health().ok


@pytest.mark.parametrize("content", ["{broken", "[]", json.dumps({"version": 1, "users": [
    {"id": "x", "ext": "1"}, {"id": True, "ext": "2"}, {"id": 3, "ext": ["3"]}, {"id": 4, "ext": "4 4"}, 7]})])
async def test_bad_cache_files_are_ignored(b24: Bitrix24Client, tmp_path: Path, content: str) -> None:
    cache = tmp_path / "directory.json"
    cache.write_text(content)
    directory = Directory(b24, default_user_id=None, cache_path=cache)
    assert directory.users() == []
    await directory.refresh()
    assert directory.known("101")


async def test_run_periodic_refreshes_until_cancelled(b24: Bitrix24Client, sim: Bitrix24Simulator) -> None:
    sim.fail_next(1, 500)
    directory = Directory(b24, default_user_id=None, cache_path=None)
    task = asyncio.create_task(directory.run_periodic(0.05, retry=0.01))
    for _ in range(200):
        if directory.refreshed_at is not None:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert directory.known("101")
