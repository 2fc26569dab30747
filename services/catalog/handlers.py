"""catalog's handlers: submit jobs, and follow their lifecycle events."""

from __future__ import annotations

from contracts import (
    JobAdmitted,
    JobCompleted,
    JobFailed,
    JobProvisioning,
    JobQueued,
    JobRejected,
    JobRequested,
    JobStarted,
    JobTerminated,
)
from services.catalog import registry, repo
from services.catalog.domain import next_status
from services.kit.inbox import UnitOfWork

LifecycleEvent = (
    JobQueued | JobAdmitted | JobRejected | JobProvisioning | JobStarted | JobCompleted | JobFailed
    | JobTerminated
)

STATUS_OF: dict[type[LifecycleEvent], str] = {
    JobQueued: "queued",
    JobAdmitted: "admitted",
    JobRejected: "rejected",
    JobProvisioning: "provisioning",
    JobStarted: "running",
    JobCompleted: "completed",
    JobFailed: "failed",
    JobTerminated: "terminated",
}


class JobIdTaken(ValueError):
    pass


async def submit_job(request: JobRequested, uow: UnitOfWork) -> None:
    """Record the job and stage ``jobs.requested`` in the same transaction."""
    created = await repo.insert_job(
        uow.session, job_id=request.job_id, team=request.tenant,
        request=request.model_dump(mode="json"),
    )
    if not created:
        raise JobIdTaken(f"job id {request.job_id!r} already exists: choose another --name")
    await uow.outbox.add(uow.session, request)


async def on_job_lifecycle(event: LifecycleEvent, uow: UnitOfWork) -> None:
    current = await repo.get_status(uow.session, job_id=event.job_id)
    if current is None:
        # Submitted straight onto NATS by an outside system: the admitted event carries it.
        if not isinstance(event, JobAdmitted):
            return
        await repo.insert_job(
            uow.session, job_id=event.job_id, team=event.tenant,
            request=event.request.model_dump(mode="json"),
        )
        current = "requested"
    status = next_status(current, STATUS_OF[type(event)])
    result = event.model_dump(mode="json", include={
        "exit_code", "duration_s", "artifacts", "metrics", "logged_params", "tracking", "placement"})
    await repo.set_status(
        uow.session, job_id=event.job_id, status=status,
        reason=getattr(event, "reason", "") or "", result=result,
    )
    if isinstance(event, JobCompleted):
        await register_model(event, uow)


async def register_model(event: JobCompleted, uow: UnitOfWork) -> None:
    """A completed job that declared a model name becomes that model's next version."""
    request = await repo.get_request(uow.session, job_id=event.job_id)
    if request.get("model_name"):
        version = await registry.register_version(
            uow.session, team=event.tenant, name=request["model_name"], request=request,
            completed=event,
        )
        await repo.set_status(uow.session, job_id=event.job_id, status="completed",
                              result={"model": {"name": request["model_name"], "version": version}})
