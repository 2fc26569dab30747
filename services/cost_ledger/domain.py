"""Metering rules (as OpenCost does): charge max(requested, used) for the time it ran."""

from __future__ import annotations

from contracts import UsageRecorded


def billable_gpu_seconds(usage: UsageRecorded) -> float:
    seconds = max((usage.ended_at - usage.started_at).total_seconds(), 0.0)
    return max(usage.gpus_requested, usage.gpus_used) * seconds


def duration_seconds(usage: UsageRecorded) -> float:
    return max((usage.ended_at - usage.started_at).total_seconds(), 0.0)
