"""Alerts domain: SLO burn rates and anomalies."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from contracts.envelope import Event, subject


class AlertFired(Event):
    """An alert rule fired."""

    SUBJECT: ClassVar[str] = subject("alerts", "fired")

    alert: str = Field(description="Rule name, e.g. router-latency-burn-rate.")
    severity: Literal["info", "warning", "critical"]
    summary: str
    labels: dict[str, str] = Field(default_factory=dict)
