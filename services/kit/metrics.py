"""Prometheus metrics every service exposes on ``/metrics``, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The kit's standard metrics. Services add theirs on ``registry``."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.consumed = Counter(
            "aicloud_events_consumed_total",
            "Messages settled by this service's consumers, by outcome.",
            ["subject", "outcome"],
            registry=self.registry,
        )
        self.handle_seconds = Histogram(
            "aicloud_event_handle_seconds",
            "Time from delivery to ack for successfully processed messages.",
            ["subject"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
            registry=self.registry,
        )
        self.published = Counter(
            "aicloud_events_published_total",
            "Messages published to JetStream.",
            ["subject"],
            registry=self.registry,
        )
        self.outbox_pending = Gauge(
            "aicloud_outbox_pending",
            "Outbox rows committed but not yet published.",
            registry=self.registry,
        )
        self.up = Gauge("aicloud_service_up", "1 while the service runs.", registry=self.registry)
        self.up.set(1)

    def observe_consumed(self, subject: str, outcome: str, seconds: float) -> None:
        self.consumed.labels(subject=subject, outcome=outcome).inc()
        if outcome == "ok":
            self.handle_seconds.labels(subject=subject).observe(seconds)
