"""The observability collector's handler: events in, Prometheus series out (a fresh registry,
no bus)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from contracts import DeadLetter, InferenceCompleted, JobRequested
from services.observability_collector.handlers import PlatformMetrics

pytestmark = pytest.mark.unit


def completed(tokens_out: int, latency_ms: int) -> InferenceCompleted:
    return InferenceCompleted(tenant="legal", request_id="r", key_id="k", model="gpt", target="openai",
                              tokens_in=10, tokens_out=tokens_out, latency_ms=latency_ms, status="ok")


async def test_inference_is_counted_per_team_model_and_direction_with_its_latency() -> None:
    registry = CollectorRegistry()
    refused = await PlatformMetrics(registry).on_events([completed(32, 120), completed(8, 2400)])
    assert refused == {}
    tokens = {d: registry.get_sample_value("aicloud_inference_tokens_total",
                                           {"tenant": "legal", "model": "gpt", "direction": d})
              for d in ("in", "out")}
    assert tokens == {"in": 20.0, "out": 40.0}
    assert registry.get_sample_value("aicloud_inference_latency_seconds_count", {"model": "gpt"}) == 2
    assert registry.get_sample_value("aicloud_inference_latency_seconds_bucket",
                                     {"model": "gpt", "le": "0.25"}) == 1
    assert registry.get_sample_value("aicloud_platform_events_total", {
        "subject": InferenceCompleted.SUBJECT, "tenant": "legal"}) == 2


async def test_a_dead_letter_is_counted_by_reason_and_not_as_a_platform_event() -> None:
    registry = CollectorRegistry()
    dead = DeadLetter(subject=JobRequested.SUBJECT, consumer="quota", reason="invalid_schema",
                      error="field required", deliveries=1, payload="{}", payload_b64="e30=")
    await PlatformMetrics(registry).on_events([dead, dead])
    assert registry.get_sample_value("aicloud_dead_letters_total", {
        "subject": JobRequested.SUBJECT, "reason": "invalid_schema"}) == 2
    events = [s for m in registry.collect() for s in m.samples if s.name == "aicloud_platform_events_total"]
    assert events == []
