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
from services.kit.db import Database
from services.kit.tracing import inject_headers

log = structlog.get_logger(__name__)


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
        await session.execute(
            text(
                "INSERT INTO outbox (event_id, subject, payload, headers)"
                " VALUES (:e, :s, :p, CAST(:h AS JSONB))"
            ),
            {
                "e": event.event_id,
                "s": event.SUBJECT,
                "p": event.model_dump_json().encode(),
                "h": json.dumps(inject_headers({})),
            },
        )

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
            for row in rows:
                await self._bus.publish_raw(
                    row.subject, bytes(row.payload), message_id=str(row.event_id),
                    headers=dict(row.headers),
                )
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
