from __future__ import annotations

from contracts import BudgetExhausted, EndpointReady, EndpointRetired
from services.inference_router import repo
from services.kit.inbox import UnitOfWork


async def on_endpoint_ready(event: EndpointReady, uow: UnitOfWork) -> None:
    await repo.upsert_target(uow.session, endpoint=event.endpoint, version=event.version,
                             team=event.tenant, model=event.model, url=event.url)


async def on_endpoint_retired(event: EndpointRetired, uow: UnitOfWork) -> None:
    await repo.remove_target(uow.session, endpoint=event.endpoint, version=event.version)


async def on_budget_exhausted(event: BudgetExhausted, uow: UnitOfWork) -> None:
    if event.action != "notify":
        await repo.block_team(uow.session, team=event.tenant, budget_id=event.budget_id,
                              period=event.period, action=event.action)
