"""observability-collector wiring: a wildcard consumer per domain stream and the DLQ, the
Alertmanager webhook and SLO status."""

from __future__ import annotations

import json

from contracts import DOMAINS
from contracts.envelope import DLQ_PREFIX
from guardrails.quality import QualityFileError, load_quality
from services.kit.runtime import Service, run
from services.kit.settings import ConfigError, load_settings
from services.observability_collector.alerts import AlertBook
from services.observability_collector.api import build_router, restore_firing
from services.observability_collector.handlers import PlatformMetrics
from services.observability_collector.quality import JudgeAccess, QualityJudge
from services.observability_collector.settings import CollectorSettings
from services.observability_collector.slos import Prometheus, SloFile


def build(settings: CollectorSettings) -> Service:
    service = Service(settings, title="aicloud observability collector")
    judge = _judge(settings, service)
    metrics = PlatformMetrics(service.metrics.registry, quality=judge)
    for domain in DOMAINS:
        service.observe_batch(f"aicloud.{domain}.>", metrics.on_events)
    service.observe_batch(f"{DLQ_PREFIX}.>", metrics.on_events)
    book = AlertBook(service.bus, registry=service.metrics.registry)
    prometheus = Prometheus(settings.prometheus_url) if settings.prometheus_url else None
    service.include_router(build_router(book=book, token=settings.alert_webhook_token,
                                        slos=SloFile(settings.slo_file), prometheus=prometheus))
    if settings.alertmanager_url:
        service.on_start(lambda: restore_firing(book, settings.alertmanager_url))
    return service


def _judge(settings: CollectorSettings, service: Service) -> QualityJudge | None:
    """The quality judge, where a router and a quality policy are configured. A broken policy
    file stops the collector at start, naming the field (as a broken routes file stops the router)."""
    if not settings.router_url or settings.quality_file is None:
        return None
    try:
        policy = load_quality(settings.quality_file)
    except QualityFileError as exc:
        raise ConfigError(f"observability-collector cannot start: {exc}") from None
    judge = QualityJudge(service.metrics.registry, policy=policy,
                         access=JudgeAccess(settings.router_url, lambda: _judge_key(settings)))
    service.on_start(judge.start)
    service.on_stop(judge.stop)
    return judge


def _judge_key(settings: CollectorSettings) -> str | None:
    if settings.judge_key:
        return settings.judge_key
    if settings.judge_keys_file is None:
        return None
    try:
        found = json.loads(settings.judge_keys_file.read_text()).get(settings.judge_team)
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def main() -> None:
    run(build, load_settings(CollectorSettings))
