"""Events the router reacts to: platform endpoints coming, going, sleeping and waking; budgets
running out.

Each handler records the fact in the router's tables (so a restart knows it) and applies it
to the live routing state of this replica. Every handler is idempotent, and the endpoint ones
give the same result whichever order ``retired`` and ``scaled_to_zero`` arrive in. The tables
are a ``RouterStore`` (``repo.SqlRouterStore`` on the event's transaction).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from contracts import (
    BudgetChanged,
    BudgetExhausted,
    EndpointDeleted,
    EndpointReady,
    EndpointRetired,
    EndpointScaledToZero,
)
from services.inference_router.endpoints import SCALED_TO_ZERO, Serving
from services.inference_router.gateway import Block, Budgets
from services.inference_router.routing import RouteTable


class RouterStore(Protocol):
    """The router's tables: platform endpoints with their ready versions, and budget blocks."""

    async def endpoint_ready(self, *, endpoint: str, model: str, serving: Serving) -> None: ...
    async def endpoint_retired(self, *, endpoint: str, version: str, dormant: bool) -> None: ...
    async def endpoint_scaled_to_zero(self, *, endpoint: str, team: str, model: str,
                                      kind: str) -> None: ...
    async def endpoint_deleted(self, *, endpoint: str) -> None: ...
    async def block_team(self, *, team: str, budget_id: str, period: str, action: str,
                         spent_usd: Decimal, amount_usd: Decimal) -> None: ...
    async def unblock_team(self, *, team: str, period: str) -> None: ...


async def on_endpoint_ready(event: EndpointReady, *, store: RouterStore, routes: RouteTable) -> None:
    serving = Serving.of(event)
    await store.endpoint_ready(endpoint=event.endpoint, model=event.model, serving=serving)
    await routes.endpoints.ready(event.endpoint, serving)


async def on_endpoint_retired(event: EndpointRetired, *, store: RouterStore, routes: RouteTable) -> None:
    await store.endpoint_retired(endpoint=event.endpoint, version=event.version,
                                 dormant=event.reason == SCALED_TO_ZERO)
    await routes.endpoints.retired(event.endpoint, version=event.version, reason=event.reason)


async def on_endpoint_scaled_to_zero(event: EndpointScaledToZero, *, store: RouterStore,
                                     routes: RouteTable) -> None:
    await store.endpoint_scaled_to_zero(endpoint=event.endpoint, team=event.tenant,
                                        model=event.model, kind=event.kind)
    await routes.endpoints.scaled_to_zero(event.endpoint, team=event.tenant, kind=event.kind)


async def on_endpoint_deleted(event: EndpointDeleted, *, store: RouterStore, routes: RouteTable) -> None:
    await store.endpoint_deleted(endpoint=event.endpoint)
    await routes.endpoints.deleted(event.endpoint)


async def on_budget_exhausted(event: BudgetExhausted, *, store: RouterStore, budgets: Budgets) -> None:
    if event.action == "notify":
        return
    await store.block_team(team=event.tenant, budget_id=event.budget_id, period=event.period,
                           action=event.action, spent_usd=event.spent_usd,
                           amount_usd=event.amount_usd)
    budgets.block(event.tenant, Block(event.budget_id, event.period, event.action,
                                      event.spent_usd, event.amount_usd))


async def on_budget_changed(event: BudgetChanged, *, store: RouterStore, budgets: Budgets) -> None:
    if event.spent_usd < event.amount_usd or event.action == "notify":
        await store.unblock_team(team=event.tenant, period=event.period)
        budgets.unblock(event.tenant)
