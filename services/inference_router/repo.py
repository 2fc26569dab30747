"""inference-router's tables: platform endpoints it may route to, teams blocked by budget."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.kit.db import Migration

MIGRATIONS = (
    Migration(
        1,
        "targets and budget blocks",
        (
            """CREATE TABLE endpoint_targets (
                endpoint TEXT NOT NULL,
                version TEXT NOT NULL,
                team TEXT NOT NULL,
                model TEXT NOT NULL,
                url TEXT NOT NULL,
                ready_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (endpoint, version))""",
            """CREATE TABLE budget_blocks (
                team TEXT NOT NULL,
                budget_id TEXT NOT NULL,
                period TEXT NOT NULL,
                action TEXT NOT NULL,
                blocked_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (team, budget_id, period))""",
        ),
    ),
)


async def upsert_target(session: AsyncSession, *, endpoint: str, version: str, team: str,
                        model: str, url: str) -> None:
    await session.execute(
        text(
            "INSERT INTO endpoint_targets (endpoint, version, team, model, url)"
            " VALUES (:e, :v, :t, :m, :u) ON CONFLICT (endpoint, version)"
            " DO UPDATE SET url = EXCLUDED.url, model = EXCLUDED.model, ready_at = now()"
        ),
        {"e": endpoint, "v": version, "t": team, "m": model, "u": url},
    )


async def remove_target(session: AsyncSession, *, endpoint: str, version: str) -> None:
    await session.execute(
        text("DELETE FROM endpoint_targets WHERE endpoint = :e AND version = :v"),
        {"e": endpoint, "v": version},
    )


async def block_team(session: AsyncSession, *, team: str, budget_id: str, period: str,
                     action: str) -> None:
    await session.execute(
        text(
            "INSERT INTO budget_blocks (team, budget_id, period, action) VALUES (:t, :b, :p, :a)"
            " ON CONFLICT DO NOTHING"
        ),
        {"t": team, "b": budget_id, "p": period, "a": action},
    )
