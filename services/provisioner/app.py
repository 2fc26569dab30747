"""provisioner wiring: subjects to handlers, the Temporal worker, nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contracts import BudgetExhausted, CancelJob, JobAdmitted
from services.kit.runtime import Service, run
from services.kit.settings import load_settings
from services.provisioner import handlers
from services.provisioner.activities import JobActivities
from services.provisioner.api import build_router
from services.provisioner.backends.local import LocalBackend
from services.provisioner.settings import ProvisionerSettings
from services.provisioner.temporal import JobWorker, connect


def build(settings: ProvisionerSettings) -> Service:
    service = Service(settings, title="aicloud provisioner")
    backend = LocalBackend(
        work_dir=Path(settings.work_dir).resolve(), memory_limit_mb=settings.memory_limit_mb,
        dataset_root=settings.dataset_root, artifact_root=settings.artifact_root,
        isolation=settings.isolation, hidden=settings.sandbox_hidden_paths,
    )
    activities = JobActivities(bus=service.bus, backend=backend)
    state: dict[str, Any] = {}

    async def start_temporal() -> None:
        client = await connect(settings.temporal_address, settings.temporal_namespace)
        state["worker"] = worker = JobWorker(
            client, task_queue=settings.task_queue,
            activities=activities.all(),
        )
        worker.start()
        state["client"] = client

    async def stop_temporal() -> None:
        if "worker" in state:
            await state["worker"].stop()

    async def temporal_ready() -> None:
        await state["client"].service_client.check_health()

    async def admitted(event: JobAdmitted, uow: Any) -> None:
        await handlers.on_job_admitted(event, uow, client=state["client"],
                                       task_queue=settings.task_queue)

    async def cancel(command: CancelJob, uow: Any) -> None:
        await handlers.on_cancel_job(command, uow, client=state["client"])

    service.on_start(start_temporal)
    service.on_stop(stop_temporal)
    service.add_check("temporal", temporal_ready)
    service.consume(JobAdmitted, admitted)
    service.consume(CancelJob, cancel)

    async def budget_exhausted(event: BudgetExhausted, uow: Any) -> None:
        await handlers.on_budget_exhausted(event, uow, client=state["client"],
                                           task_queue=settings.task_queue)

    service.consume(BudgetExhausted, budget_exhausted)
    service.include_router(build_router(backend))
    return service


def main() -> None:
    run(build, load_settings(ProvisionerSettings))
