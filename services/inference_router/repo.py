"""inference-router's tables: platform endpoints it may route to (ready versions, or dormant
ones it must wake), teams blocked by budget, virtual keys."""

from __future__ import annotations

import json
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.inference_router.endpoints import Dormant, Serving
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
    Migration(
        3,
        "platform endpoints: kind, quota, dormancy; replicas and weight per version",
        (
            "ALTER TABLE endpoint_targets ADD COLUMN replicas JSONB NOT NULL DEFAULT '[]'",
            "ALTER TABLE endpoint_targets ADD COLUMN weight INTEGER NOT NULL DEFAULT 100",
            """CREATE TABLE platform_endpoints (
                endpoint TEXT PRIMARY KEY,
                team TEXT NOT NULL,
                model TEXT NOT NULL,
                kind TEXT NOT NULL DEFAULT 'chat',
                rpm_limit INTEGER,
                tpm_limit INTEGER,
                dormant_since TIMESTAMPTZ,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
            # endpoints that were ready before this migration keep being routed to after it
            """INSERT INTO platform_endpoints (endpoint, team, model)
               SELECT DISTINCT ON (endpoint) endpoint, team, model FROM endpoint_targets
               ORDER BY endpoint, ready_at DESC""",
        ),
    ),
)


async def endpoint_ready(session: AsyncSession, *, endpoint: str, model: str,
                         serving: Serving) -> None:
    await session.execute(
        text("INSERT INTO platform_endpoints (endpoint, team, model, kind, rpm_limit, tpm_limit)"
             " VALUES (:e, :t, :m, :k, :r, :p) ON CONFLICT (endpoint) DO UPDATE SET"
             " team = EXCLUDED.team, model = EXCLUDED.model, kind = EXCLUDED.kind,"
             " rpm_limit = EXCLUDED.rpm_limit, tpm_limit = EXCLUDED.tpm_limit,"
             " dormant_since = NULL, updated_at = now()"),
        {"e": endpoint, "t": serving.team, "m": model, "k": serving.kind,
         "r": serving.rpm_limit, "p": serving.tpm_limit})
    await session.execute(
        text("INSERT INTO endpoint_targets (endpoint, version, team, model, url, replicas, weight)"
             " VALUES (:e, :v, :t, :m, :u, CAST(:r AS JSONB), :w) ON CONFLICT (endpoint, version)"
             " DO UPDATE SET url = EXCLUDED.url, model = EXCLUDED.model, replicas = EXCLUDED.replicas,"
             " weight = EXCLUDED.weight, ready_at = now()"),
        {"e": endpoint, "v": serving.version, "t": serving.team, "m": model, "u": serving.url,
         "r": json.dumps(list(serving.replicas)), "w": serving.weight})


async def endpoint_retired(session: AsyncSession, *, endpoint: str, version: str,
                           dormant: bool) -> None:
    """The same rule as ``EndpointTable.retired``: the last version takes its endpoint along,
    unless it went because the endpoint scaled to zero."""
    removed = await session.execute(
        text("DELETE FROM endpoint_targets WHERE endpoint = :e AND version = :v RETURNING 1"),
        {"e": endpoint, "v": version})
    if removed.first() is None or await _has_targets(session, endpoint):
        return
    if dormant:
        await session.execute(text("UPDATE platform_endpoints SET dormant_since = now(),"
                                   " updated_at = now() WHERE endpoint = :e"), {"e": endpoint})
    else:
        await session.execute(text("DELETE FROM platform_endpoints WHERE endpoint = :e"),
                              {"e": endpoint})


async def endpoint_scaled_to_zero(session: AsyncSession, *, endpoint: str, team: str, model: str,
                                  kind: str) -> None:
    await session.execute(text("DELETE FROM endpoint_targets WHERE endpoint = :e"), {"e": endpoint})
    await session.execute(
        text("INSERT INTO platform_endpoints (endpoint, team, model, kind, dormant_since)"
             " VALUES (:e, :t, :m, :k, now()) ON CONFLICT (endpoint) DO UPDATE SET"
             " team = EXCLUDED.team, kind = EXCLUDED.kind, updated_at = now(),"
             " dormant_since = COALESCE(platform_endpoints.dormant_since, now())"),
        {"e": endpoint, "t": team, "m": model, "k": kind})


async def endpoint_deleted(session: AsyncSession, *, endpoint: str) -> None:
    await session.execute(text("DELETE FROM endpoint_targets WHERE endpoint = :e"), {"e": endpoint})
    await session.execute(text("DELETE FROM platform_endpoints WHERE endpoint = :e"), {"e": endpoint})


async def _has_targets(session: AsyncSession, endpoint: str) -> bool:
    rows = await session.execute(text("SELECT 1 FROM endpoint_targets WHERE endpoint = :e LIMIT 1"),
                                 {"e": endpoint})
    return rows.first() is not None


async def block_team(session: AsyncSession, *, team: str, budget_id: str, period: str,
                     action: str, spent_usd: Decimal, amount_usd: Decimal) -> None:
    await session.execute(
        text(
            "INSERT INTO budget_blocks (team, budget_id, period, action, spent_usd, amount_usd)"
            " VALUES (:t, :b, :p, :a, :s, :m) ON CONFLICT DO NOTHING"
        ),
        {"t": team, "b": budget_id, "p": period, "a": action, "s": spent_usd, "m": amount_usd},
    )


async def platform_endpoints(session: AsyncSession) -> list[tuple[str, Serving | None, Dormant]]:
    """Every known platform endpoint: (name, one ready version or None when dormant, what it
    is); an endpoint with several versions comes once per version."""
    rows = await session.execute(text(
        "SELECT p.endpoint, p.team, p.kind, p.rpm_limit, p.tpm_limit, t.version, t.url,"
        " t.replicas, t.weight FROM platform_endpoints p"
        " LEFT JOIN endpoint_targets t ON t.endpoint = p.endpoint ORDER BY p.endpoint, t.version"))
    found: list[tuple[str, Serving | None, Dormant]] = []
    for r in rows:
        serving = None if r.version is None else Serving(
            r.team, r.version, r.url, tuple(_json_list(r.replicas)), r.weight, r.kind,
            r.rpm_limit, r.tpm_limit)
        found.append((r.endpoint, serving, Dormant(r.team, r.kind, r.rpm_limit, r.tpm_limit)))
    return found


def _json_list(value: object) -> list[str]:
    decoded = json.loads(value) if isinstance(value, str | bytes) else value
    return [str(v) for v in decoded] if isinstance(decoded, list) else []


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


class SqlRouterStore:
    """``handlers.RouterStore`` on one session."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def endpoint_ready(self, *, endpoint: str, model: str, serving: Serving) -> None:
        await endpoint_ready(self.session, endpoint=endpoint, model=model, serving=serving)

    async def endpoint_retired(self, *, endpoint: str, version: str, dormant: bool) -> None:
        await endpoint_retired(self.session, endpoint=endpoint, version=version, dormant=dormant)

    async def endpoint_scaled_to_zero(self, *, endpoint: str, team: str, model: str, kind: str) -> None:
        await endpoint_scaled_to_zero(self.session, endpoint=endpoint, team=team, model=model, kind=kind)

    async def endpoint_deleted(self, *, endpoint: str) -> None:
        await endpoint_deleted(self.session, endpoint=endpoint)

    async def block_team(self, *, team: str, budget_id: str, period: str, action: str,
                         spent_usd: Decimal, amount_usd: Decimal) -> None:
        await block_team(self.session, team=team, budget_id=budget_id, period=period, action=action,
                         spent_usd=spent_usd, amount_usd=amount_usd)

    async def unblock_team(self, *, team: str, period: str) -> None:
        await unblock_team(self.session, team=team, period=period)
