"""Transactional outbox: an event is written in the same transaction as the state change,
then relayed to JetStream. A crash between commit and publish loses nothing: the relay
finds the row on the next start and publishes it (the Nats-Msg-Id de-duplicates a publish
that happened just before a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import Envelope
from services.kit.bus import Bus
from services.kit.db import Database, driver
from services.kit.tracing import inject_headers

log = structlog.get_logger(__name__)


def outbox_insert(first: int) -> str:
    """The statement staging one event, its parameters numbered from ``$first``: to put in a
    CTE of a hot path's own statement, with ``staged(event)`` as those parameters, so staging
    the event costs no round trip of its own."""
    params = ", ".join(f"${first + i}" for i in range(4))
    return f"INSERT INTO outbox (event_id, subject, payload, headers) VALUES ({params})"


def outbox_insert_many(first: int) -> str:
    """Like ``outbox_insert`` for many events at once: its parameters, numbered from
    ``$first``, are four arrays (the columns of ``staged(event)`` for each event), and the
    rows keep the arrays' order (so the relay publishes them in that order)."""
    e, s, p, h = (f"${first + i}" for i in range(4))
    return ("INSERT INTO outbox (event_id, subject, payload, headers) SELECT e, s, p, h FROM"
            f" unnest({e}::uuid[], {s}::text[], {p}::bytea[], {h}::jsonb[])"
            " WITH ORDINALITY AS u(e, s, p, h, i) ORDER BY i")


def staged(event: Envelope) -> tuple[object, ...]:
    """The parameters of ``outbox_insert`` for ``event``."""
    return (event.event_id, event.SUBJECT, event.model_dump_json().encode(),
            json.dumps(inject_headers({})))


class Outbox:
    def __init__(self, db: Database, bus: Bus, *, poll_s: float = 0.5, batch: int = 100) -> None:
        self._db = db
        self._bus = bus
        self._poll_s = poll_s
        self._batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._publishing: asyncio.Task[None] | None = None  # the last publish_soon
        self._marking: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def add(self, session: AsyncSession, event: Envelope) -> None:
        """Stage ``event`` in the caller's transaction; published after it commits."""
        await (await driver(session)).execute(outbox_insert(1), *staged(event))

    def publish_soon(self, rows: Sequence[Sequence[Any]]) -> None:
        """Publish rows (``staged(event)``) whose transaction has just committed, at once and
        in the background instead of at the relay's next turn, then mark them published; calls
        are published in call order. If anything fails, the relay publishes them later; a row
        published twice (by both) is one message, since its Nats-Msg-Id (the event id)
        de-duplicates it."""
        if rows:
            self._publishing = asyncio.create_task(self._publish(self._publishing, rows))

    async def _publish(self, before: asyncio.Task[None] | None, rows: Sequence[Sequence[Any]]) -> None:
        if before is not None:
            await asyncio.wait([before])
        try:
            await asyncio.gather(*(self._bus.publish_raw(
                subject, payload, message_id=str(event_id), headers=json.loads(headers))
                for event_id, subject, payload, headers in rows))
        except Exception as exc:
            log.warning("outbox.publish_soon_failed", rows=len(rows),
                        error=f"{type(exc).__name__}: {exc}")
            self.wake()
            return
        # Marking them is off the path of the next publish: until it lands, the relay may
        # publish them again, which the de-duplication absorbs.
        marking = asyncio.create_task(self._mark_published([row[0] for row in rows]))
        self._marking.add(marking)
        marking.add_done_callback(self._marking.discard)

    async def _mark_published(self, event_ids: list[Any]) -> None:
        try:
            async with self._db.autocommit() as pg:
                await pg.execute("UPDATE outbox SET published_at = now()"
                                 " WHERE event_id = ANY($1::uuid[]) AND published_at IS NULL",
                                 event_ids)
        except Exception as exc:
            log.warning("outbox.mark_published_failed", rows=len(event_ids),
                        error=f"{type(exc).__name__}: {exc}")

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._stopping = False
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Finish the batch in flight (never cancel mid-transaction), then stop."""
        if self._publishing is not None:
            await asyncio.wait([self._publishing], timeout=5)
        if self._marking:
            await asyncio.wait(self._marking, timeout=5)
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
        except TimeoutError:
            self._task.cancel()
        self._task = None

    async def relay_once(self) -> int:
        """Publish up to one batch of pending rows; returns how many were published. The rows
        are marked in the same statement that takes them; if a publish fails, the transaction
        rolls back and they stay pending."""
        async with self._db.transaction() as session:
            rows = sorted(await (await driver(session)).fetch(_TAKE, self._batch), key=lambda r: r[0])
            # All at once, each awaiting its ack: written to the connection in row order, so the
            # stream keeps that order, but one ack's round trip is paid per batch, not per row.
            await asyncio.gather(*(self._bus.publish_raw(
                subject, bytes(payload), message_id=str(event_id), headers=json.loads(headers))
                for _, event_id, subject, payload, headers in rows))
        # Rows beyond this batch are relayed right away (the loop runs while batches are full).
        self._bus.metrics.outbox_pending.set(max(len(rows) - self._batch, 0))
        return len(rows)

    async def _run(self) -> None:
        while not self._stopping:
            # Cleared before relaying: a commit that wakes us while a batch is in flight (its
            # rows too late for that batch) makes the loop go round again at once.
            self._wake.clear()
            try:
                while await self.relay_once() == self._batch:
                    pass
            except Exception as exc:
                log.error("outbox.relay_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)


_TAKE = """
UPDATE outbox SET published_at = now()
WHERE id IN (SELECT id FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1
             FOR UPDATE SKIP LOCKED)
RETURNING id, event_id, subject, payload, headers::text
"""
