"""Transactional outbox: an event is written in the same transaction as the state change,
then relayed to JetStream. A crash between commit and publish loses nothing: the relay
finds the row on the next start and publishes it (the Nats-Msg-Id de-duplicates a publish
that happened just before a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import structlog
from sqlalchemy import text
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
        self._stopping = False

    async def add(self, session: AsyncSession, event: Envelope) -> None:
        """Stage ``event`` in the caller's transaction; published after it commits."""
        await (await driver(session)).execute(outbox_insert(1), *staged(event))

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._stopping = False
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Finish the batch in flight (never cancel mid-transaction), then stop."""
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
        """Publish up to one batch of pending rows; returns how many were published."""
        async with self._db.transaction() as session:
            rows = (
                await session.execute(
                    text(
                        "SELECT id, event_id, subject, payload, headers FROM outbox"
                        " WHERE published_at IS NULL ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"
                    ),
                    {"n": self._batch},
                )
            ).all()
            # All at once, each awaiting its ack: written to the connection in row order, so the
            # stream keeps that order, but one ack's round trip is paid per batch, not per row.
            await asyncio.gather(*(self._bus.publish_raw(
                row.subject, bytes(row.payload), message_id=str(row.event_id),
                headers=dict(row.headers)) for row in rows))
            if rows:
                await session.execute(
                    text("UPDATE outbox SET published_at = now() WHERE id = ANY(:ids)"),
                    {"ids": [row.id for row in rows]},
                )
        # Rows beyond this batch are relayed right away (the loop runs while batches are full).
        self._bus.metrics.outbox_pending.set(max(len(rows) - self._batch, 0))
        return len(rows)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                while await self.relay_once() == self._batch:
                    pass
            except Exception as exc:
                log.error("outbox.relay_failed", error=f"{type(exc).__name__}: {exc}")
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
