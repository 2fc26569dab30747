"""catalog's tables: the jobs the platform knows about."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from services.catalog import registry, workloads_repo
from services.kit.db import Migration

MIGRATIONS = (
    Migration(
        1,
        "jobs",
        (
            """CREATE TABLE jobs (
                job_id TEXT PRIMARY KEY,
                team TEXT NOT NULL,
                status TEXT NOT NULL,
                reason TEXT NOT NULL DEFAULT '',
                request JSONB NOT NULL,
                result JSONB NOT NULL DEFAULT '{}'::jsonb,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
            "CREATE INDEX jobs_team ON jobs (team, created_at DESC)",
        ),
    ),
    Migration(
        2,
        "team api keys (hashed)",
        (
            """CREATE TABLE api_keys (
                key_id TEXT PRIMARY KEY,
                team TEXT NOT NULL,
                key_hash TEXT NOT NULL UNIQUE,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                revoked_at TIMESTAMPTZ)""",
        ),
    ),
    Migration(3, "model registry with lineage and aliases", registry.MIGRATION_STATEMENTS),
    Migration(4, "endpoints and notebooks (read model)", workloads_repo.MIGRATION_STATEMENTS),
    Migration(5, "job status 'started' is now 'running' (with 'provisioning' before it); each "
                 "job keeps the history of its statuses",
              ("UPDATE jobs SET status = 'running' WHERE status = 'started'",
               "ALTER TABLE jobs ADD COLUMN history JSONB NOT NULL DEFAULT '[]'::jsonb",
               "UPDATE jobs SET history = jsonb_build_array(jsonb_build_object("
               "'status', status, 'at', updated_at, 'reason', reason))")),
)


class JobPublic(SQLModel):
    job_id: str
    team: str
    status: str
    reason: str = ""
    request: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(
        default_factory=list, description="Every status the job went through: status, at, reason.")
    created_at: datetime
    updated_at: datetime


async def insert_job(session: AsyncSession, *, job_id: str, team: str, request: dict[str, Any]) -> bool:
    """Insert a new job; False when the id is already taken."""
    inserted = await session.execute(
        text(
            "INSERT INTO jobs (job_id, team, status, request, history)"
            " VALUES (:j, :t, 'requested', CAST(:r AS JSONB),"
            "  jsonb_build_array(jsonb_build_object('status', 'requested', 'at', now(), 'reason', '')))"
            " ON CONFLICT (job_id) DO NOTHING RETURNING 1"
        ),
        {"j": job_id, "t": team, "r": json.dumps(request)},
    )
    return inserted.first() is not None


async def get_request(session: AsyncSession, *, job_id: str) -> dict[str, Any]:
    row = await session.execute(text("SELECT request FROM jobs WHERE job_id = :j"), {"j": job_id})
    return dict(row.scalar_one())


async def get_status(session: AsyncSession, *, job_id: str) -> str | None:
    row = await session.execute(
        text("SELECT status FROM jobs WHERE job_id = :j FOR UPDATE"), {"j": job_id}
    )
    return row.scalar_one_or_none()


async def set_status(
    session: AsyncSession, *, job_id: str, status: str, reason: str = "",
    result: dict[str, Any] | None = None,
) -> None:
    await session.execute(
        text(
            "UPDATE jobs SET status = :s, reason = CASE WHEN :why = '' THEN reason ELSE :why END,"
            " result = result || CAST(:res AS JSONB), updated_at = now(),"
            " history = CASE WHEN status = :s THEN history ELSE history || jsonb_build_array("
            "   jsonb_build_object('status', CAST(:s AS TEXT), 'at', now(), 'reason', CAST(:why AS TEXT)))"
            " END WHERE job_id = :j"
        ),
        {"j": job_id, "s": status, "why": reason, "res": json.dumps(result or {})},
    )


async def get_job(session: AsyncSession, *, job_id: str, team: str) -> JobPublic | None:
    row = (
        await session.execute(
            text("SELECT * FROM jobs WHERE job_id = :j AND team = :t"), {"j": job_id, "t": team}
        )
    ).mappings().first()
    return JobPublic.model_validate(dict(row)) if row else None


async def list_jobs(session: AsyncSession, *, team: str, limit: int) -> list[JobPublic]:
    rows = (
        await session.execute(
            text("SELECT * FROM jobs WHERE team = :t ORDER BY created_at DESC LIMIT :n"),
            {"t": team, "n": limit},
        )
    ).mappings().all()
    return [JobPublic.model_validate(dict(row)) for row in rows]
