"""Events the router reacts to: platform endpoints coming, going, sleeping and waking; budgets
running out.

Each handler records the fact in the router's tables (so a restart knows it) and applies it
to the live routing state of this replica. Every handler is idempotent, and the endpoint ones
give the same result whichever order ``retired`` and ``scaled_to_zero`` arrive in.
"""

from __future__ import annotations

from contracts import (
    BudgetChanged,
    BudgetExhausted,
    EndpointDeleted,
    EndpointReady,
    EndpointRetired,
    EndpointScaledToZero,
)
from services.inference_router import repo
from services.inference_router.endpoints import SCALED_TO_ZERO, Serving
from services.inference_router.gateway import Block, Budgets
from services.inference_router.routing import RouteTable
from services.kit.inbox import UnitOfWork


async def on_endpoint_ready(event: EndpointReady, uow: UnitOfWork, *, routes: RouteTable) -> None:
    serving = Serving.of(event)
    await repo.endpoint_ready(uow.session, endpoint=event.endpoint, model=event.model, serving=serving)
    await routes.endpoints.ready(event.endpoint, serving)


async def on_endpoint_retired(event: EndpointRetired, uow: UnitOfWork, *, routes: RouteTable) -> None:
    await repo.endpoint_retired(uow.session, endpoint=event.endpoint, version=event.version,
                                dormant=event.reason == SCALED_TO_ZERO)
    await routes.endpoints.retired(event.endpoint, version=event.version, reason=event.reason)


async def on_endpoint_scaled_to_zero(event: EndpointScaledToZero, uow: UnitOfWork, *,
                                     routes: RouteTable) -> None:
    await repo.endpoint_scaled_to_zero(uow.session, endpoint=event.endpoint, team=event.tenant,
                                       model=event.model, kind=event.kind)
    await routes.endpoints.scaled_to_zero(event.endpoint, team=event.tenant, kind=event.kind)


async def on_endpoint_deleted(event: EndpointDeleted, uow: UnitOfWork, *, routes: RouteTable) -> None:
    await repo.endpoint_deleted(uow.session, endpoint=event.endpoint)
    await routes.endpoints.deleted(event.endpoint)


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
