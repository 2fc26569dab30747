"""JobWorkflow: provision -> run (heartbeating) raced against the max-runtime timer -> teardown
-> usage.recorded -> terminal event.

All I/O happens in activities (``services/provisioner/jobs/activities.py``); this module only
decides, and builds the contract events it publishes (``job_events``). Workflow id = job id,
so a redelivered ``jobs.admitted`` cannot start a job twice.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from contracts import Envelope, JobProvisioning, JobRequested, JobStarted
    from workflows import job_events
    from workflows.job_events import JobOutputs
    from workflows.publish import TYPED_PUBLISH_PATCH, Publish

TASK_QUEUE = "aicloud-jobs"
DEFAULT_MAX_RUNTIME_S = 12 * 3600
GRACE_PERIOD_S = 10
HEARTBEAT_TIMEOUT_S = 30


class JobInput(BaseModel):
    request: JobRequested
    max_runtime_s: int = Field(default=DEFAULT_MAX_RUNTIME_S, gt=0)
    grace_period_s: int = Field(default=GRACE_PERIOD_S, ge=0)
    gpu_type: str | None = None
    price_class: str = "on-demand"
    heartbeat_timeout_s: int = Field(default=HEARTBEAT_TIMEOUT_S, gt=0,
                                     description="How soon a dead worker is noticed.")
    egress: bool = Field(default=False, description="The product allows the job network egress.")


class RunInput(BaseModel):
    request: JobRequested
    grace_period_s: int
    egress: bool = False
    gpu_type: str | None = Field(default=None, description="Where the engine places by GPU type.")
    node_loss_preempts: bool = Field(default=False, description=(
        "A lost node ends the run as a preemption (non-retryable NodeLost) for the workflow to "
        "run again; runs from before this: a retryable failure."))
    stop_at_s: float | None = Field(default=None, description=(
        "When the run reaches the job's max runtime (epoch seconds): the activity stops the job "
        "itself then (SIGTERM, grace, kill) and returns it as terminated, on time however long "
        "the workflow's cancel takes to reach it. Runs from before this: None."))


class RunResult(BaseModel):
    exit_code: int
    started_at_s: float
    ended_at_s: float
    terminated: bool = False
    """Stopped by the activity at ``RunInput.stop_at_s`` (the max runtime), not by the job."""


class JobOutcome(BaseModel):
    job_id: str
    status: str
    exit_code: int | None = None
    reason: str = ""


JOB_STATUS_PATCH = "job-status-provisioning-running"
NODE_LOSS_PATCH = "node-loss-preempts"
RUN_DEADLINE_PATCH = "run-stops-at-its-deadline"
LOCAL_PUBLISH_PATCH = "job-events-published-locally"
NODE_LOST = "NodeLost"  # the ApplicationError type of a run whose node went away
PREEMPTED = "preempted"
MAX_PREEMPTIONS = 3  # preemptions a job survives; the next one ends it


@workflow.defn(name="JobWorkflow")
class JobWorkflow:
    def __init__(self) -> None:
        self._cancel_reason: str | None = None
        self._preempt_reason: str | None = None

    @workflow.signal
    def cancel(self, reason: str) -> None:
        self._cancel_reason = reason or "cancelled"

    @workflow.signal
    def preempt(self, reason: str) -> None:
        """The job's capacity was taken back (a spot interruption): stop it (SIGTERM, grace,
        kill) and run it again, resuming from its checkpoint; after MAX_PREEMPTIONS it ends
        with reason ``preempted``."""
        self._preempt_reason = reason or "capacity reclaimed"

    @workflow.run
    async def run(self, job: JobInput) -> JobOutcome:
        request = job.request
        # Workflows started after this change announce provisioning, and run_job announces
        # that the process runs; older histories replay the old way (one "started" here).
        status_v2 = workflow.patched(JOB_STATUS_PATCH)
        if status_v2:
            await self._emit(JobProvisioning(job_id=request.job_id, **_ids(request)))
        try:
            backend = await workflow.execute_activity(
                "provision_job", request, start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=job.heartbeat_timeout_s),
                retry_policy=RetryPolicy(maximum_attempts=5),
            )
        except ActivityError as exc:
            # Always end with a terminal event: quota releases what it reserved on it.
            reason = f"the job could not be provisioned: {exc.cause or exc}"
            await self._emit(job_events.failed(request, _ids(request), duration_s=0, exit_code=None,
                                               reason=reason))
            return JobOutcome(job_id=request.job_id, status="failed", reason=reason)
        if not status_v2:
            await self._emit(JobStarted(job_id=request.job_id, backend=backend, **_ids(request)))
        started = workflow.now().timestamp()
        outputs = None
        preempted: list[tuple[float, float]] = []  # the runs a preemption ended: (start, end)
        try:
            while True:
                segment = workflow.now().timestamp()
                result, stopped, failure = await self._run_until_limit(
                    job, limit_s=job.max_runtime_s - (segment - started))
                if stopped != PREEMPTED or len(preempted) >= MAX_PREEMPTIONS:
                    break
                # Run again on the same workspace: the job resumes from its last checkpoint
                # (AICLOUD_CHECKPOINT_DIR), within what is left of its max runtime.
                preempted.append((segment, workflow.now().timestamp()))
                workflow.logger.info("job %s preempted (%s), resuming from its checkpoint",
                                     request.job_id, self._preempt_reason)
                self._preempt_reason = None
            kind, exit_code, reason = _verdict(result, stopped, failure)
            if kind == "completed":  # collected before teardown releases the workspace
                outputs = await workflow.execute_activity(
                    "collect_outputs", request, result_type=JobOutputs,
                    start_to_close_timeout=timedelta(minutes=10),
                    heartbeat_timeout=timedelta(seconds=job.heartbeat_timeout_s),
                    retry_policy=RetryPolicy(maximum_attempts=5),
                )
        finally:
            await workflow.execute_activity(
                "teardown_job", request, start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=job.heartbeat_timeout_s),
                retry_policy=RetryPolicy(maximum_attempts=10),
            )
        ended = workflow.now().timestamp()
        last_start = preempted[-1][1] if preempted else started
        if result is not None:
            last_start, ended = result.started_at_s, result.ended_at_s
        for run_start, run_end in [*preempted, (last_start, ended)]:  # each run is billed
            await self._emit(job_events.usage(request, _ids(request), started_s=run_start, ended_s=run_end,
                                              gpu_type=job.gpu_type, price_class=job.price_class))
        if not preempted:
            started = last_start
        ids, duration = _ids(request), ended - started
        if kind == "completed":
            await self._emit(job_events.completed(request, ids, duration_s=duration, outputs=outputs))
        elif kind == "failed":
            await self._emit(job_events.failed(request, ids, duration_s=duration, exit_code=exit_code,
                                               reason=reason))
        else:
            await self._emit(job_events.terminated(request, ids, duration_s=duration, reason=reason))
        return JobOutcome(job_id=request.job_id, status=kind, exit_code=exit_code, reason=reason)

    async def _run_until_limit(
        self, job: JobInput, *, limit_s: float
    ) -> tuple[RunResult | None, str | None, str | None]:
        """Run the job for at most ``limit_s``; stop it then, or on a cancel or preempt signal
        (SIGTERM, grace, kill), or when the engine lost its node (a preemption too: the run is
        billed and the job resumes from its checkpoint, on another node). Returns (result, why
        it was stopped, why it failed)."""
        node_loss_preempts = workflow.patched(NODE_LOSS_PATCH)
        # Runs started after this change stop themselves at the deadline (the activity's own
        # clock), so a max runtime holds even while the cancel below waits for a heartbeat.
        stop_at_s = workflow.now().timestamp() + limit_s if workflow.patched(RUN_DEADLINE_PATCH) else None
        handle = workflow.start_activity(
            "run_job",
            RunInput(request=job.request, grace_period_s=job.grace_period_s, egress=job.egress,
                     gpu_type=job.gpu_type, node_loss_preempts=node_loss_preempts, stop_at_s=stop_at_s),
            result_type=RunResult,
            start_to_close_timeout=timedelta(seconds=job.max_runtime_s + job.grace_period_s + 60),
            heartbeat_timeout=timedelta(seconds=job.heartbeat_timeout_s),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        try:
            await workflow.wait_condition(
                lambda: handle.done() or self._cancel_reason is not None
                or self._preempt_reason is not None,
                timeout=timedelta(seconds=max(limit_s, 0.001)),
            )
        except TimeoutError:
            self._cancel_reason = "max_runtime"
        if handle.done():
            try:
                result = handle.result()
            except ActivityError as exc:
                if node_loss_preempts and _node_lost(exc):
                    self._preempt_reason = f"node lost: {exc.cause}"
                    return None, PREEMPTED, None
                return None, None, str(exc.cause or exc)
            if result.terminated:  # it reached its deadline before the timer here fired
                return None, self._cancel_reason or "max_runtime", None
            return result, None, None
        handle.cancel()
        try:
            await handle
        except (ActivityError, CancelledError):
            pass
        return None, self._cancel_reason or PREEMPTED, None

    async def _emit(self, event: Envelope) -> None:
        """Publish a contract event this workflow built. Runs started before the typed-publish
        patch keep their activity (``emit_job_event``), now handed the same ``Publish``; runs
        started after the local-publish patch publish in a local activity (run by this worker,
        recorded as a marker: no task for Temporal to dispatch, a third of a job's activities)."""
        activity = "publish" if workflow.patched(TYPED_PUBLISH_PATCH) else "emit_job_event"
        retry = RetryPolicy(maximum_attempts=20, maximum_interval=timedelta(seconds=30))
        if activity == "publish" and workflow.patched(LOCAL_PUBLISH_PATCH):
            await workflow.execute_local_activity(
                activity, Publish.of(event), start_to_close_timeout=timedelta(seconds=30), retry_policy=retry)
            return
        await workflow.execute_activity(
            activity, Publish.of(event), start_to_close_timeout=timedelta(seconds=30), retry_policy=retry)


def _ids(request: JobRequested) -> dict[str, Any]:
    """A new event's id and time, the same on every replay."""
    return job_events.envelope(request, event_id=workflow.uuid4(), at=workflow.now())


def _node_lost(exc: ActivityError) -> bool:
    return isinstance(exc.cause, ApplicationError) and exc.cause.type == NODE_LOST


def _verdict(
    result: RunResult | None, stopped: str | None, failure: str | None
) -> tuple[str, int | None, str]:
    """Terminal event kind, exit code and reason for how the run ended."""
    if stopped is not None:
        return "terminated", None, stopped
    if failure is not None or result is None:
        return "failed", None, f"the job could not run: {failure}"
    if result.exit_code == 0:
        return "completed", 0, ""
    return "failed", result.exit_code, f"command exited with code {result.exit_code}"
