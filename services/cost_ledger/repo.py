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
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import Envelope
from services.cost_ledger.domain import Budget, Line
from services.cost_ledger.migrations import MIGRATIONS
from services.kit.outbox import Outbox

DIMENSIONS = ("team", "project", "user_id", "kind", "model", "gpu_type", "resource_id")
__all__ = ["MIGRATIONS", "append", "reverse", "spend"]

DAILY_DIMENSIONS = ("team", "project", "kind", "model", "gpu_type")
ROLLUP_DIMENSIONS = DAILY_DIMENSIONS  # user and resource are read from the lines themselves
TEAM_DAILY_DIMENSIONS = ("team", "kind")

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
    RETURNING event_id, {_ROLL}, hour, usd, CASE WHEN unit = 'gpu_seconds' THEN quantity ELSE 0 END AS gpu_s
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
SELECT DISTINCT event_id, team, to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM') AS period FROM new_lines
"""


async def append(session: AsyncSession, lines: Sequence[Line]) -> set[tuple[UUID, str, str]]:
    """Insert lines not seen before (by event id and line); returns the (event id, team, month)
    of each, e.g. ``(UUID(...), "legal", "2026-11")``: empty when every line was a duplicate."""
    if not lines:
        return set()
    columns: dict[str, list[Any]] = {
        "event_id": [ln.event_id for ln in lines], "line": [ln.line for ln in lines],
        "team": [ln.team for ln in lines], "project": [ln.project for ln in lines],
        "user_id": [ln.user for ln in lines], "kind": [ln.kind for ln in lines],
        "model": [ln.model for ln in lines], "gpu_type": [ln.gpu_type for ln in lines],
        "resource_id": [ln.resource_id for ln in lines], "hour": [ln.hour for ln in lines],
        "quantity": [ln.quantity for ln in lines], "unit": [ln.unit for ln in lines],
        "usd": [ln.usd for ln in lines], "flag": [ln.flag for ln in lines]}
    rows = await session.execute(text(_INSERT), columns)
    return {(r.event_id, r.team, r.period) for r in rows}


async def reverse(session: AsyncSession, *, entry_id: int, reason: str) -> int | None:
    """A new line cancelling ``entry_id`` (once); its id, or None when there is nothing to reverse."""
    row = (await session.execute(text(
        "SELECT event_id, line, team, project, user_id, kind, model, gpu_type, resource_id, hour,"
        " quantity, unit, usd FROM ledger_entries WHERE entry_id = :i AND reverses IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM ledger_entries r WHERE r.reverses = :i)"),
        {"i": entry_id})).first()
    if row is None:
        return None
    # negated here, not in SQL: asyncpg cannot type `-$1` (the operator is ambiguous: a 500)
    line = {**row._asdict(), "quantity": -row.quantity, "usd": -row.usd}
    new_id = (await session.execute(text(
        "INSERT INTO ledger_entries (event_id, line, team, project, user_id, kind, model, gpu_type,"
        " resource_id, hour, quantity, unit, usd, flag, reverses) VALUES (gen_random_uuid(), 0, :team,"
        " :project, :user_id, :kind, :model, :gpu_type, :resource_id, :hour, :quantity, :unit,"
        " :usd, :flag, :reverses) RETURNING entry_id"),
        {**line, "flag": f"reversal: {reason}", "reverses": entry_id})).scalar_one()
    await session.execute(text(
        "INSERT INTO spend_hourly (team, project, kind, model, gpu_type, hour, usd, gpu_seconds, lines)"
        " VALUES (:team, :project, :kind, :model, :gpu_type, :hour, :usd, 0, 1)"
        " ON CONFLICT (hour, team, kind, project, model, gpu_type) DO UPDATE"
        " SET usd = spend_hourly.usd + EXCLUDED.usd, lines = spend_hourly.lines + 1"), line)
    await session.execute(text(
        "INSERT INTO spend_daily (team, project, kind, model, gpu_type, day, usd) VALUES (:team,"
        " :project, :kind, :model, :gpu_type, CAST(:hour AT TIME ZONE 'UTC' AS date), :usd)"
        " ON CONFLICT (day, team, kind, project, model, gpu_type) DO UPDATE"
        " SET usd = spend_daily.usd + EXCLUDED.usd"), line)
    await session.execute(text(
        "INSERT INTO spend_team_daily (day, team, kind, usd) VALUES"
        " (CAST(:hour AT TIME ZONE 'UTC' AS date), :team, :kind, :usd)"
        " ON CONFLICT (day, team, kind) DO UPDATE SET usd = spend_team_daily.usd + EXCLUDED.usd"),
        line)
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
        # ungrouped, an empty window is one row of NULL sums: no row, as with a breakdown
        + (f" GROUP BY {', '.join(names)}" if names else " HAVING count(*) > 0")
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


class SqlLedger:
    """``handlers.LedgerStore`` on one session; ``stage`` adds to its outbox."""

    def __init__(self, session: AsyncSession, outbox: Outbox) -> None:
        self.session, self.outbox = session, outbox

    async def append(self, lines: Sequence[Line]) -> set[tuple[UUID, str, str]]:
        return await append(self.session, lines)

    async def budgets(self, *, teams: Sequence[str]) -> dict[str, Budget]:
        return await budgets(self.session, teams=teams)

    async def set_budget(self, budget: Budget) -> None:
        await set_budget(self.session, budget)

    async def month_spend(self, *, teams: Sequence[str], start: datetime,
                          end: datetime) -> dict[str, Decimal]:
        return await month_spend(self.session, teams=teams, start=start, end=end)

    async def alerts_of(self, *, team: str, period: str) -> set[int]:
        return await alerts_of(self.session, team=team, period=period)

    async def record_alert(self, *, budget: Budget, period: str, threshold: int,
                           spent: Decimal) -> bool:
        return await record_alert(self.session, budget=budget, period=period, threshold=threshold,
                                  spent=spent)

    async def rearm_alerts(self, *, team: str, period: str, below_percent: Decimal) -> None:
        await rearm_alerts(self.session, team=team, period=period, below_percent=below_percent)

    async def stage(self, event: Envelope) -> None:
        await self.outbox.add(self.session, event)
