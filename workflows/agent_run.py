"""AgentRunWorkflow: an agent's loop as a durable workflow.

Each step is an LLM call through the inference router (an activity), then each tool call the
model asked for runs in the run's sandbox (an activity with its own timeout and retries). A
tool named in ``approval_required`` waits for an ``approve`` signal. Max steps, max cost and
max wall time end the run with that reason. Because every call is an activity, a runtime that
crashes loses nothing: the workflow resumes on the next worker from the last completed call.

Workflow id = run id. All I/O is in services/agent_runtime/activities.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

TASK_QUEUE = "aicloud-agents"


class AgentRunInput(BaseModel):
    run_id: str
    team: str
    agent: str
    model: str
    task: str
    system: str = "You are a careful data analyst. Use the run_python tool to inspect the files."
    template: str = "python"
    files: dict[str, str] = Field(default_factory=dict, description="Put in the sandbox first.")
    approval_required: list[str] = Field(default_factory=list)
    max_steps: int = Field(default=8, ge=1, le=200)
    max_cost_usd: float = Field(default=1.0, ge=0)
    max_wall_s: int = Field(default=600, ge=1, le=86_400)
    tool_timeout_s: int = Field(default=60, ge=1, le=3600)
    approval_timeout_s: int = Field(default=3600, ge=1)


class LlmCall(BaseModel):
    run_id: str
    team: str
    model: str
    step: int
    messages: list[dict[str, Any]]


class LlmReply(BaseModel):
    message: dict[str, Any]
    cost_usd: float
    tokens: int


class ToolCall(BaseModel):
    run_id: str
    team: str
    agent: str
    step: int
    call_id: str
    name: str
    arguments: str
    template: str
    timeout_s: int


class ToolResult(BaseModel):
    output: str
    status: str


StepKind = Literal["state", "llm", "tool", "approval", "decision"]
"""What a step of a run's trace is (``agent_steps.kind``)."""


class StepNote(BaseModel):
    run_id: str
    key: str
    kind: StepKind
    name: str = ""
    detail: dict[str, Any] = Field(default_factory=dict)


class RunEnd(BaseModel):
    run: AgentRunInput
    status: str
    reason: str
    steps: int
    cost_usd: float
    answer: str | None = None


class Decision(BaseModel):
    call_id: str
    approved: bool
    by: str = "someone"


LLM_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
TOOL_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=2)


@workflow.defn
class AgentRunWorkflow:
    def __init__(self) -> None:
        self._decisions: dict[str, Decision] = {}
        self._state = "starting"

    @workflow.signal
    def approve(self, decision: Decision) -> None:
        self._decisions[decision.call_id] = decision

    @workflow.query
    def state(self) -> str:
        return self._state

    @workflow.run
    async def run(self, run: AgentRunInput) -> RunEnd:
        started = workflow.now()
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": run.system},
            {"role": "user", "content": run.task},
        ]
        cost, step, status, reason, answer = 0.0, 0, "failed", "", None
        try:
            await self._note(
                run, "start", "state", "started", {"model": run.model, "files": sorted(run.files)}
            )
            await workflow.execute_activity(
                "agent_prepare", run, start_to_close_timeout=timedelta(minutes=2), retry_policy=TOOL_RETRY
            )
            while True:
                if step >= run.max_steps:
                    status, reason = "stopped", "max_steps"
                    break
                if (workflow.now() - started).total_seconds() >= run.max_wall_s:
                    status, reason = "stopped", "max_wall_time"
                    break
                step += 1
                self._state = f"step {step}: thinking"
                reply: LlmReply = await workflow.execute_activity(
                    "agent_llm_call",
                    LlmCall(run_id=run.run_id, team=run.team, model=run.model, step=step, messages=messages),
                    result_type=LlmReply,
                    start_to_close_timeout=timedelta(minutes=2),
                    retry_policy=LLM_RETRY,
                )
                cost += reply.cost_usd
                messages.append(reply.message)
                if cost > run.max_cost_usd:
                    status, reason = "stopped", "max_cost"
                    break
                calls = reply.message.get("tool_calls") or []
                if not calls:
                    status, reason, answer = "succeeded", "answered", reply.message.get("content")
                    break
                for call in calls:
                    messages.append(await self._tool(run, step, call))
        except ActivityError as exc:
            status, reason = (
                "failed",
                f"{type(exc.cause).__name__ if exc.cause else 'error'}: {exc.cause or exc}",
            )
        self._state = f"{status}: {reason}"
        end = RunEnd(
            run=run, status=status, reason=reason[:500], steps=step, cost_usd=round(cost, 6), answer=answer
        )
        await workflow.execute_activity(
            "agent_finish", end, start_to_close_timeout=timedelta(minutes=1), retry_policy=TOOL_RETRY
        )
        return end

    async def _tool(self, run: AgentRunInput, step: int, call: dict[str, Any]) -> dict[str, Any]:
        name, call_id = call["function"]["name"], call["id"]
        if name in run.approval_required:
            self._state = f"step {step}: waiting for approval of {name} ({call_id})"
            await self._note(run, f"{step}:approval:{call_id}", "approval", name, {"call_id": call_id})
            try:
                await workflow.wait_condition(
                    lambda: call_id in self._decisions, timeout=timedelta(seconds=run.approval_timeout_s)
                )
            except TimeoutError:
                self._decisions[call_id] = Decision(call_id=call_id, approved=False, by="timeout")
            decision = self._decisions[call_id]
            await self._note(run, f"{step}:decision:{call_id}", "decision", name, decision.model_dump())
            if not decision.approved:
                return {"role": "tool", "tool_call_id": call_id, "content": f"denied by {decision.by}"}
        self._state = f"step {step}: running {name}"
        result: ToolResult = await workflow.execute_activity(
            "agent_tool_call",
            ToolCall(
                run_id=run.run_id,
                team=run.team,
                agent=run.agent,
                step=step,
                call_id=call_id,
                name=name,
                arguments=call["function"]["arguments"],
                template=run.template,
                timeout_s=run.tool_timeout_s,
            ),
            result_type=ToolResult,
            start_to_close_timeout=timedelta(seconds=run.tool_timeout_s + 30),
            retry_policy=TOOL_RETRY,
        )
        return {"role": "tool", "tool_call_id": call_id, "content": result.output}

    async def _note(self, run: AgentRunInput, key: str, kind: StepKind, name: str,
                    detail: dict[str, Any]) -> None:
        await workflow.execute_activity(
            "agent_note",
            StepNote(run_id=run.run_id, key=key, kind=kind, name=name, detail=detail),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=TOOL_RETRY,
        )
