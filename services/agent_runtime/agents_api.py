"""Agent runs: start one, see where it is, read its timeline, approve a gated tool."""

import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from contracts import AgentRunStarted
from services.agent_runtime import runs
from services.kit.db import Database
from services.kit.outbox import Outbox
from workflows.agent_run import AgentRunInput, AgentRunWorkflow, Decision

RUN_ID = r"^[a-z0-9][a-z0-9-]{0,56}$"


class RunCreate(BaseModel):
    run_id: str | None = Field(default=None, pattern=RUN_ID, description="Generated when omitted.")
    agent: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="The agent's name, e.g. analyst.")
    model: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$",
                       description="A model alias of the inference router, one of GET /v1/models of the "
                                   "router with the team's key.")
    task: str = Field(min_length=1, max_length=100_000)
    system: str | None = None
    template: str = "python"
    files: dict[str, str] = Field(default_factory=dict, max_length=100)
    approval_required: list[str] = Field(default_factory=list)
    max_steps: int = Field(default=8, ge=1, le=200)
    max_cost_usd: float = Field(default=1.0, ge=0, le=10_000)
    max_wall_s: int = Field(default=600, ge=1, le=86_400)
    tool_timeout_s: int = Field(default=60, ge=1, le=3600)


class Approval(BaseModel):
    call_id: str = Field(min_length=1)
    approved: bool = True


def build_router(
    *,
    db: Database,
    outbox: Outbox,
    client: Callable[[], Client],
    task_queue: str,
    templates: Callable[[], set[str]],
    team_dep: Callable[..., Awaitable[str]],
    models: Callable[[str], Awaitable[set[str] | None]] | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/v1/agents/runs", tags=["agent runs"])
    Team = Annotated[str, Depends(team_dep)]

    @router.post("", status_code=202)
    async def start(body: RunCreate, team: Team) -> dict[str, Any]:
        """Start an agent run (a durable workflow); follow it with GET .../trace."""
        if body.template not in templates():
            raise HTTPException(
                422, detail=f"unknown template {body.template!r}: use one of {', '.join(sorted(templates()))}"
            )
        served = await models(team) if models is not None else None
        if served is not None and body.model not in served:  # None: the router could not say; it
            # then fails the run's first step with the router's own answer
            raise HTTPException(422, detail=f"unknown model {body.model!r}: the inference router serves "
                                f"team {team} {', '.join(sorted(served)) or 'no model'}")
        run_id = body.run_id or f"run-{secrets.token_hex(5)}"
        fields = body.model_dump(exclude={"run_id", "system"}) | (
            {"system": body.system} if body.system else {}
        )
        run = AgentRunInput(run_id=run_id, team=team, **fields)
        async with db.transaction() as session:
            if not await runs.start(
                session, run_id=run_id, team=team, agent=run.agent, model=run.model, task=run.task
            ):
                raise HTTPException(409, detail=f"run {run_id} exists already: pick another run_id")
            await outbox.add(
                session,
                AgentRunStarted(
                    source="agent-runtime",
                    tenant=team,
                    correlation_id=run_id,
                    run_id=run_id,
                    agent=run.agent,
                    model=run.model,
                    max_steps=run.max_steps,
                    max_cost_usd=run.max_cost_usd,
                ),
            )
        try:
            await client().start_workflow(
                AgentRunWorkflow.run, run, id=run_id, task_queue=task_queue, memo={"team": team}
            )
        except WorkflowAlreadyStartedError:  # another team's run with this id
            raise HTTPException(409, detail=f"run {run_id} exists already: pick another run_id") from None
        except RPCError as exc:
            async with db.transaction() as session:
                await runs.finish(
                    session,
                    run_id=run_id,
                    status="failed",
                    reason=f"not started: {exc}",
                    steps=0,
                    cost_usd=0.0,
                    answer=None,
                    at=datetime.now(UTC),
                )
            raise HTTPException(503, detail=f"cannot start the run: Temporal said {exc}") from None
        return {"run_id": run_id, "status": "running"}

    @router.get("/{run_id}")
    async def get(run_id: str, team: Team) -> dict[str, Any]:
        async with db.transaction() as session:
            found = await runs.get(session, team=team, run_id=run_id)
        if found is None:
            raise HTTPException(404, detail=f"no agent run {run_id} for team {team}")
        if found["status"] == "running":
            try:
                found["state"] = await client().get_workflow_handle(run_id).query(AgentRunWorkflow.state)
            except Exception:  # the worker may be restarting; the row still says where it was
                found["state"] = None
        return found

    @router.get("/{run_id}/trace")
    async def trace(run_id: str, team: Team) -> dict[str, Any]:
        """Every step of the run in order: LLM calls, tool calls, approvals, state changes."""
        async with db.transaction() as session:
            found = await runs.get(session, team=team, run_id=run_id)
            if found is None:
                raise HTTPException(404, detail=f"no agent run {run_id} for team {team}")
            return {"run": found, "steps": await runs.steps(session, run_id=run_id)}

    @router.post("/{run_id}/approve")
    async def approve(run_id: str, body: Approval, team: Team) -> dict[str, Any]:
        """Approve (or deny) a tool call the run waits on."""
        async with db.transaction() as session:
            found = await runs.get(session, team=team, run_id=run_id)
        if found is None:
            raise HTTPException(404, detail=f"no agent run {run_id} for team {team}")
        if found["status"] != "running":
            raise HTTPException(409, detail=f"run {run_id} has ended ({found['status']})")
        await (
            client()
            .get_workflow_handle(run_id)
            .signal(AgentRunWorkflow.approve, Decision(call_id=body.call_id, approved=body.approved, by=team))
        )
        return {"run_id": run_id, "call_id": body.call_id, "approved": body.approved}

    return router
