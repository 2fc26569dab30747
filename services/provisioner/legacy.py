"""Old string-kind facts (``workflows.legacy``) to the contract events they always meant.

Only an ``emit_*_event`` attempt scheduled before the ``typed-publish`` patch and retried
after an upgrade arrives here; everything newer is built by the workflow itself. Same event
id as the fact, so a publish the old worker already made is de-duplicated by JetStream.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from contracts import (
    EndpointCanaryDecided,
    EndpointDeleted,
    EndpointFailed,
    EndpointReady,
    EndpointRetired,
    EndpointScaledToZero,
    Envelope,
    JobProvisioning,
    JobStarted,
    NotebookStarted,
    NotebookStopped,
)
from workflows import job_events
from workflows.legacy import EmitInput, EndpointFact, NotebookFact

SOURCE = "provisioner"


def job_event(fact: EmitInput) -> Envelope:
    request = fact.request
    ids = {"event_id": uuid.UUID(fact.event_id), "tenant": request.tenant, "source": SOURCE,
           "correlation_id": request.job_id}
    duration = fact.ended_at_s - fact.started_at_s
    match fact.kind:
        case "provisioning":
            return JobProvisioning(job_id=request.job_id, **ids)
        case "started":
            return JobStarted(job_id=request.job_id, backend=fact.backend, **ids)
        case "completed":
            return job_events.completed(request, ids, duration_s=duration, outputs=fact.outputs)
        case "failed":
            return job_events.failed(request, ids, duration_s=duration, exit_code=fact.exit_code,
                                     reason=fact.reason)
        case "terminated":
            return job_events.terminated(request, ids, duration_s=duration, reason=fact.reason)
        case "usage":
            return job_events.usage(request, ids, started_s=fact.started_at_s, ended_s=fact.ended_at_s,
                                    gpu_type=fact.gpu_type, price_class=fact.price_class)


def endpoint_event(fact: EndpointFact) -> Envelope:
    ids: dict[str, Any] = {"event_id": uuid.UUID(fact.event_id), "tenant": fact.team, "source": SOURCE,
                           "correlation_id": fact.endpoint, "endpoint": fact.endpoint}
    serving: Any = fact.serving
    match fact.kind:
        case "ready":
            return EndpointReady(model=fact.model, version=fact.version, url=fact.url,
                                 replicas=fact.replicas, weight=fact.weight, kind=serving,
                                 rpm_limit=fact.rpm_limit, tpm_limit=fact.tpm_limit, **ids)
        case "scaled_to_zero":
            return EndpointScaledToZero(model=fact.model, kind=serving, idle_s=fact.idle_s, **ids)
        case "retired":
            return EndpointRetired(version=fact.version, reason=fact.reason, **ids)
        case "failed":
            return EndpointFailed(version=fact.version, reason=fact.reason, endpoint_gone=fact.gone, **ids)
        case "deleted":
            return EndpointDeleted(reason=fact.reason or "deleted", **ids)
        case "canary_decided":
            if fact.verdict is None or fact.verdict.outcome == "wait":
                raise ValueError(f"endpoint {fact.endpoint}: a canary decision without a verdict")
            stats = fact.verdict.stats
            return EndpointCanaryDecided(
                stable=fact.stable, canary=fact.version, outcome=fact.verdict.outcome, reason=fact.reason,
                stable_error_rate=stats.stable.error_rate, canary_error_rate=stats.canary.error_rate,
                stable_p95_ms=stats.stable.p95_ms, canary_p95_ms=stats.canary.p95_ms, **ids)


def notebook_event(fact: NotebookFact) -> Envelope:
    request = fact.request
    ids: dict[str, Any] = {"event_id": uuid.UUID(fact.event_id), "tenant": request.tenant,
                           "source": SOURCE, "correlation_id": request.notebook_id,
                           "notebook_id": request.notebook_id}
    if fact.kind == "started":
        return NotebookStarted(url=fact.url, idle_timeout_s=request.idle_timeout_s,
                               stops_at=datetime.fromtimestamp(fact.stops_at_s, UTC), **ids)
    return NotebookStopped(reason=fact.reason, saved=fact.saved, runtime_s=fact.runtime_s, **ids)
