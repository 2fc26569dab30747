"""quota's budget handlers against an in-memory ``BudgetStore``: no database, no bus."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from contracts import BudgetChanged, BudgetExhausted, BudgetThresholdCrossed
from services.quota import handlers

pytestmark = pytest.mark.unit


@dataclass
class MemoryBudgets:
    spend: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)  # team -> (amount, spent)
    blocks: dict[tuple[str, str], str] = field(default_factory=dict)  # (team, period) -> action

    async def record_spend(self, *, team: str, amount_usd: Decimal, spent_usd: Decimal) -> None:
        self.spend[team] = (amount_usd, spent_usd)

    async def block_team(self, *, team: str, period: str, budget_id: str, action: str,
                         spent_usd: Decimal, amount_usd: Decimal) -> None:
        self.blocks[(team, period)] = action

    async def unblock_team(self, *, team: str, period: str) -> None:
        self.blocks.pop((team, period), None)


def exhausted(action: str) -> BudgetExhausted:
    return BudgetExhausted(tenant="legal", budget_id="legal-monthly", period="2026-11", action=action,
                           spent_usd=Decimal("101"), amount_usd=Decimal("100"))


def changed(amount: str, action: str = "block") -> BudgetChanged:
    return BudgetChanged(tenant="legal", budget_id="legal-monthly", period="2026-11", action=action,
                         spent_usd=Decimal("101"), amount_usd=Decimal(amount))


@pytest.mark.parametrize("action", ["block", "stop"])
async def test_an_exhausted_budget_that_blocks_refuses_the_teams_work_for_the_month(action: str) -> None:
    budgets = MemoryBudgets()
    await handlers.on_budget_exhausted(exhausted(action), budgets=budgets)
    assert budgets.blocks == {("legal", "2026-11"): action}
    assert budgets.spend["legal"] == (Decimal("100"), Decimal("101"))


async def test_a_notify_only_budget_records_the_spend_and_never_blocks() -> None:
    budgets = MemoryBudgets()
    await handlers.on_budget_exhausted(exhausted("notify"), budgets=budgets)
    assert budgets.blocks == {} and budgets.spend["legal"] == (Decimal("100"), Decimal("101"))


async def test_a_budget_raised_above_the_spend_lifts_the_block_and_one_still_below_keeps_it() -> None:
    budgets = MemoryBudgets()
    await handlers.on_budget_exhausted(exhausted("block"), budgets=budgets)
    await handlers.on_budget_changed(changed("100.50"), budgets=budgets)
    assert budgets.blocks == {("legal", "2026-11"): "block"}
    await handlers.on_budget_changed(changed("200"), budgets=budgets)
    assert budgets.blocks == {} and budgets.spend["legal"] == (Decimal("200"), Decimal("101"))


async def test_a_budget_turned_to_notify_lifts_the_block_and_a_threshold_alert_never_does() -> None:
    budgets = MemoryBudgets()
    await handlers.on_budget_exhausted(exhausted("block"), budgets=budgets)
    await handlers.on_budget_changed(BudgetThresholdCrossed(
        tenant="legal", budget_id="legal-monthly", period="2026-11", threshold_percent=80,
        spent_usd=Decimal("80"), amount_usd=Decimal("100")), budgets=budgets)  # e.g. an old one, late
    assert budgets.blocks == {("legal", "2026-11"): "block"}
    await handlers.on_budget_changed(changed("100", action="notify"), budgets=budgets)
    assert budgets.blocks == {}
