"""quota's handlers: decide on requests, release GPUs when work ends."""

from __future__ import annotations

from dataclasses import dataclass

from contracts import (
    JobAdmitted,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobRequested,
    JobTerminated,
)
from contracts.catalog import Org, Product
from services.kit.inbox import UnitOfWork
from services.quota import repo
from services.quota.domain import Decision, decide_gpus
from services.quota.policy import PolicyEngine

SOURCE = "quota"


@dataclass(frozen=True)
class Guardrails:
    """What quota decides with: policies, the catalog data, and GPU quotas."""

    policies: PolicyEngine
    org: Org
    products: dict[str, Product]
    quota_for: dict[str, int]
    default_quota: int
    backend: str = "local"


async def on_job_requested(event: JobRequested, uow: UnitOfWork, *, rails: Guardrails) -> None:
    verdict = rails.policies.evaluate_job(
        event, org=rails.org, product=rails.products.get(event.product), backend=rails.backend
    )
    decision = Decision(verdict.admitted, verdict.policy_ids, verdict.reason)
    if verdict.admitted:
        in_use = await repo.gpus_in_use(uow.session, team=event.tenant)
        quota = decide_gpus(
            team=event.tenant, requested=event.gpus, in_use=in_use,
            quota=rails.quota_for.get(event.tenant, rails.default_quota),
        )
        decision = Decision(quota.admitted, verdict.policy_ids + quota.policy_ids, quota.reason)
    await repo.log_decision(
        uow.session, resource_id=event.job_id, team=event.tenant, admitted=decision.admitted,
        policy_ids=decision.policy_ids, reason=decision.reason,
        audit_findings=verdict.audit_findings,
    )
    common = {"tenant": event.tenant, "correlation_id": event.job_id, "source": SOURCE}
    if decision.admitted:
        await repo.allocate(uow.session, resource_id=event.job_id, team=event.tenant, gpus=event.gpus)
        await uow.outbox.add(uow.session, JobAdmitted(
            job_id=event.job_id, request=event, policy_ids=list(decision.policy_ids),
            reason=decision.reason, **common,
        ))
    else:
        await uow.outbox.add(uow.session, JobRejected(
            job_id=event.job_id, policy_ids=list(decision.policy_ids), reason=decision.reason,
            **common,
        ))


async def on_job_ended(event: JobCompleted | JobFailed | JobTerminated, uow: UnitOfWork) -> None:
    await repo.release(uow.session, resource_id=event.job_id)
