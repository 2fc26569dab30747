"""Endpoints are entity workflows (workflow id = endpoint name): an admission starts one with
its first ``deploy``, or hands a new version to the running one; commands become signals."""

from __future__ import annotations

from temporalio.client import Client

from contracts import DeleteEndpoint, EndpointAdmitted, RollbackEndpoint, WakeEndpoint
from services.kit.inbox import UnitOfWork
from services.provisioner.signals import signal
from workflows.endpoint import EndpointWorkflow
from workflows.endpoint_model import EndpointInput, EndpointState, Tuning


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
