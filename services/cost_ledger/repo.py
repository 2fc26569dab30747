"""cost-ledger's tables: append-only metered usage. Corrections are new rows, never updates."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import InferenceCompleted, UsageRecorded
from services.cost_ledger.domain import billable_gpu_seconds, duration_seconds
from services.kit.db import Migration

MIGRATIONS = (
    Migration(
        1,
        "metered usage",
        (
            """CREATE TABLE usage_entries (
                event_id UUID PRIMARY KEY,
                team TEXT NOT NULL,
                kind TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                gpu_type TEXT,
                gpu_seconds DOUBLE PRECISION NOT NULL,
                duration_s DOUBLE PRECISION NOT NULL,
                started_at TIMESTAMPTZ NOT NULL,
                ended_at TIMESTAMPTZ NOT NULL,
                recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
            "CREATE INDEX usage_entries_team ON usage_entries (team, started_at)",
            """CREATE TABLE inference_entries (
                event_id UUID PRIMARY KEY,
                team TEXT NOT NULL,
                model TEXT NOT NULL,
                target TEXT NOT NULL,
                tokens_in INT NOT NULL,
                tokens_out INT NOT NULL,
                status TEXT NOT NULL,
                occurred_at TIMESTAMPTZ NOT NULL)""",
        ),
    ),
    Migration(2, "price class of metered usage",
              ("ALTER TABLE usage_entries ADD COLUMN price_class TEXT NOT NULL DEFAULT 'on-demand'",)),
)


async def append_usage(session: AsyncSession, usage: UsageRecorded) -> None:
    await session.execute(
        text(
            "INSERT INTO usage_entries (event_id, team, kind, resource_id, gpu_type, price_class,"
            " gpu_seconds, duration_s, started_at, ended_at)"
            " VALUES (:e, :t, :k, :r, :g, :pc, :gs, :d, :s, :end)"
            " ON CONFLICT (event_id) DO NOTHING"
        ),
        {
            "e": usage.event_id, "t": usage.tenant, "k": usage.kind, "r": usage.resource_id,
            "g": usage.gpu_type, "pc": usage.price_class, "gs": billable_gpu_seconds(usage),
            "d": duration_seconds(usage),
            "s": usage.started_at, "end": usage.ended_at,
        },
    )


async def append_inference(session: AsyncSession, event: InferenceCompleted) -> None:
    await session.execute(
        text(
            "INSERT INTO inference_entries (event_id, team, model, target, tokens_in, tokens_out,"
            " status, occurred_at) VALUES (:e, :t, :m, :tg, :i, :o, :s, :at)"
            " ON CONFLICT (event_id) DO NOTHING"
        ),
        {
            "e": event.event_id, "t": event.tenant, "m": event.model, "tg": event.target,
            "i": event.tokens_in, "o": event.tokens_out, "s": event.status, "at": event.occurred_at,
        },
    )
