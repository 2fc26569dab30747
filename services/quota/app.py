"""quota wiring: subjects to handlers, nothing else."""

from __future__ import annotations

from functools import partial

from contracts import JobCompleted, JobFailed, JobRequested, JobTerminated
from contracts.catalog import CatalogDataError, load_org, load_products
from services.kit.runtime import Service, run
from services.kit.settings import ConfigError, load_settings
from services.quota import handlers
from services.quota.policy import PolicyEngine, PolicyError
from services.quota.repo import MIGRATIONS
from services.quota.settings import QuotaSettings


def load_guardrails(settings: QuotaSettings) -> handlers.Guardrails:
    """Policies and catalog data, or a clear exit naming the file that is wrong."""
    try:
        return handlers.Guardrails(
            policies=PolicyEngine.from_dir(settings.policy_dir),
            org=load_org(settings.policy_dir / "org.yaml"),
            products=load_products(settings.policy_dir / "products.yaml"),
            quota_for=settings.team_gpu_quotas,
            default_quota=settings.default_gpu_quota,
            backend=settings.backend,
        )
    except (PolicyError, CatalogDataError) as exc:
        raise ConfigError(f"quota cannot load its guardrails: {exc}") from None


def build(settings: QuotaSettings) -> Service:
    service = Service(settings, migrations=MIGRATIONS, title="aicloud quota")
    service.consume(JobRequested, partial(handlers.on_job_requested, rails=load_guardrails(settings)))
    for ended in (JobCompleted, JobFailed, JobTerminated):
        service.consume(ended, handlers.on_job_ended)
    return service


def main() -> None:
    run(build, load_settings(QuotaSettings))
