"""provisioner wiring: subjects to handlers, the Temporal worker, nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import structlog

from contracts import (
    BudgetExhausted,
    CancelJob,
    DeleteEndpoint,
    EndpointAdmitted,
    ExtendNotebook,
    InferenceCompleted,
    JobAdmitted,
    NotebookAdmitted,
    RollbackEndpoint,
    StopNotebook,
    WakeEndpoint,
)
from services.kit.catalog_keys import CatalogKeys
from services.kit.runtime import Service, run
from services.kit.settings import load_settings
from services.provisioner import entity_handlers, handlers, recovery
from services.provisioner.activities import JobActivities
from services.provisioner.api import build_router
from services.provisioner.backends.local import LocalBackend
from services.provisioner.canary import CanaryBook
from services.provisioner.endpoint_activities import EndpointActivities, Fleet
from services.provisioner.notebook_activities import NotebookActivities
from services.provisioner.notebooks import Notebook, NotebookProxy
from services.provisioner.serving import hub
from services.provisioner.settings import ProvisionerSettings
from services.provisioner.temporal import JobWorker, connect
from services.provisioner.watch import EndpointWatcher, NotebookWatcher
from workflows.endpoint_model import Tuning

log = structlog.get_logger(__name__)


def build(settings: ProvisionerSettings) -> Service:
    service = Service(settings, title="aicloud provisioner")
    backend = LocalBackend(
        work_dir=Path(settings.work_dir).resolve(), memory_limit_mb=settings.memory_limit_mb,
        dataset_root=settings.dataset_root, artifact_root=settings.artifact_root,
        isolation=settings.isolation,
        # jobs must not see other workloads' sockets (a model server, an unauthenticated
        # Jupyter) or files (running notebooks, the teams' volumes)
        hidden=[*settings.sandbox_hidden_paths, settings.serving_root, settings.notebook_root,
                settings.volume_root],
    )
    activities = JobActivities(bus=service.bus, backend=backend, tracking_uri=settings.mlflow_tracking_uri)
    state: dict[str, Any] = {}
    book, fleet = CanaryBook(), Fleet()
    notebooks: dict[str, Notebook] = {}
    endpoints = EndpointActivities(
        bus=service.bus, sandbox=backend.sandbox, serving_root=settings.serving_root,
        artifact_root=backend.artifact_root, hf_mirror=settings.hf_mirror, book=book, fleet=fleet)
    catalog = httpx.AsyncClient(base_url=settings.catalog_url or "http://catalog.invalid", timeout=5)
    keys = CatalogKeys(catalog)
    proxy = NotebookProxy(settings.notebook_proxy_host, settings.notebook_proxy_port,
                          authenticate=keys.team_for)
    notebook_activities = NotebookActivities(
        bus=service.bus, sandbox=backend.sandbox, root=settings.notebook_root,
        volumes=settings.volume_root.resolve(), proxy=proxy, notebooks=notebooks)
    tuning = Tuning(canary_window_s=settings.canary_window_s,
                    canary_min_requests=settings.canary_min_requests)

    async def signal(workflow_id: str, name: str, arg: Any) -> None:
        await entity_handlers.signal(state["client"], workflow_id, name, arg)

    watchers: list[EndpointWatcher | NotebookWatcher] = [EndpointWatcher(fleet, signal),
                                                         NotebookWatcher(notebooks, signal)]

    async def start_temporal() -> None:
        client = await connect(settings.temporal_address, settings.temporal_namespace)
        state["client"] = client
        if settings.hf_mirror is not None:
            seeded = await asyncio.to_thread(hub.seed_mirror, settings.hf_mirror)
            log.info("hf_mirror.seeded", mirror=str(settings.hf_mirror), models=seeded)
        await recovery.reap(sandbox=backend.sandbox, serving_root=settings.serving_root,
                            notebook_root=settings.notebook_root)
        await proxy.start()
        state["worker"] = worker = JobWorker(
            client, task_queue=settings.task_queue,
            activities=[*activities.all(), *endpoints.all(), *notebook_activities.all()],
        )
        worker.start()
        # in the background: the first query to each workflow waits out the dead worker's queue
        state["recovery"] = asyncio.create_task(
            recovery.report_lost(client, task_queue=settings.task_queue, live=fleet.replicas))
        for watcher in watchers:
            watcher.start()

    async def stop_temporal() -> None:
        if "recovery" in state:
            state["recovery"].cancel()
        for watcher in watchers:
            await watcher.stop()
        if "worker" in state:
            await state["worker"].stop()
        for replica_id, (_, replica) in list(fleet.replicas.items()):
            await replica.stop()  # a stopped provisioner leaves no replica running
            fleet.replicas.pop(replica_id, None)
        for notebook in list(notebooks.values()):
            await notebook.stop()
        await proxy.stop()
        await keys.aclose()

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

    def with_client(handler: Any, **extra: Any) -> Any:
        async def handle(event: Any, uow: Any) -> None:
            await handler(event, uow, client=state["client"], **extra)
        return handle

    service.consume(EndpointAdmitted, with_client(entity_handlers.on_endpoint_admitted,
                                                  task_queue=settings.task_queue, tuning=tuning))
    service.consume(WakeEndpoint, with_client(entity_handlers.on_wake))
    service.consume(RollbackEndpoint, with_client(entity_handlers.on_rollback))
    service.consume(DeleteEndpoint, with_client(entity_handlers.on_delete))
    service.consume(NotebookAdmitted, with_client(entity_handlers.on_notebook_admitted,
                                                  task_queue=settings.task_queue))
    service.consume(StopNotebook, with_client(entity_handlers.on_stop_notebook))
    service.consume(ExtendNotebook, with_client(entity_handlers.on_extend_notebook))
    service.consume_batch(InferenceCompleted, book.ingest, fetch=1000, linger_s=0.25)
    async def preempt(job_id: str, reason: str) -> bool:
        return await handlers.preempt_job(state["client"], job_id=job_id, reason=reason)

    service.include_router(build_router(backend, preempt))
    return service


def main() -> None:
    run(build, load_settings(ProvisionerSettings))
