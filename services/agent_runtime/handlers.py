from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import CreateSandbox, SandboxDeleted
from services.agent_runtime import repo
from services.agent_runtime.errors import RuntimeRefusal
from services.kit.inbox import UnitOfWork

log = structlog.get_logger(__name__)


class SandboxMaker(Protocol):
    async def create(self, *, team: str, template: str, ttl_s: int | None = None,
                     sandbox_id: str | None = None) -> Any: ...


class SandboxRecords(Protocol):
    """The sandbox rows a handler reads and writes (``repo`` in production)."""

    async def find(self, session: AsyncSession, *, team: str, sandbox_id: str) -> dict[str, Any] | None: ...

    async def record_request(self, session: AsyncSession, *, sandbox_id: str, team: str, template: str,
                             requested_at: datetime, expires_at: datetime) -> bool: ...

    async def record_deleted(self, session: AsyncSession, *, sandbox_id: str, reason: str) -> bool: ...


async def on_create_sandbox(command: CreateSandbox, uow: UnitOfWork, *, sandboxes: SandboxMaker,
                            records: SandboxRecords = repo) -> None:
    """Create the sandbox another system asked for on the bus; a refusal is recorded and
    announced as the sandbox's deletion with the reason, never retried."""
    if await records.find(uow.session, team=command.tenant, sandbox_id=command.sandbox_id) is not None:
        return
    try:
        await sandboxes.create(team=command.tenant, template=command.template, ttl_s=command.ttl_s,
                               sandbox_id=command.sandbox_id)
    except RuntimeRefusal as exc:
        log.warning("sandbox.refused", sandbox_id=command.sandbox_id, team=command.tenant, detail=exc.detail)
        await records.record_request(uow.session, sandbox_id=command.sandbox_id, team=command.tenant,
                                     template=command.template, requested_at=command.occurred_at,
                                     expires_at=command.occurred_at)
        await records.record_deleted(uow.session, sandbox_id=command.sandbox_id,
                                     reason=f"refused: {exc.detail}")
        await uow.outbox.add(uow.session, SandboxDeleted(source="agent-runtime", tenant=command.tenant,
                                         correlation_id=command.correlation_id, sandbox_id=command.sandbox_id,
                                         reason=f"refused: {exc.detail}"[:500]))
