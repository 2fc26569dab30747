"""JobWorkflow's activities: all of the job's I/O (compute backend, bus) happens here."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from contracts import (
    Envelope,
    JobCompleted,
    JobFailed,
    JobProvisioning,
    JobRequested,
    JobStarted,
    JobTerminated,
    UsageRecorded,
)
from services.kit.bus import Bus
from services.provisioner.backends import ComputeBackend, DatasetUnavailable
from services.provisioner.outputs import collect
from workflows.job import EmitInput, JobOutputs, RunInput, RunResult

log = structlog.get_logger(__name__)
SOURCE = "provisioner"
TERMINATION_REASONS = {"max_runtime", "cancelled", "budget_exhausted", "preempted"}


class JobActivities:
    def __init__(self, *, bus: Bus, backend: ComputeBackend, tracking_uri: str | None = None) -> None:
        self._bus = bus
        self._backend = backend
        self._tracking_uri = tracking_uri

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        """Every activity JobWorkflow calls, for the worker."""
        return [self.provision_job, self.run_job, self.collect_outputs, self.teardown_job,
                self.emit_job_event]

    @activity.defn(name="provision_job")
    async def provision_job(self, request: JobRequested) -> str:
        try:
            await self._backend.provision(request)
        except DatasetUnavailable as exc:
            raise ApplicationError(str(exc), type="DatasetUnavailable", non_retryable=True) from None
        return self._backend.name

    @activity.defn(name="collect_outputs")
    async def collect_outputs(self, request: JobRequested) -> JobOutputs:
        return await asyncio.to_thread(
            collect, request=request, workspace=self._backend.workspace(request),
            dataset_dir=self._backend.dataset_dir(request), artifact_root=self._backend.artifact_root,
            tracking_uri=self._tracking_uri,
        )

    @activity.defn(name="run_job")
    async def run_job(self, run: RunInput) -> RunResult:
        started = time.time()
        # Heartbeat from the first moment: ending a dead worker's attempt and starting the
        # sandbox must not look like a dead worker themselves.
        starting = asyncio.create_task(self._backend.start(run.request, egress=run.egress))
        while not starting.done():
            activity.heartbeat()
            await asyncio.wait([starting], timeout=0.5)
        job = starting.result()
        await self._announce_running(run.request)
        try:
            while (code := await job.wait()) is None:
                activity.heartbeat()
        except asyncio.CancelledError:
            code = await job.stop(grace_period_s=run.grace_period_s)
            log.info("job.stopped", job_id=run.request.job_id, exit_code=code)
            raise
        return RunResult(exit_code=code, started_at_s=started, ended_at_s=time.time())

    async def _announce_running(self, request: JobRequested) -> None:
        """``jobs.started`` (status ``running``) once the process runs: from here, not from the
        workflow, so it means the process started, not that it is about to. Its event id is
        fixed per attempt (a retried publish is one message; a resumed job announces again).
        A failed publish only delays the status, never the job."""
        info = activity.info()
        event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"aicloud:{info.workflow_id}:{info.workflow_run_id}:"
                                                  f"{info.activity_id}:{info.attempt}:started")
        try:
            await self._bus.publish(JobStarted(
                event_id=event_id, tenant=request.tenant, source=SOURCE,
                correlation_id=request.job_id, job_id=request.job_id, backend=self._backend.name))
        except Exception as exc:
            log.warning("job.started_not_published", job_id=request.job_id, error=str(exc))

    @activity.defn(name="teardown_job")
    async def teardown_job(self, request: JobRequested) -> None:
        await self._backend.teardown(request)

    @activity.defn(name="emit_job_event")
    async def emit_job_event(self, fact: EmitInput) -> None:
        await self._bus.publish(to_event(fact))


def to_event(fact: EmitInput) -> Envelope:
    """The contract for a lifecycle fact; its event_id comes from the workflow (retry-safe)."""
    request = fact.request
    common = {
        "event_id": uuid.UUID(fact.event_id), "tenant": request.tenant, "source": SOURCE,
        "correlation_id": request.job_id, "job_id": request.job_id,
    }
    duration = max(fact.ended_at_s - fact.started_at_s, 0.0)
    if fact.kind == "provisioning":
        return JobProvisioning(**common)
    if fact.kind == "started":  # workflows started before run_job announced it (patch below)
        return JobStarted(backend=fact.backend, **common)
    if fact.kind == "completed":
        outputs = fact.outputs or JobOutputs()
        return JobCompleted(
            exit_code=0, duration_s=duration, artifacts=[a.uri for a in outputs.artifacts],
            stored_artifacts=outputs.artifacts, metrics=outputs.metrics,
            dataset_digest=outputs.dataset_digest, code_digest=outputs.code_digest,
            logged_params=outputs.logged_params, tracking=outputs.tracking, **common,
        )
    if fact.kind == "failed":
        return JobFailed(exit_code=fact.exit_code, duration_s=duration, reason=fact.reason, **common)
    if fact.kind == "terminated":
        reason = fact.reason if fact.reason in TERMINATION_REASONS else "cancelled"
        return JobTerminated(duration_s=duration, reason=reason, **common)
    if fact.kind == "usage":
        del common["job_id"]
        return UsageRecorded(
            kind="training", resource_id=request.job_id, user=request.requested_by,
            gpus_requested=request.gpus, gpus_used=request.gpus, vcpus=1,
            gpu_type=fact.gpu_type if request.gpus else None,
            price_class="spot" if fact.price_class == "spot" else "on-demand",
            started_at=datetime.fromtimestamp(fact.started_at_s, UTC),
            ended_at=datetime.fromtimestamp(max(fact.ended_at_s, fact.started_at_s), UTC),
            **common,
        )
    raise ValueError(f"unknown job fact {fact.kind!r}")
