"""Alertmanager's webhook: what fires (and resolves) becomes an event on the bus.

Alertmanager sends each group of alerts again at every ``group_interval`` while it changes and
every ``repeat_interval`` while it fires; the bus gets one ``alerts.fired`` per firing (an
alert's fingerprint and start) and one ``alerts.resolved`` when it ends. The event ids are
derived from those, so even a collector that restarted, and forgot what it had sent, publishes
a repeat as the same message (JetStream drops it within its duplicate window). What fires now
is kept in memory and rebuilt from Alertmanager's API when the collector starts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from contracts import AlertFired, AlertResolved

log = structlog.get_logger()
SOURCE = "observability-collector"
TENANT = "platform"  # alerts are the platform team's, whichever service or team they name
SEVERITY = {"page": "critical", "critical": "critical", "ticket": "warning", "warning": "warning"}
MAX_ALERTS = 1000  # per webhook call; Alertmanager's max_alerts caps what it sends
MAX_FIRING = 10_000

LabelName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,127}$")]
LabelValue = Annotated[str, StringConstraints(max_length=1024)]
Text = Annotated[str, StringConstraints(max_length=4096)]


class WebhookAlert(BaseModel):
    """One alert of Alertmanager's webhook payload (version 4)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["firing", "resolved"]
    labels: dict[LabelName, LabelValue] = Field(max_length=64)
    annotations: dict[LabelName, Text] = Field(default_factory=dict, max_length=64)
    startsAt: datetime  # Alertmanager's spelling
    endsAt: datetime | None = None
    fingerprint: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-zA-Z]+$")

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "unnamed")


class Webhook(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    alerts: list[WebhookAlert] = Field(max_length=MAX_ALERTS)


class Publisher(Protocol):
    async def publish(self, event: Any) -> None: ...


@dataclass
class Firing:
    alert: str
    severity: str
    labels: dict[str, str]
    starts_at: datetime
    summary: str
    runbook_url: str | None

    def public(self) -> dict[str, Any]:
        return {"alert": self.alert, "severity": self.severity, "labels": self.labels,
                "starts_at": self.starts_at.isoformat(), "summary": self.summary,
                "runbook_url": self.runbook_url}


@dataclass
class AlertBook:
    """What fires now, by fingerprint; relays changes to the bus."""

    bus: Publisher
    registry: CollectorRegistry | None = None
    firing: dict[str, Firing] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.relayed = Counter("aicloud_alerts_relayed_total", "Alerts put on the bus, by state.",
                               ["state"], registry=self.registry)

    async def receive(self, payload: Webhook) -> dict[str, int]:
        """Publish what changed; a publish that fails raises, so Alertmanager sends it again."""
        counts = {"fired": 0, "resolved": 0, "repeated": 0}
        for alert in payload.alerts:
            known = self.firing.get(alert.fingerprint)
            if alert.status == "firing":
                if known is not None and known.starts_at == alert.startsAt:
                    counts["repeated"] += 1
                    continue
                await self.bus.publish(fired(alert))
                self._remember(alert)
                counts["fired"] += 1
            else:
                await self.bus.publish(resolved(alert))
                self.firing.pop(alert.fingerprint, None)
                counts["resolved"] += 1
        for state in ("fired", "resolved"):
            self.relayed.labels(state).inc(counts[state])
        return counts

    def restore(self, alerts: list[WebhookAlert]) -> None:
        """What Alertmanager says fires (at start): known as sent, not sent again."""
        for alert in alerts:
            if alert.status == "firing":
                self._remember(alert)

    def _remember(self, alert: WebhookAlert) -> None:
        if len(self.firing) >= MAX_FIRING and alert.fingerprint not in self.firing:
            oldest = min(self.firing, key=lambda f: self.firing[f].starts_at)
            del self.firing[oldest]
        self.firing[alert.fingerprint] = Firing(
            alert=alert.name, severity=alert.labels.get("severity", ""),
            labels=dict(alert.labels), starts_at=alert.startsAt,
            summary=alert.annotations.get("summary", alert.name),
            runbook_url=alert.annotations.get("runbook_url"))

    def of(self, **labels: str) -> list[Firing]:
        return [f for f in self.firing.values() if all(f.labels.get(k) == v for k, v in labels.items())]


def _event_id(alert: WebhookAlert, state: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL,
                      f"aicloud:alert:{alert.fingerprint}:{alert.startsAt.isoformat()}:{state}")


def fired(alert: WebhookAlert) -> AlertFired:
    notes = alert.annotations
    return AlertFired(
        event_id=_event_id(alert, "firing"), tenant=TENANT, source=SOURCE,
        correlation_id=alert.fingerprint, alert=alert.name,
        severity=SEVERITY.get(alert.labels.get("severity", ""), "warning"),
        summary=notes.get("summary", alert.name), labels=dict(alert.labels),
        fingerprint=alert.fingerprint, starts_at=alert.startsAt,
        runbook_url=notes.get("runbook_url", "")[:2048] or None,
        description=notes.get("description"))


def resolved(alert: WebhookAlert) -> AlertResolved:
    return AlertResolved(
        event_id=_event_id(alert, "resolved"), tenant=TENANT, source=SOURCE,
        correlation_id=alert.fingerprint, alert=alert.name, fingerprint=alert.fingerprint,
        labels=dict(alert.labels), starts_at=alert.startsAt, ends_at=alert.endsAt or alert.startsAt)
