"""Turn events into Prometheus series: volume per subject and team, dead letters, AI metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel

from contracts import (
    DeadLetter,
    EndpointDeleted,
    GpuSampled,
    InferenceCompleted,
    InferenceSampled,
    JobCompleted,
    JobFailed,
    JobTerminated,
)
from services.observability_collector.drift import DriftMonitor
from services.observability_collector.genai import Caps, GenAIMetrics, LabelCap
from services.observability_collector.gpus import GpuGauges
from services.observability_collector.jobs import JobStarts
from services.observability_collector.quality import QualityJudge


class PlatformMetrics:
    def __init__(self, registry: CollectorRegistry, caps: Caps = Caps(),
                 quality: QualityJudge | None = None) -> None:
        self.quality = quality
        self.genai = GenAIMetrics(registry, caps)
        self.gpus = GpuGauges(registry)
        self.job_starts = JobStarts(registry)
        self.drift = DriftMonitor(registry)
        self._dead_subject, self._dead_reason = LabelCap("subject", 200), LabelCap("reason", 50)
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
            if isinstance(event, DeadLetter):  # its subject is whatever an outsider sent
                self.dead_letters.labels(subject=self._dead_subject(event.subject),
                                         reason=self._dead_reason(event.reason)).inc()
                continue
            subject = getattr(event, "SUBJECT", type(event).__name__)  # subjects: a fixed set
            self.job_starts.observe(event)
            if isinstance(event, GpuSampled):
                self.gpus.observe(event)
            elif isinstance(event, JobCompleted | JobFailed | JobTerminated):
                self.gpus.forget("job", event.job_id)
            elif isinstance(event, EndpointDeleted):
                self.gpus.forget("endpoint", event.endpoint)
                self.drift.forget(event.endpoint)
                if self.quality is not None:
                    self.quality.forget(event.endpoint)
            elif isinstance(event, InferenceSampled) and self.quality is not None:
                self.quality.offer(event)
            if isinstance(event, InferenceCompleted):
                team, model = self.genai.observe(event)
                self.drift.observe(event)
                self.tokens.labels(team, model, "in").inc(event.tokens_in)
                self.tokens.labels(team, model, "out").inc(event.tokens_out)
                self.latency.labels(model).observe(event.latency_ms / 1000)
            else:
                team = self.genai.team(getattr(event, "tenant", ""))
            self.events.labels(subject=subject, tenant=team).inc()
        self.genai.flush_overflow(self._dead_subject, self._dead_reason, self.drift.endpoints)
        return {}
