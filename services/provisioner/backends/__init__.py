"""Compute backends behind one typed port."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from contracts import JobRequested


class RunningJob(Protocol):
    async def wait(self) -> int | None:
        """Wait up to a heartbeat interval; the exit code once finished, else None."""
        ...

    async def stop(self, *, grace_period_s: float) -> int:
        """SIGTERM, wait ``grace_period_s``, then kill. Returns the exit code."""
        ...


class ComputeBackend(Protocol):
    name: str

    async def provision(self, request: JobRequested) -> Path:
        """Prepare the job's workspace; idempotent."""
        ...

    async def start(self, request: JobRequested) -> RunningJob:
        ...

    async def teardown(self, request: JobRequested) -> None:
        """Release everything the job held; idempotent."""
        ...
