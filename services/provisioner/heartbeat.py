"""Heartbeats around an activity's slow step, so a dead worker is noticed in seconds (the
workflow's heartbeat timeout) rather than after the whole start-to-close timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")
EVERY_S = 1.0


async def heartbeating(step: Awaitable[T], every_s: float | Callable[[], float] = EVERY_S) -> T:
    """Await ``step``, heartbeating every ``every_s`` meanwhile (a no-op outside an activity);
    a callable is asked before each wait. Cancelling this cancels ``step``."""
    task = asyncio.ensure_future(step)
    try:
        while not task.done():
            if activity.in_activity():
                activity.heartbeat()
            await asyncio.wait([task], timeout=every_s() if callable(every_s) else every_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    return task.result()
