"""Agent runs and their steps: the timeline ``aicloud agents trace`` shows.

A step is keyed within its run (``3:llm``, ``3:tool:call_7``), so an activity retried after a
crash records its step once.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


async def start(session: AsyncSession, *, run_id: str, team: str, agent: str, model: str, task: str) -> bool:
    """Record a new run; False when that run id exists already."""
    result = await session.execute(
        text(
            "INSERT INTO agent_runs (run_id, team, agent, model, task) VALUES (:r, :t, :a, :m, :k)"
            " ON CONFLICT (run_id) DO NOTHING"
        ),
        {"r": run_id, "t": team, "a": agent, "m": model, "k": task},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def step(
    session: AsyncSession,
    *,
    run_id: str,
    key: str,
    kind: str,
    name: str = "",
    status: str = "ok",
    duration_ms: float | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await session.execute(
        text(
            "INSERT INTO agent_steps (run_id, key, kind, name, status, duration_ms, detail)"
            " VALUES (:r, :k, :kind, :n, :s, :d, CAST(:detail AS JSONB)) ON CONFLICT DO NOTHING"
        ),
        {
            "r": run_id,
            "k": key,
            "kind": kind,
            "n": name,
            "s": status,
            "d": duration_ms,
            "detail": json.dumps(detail or {}, default=str),
        },
    )


async def finish(
    session: AsyncSession,
    *,
    run_id: str,
    status: str,
    reason: str,
    steps: int,
    cost_usd: float,
    answer: str | None,
    at: datetime,
) -> None:
    await session.execute(
        text(
            "UPDATE agent_runs SET status = :s, reason = :r, steps = :n, cost_usd = :c, answer = :a,"
            " finished_at = :at WHERE run_id = :id"
        ),
        {"s": status, "r": reason, "n": steps, "c": cost_usd, "a": answer, "at": at, "id": run_id},
    )


async def get(session: AsyncSession, *, team: str, run_id: str) -> dict[str, Any] | None:
    row = await session.execute(
        text(
            "SELECT run_id, team, agent, model, task, status, reason, steps, cost_usd, answer, created_at,"
            " finished_at FROM agent_runs WHERE run_id = :r AND team = :t"
        ),
        {"r": run_id, "t": team},
    )
    found = row.mappings().first()
    return {**found, "cost_usd": float(found["cost_usd"])} if found else None


async def steps(session: AsyncSession, *, run_id: str) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            "SELECT key, kind, name, status, duration_ms, detail, at FROM agent_steps WHERE run_id = :r"
            " ORDER BY seq"
        ),
        {"r": run_id},
    )
    return [dict(r) for r in rows.mappings()]
