"""GPU domain: what the devices a workload runs on report (through NVML, on its node)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts.envelope import Event, subject

MAX_MEMORY_BYTES = 1 << 44  # 16 TiB, ~100x today's largest board: anything above is corrupt
MAX_POWER_W = 5000.0


class DeviceSample(BaseModel):
    """One device at one moment; fields the device does not report are None, never 0."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0, le=1023, description="The device's index on its node.")
    uuid: str = Field(min_length=1, max_length=128)
    name: str = Field(default="", max_length=128, description="Model name, e.g. NVIDIA H200.")
    memory_used_bytes: int = Field(ge=0, le=MAX_MEMORY_BYTES)
    memory_total_bytes: int = Field(ge=1, le=MAX_MEMORY_BYTES)
    utilisation_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    power_w: float | None = Field(default=None, ge=0, le=MAX_POWER_W, allow_inf_nan=False)
    energy_mj: int | None = Field(default=None, ge=0, le=(1 << 63) - 1,
                                  description="Energy counter since the driver loaded.")
    process_memory_bytes: int | None = Field(
        default=None, ge=0, le=MAX_MEMORY_BYTES, description="What the workload's own processes hold.")

    @model_validator(mode="after")
    def _used_within_total(self) -> DeviceSample:
        if self.memory_used_bytes > self.memory_total_bytes:
            raise ValueError(f"memory_used_bytes ({self.memory_used_bytes}) is more than "
                             f"memory_total_bytes ({self.memory_total_bytes})")
        return self


class GpuSampled(Event):
    """A running workload's GPUs, sampled on its node (jobs every few seconds while they run).
    Only real devices are reported: where there is no GPU there is no sample."""

    SUBJECT: ClassVar[str] = subject("gpus", "sampled")

    workload: Literal["job", "endpoint", "notebook"]
    workload_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    node: str | None = Field(default=None, max_length=128)
    devices: list[DeviceSample] = Field(min_length=1, max_length=64)
