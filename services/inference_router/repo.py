"""inference-router's tables: platform endpoints it may route to, teams blocked by budget,
virtual keys."""

from __future__ import annotations

from decimal import Decimal

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
    Migration(
        2,
        "virtual keys; what an exhausted budget was",
        (
            """CREATE TABLE virtual_keys (
                key_id TEXT PRIMARY KEY,
                key_hash TEXT NOT NULL UNIQUE,
                spec JSONB NOT NULL,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                revoked_at TIMESTAMPTZ)""",
            "ALTER TABLE budget_blocks ADD COLUMN spent_usd NUMERIC NOT NULL DEFAULT 0",
            "ALTER TABLE budget_blocks ADD COLUMN amount_usd NUMERIC NOT NULL DEFAULT 0",
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
                     action: str, spent_usd: Decimal, amount_usd: Decimal) -> None:
    await session.execute(
        text(
            "INSERT INTO budget_blocks (team, budget_id, period, action, spent_usd, amount_usd)"
            " VALUES (:t, :b, :p, :a, :s, :m) ON CONFLICT DO NOTHING"
        ),
        {"t": team, "b": budget_id, "p": period, "a": action, "s": spent_usd, "m": amount_usd},
    )


async def endpoint_targets(session: AsyncSession) -> list[tuple[str, str, str, str]]:
    """(endpoint, team, version, url) of every ready platform endpoint version."""
    rows = await session.execute(text("SELECT endpoint, team, version, url FROM endpoint_targets"))
    return [(r.endpoint, r.team, r.version, r.url) for r in rows]


async def budget_blocks(session: AsyncSession, *, period: str
                        ) -> list[tuple[str, str, str, str, Decimal, Decimal]]:
    """(team, budget_id, period, action, spent, amount) of each team blocked in ``period``."""
    rows = await session.execute(
        text("SELECT team, budget_id, period, action, spent_usd, amount_usd FROM budget_blocks"
             " WHERE period = :p"), {"p": period})
    return [(r.team, r.budget_id, r.period, r.action, r.spent_usd, r.amount_usd) for r in rows]


async def unblock_team(session: AsyncSession, *, team: str, period: str) -> None:
    await session.execute(text("DELETE FROM budget_blocks WHERE team = :t AND period = :p"),
                          {"t": team, "p": period})
