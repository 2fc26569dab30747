"""Watchers tell long-lived workflows what happens in their sandboxes: a poll loop that
outlives any one bad poll (``endpoints/watch.py``, ``notebooks/watch.py``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)
POLL_S = 0.5

Signal = Callable[[str, str, Any], Awaitable[None]]
"""(workflow id, signal name, argument)"""


class Watcher:
    """Polls every POLL_S until stopped; a failed poll is logged and the next one runs."""

    NAME = "watcher"
    POLL_S = POLL_S

    def __init__(self, signal: Signal | None = None) -> None:
        """``signal``: how it tells workflows; a watcher that only publishes has none."""
        self._signal = signal or _no_signal
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.NAME)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def poll(self) -> None:
        raise NotImplementedError

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # a watcher must outlive any one bad poll
                log.exception("watch_failed", watcher=self.NAME)
            await asyncio.sleep(self.POLL_S)


async def _no_signal(workflow_id: str, name: str, arg: Any) -> None:
    raise TypeError(f"this watcher was given no way to signal workflows ({name} to {workflow_id})")
