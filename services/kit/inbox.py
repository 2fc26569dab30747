"""Idempotent consumption: the inbox row and the handler's state change share one transaction.

A redelivered or duplicated event (same ``event_id``) finds its inbox row and is acked
without running the handler again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
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

    def wrap(self, handler: Handler[E], *, locks: LockKeys | None = None) -> Process:
        """``locks``: advisory lock keys (strings) to take, in order, before the handler runs,
        held until its transaction ends; taken in the inbox's own statement, so serialising
        handlers costs no extra round trip. The handler's reads then see what the previous
        holder committed (they are later statements, with later snapshots)."""
        async def process(event: Envelope, delivery: Delivery) -> None:
            async with self._db.transaction() as session:
                pg = await driver(session)
                if locks is None:
                    first = await pg.fetchval(_INBOX, delivery.consumer, event.event_id,
                                              delivery.subject)
                else:
                    first = await pg.fetchval(_INBOX_LOCKED, delivery.consumer, event.event_id,
                                              delivery.subject, list(locks(event)))
                if not first:
                    return
                await handler(event, UnitOfWork(session, self._outbox, delivery))  # type: ignore[arg-type]
            self._outbox.wake()

        return process


LockKeys = Callable[[E], Sequence[str]]

_INBOX = ("INSERT INTO inbox (consumer, event_id, subject) VALUES ($1, $2, $3)"
          " ON CONFLICT DO NOTHING RETURNING 1")
# The keys' locks in the given order (an ordered subquery, scanned in order by the aggregate).
_INBOX_LOCKED = (
    f"WITH first AS ({_INBOX}), locked AS ("
    " SELECT count(pg_advisory_xact_lock(hashtext(k))) AS n"
    " FROM (SELECT k FROM unnest($4::text[]) WITH ORDINALITY AS u(k, i) ORDER BY i) AS keys)"
    " SELECT (SELECT count(*) FROM first) FROM locked"
)


async def processed_count(db: Database, *, consumer: str) -> int:
    async with db.transaction() as session:
        result = await session.execute(
            text("SELECT count(*) FROM inbox WHERE consumer = :c"), {"c": consumer}
        )
        return int(result.scalar_one())
