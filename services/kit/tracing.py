"""OpenTelemetry tracing: OTLP when an endpoint is set, else a JSON-lines file (or nothing).

Trace context crosses NATS in message headers (W3C ``traceparent``) and Temporal through
its OpenTelemetry interceptor, so one trace spans CLI -> catalog -> quota -> provisioner.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)


class JsonLinesExporter(SpanExporter):
    """Writes one JSON object per finished span; readable with ``jq`` and by the tests."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("a", buffering=1)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            record = {
                "name": span.name,
                "trace_id": format(ctx.trace_id, "032x") if ctx else None,
                "span_id": format(ctx.span_id, "016x") if ctx else None,
                "parent_span_id": format(parent.span_id, "016x") if parent else None,
                "service": span.resource.attributes.get("service.name"),
                "start_ns": span.start_time,
                "end_ns": span.end_time,
                "status": span.status.status_code.name,
                "attributes": {k: _plain(v) for k, v in (span.attributes or {}).items()},
            }
            self._file.write(json.dumps(record) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def configure_tracing(*, service: str, otlp_endpoint: str = "", trace_file: str = "") -> TracerProvider:
    """Install a tracer provider for this process and return it (call ``shutdown`` on exit)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    elif trace_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(Path(trace_file))))
    trace.set_tracer_provider(provider)
    return provider


def inject_headers(headers: dict[str, str], ctx: Context | None = None) -> dict[str, str]:
    """Add the current (or given) trace context to outgoing message headers."""
    propagate.inject(headers, context=ctx)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> Context:
    return propagate.extract(dict(headers or {}))


def attach(ctx: Context) -> object:
    return otel_context.attach(ctx)


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]
