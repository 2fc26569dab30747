"""The ledger's HTTP API: spend queries, budgets, reversals, and the live bill dashboard."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.cost_ledger import repo
from services.cost_ledger.domain import Budget, month_bounds
from services.cost_ledger.ledger import Ledger, throttle

Dimension = Literal["team", "project", "user_id", "kind", "model", "gpu_type", "resource_id"]


class BudgetIn(BaseModel):
    """A team's monthly budget."""

    model_config = ConfigDict(extra="forbid")

    amount_usd: Decimal = Field(gt=0, le=100_000_000, decimal_places=2,
                                description="Monthly amount in USD, e.g. 500.00.")
    thresholds: list[int] = Field(default=[50, 80, 100], min_length=1, max_length=10,
                                  description="Percentages that raise an alert, once per month.")
    action: Literal["notify", "block", "stop"] = Field(
        default="notify", description="At 100 %: notify only, block new work, or stop running work.")

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: list[int]) -> list[int]:
        if any(not 1 <= t <= 1000 for t in value):
            raise ValueError("each threshold is a percentage between 1 and 1000")
        if 100 not in value:
            raise ValueError("include 100: the action applies when the budget is used up")
        return sorted(set(value))


class Reversal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entry_id: int = Field(gt=0)
    reason: str = Field(min_length=3, max_length=500)


def build_router(ledger: Ledger, *, admin_token: str) -> APIRouter:
    router = APIRouter(tags=["ledger"])

    def admin(authorization: Annotated[str, Header()] = "") -> None:
        given = authorization.removeprefix("Bearer ").strip()
        if not admin_token or not secrets.compare_digest(given.encode(), admin_token.encode()):
            raise HTTPException(401, detail="this needs 'Authorization: Bearer <admin token>' "
                                "(AICLOUD_COST_LEDGER_ADMIN_TOKEN)")

    admin_only = [Depends(admin)]

    @router.get("/internal/spend")
    async def spend(team: str | None = None,
                    by: Annotated[list[Dimension] | None, Query()] = None,
                    start: Annotated[datetime | None, Query(alias="from")] = None,
                    end: Annotated[datetime | None, Query(alias="to")] = None,
                    step: Literal["hour", "day", "week", "month"] | None = None,
                    include_idle: bool = False) -> Response:
        """Spend in a window (default: this month), by any dimensions, optionally per step."""
        default_start, default_end = month_bounds(datetime.now(UTC).strftime("%Y-%m"))
        start, end = _utc(start) or default_start, _utc(end) or default_end
        if end <= start:
            raise HTTPException(422, detail=f"'to' ({end:%Y-%m-%d}) must be after 'from' ({start:%Y-%m-%d})")
        if end - start > timedelta(days=3660):
            raise HTTPException(422, detail="the window is longer than 10 years; narrow it")
        found = await ledger.spend(team=team, by=by or [], start=start, end=end, step=step,
                                   include_idle=include_idle)
        return Response(_dumps(found, exact=True), media_type="application/json")

    @router.put("/v1/budgets/{team}", status_code=200, dependencies=admin_only)
    async def put_budget(team: str, body: BudgetIn) -> dict[str, Any]:
        """Set a team's monthly budget; alerts fire at once if spend is already past a threshold."""
        if team not in ledger.teams:
            raise HTTPException(404, detail=f"no team {team!r} in the organisation "
                                f"(teams: {', '.join(sorted(ledger.teams))})")
        budget = Budget(team, body.amount_usd, tuple(body.thresholds), body.action)
        await ledger.set_budget(budget)
        return {"team": team, "budget_id": budget.budget_id, **body.model_dump(mode="json")}

    @router.get("/v1/budgets")
    async def list_budgets() -> list[dict[str, Any]]:
        async with ledger.db.transaction() as session:
            found = await repo.budgets(session)
        return [{"team": b.team, "budget_id": b.budget_id, "amount_usd": b.amount_usd,
                 "thresholds": list(b.thresholds), "action": b.action} for b in found.values()]

    @router.post("/v1/ledger/reversals", status_code=201, dependencies=admin_only)
    async def reverse(body: Reversal) -> dict[str, Any]:
        """Cancel a ledger line with a new, negative line (lines are never edited)."""
        async with ledger.db.transaction() as session:
            new_id = await repo.reverse(session, entry_id=body.entry_id, reason=body.reason)
        if new_id is None:
            raise HTTPException(404, detail=f"no line {body.entry_id} that is not already reversed")
        await ledger.live.changed()
        return {"reversal_entry_id": new_id, "reverses": body.entry_id}

    @router.get("/bill", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        page = resources.files("services.cost_ledger").joinpath("dashboard.html").read_text()
        return HTMLResponse(page.replace("/*SNAPSHOT*/null", _dumps(await ledger.snapshot())))

    @router.get("/bill/dashboard.js", include_in_schema=False)
    async def dashboard_js() -> Response:
        script = resources.files("services.cost_ledger").joinpath("dashboard.js").read_text()
        return Response(script, media_type="text/javascript")

    @router.get("/bill/snapshot")
    async def snapshot() -> Response:
        return Response(_dumps(await ledger.snapshot()), media_type="application/json")

    @router.get("/bill/events", include_in_schema=False)
    async def events() -> StreamingResponse:
        """Server-sent events: a fresh snapshot each time spend changes (at most twice a second)."""
        async def stream() -> AsyncIterator[str]:
            seen, last = -1, 0.0
            while True:
                version = await ledger.live.wait(seen, within_s=15)
                if version == seen:
                    yield ": keep-alive\n\n"
                    continue
                seen, last = version, await throttle(0.5, last)
                yield f"data: {_dumps(await ledger.snapshot())}\n\n"
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    return router


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _dumps(payload: Any, *, exact: bool = False) -> str:
    """JSON; amounts as floats for display, or as exact decimal strings for the API."""
    def plain(value: Any) -> Any:
        if isinstance(value, Decimal):
            return str(value) if exact else float(value)
        if isinstance(value, datetime):
            return value.isoformat()
        return str(value)
    return json.dumps(payload, default=plain).replace("</", "<\\/")
