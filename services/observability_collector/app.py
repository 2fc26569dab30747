"""observability-collector wiring: a wildcard consumer per domain stream and the DLQ."""

from __future__ import annotations

from contracts import DOMAINS
from contracts.envelope import DLQ_PREFIX
from services.kit.runtime import Service, run
from services.kit.settings import load_settings
from services.observability_collector.handlers import PlatformMetrics
from services.observability_collector.settings import CollectorSettings


def build(settings: CollectorSettings) -> Service:
    service = Service(settings, title="aicloud observability collector")
    metrics = PlatformMetrics(service.metrics.registry)
    for domain in DOMAINS:
        service.observe_batch(f"aicloud.{domain}.>", metrics.on_events)
    service.observe_batch(f"{DLQ_PREFIX}.>", metrics.on_events)
    return service


def main() -> None:
    run(build, load_settings(CollectorSettings))
