"""The provisioner's internal HTTP routes (reached through the catalog, which authenticates)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from services.provisioner.backends.local import LocalBackend

MAX_CHUNK = 256 * 1024


class LogChunk(BaseModel):
    data: str
    next_offset: int


def build_router(backend: LocalBackend) -> APIRouter:
    router = APIRouter(prefix="/internal", tags=["internal"])

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
