"""provisioner wiring: subjects to handlers and routes, started and stopped with the service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

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
from services.kit.runtime import Service, run
from services.kit.settings import load_settings
from services.kit.temporal import Temporal
from services.provisioner.backends.ray import RayBackend
from services.provisioner.bootstrap import bootstrap
from services.provisioner.endpoints import starter as endpoints
from services.provisioner.jobs import starter as jobs
from services.provisioner.jobs.api import build_router
from services.provisioner.lifecycle import Lifecycle
from services.provisioner.notebooks import starter as notebooks
from services.provisioner.settings import ProvisionerSettings


def build(settings: ProvisionerSettings) -> Service:
    service = Service(settings, title="aicloud provisioner")
    ports = bootstrap(settings, bus=service.bus)
    lifecycle = Lifecycle(ports)
    service.on_start(lifecycle.start)
    service.on_stop(lifecycle.stop)
    service.add_check("temporal", ports.temporal.check)
    if isinstance(ports.backend, RayBackend):
        service.add_check("ray", ports.backend.check)
    queue = {"task_queue": settings.task_queue}
    on = _with_client(ports.temporal)
    service.consume(JobAdmitted, on(jobs.on_job_admitted, **queue,
                                    heartbeat_timeout_s=settings.job_heartbeat_timeout_s))
    service.consume(CancelJob, on(jobs.on_cancel_job))
    service.consume(BudgetExhausted, on(jobs.on_budget_exhausted, **queue))
    service.consume(EndpointAdmitted, on(endpoints.on_endpoint_admitted, **queue, tuning=ports.tuning))
    service.consume(WakeEndpoint, on(endpoints.on_wake))
    service.consume(RollbackEndpoint, on(endpoints.on_rollback))
    service.consume(DeleteEndpoint, on(endpoints.on_delete))
    service.consume(NotebookAdmitted, on(notebooks.on_notebook_admitted, **queue))
    service.consume(StopNotebook, on(notebooks.on_stop_notebook))
    service.consume(ExtendNotebook, on(notebooks.on_extend_notebook))
    service.consume_batch(InferenceCompleted, ports.book.ingest, fetch=1000, linger_s=0.25)

    async def preempt(job_id: str, reason: str) -> bool:
        return await jobs.preempt_job(ports.temporal.client, job_id=job_id, reason=reason)

    service.include_router(build_router(ports.backend, preempt))
    return service


def _with_client(temporal: Temporal) -> Callable[..., Callable[[Any, Any], Awaitable[None]]]:
    """A handler given the Temporal client, connected once the service has started."""
    def on(handler: Any, **extra: Any) -> Callable[[Any, Any], Awaitable[None]]:
        async def handle(message: Any, uow: Any) -> None:
            await handler(message, uow, client=temporal.client, **extra)
        return handle
    return on


def main() -> None:
    run(build, load_settings(ProvisionerSettings))
