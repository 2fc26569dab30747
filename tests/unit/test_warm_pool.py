"""The warm pool's shutdown: a start under way is waited for, and then the pool stops at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.agent_runtime.pool import WarmPool

pytestmark = pytest.mark.unit


class FakeBox:
    def __init__(self, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id

    def alive(self) -> bool:
        return True


async def test_closing_while_a_start_is_under_way_returns_that_box_without_waiting_out_a_timeout() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def start(sandbox_id: str) -> FakeBox:
        started.set()
        await release.wait()
        return FakeBox(sandbox_id)

    pool = WarmPool("python", 1, start)  # type: ignore[arg-type]
    pool.run()
    await asyncio.wait_for(started.wait(), 5)
    closing = asyncio.create_task(pool.close())
    await asyncio.sleep(0.05)
    assert not closing.done(), "a start under way is waited for, not cancelled"
    release.set()
    # before the fix the refill loop cleared the close's wake-up and slept until close's 30 s timeout
    # (close suppresses a cancellation, so asyncio.wait_for cannot tell: the time it took can)
    began = time.monotonic()
    boxes = await closing
    assert time.monotonic() - began < 10, "close waited out its timeout"
    assert [type(box) for box in boxes] == [FakeBox]
