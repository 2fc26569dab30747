"""Cluster domain: what the compute engine offers, as the provisioner reads it from the engine."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from contracts.envelope import Event, subject

PLATFORM_TENANT = "platform"


class GpuPoolCapacity(BaseModel):
    """The GPUs of one type across the engine's nodes."""

    model_config = ConfigDict(frozen=True)

    gpu_type: str = Field(min_length=1, max_length=63)
    total: int = Field(ge=0, le=1_000_000, description="GPUs of this type on nodes that are alive.")
    largest_node: int = Field(
        ge=0, le=100_000,
        description="GPUs of the biggest node of this type, alive or not: a job runs on one node, "
                    "so it is the most one job can ask for.")
    nodes_alive: int = Field(default=0, ge=0)
    simulated: bool = Field(default=False, description="Logical GPUs with no device behind them.")


class ClusterCapacityChanged(Event):
    """The compute engine's GPUs by type changed (a node joined or left), or were read again.
    Quota admits jobs against the latest one it has (``observed_at`` orders them)."""

    SUBJECT: ClassVar[str] = subject("cluster", "capacity_changed")

    engine: str = Field(min_length=1, max_length=32, description="ray, kubernetes, ...")
    address: str = Field(default="", max_length=512)
    observed_at: datetime = Field(description="When the engine was read.")
    pools: list[GpuPoolCapacity] = Field(default_factory=list, max_length=256)
    reachable: bool = Field(
        default=True, description="False: the engine stopped answering (pools are the last it "
                                  "gave); new jobs wait queued until it answers again.")
