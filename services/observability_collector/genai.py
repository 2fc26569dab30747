"""GenAI metrics from the router's ``inference.completed`` events, platform-wide, by the
OpenTelemetry GenAI semantic conventions in Prometheus spelling (dots become underscores, the
unit a suffix): ``gen_ai.client.token.usage`` -> ``gen_ai_client_token_usage``, and so on.

Every label that carries a value from outside (teams, models, providers) is bounded: the first
``limit`` distinct values keep their names, later ones are counted under ``__other__`` (and in
``aicloud_metric_label_overflow_total``), so a caller inventing model names cannot grow the
collector's memory or Prometheus' series without bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

from contracts import InferenceCompleted

OTHER = "__other__"
MAX_LABEL_CHARS = 128
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))  # 1, 4, 16, ... 4^13 tokens
DURATION_BUCKETS = tuple(round(0.01 * 2**i, 2) for i in range(14))  # 0.01 ... 81.92 s
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                     0.4, 0.5, 0.75, 1.0, 2.5)
PLATFORM_PROVIDER = "platform"  # the router's targets "platform/<endpoint>": the platform's own models


@dataclass
class LabelCap:
    """At most ``limit`` distinct values of one label; the rest read ``__other__``."""

    name: str
    limit: int
    seen: set[str] = field(default_factory=set)
    overflowed: int = 0

    def __call__(self, value: str | None) -> str:
        text = (value or "")[:MAX_LABEL_CHARS]
        if text in self.seen:
            return text
        if len(self.seen) < self.limit:
            self.seen.add(text)
            return text
        self.overflowed += 1
        return OTHER


@dataclass(frozen=True)
class Caps:
    teams: int = 200
    models: int = 500
    providers: int = 50


class GenAIMetrics:
    def __init__(self, registry: CollectorRegistry, caps: Caps = Caps()) -> None:
        self.team = LabelCap("team", caps.teams)
        self.request_model = LabelCap("gen_ai_request_model", caps.models)
        self.response_model = LabelCap("gen_ai_response_model", caps.models)
        self.provider = LabelCap("gen_ai_provider_name", caps.providers)
        client = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                  "gen_ai_response_model", "team"]
        server = ["gen_ai_operation_name", "gen_ai_request_model", "gen_ai_response_model", "team"]
        self.tokens = Histogram(
            "gen_ai_client_token_usage", "Tokens used per request ({token}), by gen_ai_token_type.",
            ["gen_ai_token_type", *client], buckets=TOKEN_BUCKETS, registry=registry)
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds", "Duration of GenAI requests through the "
            "router; error_type set on failures.", [*client, "error_type"],
            buckets=DURATION_BUCKETS, registry=registry)
        self.server_duration = Histogram(
            "gen_ai_server_request_duration_seconds", "Requests served by the platform's own "
            "endpoints.", [*server, "error_type"], buckets=DURATION_BUCKETS, registry=registry)
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds", "Time to the first token, the platform's "
            "own endpoints.", server, buckets=DURATION_BUCKETS, registry=registry)
        self.per_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds", "Time per output token after the first, "
            "the platform's own endpoints.", server, buckets=PER_TOKEN_BUCKETS, registry=registry)
        self.cost = Counter(
            "aicloud_gen_ai_cost_usd_total", "What the router's requests cost, by team and model.",
            ["team", "gen_ai_request_model"], registry=registry)
        self.overflow = Counter(
            "aicloud_metric_label_overflow_total", "Label values counted as __other__ (over the cap).",
            ["label"], registry=registry)

    def observe(self, event: InferenceCompleted) -> tuple[str, str]:
        """Record one request; returns its (team, model) labels as bounded."""
        provider_raw, _, response_raw = event.target.partition("/")
        team, model = self.team(event.tenant), self.request_model(event.model)
        provider = self.provider(provider_raw if response_raw else "")
        response = self.response_model(response_raw or event.model)
        operation = event.operation
        client = {"gen_ai_operation_name": operation, "gen_ai_provider_name": provider,
                  "gen_ai_request_model": model, "gen_ai_response_model": response, "team": team}
        error = "" if event.status == "ok" else event.status
        self.duration.labels(**client, error_type=error).observe(event.latency_ms / 1000)
        if event.tokens_in or event.tokens_out:
            self.tokens.labels(gen_ai_token_type="input", **client).observe(event.tokens_in)
            self.tokens.labels(gen_ai_token_type="output", **client).observe(event.tokens_out)
        if event.cost_usd:
            self.cost.labels(team=team, gen_ai_request_model=model).inc(float(event.cost_usd))
        if provider_raw == PLATFORM_PROVIDER:
            server = {k: v for k, v in client.items() if k != "gen_ai_provider_name"}
            self.server_duration.labels(**server, error_type=error).observe(event.latency_ms / 1000)
            if event.ttft_ms is not None:
                self.ttft.labels(**server).observe(event.ttft_ms / 1000)
                if event.tokens_out > 1 and event.status == "ok":
                    decode_s = max(event.latency_ms - event.ttft_ms, 0) / 1000
                    self.per_token.labels(**server).observe(decode_s / (event.tokens_out - 1))
        return team, model

    def flush_overflow(self, *caps: LabelCap) -> None:
        """Count what went to ``__other__`` since the last flush."""
        for cap in (self.team, self.request_model, self.response_model, self.provider, *caps):
            if cap.overflowed:
                self.overflow.labels(label=cap.name).inc(cap.overflowed)
                cap.overflowed = 0
