"""The cost ledger's write handlers against an in-memory ``LedgerStore``: no database, no bus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest
from prometheus_client import CollectorRegistry

from contracts import BudgetChanged, BudgetExhausted, BudgetThresholdCrossed, Envelope, UsageRecorded
from contracts.pricebook import load_price_book
from services.cost_ledger import handlers
from services.cost_ledger.domain import Budget, Line, period_of
from services.cost_ledger.metrics import LedgerMetrics

pytestmark = pytest.mark.unit
PRICES = load_price_book(Path(__file__).resolve().parents[2] / "policies" / "pricebook.yaml")
TEAMS = frozenset({"legal", "research"})


@dataclass
class MemoryLedger:
    """``LedgerStore`` in lists: a line is unique by (event id, line), as the table's key says."""

    lines: dict[tuple[object, int], Line] = field(default_factory=dict)
    budget_of: dict[str, Budget] = field(default_factory=dict)
    alerts: set[tuple[str, str, int]] = field(default_factory=set)
    staged: list[Envelope] = field(default_factory=list)

    async def append(self, lines: Sequence[Line]) -> set[tuple[UUID, str, str]]:
        new = [ln for ln in lines if (ln.event_id, ln.line) not in self.lines]
        self.lines |= {(ln.event_id, ln.line): ln for ln in new}
        return {(ln.event_id, ln.team, period_of(ln.hour)) for ln in new}

    async def budgets(self, *, teams: Sequence[str]) -> dict[str, Budget]:
        return {t: b for t, b in self.budget_of.items() if t in teams}

    async def set_budget(self, budget: Budget) -> None:
        self.budget_of[budget.team] = budget

    async def month_spend(self, *, teams: Sequence[str], start: datetime,
                          end: datetime) -> dict[str, Decimal]:
        spent: dict[str, Decimal] = {}
        for ln in self.lines.values():
            if ln.team in teams and start <= ln.hour < end:
                spent[ln.team] = spent.get(ln.team, Decimal(0)) + ln.usd
        return spent

    async def alerts_of(self, *, team: str, period: str) -> set[int]:
        return {t for tm, p, t in self.alerts if (tm, p) == (team, period)}

    async def record_alert(self, *, budget: Budget, period: str, threshold: int, spent: Decimal) -> bool:
        key = (budget.team, period, threshold)
        new = key not in self.alerts
        self.alerts.add(key)
        return new

    async def rearm_alerts(self, *, team: str, period: str, below_percent: Decimal) -> None:
        self.alerts = {(tm, p, t) for tm, p, t in self.alerts
                       if not ((tm, p) == (team, period) and t > below_percent)}

    async def stage(self, event: Envelope) -> None:
        self.staged.append(event)


def hour_of_h100(**fields: object) -> UsageRecorded:
    """One H100 for an hour in November 2026: $6.88."""
    base: dict[str, object] = dict(
        tenant="legal", kind="training", resource_id="job-1", gpu_type="h100-80gb", gpus_requested=1,
        started_at=datetime(2026, 11, 3, 10, tzinfo=UTC), ended_at=datetime(2026, 11, 3, 11, tzinfo=UTC))
    return UsageRecorded(**{**base, **fields})


async def ingest(store: MemoryLedger, events: Sequence[Envelope]) -> dict[int, str]:
    lines, refused = handlers.price(events, prices=PRICES, teams=TEAMS)
    await handlers.charge(lines, store=store)
    return refused


def alerts(store: MemoryLedger) -> list[tuple[str, int | str]]:
    return [(type(e).__name__, getattr(e, "threshold_percent", getattr(e, "action", "")))
            for e in store.staged]


async def test_a_redelivered_usage_event_is_charged_once_and_alerts_once() -> None:
    store = MemoryLedger(budget_of={"legal": Budget("legal", Decimal("10"), action="block")})
    usage = hour_of_h100()
    await ingest(store, [usage])
    assert alerts(store) == [("BudgetThresholdCrossed", 50)]
    await ingest(store, [usage, usage.model_copy()])  # redelivered, and duplicated in one fetch
    assert sum(ln.usd for ln in store.lines.values()) == Decimal("6.88")
    assert alerts(store) == [("BudgetThresholdCrossed", 50)]


async def test_spend_past_the_budget_alerts_each_threshold_once_then_exhausts_with_its_action() -> None:
    store = MemoryLedger(budget_of={"legal": Budget("legal", Decimal("10"), action="stop")})
    await ingest(store, [hour_of_h100(), hour_of_h100(resource_id="job-2")])
    assert alerts(store) == [("BudgetThresholdCrossed", 50), ("BudgetThresholdCrossed", 80),
                             ("BudgetThresholdCrossed", 100), ("BudgetExhausted", "stop")]
    exhausted = store.staged[-1]
    assert isinstance(exhausted, BudgetExhausted)
    assert (exhausted.tenant, exhausted.period, exhausted.spent_usd) == ("legal", "2026-11", Decimal("13.76"))


async def test_an_implausible_event_is_refused_by_position_and_the_rest_are_charged() -> None:
    store = MemoryLedger()
    backwards = hour_of_h100(started_at=datetime(2026, 11, 3, 12, tzinfo=UTC))
    refused = await ingest(store, [hour_of_h100(), backwards])
    assert list(refused) == [1] and "before it started" in refused[1]
    assert [ln.resource_id for ln in store.lines.values()] == ["job-1"]
    assert store.staged == []  # no budget, no alert


async def test_a_raised_budget_rearms_the_thresholds_the_spend_is_now_below() -> None:
    now = datetime.now(UTC)
    store = MemoryLedger()
    await handlers.set_budget(Budget("legal", Decimal("10")), now=now, store=store)
    await ingest(store, [hour_of_h100(started_at=now.replace(minute=0, second=0, microsecond=0),
                                      ended_at=now.replace(minute=59, second=0, microsecond=0))])
    assert alerts(store)[1:] == [("BudgetThresholdCrossed", 50)]
    store.staged.clear()
    await handlers.set_budget(Budget("legal", Decimal("100")), now=now, store=store)
    [changed] = store.staged
    assert isinstance(changed, BudgetChanged) and changed.amount_usd == Decimal("100")
    assert await store.alerts_of(team="legal", period=period_of(now)) == set()
    store.staged.clear()
    await handlers.set_budget(Budget("legal", Decimal("12")), now=now, store=store)
    assert [type(e) for e in store.staged] == [BudgetChanged, BudgetThresholdCrossed]


async def book(store: MemoryLedger, metrics: LedgerMetrics, events: Sequence[Envelope]) -> set[UUID]:
    _, booked = await handlers.ingest(events, prices=PRICES, teams=TEAMS,
                                      transaction=lambda: nullcontext(store), metrics=metrics)
    return booked


def lag(registry: CollectorRegistry, sample: str) -> float | None:
    return registry.get_sample_value(f"aicloud_ledger_lag_seconds_{sample}",
                                     {"subject": UsageRecorded.SUBJECT})


async def test_a_booked_event_is_observed_once_with_its_lag_and_a_redelivery_not_again() -> None:
    registry = CollectorRegistry()
    metrics, store = LedgerMetrics(registry), MemoryLedger()
    usage = hour_of_h100(occurred_at=datetime.now(UTC) - timedelta(seconds=5))
    assert await book(store, metrics, [usage]) == {usage.event_id}
    assert lag(registry, "count") == 1
    assert (lag(registry, "sum") or 0) >= 5
    assert await book(store, metrics, [usage, usage.model_copy()]) == set()
    assert lag(registry, "count") == 1


async def test_copies_of_a_new_event_in_one_batch_are_observed_once() -> None:
    registry = CollectorRegistry()
    usage = hour_of_h100()
    await book(MemoryLedger(), LedgerMetrics(registry), [usage, usage.model_copy()])
    assert lag(registry, "count") == 1


async def test_an_event_from_a_clock_ahead_of_ours_is_observed_as_no_lag() -> None:
    registry = CollectorRegistry()
    await book(MemoryLedger(), LedgerMetrics(registry),
               [hour_of_h100(occurred_at=datetime.now(UTC) + timedelta(minutes=2))])
    assert (lag(registry, "count"), lag(registry, "sum")) == (1, 0)


async def test_a_batch_whose_commit_fails_is_not_observed() -> None:
    @asynccontextmanager
    async def failing_commit() -> AsyncIterator[MemoryLedger]:
        yield MemoryLedger()
        raise ConnectionError("connection lost at COMMIT")

    registry = CollectorRegistry()
    with pytest.raises(ConnectionError):
        await handlers.ingest([hour_of_h100()], prices=PRICES, teams=TEAMS,
                              transaction=failing_commit, metrics=LedgerMetrics(registry))
    assert lag(registry, "count") == 0
