"""Warm pools of started sandboxes, one per template, and the uids sandboxes run as.

A pooled box has never run anything: it is handed to one team once and never returned, so
nothing crosses from one user to the next. Each box runs as its own uid, which is what makes
RLIMIT_NPROC a per-sandbox process limit rather than a per-machine one.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

from services.kit.sandbox import Box

log = structlog.get_logger(__name__)
UID_BASE, UID_SLOTS = 200_000, 10_000
# A refill waits this long after a hand-over, so the box just handed over runs its first
# command without a sandbox start competing with it for the CPU.
REFILL_DELAY_S = 0.25
Starter = Callable[[str], Awaitable[Box]]


class Uids:
    def __init__(self) -> None:
        self._free = set(range(UID_BASE, UID_BASE + UID_SLOTS))

    def take(self) -> int:
        if not self._free:
            raise RuntimeError("no free sandbox uid: too many sandboxes on this machine")
        return self._free.pop()

    def give_back(self, uid: int) -> None:
        if UID_BASE <= uid < UID_BASE + UID_SLOTS:
            self._free.add(uid)


def new_id() -> str:
    return f"sb-{secrets.token_hex(6)}"


class WarmPool:
    """Keeps ``size`` boxes of one template started; refills in the background."""

    def __init__(self, template: str, size: int, start: Starter) -> None:
        self.template = template
        self.size = size
        self._start = start
        self._ready: deque[Box] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        self._closed = False

    def take(self) -> Box | None:
        while self._ready:
            box = self._ready.popleft()
            self._wake.set()
            if box.alive():
                return box
        self._wake.set()
        return None

    def run(self) -> None:
        if self.size and self._task is None:
            self._task = asyncio.create_task(self._fill(), name=f"pool-{self.template}")

    async def _fill(self) -> None:
        backoff = 0.5
        while not self._closed:
            while len(self._ready) < self.size and not self._closed:
                try:
                    self._ready.append(await self._start(new_id()))
                    backoff = 0.5
                except Exception as exc:  # a broken template must not spin; it is reported
                    self.failures += 1
                    log.error("pool.start_failed", template=self.template, error=str(exc)[:300])
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30)
            if self._closed:  # closed while a start was under way: its wake-up is spent
                break
            self._wake.clear()
            await self._wake.wait()
            await asyncio.sleep(REFILL_DELAY_S)

    async def close(self) -> list[Box]:
        """Stop refilling and give back the ready boxes. A start under way is waited for, not
        cancelled: cancelled, its box would run on with nobody holding it."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, timeout=30)
        boxes, self._ready = list(self._ready), deque()
        return boxes

    @property
    def ready(self) -> int:
        return len(self._ready)
