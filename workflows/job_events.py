"""The contract events JobWorkflow publishes, built from what it knows (pure: no clock, no ids
of its own — the workflow passes ``ids`` with its deterministic event id and time)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from contracts import JobCompleted, JobFailed, JobRequested, JobTerminated, UsageRecorded
from contracts.jobs import Artifact, TrackingRun

SOURCE = "provisioner"
TERMINATION_REASONS = ("max_runtime", "cancelled", "budget_exhausted", "preempted")


class JobOutputs(BaseModel):
    artifacts: list[Artifact] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    dataset_digest: str | None = None
    code_digest: str | None = None
    logged_params: dict[str, str] = Field(default_factory=dict)
    tracking: TrackingRun | None = None


def envelope(request: JobRequested, *, event_id: Any, at: datetime) -> dict[str, Any]:
    return {"event_id": event_id, "occurred_at": at, "tenant": request.tenant, "source": SOURCE,
            "correlation_id": request.job_id}


def usage(request: JobRequested, ids: dict[str, Any], *, started_s: float, ended_s: float,
          gpu_type: str | None, price_class: str) -> UsageRecorded:
    """One run of the job, billed: GPUs by type and price class, from start to end."""
    return UsageRecorded(
        kind="training", resource_id=request.job_id, user=request.requested_by,
        gpus_requested=request.gpus, gpus_used=request.gpus, vcpus=1,
        gpu_type=gpu_type if request.gpus else None,
        price_class="spot" if price_class == "spot" else "on-demand",
        started_at=datetime.fromtimestamp(started_s, UTC),
        ended_at=datetime.fromtimestamp(max(ended_s, started_s), UTC), **ids)


def completed(request: JobRequested, ids: dict[str, Any], *, duration_s: float,
              outputs: JobOutputs | None) -> JobCompleted:
    out = outputs or JobOutputs()
    return JobCompleted(
        job_id=request.job_id, exit_code=0, duration_s=max(duration_s, 0.0),
        artifacts=[a.uri for a in out.artifacts], stored_artifacts=out.artifacts, metrics=out.metrics,
        dataset_digest=out.dataset_digest, code_digest=out.code_digest,
        logged_params=out.logged_params, tracking=out.tracking, **ids)


def failed(request: JobRequested, ids: dict[str, Any], *, duration_s: float, exit_code: int | None,
           reason: str) -> JobFailed:
    return JobFailed(job_id=request.job_id, exit_code=exit_code, duration_s=max(duration_s, 0.0),
                     reason=reason, **ids)


def terminated(request: JobRequested, ids: dict[str, Any], *, duration_s: float,
               reason: str) -> JobTerminated:
    # a cancel signal may carry any text; the contract knows four reasons
    known = reason if reason in TERMINATION_REASONS else "cancelled"
    return JobTerminated(job_id=request.job_id, duration_s=max(duration_s, 0.0), reason=known, **ids)
