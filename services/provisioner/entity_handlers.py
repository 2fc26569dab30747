"""provisioner's handlers for the long-lived workloads: endpoints and notebooks are entity
workflows (workflow id = endpoint name / notebook id); events start them or signal them."""

from __future__ import annotations

from typing import Any

import structlog
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from contracts import (
    DeleteEndpoint,
    EndpointAdmitted,
    ExtendNotebook,
    NotebookAdmitted,
    RollbackEndpoint,
    StopNotebook,
    WakeEndpoint,
)
from services.kit.inbox import UnitOfWork
from workflows.endpoint import EndpointWorkflow
from workflows.endpoint_model import EndpointInput, EndpointState, Tuning
from workflows.notebook import NotebookState, NotebookWorkflow

log = structlog.get_logger(__name__)


async def on_endpoint_admitted(event: EndpointAdmitted, uow: UnitOfWork, *, client: Client, task_queue: str,
                               tuning: Tuning) -> None:
    """Start the endpoint's workflow with its first ``deploy``, or hand a new version to it."""
    state = EndpointState(endpoint=event.endpoint, team=event.tenant)
    await client.start_workflow(
        EndpointWorkflow.run, EndpointInput(state=state, tuning=tuning), id=event.endpoint,
        task_queue=task_queue, start_signal="deploy", start_signal_args=[event.request],
        memo={"team": event.tenant})


async def on_wake(command: WakeEndpoint, uow: UnitOfWork, *, client: Client) -> None:
    await signal(client, command.endpoint, "wake")


async def on_rollback(command: RollbackEndpoint, uow: UnitOfWork, *, client: Client) -> None:
    await signal(client, command.endpoint, "rollback", command.reason)


async def on_delete(command: DeleteEndpoint, uow: UnitOfWork, *, client: Client) -> None:
    await signal(client, command.endpoint, "delete", "deleted by its owner")


async def on_notebook_admitted(event: NotebookAdmitted, uow: UnitOfWork, *, client: Client,
                               task_queue: str) -> None:
    try:
        await client.start_workflow(
            NotebookWorkflow.run, NotebookState(request=event.request), id=event.notebook_id,
            task_queue=task_queue, id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            memo={"team": event.tenant})
    except WorkflowAlreadyStartedError:
        return  # a redelivered admission


async def on_stop_notebook(command: StopNotebook, uow: UnitOfWork, *, client: Client) -> None:
    await signal(client, command.notebook_id, "stop", command.reason)


async def on_extend_notebook(command: ExtendNotebook, uow: UnitOfWork, *, client: Client) -> None:
    await signal(client, command.notebook_id, "extend", command.extra_s)


async def signal(client: Client, workflow_id: str, name: str, *args: Any) -> None:
    """Signal a running entity workflow; one that already ended is logged, not retried forever."""
    try:
        await client.get_workflow_handle(workflow_id).signal(name, *args)
    except RPCError as exc:
        text = str(exc).lower()
        if "not found" not in text and "already completed" not in text:
            raise
        log.info("workflow.signal_ignored", workflow_id=workflow_id, signal=name, reason=str(exc))
