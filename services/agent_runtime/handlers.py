from __future__ import annotations

from contracts import CreateSandbox
from services.agent_runtime import repo
from services.kit.inbox import UnitOfWork


async def on_create_sandbox(command: CreateSandbox, uow: UnitOfWork) -> None:
    """Record the request as pending; the sandbox layer that fulfils it is not built yet."""
    await repo.record_request(uow.session, sandbox_id=command.sandbox_id, team=command.tenant,
                              template=command.template, requested_at=command.occurred_at,
                              ttl_s=command.ttl_s)
