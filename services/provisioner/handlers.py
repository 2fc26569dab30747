"""provisioner's handlers: start a workflow per admitted job, forward cancellations."""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from contracts import CancelJob, JobAdmitted
from services.kit.inbox import UnitOfWork
from workflows.job import DEFAULT_MAX_RUNTIME_S, JobInput, JobWorkflow


async def on_job_admitted(event: JobAdmitted, uow: UnitOfWork, *, client: Client,
                          task_queue: str) -> None:
    request = event.request
    job = JobInput(request=request, max_runtime_s=request.max_runtime_s or DEFAULT_MAX_RUNTIME_S)
    try:
        await client.start_workflow(
            JobWorkflow.run, job, id=request.job_id, task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        return  # a redelivered admission: the job already runs (or ran) once


async def on_cancel_job(command: CancelJob, uow: UnitOfWork, *, client: Client) -> None:
    handle: WorkflowHandle[JobWorkflow, object] = client.get_workflow_handle_for(
        JobWorkflow.run, command.job_id
    )
    try:
        await handle.signal(JobWorkflow.cancel, command.reason)
    except RPCError as exc:
        if "not found" not in str(exc).lower() and "already completed" not in str(exc).lower():
            raise
