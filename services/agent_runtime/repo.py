"""agent-runtime's tables: sandboxes and their lifecycle (agent runs and state have their own)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

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
    Migration(
        2,
        "sandbox lifecycle",
        (
            "ALTER TABLE sandboxes ADD COLUMN isolation TEXT",
            "ALTER TABLE sandboxes ADD COLUMN deadline TIMESTAMPTZ",
            "ALTER TABLE sandboxes ADD COLUMN allow_hosts TEXT[] NOT NULL DEFAULT '{}'",
            "ALTER TABLE sandboxes ADD COLUMN deleted_at TIMESTAMPTZ",
            "ALTER TABLE sandboxes ADD COLUMN reason TEXT",
            "CREATE INDEX sandboxes_live ON sandboxes (team) WHERE status = 'running'",
        ),
    ),
    Migration(
        3,
        "agent runs and their steps",
        (
            """CREATE TABLE agent_runs (
                run_id TEXT PRIMARY KEY,
                team TEXT NOT NULL,
                agent TEXT NOT NULL,
                model TEXT NOT NULL,
                task TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'running',
                reason TEXT,
                steps INT NOT NULL DEFAULT 0,
                cost_usd NUMERIC(18, 8) NOT NULL DEFAULT 0,
                answer TEXT,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                finished_at TIMESTAMPTZ)""",
            """CREATE TABLE agent_steps (
                run_id TEXT NOT NULL REFERENCES agent_runs (run_id),
                key TEXT NOT NULL,
                seq BIGSERIAL,
                kind TEXT NOT NULL,
                name TEXT NOT NULL DEFAULT '',
                status TEXT NOT NULL DEFAULT 'ok',
                duration_ms DOUBLE PRECISION,
                detail JSONB NOT NULL DEFAULT '{}'::jsonb,
                at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (run_id, key))""",
        ),
    ),
)


async def record_request(session: AsyncSession, *, sandbox_id: str, team: str, template: str,
                         requested_at: datetime, expires_at: datetime) -> bool:
    """A sandbox asked for; False when that id is known already (a redelivered command)."""
    result = await session.execute(
        text(
            "INSERT INTO sandboxes (sandbox_id, team, template, status, expires_at, requested_at)"
            " VALUES (:s, :t, :tpl, 'pending', :exp, :at) ON CONFLICT (sandbox_id) DO NOTHING"
        ),
        {"s": sandbox_id, "t": team, "tpl": template, "exp": expires_at, "at": requested_at},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def record_running(session: AsyncSession, *, sandbox_id: str, team: str, template: str,
                         isolation: str, expires_at: datetime, deadline: datetime,
                         allow_hosts: list[str]) -> None:
    await session.execute(
        text(
            "INSERT INTO sandboxes (sandbox_id, team, template, status, expires_at, isolation, deadline,"
            " allow_hosts) VALUES (:s, :t, :tpl, 'running', :exp, :iso, :dl, :hosts)"
            " ON CONFLICT (sandbox_id) DO UPDATE SET status = 'running', isolation = :iso,"
            " expires_at = :exp, deadline = :dl, allow_hosts = :hosts"
        ),
        {"s": sandbox_id, "t": team, "tpl": template, "exp": expires_at, "iso": isolation,
         "dl": deadline, "hosts": allow_hosts},
    )


async def record_deleted(session: AsyncSession, *, sandbox_id: str, reason: str) -> bool:
    """Mark a sandbox deleted; False when it was already."""
    result = await session.execute(
        text("UPDATE sandboxes SET status = 'deleted', reason = :r, deleted_at = now()"
             " WHERE sandbox_id = :s AND status <> 'deleted'"),
        {"s": sandbox_id, "r": reason},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def orphaned(session: AsyncSession) -> list[tuple[str, str]]:
    """(sandbox id, team) of every sandbox a previous run left running or pending."""
    rows = await session.execute(
        text("UPDATE sandboxes SET status = 'deleted', reason = 'runtime_restarted', deleted_at = now()"
             " WHERE status IN ('running', 'pending') RETURNING sandbox_id, team")
    )
    return [(r.sandbox_id, r.team) for r in rows]


async def find(session: AsyncSession, *, team: str, sandbox_id: str) -> dict[str, Any] | None:
    row = await session.execute(
        text("SELECT sandbox_id, team, template, status, isolation, expires_at, deadline, allow_hosts,"
             " requested_at AS created_at, deleted_at, reason FROM sandboxes"
             " WHERE sandbox_id = :s AND team = :t"),
        {"s": sandbox_id, "t": team},
    )
    found = row.mappings().first()
    return dict(found) if found else None
