"""Turn events into Prometheus series: volume per subject and team, dead letters, AI metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel

from contracts import DeadLetter, InferenceCompleted


class PlatformMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("aicloud_platform_events_total", "Events seen on the bus.",
                              ["subject", "tenant"], registry=registry)
        self.dead_letters = Counter("aicloud_dead_letters_total", "Messages dead-lettered.",
                                    ["subject", "reason"], registry=registry)
        self.tokens = Counter("aicloud_inference_tokens_total", "Tokens through the router.",
                              ["tenant", "model", "direction"], registry=registry)
        self.latency = Histogram(
            "aicloud_inference_latency_seconds", "Router request latency.", ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=registry,
        )

    async def on_events(self, events: list[BaseModel]) -> dict[int, str]:
        """A fetch of events from one stream: counted, none refused."""
        for event in events:
            if isinstance(event, DeadLetter):
                self.dead_letters.labels(subject=event.subject, reason=event.reason).inc()
                continue
            subject = getattr(event, "SUBJECT", type(event).__name__)
            self.events.labels(subject=subject, tenant=getattr(event, "tenant", "")).inc()
            if isinstance(event, InferenceCompleted):
                self.tokens.labels(event.tenant, event.model, "in").inc(event.tokens_in)
                self.tokens.labels(event.tenant, event.model, "out").inc(event.tokens_out)
                self.latency.labels(event.model).observe(event.latency_ms / 1000)
        return {}
