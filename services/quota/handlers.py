"""quota's handlers: decide on requests, release GPUs when work ends."""

from __future__ import annotations

from contracts import (
    JobAdmitted,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobRequested,
    JobTerminated,
)
from services.kit.inbox import UnitOfWork
from services.quota import repo
from services.quota.domain import decide_gpus

SOURCE = "quota"


async def on_job_requested(event: JobRequested, uow: UnitOfWork, *, quota_for: dict[str, int],
                           default_quota: int) -> None:
    in_use = await repo.gpus_in_use(uow.session, team=event.tenant)
    decision = decide_gpus(
        team=event.tenant,
        requested=event.gpus,
        in_use=in_use,
        quota=quota_for.get(event.tenant, default_quota),
    )
    await repo.log_decision(
        uow.session, resource_id=event.job_id, team=event.tenant, admitted=decision.admitted,
        policy_ids=decision.policy_ids, reason=decision.reason,
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
