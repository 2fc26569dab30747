"""provisioner's handlers: start a workflow per admitted job, forward cancellations, stop a
team's running jobs when its budget says ``stop``."""

from __future__ import annotations

import structlog
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from contracts import BudgetExhausted, CancelJob, JobAdmitted
from services.kit.inbox import UnitOfWork
from workflows.job import DEFAULT_MAX_RUNTIME_S, HEARTBEAT_TIMEOUT_S, JobInput, JobWorkflow

log = structlog.get_logger(__name__)


async def on_job_admitted(event: JobAdmitted, uow: UnitOfWork, *, client: Client, task_queue: str,
                          heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> None:
    job = job_input(event, heartbeat_timeout_s=heartbeat_timeout_s)
    try:
        await client.start_workflow(
            JobWorkflow.run, job, id=event.request.job_id, task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            memo={"team": event.tenant},  # found again when the team's budget stops its work
        )
    except WorkflowAlreadyStartedError:
        return  # a redelivered admission: the job already runs (or ran) once


def job_input(event: JobAdmitted, *, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> JobInput:
    """The product's max runtime, or the user's if shorter; usage labelled by GPU type and price;
    the run's heartbeat timeout as the provisioner is configured."""
    request, product = event.request, event.product
    limit = product.max_runtime_s if product else DEFAULT_MAX_RUNTIME_S
    return JobInput(
        request=request,
        max_runtime_s=min(request.max_runtime_s or limit, limit),
        gpu_type=_gpu_type(event),
        price_class=product.price_class if product else "on-demand",
        egress=product is not None and product.network == "egress",
        heartbeat_timeout_s=heartbeat_timeout_s,
    )


def _gpu_type(event: JobAdmitted) -> str | None:
    """The type quota reserved; admissions from before it said so: the request's, else the
    product's first."""
    request, product = event.request, event.product
    if not request.gpus:
        return None
    if event.gpu_type or request.gpu_type:
        return event.gpu_type or request.gpu_type
    return product.gpu_types[0] if product and product.gpu_types else None


async def on_cancel_job(command: CancelJob, uow: UnitOfWork, *, client: Client) -> None:
    handle: WorkflowHandle[JobWorkflow, object] = client.get_workflow_handle_for(
        JobWorkflow.run, command.job_id
    )
    try:
        await handle.signal(JobWorkflow.cancel, command.reason)
    except RPCError as exc:
        if "not found" not in str(exc).lower() and "already completed" not in str(exc).lower():
            raise


async def preempt_job(client: Client, *, job_id: str, reason: str) -> bool:
    """Tell a running job its capacity is gone (a spot interruption): it is stopped and run
    again from its checkpoint. False when no such job is running."""
    handle: WorkflowHandle[JobWorkflow, object] = client.get_workflow_handle_for(
        JobWorkflow.run, job_id)
    try:
        await handle.signal(JobWorkflow.preempt, reason)
    except RPCError as exc:
        if "not found" in str(exc).lower() or "already completed" in str(exc).lower():
            return False
        raise
    return True


BUDGET_EXHAUSTED = "budget_exhausted"


async def on_budget_exhausted(event: BudgetExhausted, uow: UnitOfWork, *, client: Client,
                              task_queue: str) -> None:
    """``stop``: every running job of the team ends (SIGTERM, grace, kill) with that reason."""
    if event.action != "stop":
        return
    query = f"WorkflowType = 'JobWorkflow' AND ExecutionStatus = 'Running' AND TaskQueue = '{task_queue}'"
    stopped = []
    async for execution in client.list_workflows(query):
        memo = await execution.memo()
        if memo.get("team") != event.tenant:
            continue
        await on_cancel_job(CancelJob(tenant=event.tenant, job_id=execution.id, reason=BUDGET_EXHAUSTED,
                                      source="provisioner"), uow, client=client)
        stopped.append(execution.id)
    log.info("budget.stopped_jobs", team=event.tenant, budget_id=event.budget_id, jobs=stopped)
