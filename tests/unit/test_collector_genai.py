"""GenAI metrics in the collector (services/observability_collector/genai.py): the OpenTelemetry
GenAI conventions as Prometheus series, and labels that stay bounded whatever callers send."""

from __future__ import annotations

import tracemalloc
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry

from contracts import DeadLetter, InferenceCompleted, JobRequested
from services.observability_collector.genai import DURATION_BUCKETS, OTHER, TOKEN_BUCKETS, Caps
from services.observability_collector.handlers import PlatformMetrics

pytestmark = pytest.mark.unit


def event(model: str = "chat-small", target: str = "openai/fake-gpt", **fields: object) -> InferenceCompleted:
    values: dict[str, object] = {"tenant": "legal", "request_id": "r", "key_id": "k", "model": model,
                                 "target": target, "tokens_in": 12, "tokens_out": 40,
                                 "latency_ms": 800.0, "status": "ok"}
    values.update(fields)
    return InferenceCompleted.model_validate(values)


def series(registry: CollectorRegistry) -> int:
    return sum(len(metric.samples) for metric in registry.collect())


def test_buckets_follow_the_conventions() -> None:
    assert TOKEN_BUCKETS[0] == 1 and TOKEN_BUCKETS[-1] == 4**13 and len(TOKEN_BUCKETS) == 14
    assert DURATION_BUCKETS[0] == 0.01 and DURATION_BUCKETS[-1] == 81.92


async def test_a_request_becomes_client_token_and_duration_series_with_the_convention_attributes() -> None:
    registry = CollectorRegistry()
    await PlatformMetrics(registry).on_events([event(cost_usd=Decimal("0.002")),
                                               event(status="error", error="upstream 500")])
    labels = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
              "gen_ai_request_model": "chat-small", "gen_ai_response_model": "fake-gpt", "team": "legal"}
    assert registry.get_sample_value("gen_ai_client_token_usage_sum",
                                     {**labels, "gen_ai_token_type": "output"}) == 80
    assert registry.get_sample_value("gen_ai_client_operation_duration_seconds_count",
                                     {**labels, "error_type": ""}) == 1
    assert registry.get_sample_value("gen_ai_client_operation_duration_seconds_count",
                                     {**labels, "error_type": "error"}) == 1
    assert registry.get_sample_value("aicloud_gen_ai_cost_usd_total",
                                     {"team": "legal", "gen_ai_request_model": "chat-small"}) == 0.002
    # an outside provider is not the platform's own server
    assert registry.get_sample_value("gen_ai_server_request_duration_seconds_count",
                                     {k: v for k, v in labels.items() if k != "gen_ai_provider_name"}
                                     | {"error_type": ""}) is None


async def test_the_platforms_own_endpoints_get_server_ttft_and_time_per_output_token() -> None:
    registry = CollectorRegistry()
    await PlatformMetrics(registry).on_events([
        event(model="clause-risk", target="platform/clause-risk", operation="chat", tokens_out=11,
              latency_ms=1200.0, ttft_ms=200.0)])
    server = {"gen_ai_operation_name": "chat", "gen_ai_request_model": "clause-risk",
              "gen_ai_response_model": "clause-risk", "team": "legal"}
    assert registry.get_sample_value("gen_ai_server_time_to_first_token_seconds_sum", server) == 0.2
    # (1.2 s - 0.2 s) over the 10 tokens after the first
    assert registry.get_sample_value("gen_ai_server_time_per_output_token_seconds_sum",
                                     server) == pytest.approx(0.1)
    assert registry.get_sample_value("gen_ai_server_request_duration_seconds_count",
                                     {**server, "error_type": ""}) == 1


async def test_ten_thousand_model_names_stay_within_the_cap_and_memory_stays_flat() -> None:
    registry = CollectorRegistry()
    metrics = PlatformMetrics(registry, Caps(models=50))
    await metrics.on_events([event(model=f"m-{n}", target=f"openai/m-{n}") for n in range(1_000)])
    after_first = series(registry)
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for start in range(1_000, 10_000, 1_000):
        await metrics.on_events([event(model=f"m-{n}", target=f"openai/m-{n}")
                                 for n in range(start, start + 1_000)])
    grown, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert series(registry) == after_first  # 9,000 more names: not one more series
    assert grown - before < 1024 * 1024, grown - before  # uncapped: tens of MiB
    assert registry.get_sample_value("gen_ai_client_operation_duration_seconds_count", {
        "gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
        "gen_ai_request_model": OTHER, "gen_ai_response_model": OTHER, "team": "legal",
        "error_type": ""}) == 9_950
    assert registry.get_sample_value("aicloud_metric_label_overflow_total",
                                     {"label": "gen_ai_request_model"}) == 9_950


async def test_a_label_value_too_long_is_cut_and_dead_letter_subjects_are_bounded() -> None:
    registry = CollectorRegistry()
    metrics = PlatformMetrics(registry)
    await metrics.on_events([event(model="x" * 5_000)])
    models = {s.labels.get("gen_ai_request_model") for m in registry.collect() for s in m.samples}
    assert "x" * 128 in models and "x" * 129 not in models
    dead = [DeadLetter(subject=f"{JobRequested.SUBJECT}.junk{n}", consumer="quota", reason="invalid_schema",
                       error="e", deliveries=1, payload="{}", payload_b64="e30=") for n in range(500)]
    await metrics.on_events(dead)
    subjects = {s.labels["subject"] for m in registry.collect() if m.name == "aicloud_dead_letters"
                for s in m.samples}
    assert len(subjects) == 201 and OTHER in subjects


async def test_job_start_latency_is_measured_from_request_to_first_start_and_queued_jobs_apart() -> None:
    from datetime import UTC, datetime, timedelta

    from contracts import JobQueued, JobRequested, JobStarted

    registry = CollectorRegistry()
    metrics = PlatformMetrics(registry)
    t0 = datetime(2026, 12, 5, tzinfo=UTC)

    def started(job_id: str, after_s: float) -> JobStarted:
        return JobStarted(tenant="legal", job_id=job_id, backend="local/gvisor",
                          occurred_at=t0 + timedelta(seconds=after_s))

    await metrics.on_events([
        JobRequested(tenant="legal", job_id="fast", command=["x"], occurred_at=t0),
        JobRequested(tenant="legal", job_id="waited", command=["x"], occurred_at=t0),
        JobQueued(tenant="legal", job_id="waited", position=1, reason="busy"),
        started("fast", 1.5), started("waited", 400), started("fast", 900)])  # the last: a resume
    fast = {"queued": "false", "backend": "local"}
    assert registry.get_sample_value("aicloud_job_start_seconds_count", fast) == 1
    assert registry.get_sample_value("aicloud_job_start_seconds_sum", fast) == 1.5
    assert registry.get_sample_value("aicloud_job_start_seconds_sum",
                                     {"queued": "true", "backend": "local"}) == 400
