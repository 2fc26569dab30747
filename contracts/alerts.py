"""Alerts domain: SLO burn rates and anomalies, as Alertmanager hands them to the platform."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from contracts.envelope import Event, subject


class AlertFired(Event):
    """An alert rule fired (Prometheus evaluated it, Alertmanager routed it to the collector)."""

    SUBJECT: ClassVar[str] = subject("alerts", "fired")

    alert: str = Field(description="Rule name, e.g. SLOErrorBudgetBurnFast.")
    severity: Literal["info", "warning", "critical"] = Field(
        description="The rule's severity label: page -> critical, ticket -> warning.")
    summary: str
    labels: dict[str, str] = Field(default_factory=dict)
    fingerprint: str | None = Field(
        default=None, max_length=64, description="Alertmanager's id of the alert (its label set).")
    starts_at: datetime | None = Field(default=None, description="When the alert began firing.")
    runbook_url: str | None = Field(default=None, max_length=2048,
                                    description="What to do: a section of docs/runbooks/.")
    description: str | None = Field(default=None, max_length=4096)


class AlertResolved(Event):
    """An alert that fired has stopped firing."""

    SUBJECT: ClassVar[str] = subject("alerts", "resolved")

    alert: str
    fingerprint: str = Field(max_length=64)
    labels: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime
    ends_at: datetime
