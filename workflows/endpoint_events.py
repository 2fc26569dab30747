"""The contract events EndpointWorkflow publishes that take more than a line to build (pure:
the workflow passes ``ids`` with its deterministic event id and time)."""

from __future__ import annotations

from typing import Any

from contracts import EndpointCanaryDecided, EndpointReady
from workflows.endpoint_model import CanaryVerdict, VersionSpec

SOURCE = "provisioner"


def envelope(*, endpoint: str, team: str, event_id: Any, at: Any) -> dict[str, Any]:
    return {"event_id": event_id, "occurred_at": at, "tenant": team, "source": SOURCE,
            "correlation_id": endpoint, "endpoint": endpoint}


def ready(spec: VersionSpec, ids: dict[str, Any], *, urls: list[str], weight: int) -> EndpointReady:
    """The router may send ``weight`` % of the endpoint's traffic to these replicas."""
    return EndpointReady(
        version=spec.version, model=spec.model, kind=spec.kind, url=urls[0] if urls else "",
        replicas=urls, weight=weight, rpm_limit=spec.request.rpm_limit,
        tpm_limit=spec.request.tpm_limit, **ids)


def canary_decided(ids: dict[str, Any], *, stable: str, canary: str,
                   verdict: CanaryVerdict) -> EndpointCanaryDecided:
    if verdict.outcome == "wait":
        raise ValueError("a canary still waiting for traffic is not a decision")
    stats = verdict.stats
    return EndpointCanaryDecided(
        stable=stable, canary=canary, outcome=verdict.outcome, reason=verdict.reason,
        stable_error_rate=stats.stable.error_rate, canary_error_rate=stats.canary.error_rate,
        stable_p95_ms=stats.stable.p95_ms, canary_p95_ms=stats.canary.p95_ms, **ids)
