"""quota wiring: subjects to handlers, nothing else."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from contracts import (
    BudgetChanged,
    BudgetExhausted,
    BudgetThresholdCrossed,
    CancelJob,
    ClusterCapacityChanged,
    EndpointDeleted,
    EndpointFailed,
    EndpointRequested,
    JobCompleted,
    JobFailed,
    JobRequested,
    JobTerminated,
    NotebookRequested,
    NotebookStopped,
)
from contracts.catalog import CatalogDataError, load_attestations, load_org, load_products
from guardrails.cedar import PolicyEngine, PolicyError
from services.kit.inbox import UnitOfWork
from services.kit.runtime import Service, run
from services.kit.settings import ConfigError, load_settings
from services.quota import entities, handlers, repo
from services.quota.admission import JobAdmission
from services.quota.repo import MIGRATIONS
from services.quota.settings import QuotaSettings

# Requests decided together at most: a backlog goes in batches this big, a trickle one by one.
ADMISSION_BATCH = 200


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
            node_gpus=settings.node_gpus,
            attestations=load_attestations(settings.policy_dir / "image-attestations.yaml"),
        )
    except (PolicyError, CatalogDataError) as exc:
        raise ConfigError(f"quota cannot load its guardrails: {exc}") from None


def build(settings: QuotaSettings) -> Service:
    service = Service(settings, migrations=MIGRATIONS, title="aicloud quota")
    rails = load_guardrails(settings)
    # decided a fetch at a time (see services/quota/admission.py)
    service.consume_batch(JobRequested, JobAdmission(service.db, service.outbox, rails),
                          fetch=ADMISSION_BATCH, deliveries=True, ahead=0)
    for ended in (JobCompleted, JobFailed, JobTerminated):
        service.consume(ended, partial(handlers.on_job_ended, rails=rails))
    service.consume(CancelJob, partial(handlers.on_cancel_job, rails=rails))
    service.consume(ClusterCapacityChanged, partial(handlers.on_capacity_changed, rails=rails))
    service.consume(EndpointRequested, partial(entities.on_endpoint_requested, rails=rails))
    service.consume(NotebookRequested, partial(entities.on_notebook_requested, rails=rails))
    for gone in (EndpointDeleted, EndpointFailed):
        service.consume(gone, entities.on_endpoint_ended)
    service.consume(NotebookStopped, entities.on_notebook_stopped)
    service.consume(BudgetExhausted, with_budgets(handlers.on_budget_exhausted))
    service.consume(BudgetChanged, with_budgets(handlers.on_budget_changed))
    service.consume(BudgetThresholdCrossed, with_budgets(handlers.on_budget_changed))

    async def load_budgets() -> None:
        async with service.db.transaction() as session:
            await repo.set_budgets(session, settings.team_budgets_usd)

    service.on_start(load_budgets)
    return service


def with_budgets(handler: Callable[..., Awaitable[None]]) -> Callable[[Any, UnitOfWork], Awaitable[None]]:
    """``handler(event, budgets=...)`` on the transaction the inbox opened for the event."""
    async def handle(event: Any, uow: UnitOfWork) -> None:
        await handler(event, budgets=repo.SqlBudgets(uow.session))

    return handle


def main() -> None:
    run(build, load_settings(QuotaSettings))
