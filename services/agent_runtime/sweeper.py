"""Deletes expired agent state on an interval (reads refuse expired entries in between)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import structlog

from services.agent_runtime.state import sweep_expired
from services.kit.db import Database

log = structlog.get_logger(__name__)


class Sweeper:
    def __init__(self, db: Database, *, interval_s: float) -> None:
        self._db = db
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="state-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sweep(self) -> int:
        async with self._db.transaction() as session:
            deleted = await sweep_expired(session, now=datetime.now(UTC))
        if deleted:
            log.info("state.swept", deleted=deleted)
        return deleted

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except Exception as exc:  # the next sweep tries again; reads refuse expired entries anyway
                log.error("state.sweep_failed", error=str(exc))
