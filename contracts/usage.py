"""Usage domain: metered consumption that the cost ledger charges."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from contracts.envelope import Event, subject

UsageKind = Literal["training", "inference", "notebook", "endpoint", "agent"]


class UsageRecorded(Event):
    """A workload used resources for a period; charged as max(requested, used) x duration."""

    SUBJECT: ClassVar[str] = subject("usage", "recorded")

    kind: UsageKind
    resource_id: str = Field(min_length=1, description="Job id, endpoint or notebook name.")
    project: str | None = None
    user: str | None = None
    gpu_type: str | None = Field(default=None, description="Catalog GPU type, e.g. h100-80gb.")
    price_class: Literal["on-demand", "spot"] = "on-demand"
    gpus_requested: float = Field(default=0, ge=0)
    gpus_used: float = Field(default=0, ge=0)
    vcpus: float = Field(default=0, ge=0)
    memory_gb: float = Field(default=0, ge=0)
    started_at: datetime
    ended_at: datetime
