"""A whole fetch at a time, for high-volume idempotent ingestion (one transaction per batch).

Batches are handled one after the other, in order. Invalid messages are dead-lettered before
the handler sees the batch; a failing batch is retried message by message like any handler
failure, and a handler may raise ``PartialFailure`` to have only some messages retried.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from services.kit.pull import Feed, delivery_count
from services.kit.settle import Settler
from services.kit.subscription import BatchSubscription, Delivery, PartialFailure

log = structlog.get_logger(__name__)

# A top-up only takes what is already there: the linger was the wait.
TOP_UP_WAIT_S = 0.05


class BatchConsumer:
    """The loop behind one :class:`BatchSubscription`."""

    def __init__(self, sub: BatchSubscription, feed: Feed, settler: Settler) -> None:
        self.sub, self.feed, self.settler = sub, feed, settler

    async def run(self) -> None:
        """A slot is taken before fetching: at most ``ahead`` batches are fetched (and
        decoded) while one is processed, and what arrives meanwhile waits in the puller to
        join the next batch, rather than queueing as many small batches that each pay a whole
        transaction (or waiting behind one fetched too early)."""
        slots = asyncio.Semaphore(1 + self.sub.ahead)
        tail: asyncio.Task[None] | None = None
        try:
            while self.feed.running:
                await slots.acquire()
                messages = await self.feed.next()
                if not messages:
                    slots.release()
                    continue
                messages += await self._top_up(len(messages))
                tail = asyncio.create_task(self._dispatch(messages, tail, slots))
        finally:
            if tail is not None:
                await asyncio.gather(tail, return_exceptions=True)

    async def _top_up(self, have: int) -> list[Msg]:
        """A short fetch means the consumer has caught up: wait ``linger_s`` and top it up
        once, so a trickle costs one batch per ``linger_s`` instead of one per event."""
        wanted = self.feed.size - have
        if not self.sub.linger_s or wanted <= 0:
            return []
        await asyncio.sleep(self.sub.linger_s)
        try:
            return await self.feed.pull.fetch(wanted, wait_s=TOP_UP_WAIT_S)
        except NatsError:
            return []  # the next regular fetch says what is wrong

    async def _dispatch(self, messages: list[Msg], before: asyncio.Task[None] | None,
                        slots: asyncio.Semaphore) -> None:
        """Decode this batch (while the one before is still processed), then process it."""
        try:
            valid: list[tuple[Any, Msg]] = []
            for msg in messages:
                event = await self.settler.decoded(self.sub, msg)
                if event is not None:
                    valid.append((event, msg))
            if before is not None:
                await asyncio.wait([before])
            if valid:
                await self._process(valid)
        finally:
            slots.release()

    async def _process(self, valid: list[tuple[Any, Msg]]) -> None:
        started = time.perf_counter()
        failed: dict[int, Exception] = {}
        try:
            refused = await self.sub.process_batch(self._arguments(valid))
        except PartialFailure as partial:
            refused, failed = {}, partial.failed
        except Exception as exc:
            log.warning("bus.batch_failed", consumer=self.sub.durable, size=len(valid),
                        error=str(exc))
            for _, msg in valid:
                await self.settler.retry_or_dead_letter(self.sub, msg, delivery_count(msg), exc)
            return
        await self.settler.settle_batch(self.sub, [msg for _, msg in valid], refused=refused,
                                        failed=failed, started=started)

    def _arguments(self, valid: list[tuple[Any, Msg]]) -> list[Any]:
        """The events, or (event, Delivery) pairs with each message's headers (its trace
        context) when the subscription asked for deliveries."""
        if not self.sub.with_deliveries:
            return [event for event, _ in valid]
        unwire, durable = self.settler.unwire, self.sub.durable
        return [(event, Delivery(unwire(msg.subject), dict(msg.headers or {}),
                                 delivery_count(msg), durable)) for event, msg in valid]
