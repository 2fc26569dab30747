"""Budgets domain: spend thresholds per team."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar, Literal

from pydantic import Field

from contracts.envelope import Event, subject


class BudgetThresholdCrossed(Event):
    """A team's spend crossed an alert threshold of its budget (once per threshold per period)."""

    SUBJECT: ClassVar[str] = subject("budgets", "threshold_crossed")

    budget_id: str
    period: str = Field(description="Budget period, e.g. 2026-11.")
    threshold_percent: int = Field(ge=1, le=1000)
    spent_usd: Decimal
    amount_usd: Decimal


class BudgetExhausted(Event):
    """A team's budget is used up; the configured action applies."""

    SUBJECT: ClassVar[str] = subject("budgets", "exhausted")

    budget_id: str
    period: str
    action: Literal["notify", "block", "stop"]
    spent_usd: Decimal
    amount_usd: Decimal


class BudgetChanged(Event):
    """A team's budget was set or changed; a raise that covers the spend lifts a block."""

    SUBJECT: ClassVar[str] = subject("budgets", "changed")

    budget_id: str
    period: str
    amount_usd: Decimal = Field(gt=0)
    spent_usd: Decimal = Field(description="This period's spend when the budget changed.")
    action: Literal["notify", "block", "stop"]
    thresholds: list[int] = Field(default_factory=lambda: [50, 80, 100])
