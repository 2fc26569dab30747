from __future__ import annotations

import structlog

from contracts import CreateSandbox, SandboxDeleted
from services.agent_runtime import repo
from services.agent_runtime.errors import RuntimeRefusal
from services.agent_runtime.sandboxes import Sandboxes
from services.kit.inbox import UnitOfWork

log = structlog.get_logger(__name__)


async def on_create_sandbox(command: CreateSandbox, uow: UnitOfWork, *, sandboxes: Sandboxes) -> None:
    """Create the sandbox another system asked for on the bus; a refusal is recorded and
    announced as the sandbox's deletion with the reason, never retried."""
    if await repo.find(uow.session, team=command.tenant, sandbox_id=command.sandbox_id) is not None:
        return
    try:
        await sandboxes.create(team=command.tenant, template=command.template, ttl_s=command.ttl_s,
                               sandbox_id=command.sandbox_id)
    except RuntimeRefusal as exc:
        log.warning("sandbox.refused", sandbox_id=command.sandbox_id, team=command.tenant, detail=exc.detail)
        await repo.record_request(uow.session, sandbox_id=command.sandbox_id, team=command.tenant,
                                  template=command.template, requested_at=command.occurred_at,
                                  expires_at=command.occurred_at)
        await repo.record_deleted(uow.session, sandbox_id=command.sandbox_id, reason=f"refused: {exc.detail}")
        await uow.outbox.add(uow.session, SandboxDeleted(source="agent-runtime", tenant=command.tenant,
                                         correlation_id=command.correlation_id, sandbox_id=command.sandbox_id,
                                         reason=f"refused: {exc.detail}"[:500]))
