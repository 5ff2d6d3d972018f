"""Fire-and-forget done right: keep a reference to every task, log its failure, and drain on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class TaskSet:
    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run `coro` in the background; the set holds the only reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._name}.{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background_task_failed", task=task.get_name(), error=type(exc).__name__, exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` for the running tasks, then cancel the rest and wait for them to end."""
        if not self._tasks:
            return
        pending = set(self._tasks)
        _done, still = await asyncio.wait(pending, timeout=timeout)
        for task in still:
            task.cancel()
        if still:
            log.warning("background_tasks_cancelled", count=len(still), group=self._name)
            await asyncio.gather(*still, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Wait until no task is running (tests; tasks spawned meanwhile are waited for too)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
