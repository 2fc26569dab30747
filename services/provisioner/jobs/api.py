"""The provisioner's internal HTTP routes (reached through the catalog, which authenticates)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from services.provisioner.backends.local import LocalBackend
from services.provisioner.cluster import ClusterView

MAX_CHUNK = 256 * 1024
MAX_OFFSET = 2**63 - 1  # a file offset (off_t)


def decode_log(data: bytes) -> tuple[str, int]:
    """A chunk of a job's log as text, and how many of its bytes that used: what is not UTF-8
    (a job may print anything) becomes U+FFFD, and a character cut at the chunk's end is left
    for the next chunk rather than shown broken. Never raises."""
    used = len(data)
    # a UTF-8 sequence is at most 4 bytes: look for a lead byte among the last 3
    for back in range(1, min(3, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: keep looking for its lead
            continue
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        if need > back and len(data) > back:  # incomplete, and not the only thing in the chunk
            used = len(data) - back
        break
    return data[:used].decode("utf-8", errors="replace"), used


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
                       offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> LogChunk:
        """Up to 256 KiB of the job's log from ``offset``."""
        try:
            log = backend.workspace_for(team=team, job_id=job_id) / "job.log"
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        if not log.is_file():
            raise HTTPException(404, detail=f"no log yet for job {job_id!r}")
        if offset >= log.stat().st_size:  # nothing there yet; seek() that far could raise
            return LogChunk(data="", next_offset=offset)
        with log.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(MAX_CHUNK)
        text, used = decode_log(data)
        return LogChunk(data=text, next_offset=offset + used)

    return router
