"""Notebooks are entity workflows (workflow id = notebook id): an admission starts one once;
the owner's commands become signals."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from contracts import ExtendNotebook, NotebookAdmitted, StopNotebook
from services.kit.inbox import UnitOfWork
from services.provisioner.signals import signal
from workflows.notebook import NotebookState, NotebookWorkflow


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
