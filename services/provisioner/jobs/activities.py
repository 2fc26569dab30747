"""JobWorkflow's activities: all of the job's I/O (compute backend, its outputs) happens here;
its lifecycle events go out through ``publish``."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from contracts import GpuSampled, JobRequested, JobStarted
from services.kit.bus import Bus
from services.provisioner.backends import (
    ComputeBackend,
    DatasetUnavailable,
    JobUnplaceable,
    NodeLost,
    RunningJob,
)
from services.provisioner.backends.engines import Engines, EngineUnavailable
from services.provisioner.heartbeat import heartbeating
from services.provisioner.jobs.gpus import SAMPLE_EVERY_S
from services.provisioner.jobs.outputs import collect
from workflows.job import NODE_LOST, JobOutputs, RunInput, RunResult

log = structlog.get_logger(__name__)
SOURCE = "provisioner"
FAST_START_S = 2.0
"""A start taking longer than this (a job queued on its engine for a node) heartbeats slower."""
WAITING_HEARTBEAT_S = 5.0
"""How often a job still waiting for its engine to start it heartbeats. Each heartbeat is a
request to Temporal (2-3 ms of the dev server's CPU each): a hundred queued Ray jobs at one a
second kept a quarter of a core busy during a burst (bench/engine.py). A cancel of a job that
is not running yet is heard this much later."""
RUNNING_HEARTBEATS_PER_S = 10.0
"""Heartbeats a second the running jobs of one provisioner send together, at most one a second
each: with up to 10 running a cancel is heard within a second, with 100 within 10 s (a max
runtime does not wait for it: the activity stops the job at its deadline itself). At one a
second each, a hundred running jobs kept Temporal's dev server a third of a core busy."""


def running_heartbeat_s(running: int, ceiling_s: float) -> float:
    """A running job's heartbeat interval when ``running`` jobs run here (it included)."""
    return min(ceiling_s, max(1.0, running / RUNNING_HEARTBEATS_PER_S))


def waiting_heartbeat_s(heartbeat_timeout_s: float | None) -> float:
    """The waiting heartbeat, well inside the activity's heartbeat timeout."""
    if not heartbeat_timeout_s:
        return WAITING_HEARTBEAT_S
    return max(0.5, min(WAITING_HEARTBEAT_S, heartbeat_timeout_s / 3))


class JobActivities:
    def __init__(self, *, bus: Bus, backend: ComputeBackend, tracking_uri: str | None = None,
                 engines: Engines | None = None) -> None:
        self.bus = bus
        self._backend = backend
        self._engines = engines
        self._tracking_uri = tracking_uri
        self._running = 0  # jobs whose process runs, watched by this worker

    def _for(self, request: JobRequested) -> ComputeBackend:
        """The backend of the job's engine (its product's, else the platform's)."""
        return self._engines.for_request(request) if self._engines is not None else self._backend

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        """Every activity JobWorkflow calls, for the worker."""
        return [self.provision_job, self.run_job, self.collect_outputs, self.teardown_job]

    @activity.defn(name="provision_job")
    async def provision_job(self, request: JobRequested) -> str:
        try:
            backend = self._for(request)
            await heartbeating(backend.provision(request))
        except DatasetUnavailable as exc:
            raise ApplicationError(str(exc), type="DatasetUnavailable", non_retryable=True) from None
        except EngineUnavailable as exc:
            raise ApplicationError(str(exc), type="EngineUnavailable", non_retryable=True) from None
        return backend.name

    @activity.defn(name="collect_outputs")
    async def collect_outputs(self, request: JobRequested) -> JobOutputs:
        backend = self._for(request)
        return await heartbeating(asyncio.to_thread(
            collect, request=request, workspace=backend.workspace(request),
            dataset_dir=backend.dataset_dir(request), artifact_root=backend.artifact_root,
            tracking_uri=self._tracking_uri,
        ))

    @activity.defn(name="run_job")
    async def run_job(self, run: RunInput) -> RunResult:
        started = time.time()
        # Heartbeat from the first moment: ending a dead worker's attempt and starting the
        # sandbox must not look like a dead worker themselves.
        backend = self._for(run.request)
        timeout = activity.info().heartbeat_timeout
        waiting_s = waiting_heartbeat_s(timeout.total_seconds() if timeout else None)
        job: RunningJob | None = None
        stopping: asyncio.Future[int] | None = None
        try:
            job = await heartbeating(
                backend.start(run.request, egress=run.egress, gpu_type=run.gpu_type,
                              grace_period_s=run.grace_period_s),
                every_s=lambda: waiting_s if time.time() - started > FAST_START_S else 0.5)
            await self._announce_running(run.request, job, backend=backend.name)
            self._running += 1
            try:
                sampled_at = beat_at = time.monotonic()
                while (code := await job.wait()) is None:
                    if run.stop_at_s is not None and time.time() >= run.stop_at_s:
                        stopping = asyncio.ensure_future(job.stop(grace_period_s=run.grace_period_s))
                        code = await heartbeating(asyncio.shield(stopping))
                        log.info("job.stopped_at_deadline", job_id=run.request.job_id, exit_code=code)
                        return RunResult(exit_code=code, started_at_s=started, ended_at_s=time.time(),
                                         terminated=True)
                    if time.monotonic() - beat_at >= running_heartbeat_s(self._running, waiting_s):
                        beat_at = time.monotonic()
                        activity.heartbeat()
                    if time.monotonic() - sampled_at >= SAMPLE_EVERY_S:
                        sampled_at = time.monotonic()
                        await self._report_gpus(run.request, job)
            finally:
                self._running -= 1
        except JobUnplaceable as exc:  # a reservation must not wait forever on a full cluster
            raise ApplicationError(str(exc), type="JobUnplaceable", non_retryable=True) from None
        except NodeLost as exc:
            if not run.node_loss_preempts:
                raise  # a workflow from before: it retries the activity
            # the workflow bills this run and runs the job again from its checkpoint
            raise ApplicationError(str(exc), type=NODE_LOST, non_retryable=True) from None
        except asyncio.CancelledError:
            if job is None:  # cancelled while starting: heartbeating cancelled the start
                raise
            # a stop already under way (the deadline) is waited for, not started twice
            code = await (stopping or job.stop(grace_period_s=run.grace_period_s))
            log.info("job.stopped", job_id=run.request.job_id, exit_code=code)
            raise
        return RunResult(exit_code=code, started_at_s=started, ended_at_s=time.time())

    async def _report_gpus(self, request: JobRequested, job: RunningJob) -> None:
        """``gpus.sampled`` with the job's devices as its node reads them; nothing without a GPU.
        A failed reading or publish is logged: it never stops the job."""
        try:
            devices = await job.gpu_samples()
            if devices:
                await self.bus.publish(GpuSampled(
                    tenant=request.tenant, source=SOURCE, correlation_id=request.job_id,
                    workload="job", workload_id=request.job_id, devices=devices))
        except Exception as exc:
            log.warning("job.gpu_sample_failed", job_id=request.job_id, error=str(exc)[:500])

    async def _announce_running(self, request: JobRequested, job: RunningJob, *, backend: str) -> None:
        """``jobs.started`` (status ``running``) once the process runs: from here, not from the
        workflow, so it means the process started, not that it is about to. Its event id is
        fixed per attempt (a retried publish is one message; a resumed job announces again).
        A failed publish only delays the status, never the job."""
        info = activity.info()
        event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"aicloud:{info.workflow_id}:{info.workflow_run_id}:"
                                                  f"{info.activity_id}:{info.attempt}:started")
        try:
            # The entrypoint records its GPU ids once its interpreter is up: seconds on a
            # loaded node. Heartbeat meanwhile, so the wait never looks like a dead worker.
            placement = await heartbeating(job.placement(), every_s=0.5)
            await self.bus.publish(JobStarted(
                event_id=event_id, tenant=request.tenant, source=SOURCE,
                correlation_id=request.job_id, job_id=request.job_id, backend=backend,
                placement=placement))
        except Exception as exc:
            log.warning("job.started_not_published", job_id=request.job_id, error=str(exc))

    @activity.defn(name="teardown_job")
    async def teardown_job(self, request: JobRequested) -> None:
        try:
            backend = self._for(request)
        except EngineUnavailable:
            return  # it never started anywhere
        await heartbeating(backend.teardown(request))
