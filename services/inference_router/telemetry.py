"""What each request leaves behind: a GenAI span, Prometheus series and an
``inference.completed`` event."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from contracts import InferenceCompleted
from services.inference_router.requests import Call
from services.inference_router.usage import UsageSink
from services.inference_router.wire import Usage

_tracer = trace.get_tracer("aicloud.inference_router")
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56,
                    5.12, 10.24, 20.48, 40.96, 81.92)


class RouterMetrics:
    """GenAI client metrics (semantic-convention names, Prometheus spelling) per team and model."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens = Histogram("gen_ai_client_token_usage", "Tokens used per request.",
                                ["team", "model", "gen_ai_token_type"], buckets=_TOKEN_BUCKETS,
                                registry=registry)
        self.duration = Histogram("gen_ai_client_operation_duration_seconds",
                                  "Time from request to last byte.", ["team", "model", "status"],
                                  buckets=_SECONDS_BUCKETS, registry=registry)
        self.first_chunk = Histogram("gen_ai_client_operation_time_to_first_chunk_seconds",
                                     "Time to the first streamed chunk.", ["team", "model"],
                                     buckets=_SECONDS_BUCKETS, registry=registry)
        self.requests = Counter("aicloud_router_requests_total", "Requests by outcome.",
                                ["team", "model", "status"], registry=registry)
        self.pii = Counter("aicloud_router_pii_findings_total", "PII found in prompts, by kind.",
                           ["team", "kind"], registry=registry)


class EndpointDemand:
    """``aicloud_requests_in_flight{endpoint}``, read from the router's endpoint table at each
    scrape: requests admitted and not finished, those held while a scaled-to-zero endpoint
    wakes included. What a Kubernetes autoscaler (KEDA) scales an endpoint on, from zero too."""

    NAME = "aicloud_requests_in_flight"

    def __init__(self, demand: Callable[[], dict[str, int]]) -> None:
        self._demand = demand

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, "Requests to a platform endpoint in flight or held "
                                   "for its wake-up.", labels=["endpoint"])
        for endpoint, count in sorted(self._demand().items()):
            family.add_metric([endpoint], count)
        yield family


@dataclass
class Outcome:
    """Filled in while a call runs; turned into span, metrics and event at the end."""

    call: Call
    team: str
    key_id: str
    span: Span
    # what metrics, events and the bill call the model: the alias when it names a route, else
    # UNKNOWN_MODEL, so that a caller typing names cannot grow a label, a bill row or a dashboard
    model: str = ""
    started: float = field(default_factory=time.perf_counter)
    first_chunk: float | None = None
    target: str = ""
    provider: str = ""
    response_model: str = ""
    version: str | None = None
    usage: Usage = field(default_factory=Usage)
    status: str = "ok"
    error: str | None = None
    finish: str | None = None
    cost: Decimal | None = None
    cost_flagged: bool = False
    pii: list[str] = field(default_factory=list)
    sampled: bool = False  # keep the answer for quality scoring (quality.Sampler)
    answer: str | None = None
    embedding_sketch: list[float] | None = None  # a platform embedding endpoint's (sketch.py)


UNKNOWN_MODEL = "(unknown)"  # no route has this name: aliases cannot hold parentheses


def start_span(call: Call, parent: Any, model: str | None = None) -> Span:
    """The call's span, named after ``model`` (the bounded name, see Outcome.model)."""
    model = model or call.alias
    span = _tracer.start_span(f"{call.operation} {model}", context=parent, kind=SpanKind.CLIENT)
    span.set_attribute("gen_ai.operation.name", call.operation)
    span.set_attribute("gen_ai.request.model", model)
    span.set_attribute("aicloud.request_id", call.request_id)
    if call.max_tokens:
        span.set_attribute("gen_ai.request.max_tokens", call.max_tokens)
    return span


def finish(outcome: Outcome, *, metrics: RouterMetrics, sink: UsageSink) -> None:
    elapsed = time.perf_counter() - outcome.started
    ttft = outcome.first_chunk - outcome.started if outcome.first_chunk else None
    call, usage, span = outcome.call, outcome.usage, outcome.span
    span.set_attribute("aicloud.team", outcome.team)
    if outcome.provider:
        span.set_attribute("gen_ai.provider.name", outcome.provider)
        span.set_attribute("gen_ai.response.model", outcome.response_model)
        span.set_attribute("aicloud.target", outcome.target)
    span.set_attribute("gen_ai.usage.input_tokens", usage.tokens_in)
    span.set_attribute("gen_ai.usage.output_tokens", usage.tokens_out)
    if outcome.finish:
        span.set_attribute("gen_ai.response.finish_reasons", [outcome.finish])
    if ttft is not None:
        span.set_attribute("gen_ai.response.time_to_first_chunk", ttft)
    if outcome.status != "ok":
        span.set_status(Status(StatusCode.ERROR, outcome.error or outcome.status))
        span.set_attribute("error.type", outcome.status)
    span.end()
    model = outcome.model or call.alias
    labels = {"team": outcome.team, "model": model}
    metrics.requests.labels(status=outcome.status, **labels).inc()
    metrics.duration.labels(status=outcome.status, **labels).observe(elapsed)
    if usage.tokens_in or usage.tokens_out:
        metrics.tokens.labels(gen_ai_token_type="input", **labels).observe(usage.tokens_in)
        metrics.tokens.labels(gen_ai_token_type="output", **labels).observe(usage.tokens_out)
    if ttft is not None:
        metrics.first_chunk.labels(**labels).observe(ttft)
    for kind in outcome.pii:
        metrics.pii.labels(team=outcome.team, kind=kind).inc()
    sink.record(InferenceCompleted(
        tenant=outcome.team, source="inference-router", correlation_id=call.request_id,
        request_id=call.request_id, key_id=outcome.key_id, model=model,
        target=outcome.target or "-", version=outcome.version, tokens_in=usage.tokens_in,
        tokens_out=usage.tokens_out, tokens_cached=usage.tokens_cached,
        tokens_reasoning=usage.tokens_reasoning, latency_ms=round(elapsed * 1000, 3),
        ttft_ms=round(ttft * 1000, 3) if ttft is not None else None, status=outcome.status,
        cost_usd=outcome.cost, cost_flagged=outcome.cost_flagged, operation=call.operation,
        stream=call.stream, user=call.user,
        error=(outcome.error or '')[:2000] or None, pii_findings=outcome.pii,
        embedding_sketch=outcome.embedding_sketch))
