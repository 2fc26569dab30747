"""agent-runtime's tables: sandbox requests and their state."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.kit.db import Migration

MIGRATIONS = (
    Migration(
        1,
        "sandboxes",
        (
            """CREATE TABLE sandboxes (
                sandbox_id TEXT PRIMARY KEY,
                team TEXT NOT NULL,
                template TEXT NOT NULL,
                status TEXT NOT NULL,
                expires_at TIMESTAMPTZ NOT NULL,
                requested_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
        ),
    ),
)


async def record_request(session: AsyncSession, *, sandbox_id: str, team: str, template: str,
                         requested_at: datetime, ttl_s: int) -> None:
    await session.execute(
        text(
            "INSERT INTO sandboxes (sandbox_id, team, template, status, expires_at)"
            " VALUES (:s, :t, :tpl, 'pending', :exp) ON CONFLICT (sandbox_id) DO NOTHING"
        ),
        {"s": sandbox_id, "t": team, "tpl": template,
         "exp": requested_at + timedelta(seconds=ttl_s)},
    )
