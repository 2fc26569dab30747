"""The ledger's writes: a fetched batch of usage priced and charged, and a budget set; each
raises the budget alerts the new spend calls for. ``LedgerStore`` is what they need of one
transaction (its lines, budgets, alerts and outbox), ``Transaction`` opens and commits one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol
from uuid import UUID

import structlog

from contracts import (
    BudgetChanged,
    BudgetExhausted,
    BudgetThresholdCrossed,
    Envelope,
    InferenceCompleted,
)
from contracts.pricebook import PriceBook
from services.cost_ledger import domain
from services.cost_ledger.domain import Budget, Line, Unbillable, month_bounds
from services.cost_ledger.metrics import LedgerMetrics

log = structlog.get_logger(__name__)
SOURCE = "cost-ledger"


class LedgerStore(Protocol):
    async def append(self, lines: Sequence[Line]) -> set[tuple[UUID, str, str]]:
        """Lines not seen before (by event id and line); the (event id, team, month) of each."""
        ...

    async def budgets(self, *, teams: Sequence[str]) -> dict[str, Budget]: ...
    async def set_budget(self, budget: Budget) -> None: ...
    async def month_spend(self, *, teams: Sequence[str], start: datetime,
                          end: datetime) -> dict[str, Decimal]: ...
    async def alerts_of(self, *, team: str, period: str) -> set[int]: ...
    async def record_alert(self, *, budget: Budget, period: str, threshold: int,
                           spent: Decimal) -> bool: ...
    async def rearm_alerts(self, *, team: str, period: str, below_percent: Decimal) -> None: ...
    async def stage(self, event: Envelope) -> None: ...


Transaction = Callable[[], AbstractAsyncContextManager[LedgerStore]]


async def ingest(events: Sequence[Envelope], *, prices: PriceBook, teams: frozenset[str],
                 transaction: Transaction, metrics: LedgerMetrics) -> tuple[dict[int, str], set[UUID]]:
    """Charge a batch in one transaction. Returns the events refused for good (by position) with
    the reason, and the ids of those booked; each booked one's lag is observed once committed,
    since until then it is not in spend, budgets or the bill."""
    lines, refused = price(events, prices=prices, teams=teams)
    async with transaction() as store:
        booked = await charge(lines, store=store)
    metrics.observe_lag(events, booked=booked, committed_at=datetime.now(UTC))
    return refused, booked


def price(events: Sequence[Envelope], *, prices: PriceBook,
          teams: frozenset[str]) -> tuple[list[Line], dict[int, str]]:
    """The batch's lines, and the events refused for good (by position) with the reason."""
    refused: dict[int, str] = {}
    lines: list[Line] = []
    for i, event in enumerate(events):
        try:
            lines += lines_of(event, prices=prices, teams=teams)
        except Unbillable as exc:
            refused[i] = str(exc)
    return lines, refused


def lines_of(event: Envelope, *, prices: PriceBook, teams: frozenset[str]) -> list[Line]:
    if type(event) is InferenceCompleted:  # not isinstance: ABCMeta's check is slow per event
        return domain.inference_lines(event, prices, teams=teams)
    return domain.usage_lines(event, prices, teams=teams)  # type: ignore[arg-type]


async def charge(lines: Sequence[Line], *, store: LedgerStore) -> set[UUID]:
    """Append the lines and alert for each (team, month) that new lines were charged to; a
    redelivered event's lines are not new, so it charges and alerts nothing. Returns the ids of
    the events that new lines were charged for."""
    new = await store.append(lines)
    periods: dict[str, set[str]] = {}
    for _, team, period in new:
        periods.setdefault(period, set()).add(team)
    found = await store.budgets(teams=sorted({t for _, t, _ in new}))
    for period, teams in periods.items():
        start, end = month_bounds(period)
        spent = await store.month_spend(teams=sorted(teams & set(found)), start=start, end=end)
        for team, amount in spent.items():
            await alert(found[team], period=period, spent=amount, store=store)
    return {event_id for event_id, _, _ in new}


async def set_budget(budget: Budget, *, now: datetime, store: LedgerStore) -> None:
    """Store a budget and alert at once if this month's spend is already past a threshold."""
    period = domain.period_of(now)
    await store.set_budget(budget)
    start, end = month_bounds(period)
    spent = (await store.month_spend(teams=[budget.team], start=start, end=end)
             ).get(budget.team, Decimal(0))
    # a raised budget re-arms the thresholds the spend is now below
    await store.rearm_alerts(team=budget.team, period=period,
                             below_percent=spent / budget.amount_usd * 100)
    await store.stage(BudgetChanged(
        tenant=budget.team, source=SOURCE, budget_id=budget.budget_id, period=period,
        amount_usd=budget.amount_usd, spent_usd=spent.quantize(Decimal("0.01")),
        action=budget.action, thresholds=list(budget.thresholds)))
    await alert(budget, period=period, spent=spent, store=store)


async def alert(budget: Budget, *, period: str, spent: Decimal, store: LedgerStore) -> None:
    """Each threshold once per month: ``budgets.threshold_crossed``, and at 100 % also
    ``budgets.exhausted`` with the budget's action."""
    already = await store.alerts_of(team=budget.team, period=period)
    for threshold in domain.crossed(budget, spent=spent, already=already):
        if not await store.record_alert(budget=budget, period=period, threshold=threshold,
                                        spent=spent):
            continue
        spent_usd = spent.quantize(Decimal("0.01"))
        await store.stage(BudgetThresholdCrossed(
            tenant=budget.team, source=SOURCE, budget_id=budget.budget_id,
            period=period, threshold_percent=threshold, spent_usd=spent_usd,
            amount_usd=budget.amount_usd))
        if threshold >= 100:
            await store.stage(BudgetExhausted(
                tenant=budget.team, source=SOURCE, budget_id=budget.budget_id,
                period=period, action=budget.action,
                spent_usd=spent_usd, amount_usd=budget.amount_usd))
        log.info("budget.threshold_crossed", team=budget.team, period=period,
                 threshold=threshold, spent=str(spent_usd), action=budget.action)
