"""Compute backends behind one typed port."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # not imported at run time: the Ray entrypoint imports this package, lean
    from contracts import DeviceSample, JobRequested, Placement


class RunningJob(Protocol):
    async def placement(self) -> Placement | None:
        """Where it runs (node, GPU ids, sandbox), once its process started."""
        ...

    async def gpu_samples(self) -> list[DeviceSample]:
        """Its GPUs now, read on its node; [] where there are none to read."""
        ...

    async def wait(self) -> int | None:
        """Wait up to a heartbeat interval; the exit code once finished, else None."""
        ...

    async def stop(self, *, grace_period_s: float) -> int:
        """SIGTERM, wait ``grace_period_s``, then kill. Returns the exit code."""
        ...


class DatasetUnavailable(RuntimeError):
    """The job names a dataset this backend cannot give it; retrying will not help."""


class JobUnplaceable(RuntimeError):
    """No node could take the job in time (no free GPUs of its type); retrying will not help."""


class NodeLost(RuntimeError):
    """The node running the job went away; another attempt resumes it from its checkpoint."""


class ComputeBackend(Protocol):
    name: str
    artifact_root: Path

    def workspace(self, request: JobRequested) -> Path:
        """The job's working directory (output/, checkpoints/, metrics.jsonl, job.log)."""
        ...

    def dataset_dir(self, request: JobRequested) -> Path | None:
        """The job's dataset, read-only; raises DatasetUnavailable when it cannot be had."""
        ...

    async def provision(self, request: JobRequested) -> Path:
        """Prepare the job's workspace; idempotent."""
        ...

    async def start(self, request: JobRequested, *, egress: bool = False, gpu_type: str | None = None,
                    grace_period_s: float = 10) -> RunningJob:
        """Run the job; with ``egress`` (its product allows it) it may reach the network; its
        GPUs are of ``gpu_type`` where the engine places by type; ``grace_period_s`` is how long
        a stop waits between SIGTERM and kill where the engine stops the job itself."""
        ...

    async def teardown(self, request: JobRequested) -> None:
        """Release everything the job held; idempotent."""
        ...
