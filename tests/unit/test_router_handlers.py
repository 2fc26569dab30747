"""The router's event handlers against an in-memory ``RouterStore`` and the real in-process
routing state: no database, no bus."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from contracts import BudgetChanged, BudgetExhausted, EndpointDeleted, EndpointScaledToZero
from services.inference_router import handlers
from services.inference_router.endpoints import Serving
from services.inference_router.gateway import Budgets
from services.inference_router.routing import RouteTable

pytestmark = pytest.mark.unit
PERIOD = datetime.now(UTC).strftime("%Y-%m")


@dataclass
class MemoryRouterStore:
    endpoints: dict[str, str] = field(default_factory=dict)  # name -> "ready" or "dormant"
    blocks: dict[tuple[str, str], str] = field(default_factory=dict)  # (team, period) -> budget id

    async def endpoint_ready(self, *, endpoint: str, model: str, serving: Serving) -> None:
        self.endpoints[endpoint] = "ready"

    async def endpoint_retired(self, *, endpoint: str, version: str, dormant: bool) -> None:
        self.endpoints[endpoint] = "dormant" if dormant else "gone"

    async def endpoint_scaled_to_zero(self, *, endpoint: str, team: str, model: str, kind: str) -> None:
        self.endpoints[endpoint] = "dormant"

    async def endpoint_deleted(self, *, endpoint: str) -> None:
        self.endpoints.pop(endpoint, None)

    async def block_team(self, *, team: str, budget_id: str, period: str, action: str,
                         spent_usd: Decimal, amount_usd: Decimal) -> None:
        self.blocks.setdefault((team, period), budget_id)

    async def unblock_team(self, *, team: str, period: str) -> None:
        self.blocks.pop((team, period), None)


def exhausted(action: str) -> BudgetExhausted:
    return BudgetExhausted(tenant="legal", budget_id="legal-monthly", period=PERIOD, action=action,
                           spent_usd=Decimal("101"), amount_usd=Decimal("100"))


async def test_an_exhausted_budget_blocks_the_team_here_and_in_the_table_until_it_is_raised() -> None:
    store, budgets = MemoryRouterStore(), Budgets()
    await handlers.on_budget_exhausted(exhausted("block"), store=store, budgets=budgets)
    block = budgets.blocked("legal")
    assert block is not None and store.blocks == {("legal", PERIOD): "legal-monthly"}
    await handlers.on_budget_changed(BudgetChanged(
        tenant="legal", budget_id="legal-monthly", period=PERIOD, action="block",
        spent_usd=Decimal("101"), amount_usd=Decimal("150")), store=store, budgets=budgets)
    assert budgets.blocked("legal") is None and store.blocks == {}


async def test_a_notify_only_budget_never_blocks_requests() -> None:
    store, budgets = MemoryRouterStore(), Budgets()
    await handlers.on_budget_exhausted(exhausted("notify"), store=store, budgets=budgets)
    assert budgets.blocked("legal") is None and store.blocks == {}


async def test_a_budget_still_below_its_spend_keeps_the_team_blocked() -> None:
    store, budgets = MemoryRouterStore(), Budgets()
    await handlers.on_budget_exhausted(exhausted("stop"), store=store, budgets=budgets)
    await handlers.on_budget_changed(BudgetChanged(
        tenant="legal", budget_id="legal-monthly", period=PERIOD, action="stop",
        spent_usd=Decimal("101"), amount_usd=Decimal("100.50")), store=store, budgets=budgets)
    assert budgets.blocked("legal") is not None and store.blocks != {}


async def test_a_scaled_to_zero_endpoint_stays_routable_dormant_until_deleted() -> None:
    store, routes = MemoryRouterStore(), RouteTable()
    await handlers.on_endpoint_scaled_to_zero(EndpointScaledToZero(
        tenant="legal", endpoint="emb", model="acme/minilm", kind="embeddings"), store=store, routes=routes)
    endpoint = routes.endpoints.get("emb")
    assert endpoint is not None and endpoint.dormant and store.endpoints == {"emb": "dormant"}
    assert routes.endpoints.routes()["emb"].kind == "embeddings"
    await handlers.on_endpoint_deleted(EndpointDeleted(tenant="legal", endpoint="emb"), store=store,
                                       routes=routes)
    assert routes.endpoints.get("emb") is None and store.endpoints == {}
