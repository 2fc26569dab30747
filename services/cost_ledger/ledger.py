"""The ledger at work: batches of usage in, priced lines and budget alerts out, live views.

One transaction per fetched batch: the lines (unique per event and line, so a redelivered or
duplicated event charges nothing), the hourly rollup, the budget alerts and their events (in
the outbox). Batches are serialised by an advisory lock, so the two consumers (jobs' usage and
the router's requests) never interleave their rollup updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from contracts import Envelope
from contracts.pricebook import PriceBook
from services.cost_ledger import domain, handlers, repo
from services.cost_ledger.domain import Budget, month_bounds
from services.cost_ledger.metrics import LedgerMetrics
from services.cost_ledger.repo import SqlLedger
from services.kit.db import Database
from services.kit.outbox import Outbox


@dataclass
class Live:
    """Wakes the dashboard's streams when spend changed."""

    version: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def changed(self) -> None:
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

    async def wait(self, seen: int, within_s: float) -> int:
        """The version once it differs from ``seen``, or as it is after ``within_s``."""
        async with self._changed:
            if self.version == seen:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), within_s)
            return self.version


@dataclass
class Ledger:
    db: Database
    outbox: Outbox
    prices: PriceBook
    teams: frozenset[str]
    metrics: LedgerMetrics
    pools: dict[str, int] = field(default_factory=dict)  # GPU type -> GPUs in the pool
    live: Live = field(default_factory=Live)

    async def ingest(self, events: Sequence[Envelope]) -> dict[int, str]:
        """Charge a batch; returns the events refused for good (by position) with the reason."""
        refused, booked = await handlers.ingest(events, prices=self.prices, teams=self.teams,
                                                transaction=self.store, metrics=self.metrics)
        if booked:
            await self.live.changed()
        return refused

    async def set_budget(self, budget: Budget) -> None:
        async with self.store() as store:
            await handlers.set_budget(budget, now=datetime.now(UTC), store=store)
        await self.live.changed()

    @contextlib.asynccontextmanager
    async def store(self) -> AsyncIterator[SqlLedger]:
        """One transaction, serialised with every other write by an advisory lock."""
        async with self.db.transaction() as session:
            await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('cost-ledger'))"))
            yield SqlLedger(session, self.outbox)

    # -- views ------------------------------------------------------------------------------
    async def spend(self, *, team: str | None, by: Sequence[str], start: datetime, end: datetime,
                    step: str | None, include_idle: bool) -> dict[str, Any]:
        async with self.db.transaction() as session:
            rows = await repo.spend(session, start=start, end=end, by=by, step=step, team=team)
            flagged = await repo.flagged_lines(session, team=team, limit=20)
        total = sum((r["usd"] for r in rows), Decimal(0))
        result: dict[str, Any] = {"team": team, "from": start, "to": end, "by": list(by),
                                  "step": step, "rows": rows, "total_usd": total,
                                  "flagged": flagged}
        if include_idle and team is None:
            result["idle"] = await self.idle(start=start, end=end)
        return result

    async def idle(self, *, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Pool GPU time nobody used in [start, min(end, now)), charged to ``__idle__``; metering
        starts with the ledger's first line, so a new platform is not billed for before it."""
        end = min(end, datetime.now(UTC))
        async with self.db.transaction() as session:
            first = (await session.execute(text("SELECT min(hour) FROM spend_hourly"))).scalar_one()
        start = max(start, first or end)
        hours = Decimal(str(max((end - start).total_seconds(), 0) / 3600))
        async with self.db.transaction() as session:
            used = {r["gpu_type"]: r["gpu_seconds"] for r in await repo.spend(
                session, start=start, end=end, by=["gpu_type"], step=None, team=None)}
        lines = []
        for gpu_type, gpus in sorted(self.pools.items()):
            idle_hours = max(Decimal(gpus) * hours - Decimal(used.get(gpu_type) or 0) / 3600, Decimal(0))
            rate = self.prices.gpu_hour(gpu_type, "on-demand", start)
            lines.append({"team": domain.IDLE, "gpu_type": gpu_type, "gpu_hours": idle_hours,
                          "usd": (idle_hours * rate).quantize(Decimal("0.0001"))})
        return lines

    async def snapshot(self) -> dict[str, Any]:
        """What the dashboard shows: this month per team, by kind per day, top spenders."""
        now = datetime.now(UTC)
        period = domain.period_of(now)
        start, end = month_bounds(period)
        async with self.db.transaction() as session:
            by_team = await repo.spend(session, start=start, end=end, by=["team"], step=None, team=None)
            daily = await repo.spend(session, start=start, end=end, by=["kind"], step="day", team=None)
            top_resources = (await repo.spend(session, start=start, end=end,
                                              by=["team", "kind", "resource_id"], step=None,
                                              team=None))[:10]
            top_models = [r for r in await repo.spend(session, start=start, end=end,
                                                      by=["team", "model"], step=None, team=None)
                          if r["model"]][:10]
            budgets = await repo.budgets(session)
            alerts = await repo.recent_alerts(session)
        teams = {r["team"]: r["usd"] for r in by_team} | {t: Decimal(0) for t in budgets
                                                           if t not in {r["team"] for r in by_team}}
        return {
            "period": period, "generated_at": now, "version": self.live.version,
            "teams": [{"team": t, "spent_usd": usd, "forecast_usd": domain.forecast(usd, now=now),
                       "budget_usd": budgets[t].amount_usd if t in budgets else None,
                       "action": budgets[t].action if t in budgets else None}
                      for t, usd in sorted(teams.items())],
            "daily": [{"day": r["bucket"].date().isoformat(), "kind": r["kind"], "usd": r["usd"]}
                      for r in daily],
            "top_resources": top_resources, "top_models": top_models, "alerts": alerts,
            "idle": await self.idle(start=start, end=end),
        }


async def throttle(seconds: float, last: float) -> float:
    """Sleep so that updates come at most every ``seconds``; returns the new 'last'."""
    wait = last + seconds - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)
    return time.monotonic()
