"""Events the router reacts to: platform endpoints coming and going, budgets running out.

Each handler records the fact in the router's tables (so a restart knows it) and applies it
to the live routing state of this replica.
"""

from __future__ import annotations

from contracts import BudgetChanged, BudgetExhausted, EndpointReady, EndpointRetired
from services.inference_router import repo
from services.inference_router.gateway import Block, Budgets
from services.inference_router.routing import RouteTable
from services.kit.inbox import UnitOfWork


async def on_endpoint_ready(event: EndpointReady, uow: UnitOfWork, *, routes: RouteTable) -> None:
    await repo.upsert_target(uow.session, endpoint=event.endpoint, version=event.version,
                             team=event.tenant, model=event.model, url=event.url)
    routes.endpoint_ready(event.endpoint, team=event.tenant, version=event.version, url=event.url)


async def on_endpoint_retired(event: EndpointRetired, uow: UnitOfWork, *, routes: RouteTable) -> None:
    await repo.remove_target(uow.session, endpoint=event.endpoint, version=event.version)
    routes.endpoint_retired(event.endpoint, version=event.version)


async def on_budget_exhausted(event: BudgetExhausted, uow: UnitOfWork, *, budgets: Budgets) -> None:
    if event.action == "notify":
        return
    await repo.block_team(uow.session, team=event.tenant, budget_id=event.budget_id,
                          period=event.period, action=event.action, spent_usd=event.spent_usd,
                          amount_usd=event.amount_usd)
    budgets.block(event.tenant, Block(event.budget_id, event.period, event.action,
                                      event.spent_usd, event.amount_usd))


async def on_budget_changed(event: BudgetChanged, uow: UnitOfWork, *, budgets: Budgets) -> None:
    if event.spent_usd < event.amount_usd or event.action == "notify":
        await repo.unblock_team(uow.session, team=event.tenant, period=event.period)
        budgets.unblock(event.tenant)
