"""The provisioner's internal HTTP routes (reached through the catalog, which authenticates)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from services.provisioner.backends.local import LocalBackend
from services.provisioner.cluster import ClusterView

MAX_CHUNK = 256 * 1024


class LogChunk(BaseModel):
    data: str
    next_offset: int


class Preemption(BaseModel):
    reason: str = Field(default="spot capacity reclaimed (simulated)", min_length=1, max_length=200)


Preempt = Callable[[str, str], Awaitable[bool]]


def build_router(backend: LocalBackend, preempt: Preempt) -> APIRouter:
    router = APIRouter(prefix="/internal", tags=["internal"])

    @router.post("/jobs/{job_id}/preempt", status_code=202)
    async def preempt_job(job_id: str, body: Preemption | None = None) -> dict[str, str]:
        """Preempt a running job, as a spot interruption would (a node termination handler
        may call this): it is stopped, then resumes from its checkpoint."""
        reason = (body or Preemption()).reason
        if not await preempt(job_id, reason):
            raise HTTPException(404, detail=f"no running job {job_id!r}")
        return {"job_id": job_id, "preempted": reason}

    @router.get("/cluster", response_model=ClusterView)
    async def cluster() -> ClusterView:
        """The compute engine's nodes and GPUs by type (total, in use, free)."""
        try:
            return await backend.cluster()
        except Exception as exc:  # the engine is outside this process: say what failed
            raise HTTPException(503, detail=f"the {backend.name} engine did not answer: {exc}") from None

    @router.get("/jobs/{team}/{job_id}/logs", response_model=LogChunk)
    async def job_logs(team: str, job_id: str,
                       offset: Annotated[int, Query(ge=0)] = 0) -> LogChunk:
        """Up to 256 KiB of the job's log from ``offset``."""
        try:
            log = backend.workspace_for(team=team, job_id=job_id) / "job.log"
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        if not log.is_file():
            raise HTTPException(404, detail=f"no log yet for job {job_id!r}")
        with log.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(MAX_CHUNK)
        return LogChunk(data=data.decode("utf-8", errors="replace"), next_offset=offset + len(data))

    return router
