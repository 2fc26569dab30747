"""cost-ledger's tables: append-only ledger lines, an hourly rollup, budgets and their alerts.

A line is never updated: a correction is a new line that reverses it. The rollup
(``spend_hourly``) is maintained in the same statement that inserts lines, from exactly the
lines that were inserted, so a redelivered event (same event id) changes neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.cost_ledger.domain import Budget, Line
from services.kit.db import Migration

DIMENSIONS = ("team", "project", "user_id", "kind", "model", "gpu_type", "resource_id")

MIGRATIONS = (
    Migration(
        1,
        "metered usage",
        (
            """CREATE TABLE usage_entries (
                event_id UUID PRIMARY KEY, team TEXT NOT NULL, kind TEXT NOT NULL,
                resource_id TEXT NOT NULL, gpu_type TEXT, gpu_seconds DOUBLE PRECISION NOT NULL,
                duration_s DOUBLE PRECISION NOT NULL, started_at TIMESTAMPTZ NOT NULL,
                ended_at TIMESTAMPTZ NOT NULL, recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
            """CREATE TABLE inference_entries (
                event_id UUID PRIMARY KEY, team TEXT NOT NULL, model TEXT NOT NULL,
                target TEXT NOT NULL, tokens_in INT NOT NULL, tokens_out INT NOT NULL,
                status TEXT NOT NULL, occurred_at TIMESTAMPTZ NOT NULL)""",
        ),
    ),
    Migration(2, "price class of metered usage",
              ("ALTER TABLE usage_entries ADD COLUMN price_class TEXT NOT NULL DEFAULT 'on-demand'",)),
    Migration(
        3,
        "priced ledger lines, hourly rollup, budgets (replacing the unpriced metering tables)",
        (
            "DROP TABLE usage_entries",
            "DROP TABLE inference_entries",
            """CREATE TABLE ledger_entries (
                entry_id BIGSERIAL PRIMARY KEY,
                event_id UUID NOT NULL,
                line INT NOT NULL,
                team TEXT NOT NULL,
                project TEXT NOT NULL DEFAULT '',
                user_id TEXT NOT NULL DEFAULT '',
                kind TEXT NOT NULL,
                model TEXT NOT NULL DEFAULT '',
                gpu_type TEXT NOT NULL DEFAULT '',
                resource_id TEXT NOT NULL DEFAULT '',
                hour TIMESTAMPTZ NOT NULL,
                quantity NUMERIC NOT NULL,
                unit TEXT NOT NULL,
                usd NUMERIC(24, 10) NOT NULL,
                flag TEXT,
                reverses BIGINT REFERENCES ledger_entries (entry_id),
                recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                UNIQUE (event_id, line))""",
            "CREATE INDEX ledger_entries_team_hour ON ledger_entries (team, hour)",
            """CREATE TABLE spend_hourly (
                team TEXT NOT NULL, project TEXT NOT NULL, user_id TEXT NOT NULL,
                kind TEXT NOT NULL, model TEXT NOT NULL, gpu_type TEXT NOT NULL,
                resource_id TEXT NOT NULL, hour TIMESTAMPTZ NOT NULL,
                usd NUMERIC(24, 10) NOT NULL, gpu_seconds NUMERIC NOT NULL DEFAULT 0,
                lines BIGINT NOT NULL,
                PRIMARY KEY (team, hour, kind, project, user_id, model, gpu_type, resource_id))""",
            "CREATE INDEX spend_hourly_hour ON spend_hourly (hour)",
            """CREATE TABLE budgets (
                team TEXT PRIMARY KEY,
                amount_usd NUMERIC(14, 2) NOT NULL CHECK (amount_usd > 0),
                thresholds INT[] NOT NULL,
                action TEXT NOT NULL,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
            """CREATE TABLE budget_alerts (
                team TEXT NOT NULL, period TEXT NOT NULL, threshold INT NOT NULL,
                spent_usd NUMERIC(24, 10) NOT NULL, amount_usd NUMERIC(14, 2) NOT NULL,
                action TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (team, period, threshold))""",
        ),
    ),
    Migration(
        4,
        "daily rollup without user and resource, for fast team x kind x day queries",
        (
            """CREATE TABLE spend_daily (
                team TEXT NOT NULL, project TEXT NOT NULL, kind TEXT NOT NULL,
                model TEXT NOT NULL, gpu_type TEXT NOT NULL, day DATE NOT NULL,
                usd NUMERIC(24, 10) NOT NULL, gpu_seconds NUMERIC NOT NULL DEFAULT 0,
                PRIMARY KEY (day, team, kind, project, model, gpu_type))""",
            """INSERT INTO spend_daily SELECT team, project, kind, model, gpu_type,
                CAST(hour AT TIME ZONE 'UTC' AS date), sum(usd), sum(gpu_seconds) FROM spend_hourly
                GROUP BY 1, 2, 3, 4, 5, 6""",
        ),
    ),
    Migration(
        5,
        "hourly rollup without user and resource (one row per resource-hour made it as big as "
        "the lines); those queries read the lines",
        (
            "DROP TABLE spend_hourly",
            """CREATE TABLE spend_hourly (
                team TEXT NOT NULL, project TEXT NOT NULL, kind TEXT NOT NULL, model TEXT NOT NULL,
                gpu_type TEXT NOT NULL, hour TIMESTAMPTZ NOT NULL, usd NUMERIC(24, 10) NOT NULL,
                gpu_seconds NUMERIC NOT NULL DEFAULT 0, lines BIGINT NOT NULL,
                PRIMARY KEY (hour, team, kind, project, model, gpu_type))""",
            """INSERT INTO spend_hourly SELECT team, project, kind, model, gpu_type, hour, sum(usd),
                sum(CASE WHEN unit = 'gpu_seconds' THEN quantity ELSE 0 END), count(*)
                FROM ledger_entries GROUP BY 1, 2, 3, 4, 5, 6""",
        ),
    ),
    Migration(
        6,
        "team x kind x day rollup: the bill's and the dashboard's question, a few rows per day",
        (
            """CREATE TABLE spend_team_daily (
                day DATE NOT NULL, team TEXT NOT NULL, kind TEXT NOT NULL,
                usd NUMERIC(24, 10) NOT NULL, gpu_seconds NUMERIC NOT NULL DEFAULT 0,
                PRIMARY KEY (day, team, kind))""",
            """INSERT INTO spend_team_daily SELECT day, team, kind, sum(usd), sum(gpu_seconds)
                FROM spend_daily GROUP BY 1, 2, 3""",
        ),
    ),
)
TEAM_DAILY_DIMENSIONS = ("team", "kind")
DAILY_DIMENSIONS = ("team", "project", "kind", "model", "gpu_type")
ROLLUP_DIMENSIONS = DAILY_DIMENSIONS  # user and resource are read from the lines themselves

_ROLL = ", ".join(ROLLUP_DIMENSIONS)
_INSERT = f"""
WITH new_lines AS (
    INSERT INTO ledger_entries (event_id, line, team, project, user_id, kind, model, gpu_type,
                                resource_id, hour, quantity, unit, usd, flag)
    SELECT * FROM unnest(CAST(:event_id AS uuid[]), CAST(:line AS int[]), CAST(:team AS text[]),
                         CAST(:project AS text[]), CAST(:user_id AS text[]), CAST(:kind AS text[]),
                         CAST(:model AS text[]), CAST(:gpu_type AS text[]),
                         CAST(:resource_id AS text[]), CAST(:hour AS timestamptz[]),
                         CAST(:quantity AS numeric[]), CAST(:unit AS text[]), CAST(:usd AS numeric[]),
                         CAST(:flag AS text[]))
    ON CONFLICT (event_id, line) DO NOTHING
    RETURNING {_ROLL}, hour, usd, CASE WHEN unit = 'gpu_seconds' THEN quantity ELSE 0 END AS gpu_s
), rolled AS (
    INSERT INTO spend_hourly ({_ROLL}, hour, usd, gpu_seconds, lines)
    SELECT {_ROLL}, hour, sum(usd), sum(gpu_s), count(*) FROM new_lines
    GROUP BY {_ROLL}, hour ORDER BY hour, {_ROLL}
    ON CONFLICT (hour, team, kind, project, model, gpu_type) DO UPDATE
    SET usd = spend_hourly.usd + EXCLUDED.usd, gpu_seconds = spend_hourly.gpu_seconds
        + EXCLUDED.gpu_seconds, lines = spend_hourly.lines + EXCLUDED.lines
    RETURNING 1
), daily AS (
    INSERT INTO spend_daily ({_ROLL}, day, usd, gpu_seconds)
    SELECT {_ROLL}, CAST(hour AT TIME ZONE 'UTC' AS date), sum(usd), sum(gpu_s)
    FROM new_lines GROUP BY {_ROLL}, 6 ORDER BY 6, {_ROLL}
    ON CONFLICT (day, team, kind, project, model, gpu_type) DO UPDATE
    SET usd = spend_daily.usd + EXCLUDED.usd, gpu_seconds = spend_daily.gpu_seconds
        + EXCLUDED.gpu_seconds
    RETURNING 1
), team_daily AS (
    INSERT INTO spend_team_daily (day, team, kind, usd, gpu_seconds)
    SELECT CAST(hour AT TIME ZONE 'UTC' AS date), team, kind, sum(usd), sum(gpu_s) FROM new_lines
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (day, team, kind) DO UPDATE SET usd = spend_team_daily.usd + EXCLUDED.usd,
        gpu_seconds = spend_team_daily.gpu_seconds + EXCLUDED.gpu_seconds
    RETURNING 1
)
SELECT team, hour, usd FROM new_lines
"""


async def append(session: AsyncSession, lines: Sequence[Line]) -> list[tuple[str, datetime, Decimal]]:
    """Insert lines not seen before (by event id and line); returns (team, hour, usd) of those."""
    if not lines:
        return []
    columns: dict[str, list[Any]] = {
        "event_id": [ln.event_id for ln in lines], "line": [ln.line for ln in lines],
        "team": [ln.team for ln in lines], "project": [ln.project for ln in lines],
        "user_id": [ln.user for ln in lines], "kind": [ln.kind for ln in lines],
        "model": [ln.model for ln in lines], "gpu_type": [ln.gpu_type for ln in lines],
        "resource_id": [ln.resource_id for ln in lines], "hour": [ln.hour for ln in lines],
        "quantity": [ln.quantity for ln in lines], "unit": [ln.unit for ln in lines],
        "usd": [ln.usd for ln in lines], "flag": [ln.flag for ln in lines]}
    rows = await session.execute(text(_INSERT), columns)
    return [(r.team, r.hour, r.usd) for r in rows]


async def reverse(session: AsyncSession, *, entry_id: int, reason: str) -> int | None:
    """A new line cancelling ``entry_id`` (once); its id, or None when there is nothing to reverse."""
    row = (await session.execute(text(
        "SELECT event_id, line, team, project, user_id, kind, model, gpu_type, resource_id, hour,"
        " quantity, unit, usd FROM ledger_entries WHERE entry_id = :i AND reverses IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM ledger_entries r WHERE r.reverses = :i)"),
        {"i": entry_id})).first()
    if row is None:
        return None
    new_id = (await session.execute(text(
        "INSERT INTO ledger_entries (event_id, line, team, project, user_id, kind, model, gpu_type,"
        " resource_id, hour, quantity, unit, usd, flag, reverses) VALUES (gen_random_uuid(), 0, :team,"
        " :project, :user_id, :kind, :model, :gpu_type, :resource_id, :hour, -:quantity, :unit,"
        " -:usd, :flag, :reverses) RETURNING entry_id"),
        {**row._asdict(), "flag": f"reversal: {reason}", "reverses": entry_id})).scalar_one()
    await session.execute(text(
        "INSERT INTO spend_hourly (team, project, kind, model, gpu_type, hour, usd, gpu_seconds, lines)"
        " VALUES (:team, :project, :kind, :model, :gpu_type, :hour, -:usd, 0, 1)"
        " ON CONFLICT (hour, team, kind, project, model, gpu_type) DO UPDATE"
        " SET usd = spend_hourly.usd + EXCLUDED.usd, lines = spend_hourly.lines + 1"), row._asdict())
    await session.execute(text(
        "INSERT INTO spend_daily (team, project, kind, model, gpu_type, day, usd) VALUES (:team,"
        " :project, :kind, :model, :gpu_type, CAST(:hour AT TIME ZONE 'UTC' AS date), -:usd)"
        " ON CONFLICT (day, team, kind, project, model, gpu_type) DO UPDATE"
        " SET usd = spend_daily.usd + EXCLUDED.usd"), row._asdict())
    await session.execute(text(
        "INSERT INTO spend_team_daily (day, team, kind, usd) VALUES"
        " (CAST(:hour AT TIME ZONE 'UTC' AS date), :team, :kind, -:usd)"
        " ON CONFLICT (day, team, kind) DO UPDATE SET usd = spend_team_daily.usd + EXCLUDED.usd"),
        row._asdict())
    return int(new_id)


STEPS = ("hour", "day", "week", "month")


async def spend(session: AsyncSession, *, start: datetime, end: datetime, by: Sequence[str],
                step: str | None, team: str | None) -> list[dict[str, Any]]:
    """Spend in [start, end) grouped by ``by`` dimensions and, with ``step``, by time bucket.

    Whole-day windows read the daily rollup, finer ones the hourly rollup; a breakdown by user
    or resource reads the ledger lines themselves.
    """
    keys = [d for d in by if d in DIMENSIONS]
    if any(k not in ROLLUP_DIMENSIONS for k in keys):
        table, time_col = "ledger_entries", "hour"
        gpu = "CASE WHEN unit = 'gpu_seconds' THEN quantity ELSE 0 END"
    elif step != "hour" and start == _midnight(start) and end == _midnight(end):
        narrow = all(k in TEAM_DAILY_DIMENSIONS for k in keys)
        table, time_col, gpu = ("spend_team_daily" if narrow else "spend_daily"), "day", "gpu_seconds"
    else:
        table, time_col, gpu = "spend_hourly", "hour", "gpu_seconds"
    if step is not None:
        assert step in STEPS, step
        keys.append(f"date_trunc('{step}', day::timestamp) AT TIME ZONE 'UTC' AS bucket"
                    if time_col == "day" else f"date_trunc('{step}', hour, 'UTC') AS bucket")
    names = [k.split(" AS ")[-1] for k in keys]
    bounds = ("day >= CAST(:start AT TIME ZONE 'UTC' AS date) AND day < CAST(:end AT TIME ZONE 'UTC' AS date)"
              if time_col == "day" else "hour >= :start AND hour < :end")
    rows = await session.execute(text(
        f"SELECT {', '.join([*keys, 'sum(usd) AS usd', f'sum({gpu}) AS gpu_seconds'])}"
        f" FROM {table} WHERE {bounds} AND (CAST(:team AS text) IS NULL OR team = :team)"
        + (f" GROUP BY {', '.join(names)}" if names else "")
        + f" ORDER BY {'bucket, ' if step else ''}usd DESC"),
        {"start": start, "end": end, "team": team})
    return [dict(r._mapping) for r in rows]


def _midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


async def flagged_lines(session: AsyncSession, *, team: str | None, limit: int = 50) -> list[dict[str, Any]]:
    rows = await session.execute(text(
        "SELECT entry_id, event_id, team, kind, model, gpu_type, usd, flag, hour FROM ledger_entries"
        " WHERE flag IS NOT NULL AND (CAST(:team AS text) IS NULL OR team = :team)"
        " ORDER BY entry_id DESC LIMIT :n"), {"team": team, "n": limit})
    return [dict(r._mapping) for r in rows]


# -- budgets ---------------------------------------------------------------------------------
async def set_budget(session: AsyncSession, budget: Budget) -> None:
    await session.execute(text(
        "INSERT INTO budgets (team, amount_usd, thresholds, action) VALUES (:t, :a, :th, :ac)"
        " ON CONFLICT (team) DO UPDATE SET amount_usd = EXCLUDED.amount_usd,"
        " thresholds = EXCLUDED.thresholds, action = EXCLUDED.action, updated_at = now()"),
        {"t": budget.team, "a": budget.amount_usd, "th": list(budget.thresholds), "ac": budget.action})


async def budgets(session: AsyncSession, *, teams: Sequence[str] | None = None) -> dict[str, Budget]:
    rows = await session.execute(text(
        "SELECT team, amount_usd, thresholds, action FROM budgets"
        " WHERE CAST(:teams AS text[]) IS NULL OR team = ANY(CAST(:teams AS text[]))"),
        {"teams": list(teams) if teams is not None else None})
    return {r.team: Budget(r.team, r.amount_usd, tuple(r.thresholds), r.action) for r in rows}


async def month_spend(session: AsyncSession, *, teams: Sequence[str], start: datetime,
                      end: datetime) -> dict[str, Decimal]:
    rows = await session.execute(text(
        "SELECT team, sum(usd) AS usd FROM spend_hourly WHERE team = ANY(:teams)"
        " AND hour >= :s AND hour < :e GROUP BY team"), {"teams": list(teams), "s": start, "e": end})
    return {r.team: r.usd for r in rows}


async def alerts_of(session: AsyncSession, *, team: str, period: str) -> set[int]:
    rows = await session.execute(text(
        "SELECT threshold FROM budget_alerts WHERE team = :t AND period = :p"), {"t": team, "p": period})
    return {r.threshold for r in rows}


async def record_alert(session: AsyncSession, *, budget: Budget, period: str, threshold: int,
                       spent: Decimal) -> bool:
    result = await session.execute(text(
        "INSERT INTO budget_alerts (team, period, threshold, spent_usd, amount_usd, action)"
        " VALUES (:t, :p, :th, :s, :a, :ac) ON CONFLICT DO NOTHING"),
        {"t": budget.team, "p": period, "th": threshold, "s": spent, "a": budget.amount_usd,
         "ac": budget.action})
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def rearm_alerts(session: AsyncSession, *, team: str, period: str, below_percent: Decimal) -> None:
    await session.execute(text(
        "DELETE FROM budget_alerts WHERE team = :t AND period = :p AND threshold > :pct"),
        {"t": team, "p": period, "pct": below_percent})


async def recent_alerts(session: AsyncSession, *, limit: int = 20) -> list[dict[str, Any]]:
    rows = await session.execute(text(
        "SELECT team, period, threshold, spent_usd, amount_usd, action, at FROM budget_alerts"
        " ORDER BY at DESC LIMIT :n"), {"n": limit})
    return [dict(r._mapping) for r in rows]
