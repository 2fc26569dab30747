"""Idempotent consumption: the inbox row and the handler's state change share one transaction.

A redelivered or duplicated event (same ``event_id``) finds its inbox row and is acked
without running the handler again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import Envelope
from services.kit.bus import Delivery, Process
from services.kit.db import Database, driver
from services.kit.outbox import Outbox

E = TypeVar("E", bound=Envelope)


@dataclass
class UnitOfWork:
    """What a transactional handler gets: the session and the outbox of the same transaction."""

    session: AsyncSession
    outbox: Outbox
    delivery: Delivery | None = None


Handler = Callable[[E, UnitOfWork], Awaitable[None]]


class Inbox(Generic[E]):
    """Wraps a handler so it runs at most once per (consumer, event_id)."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        self._db = db
        self._outbox = outbox

    def wrap(self, handler: Handler[E]) -> Process:
        async def process(event: Envelope, delivery: Delivery) -> None:
            async with self._db.transaction() as session:
                first = await (await driver(session)).fetchval(
                    _CLAIM, delivery.consumer, event.event_id, delivery.subject)
                if first is None:
                    return
                await handler(event, UnitOfWork(session, self._outbox, delivery))  # type: ignore[arg-type]
            self._outbox.wake()

        return process


_CLAIM = ("INSERT INTO inbox (consumer, event_id, subject) VALUES ($1, $2, $3)"
          " ON CONFLICT DO NOTHING RETURNING 1")


async def processed_count(db: Database, *, consumer: str) -> int:
    async with db.transaction() as session:
        result = await session.execute(
            text("SELECT count(*) FROM inbox WHERE consumer = :c"), {"c": consumer}
        )
        return int(result.scalar_one())
