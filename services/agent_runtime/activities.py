"""The agent run's I/O: LLM calls through the inference router, tool calls in the run's sandbox,
the run's timeline, and its events. Each is a Temporal activity of AgentRunWorkflow.

Every LLM call is a ``chat {model}`` span with GenAI attributes, every tool call an
``execute_tool {name}`` span and an ``aicloud.agents.tool_called.v1`` event.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from temporalio import activity

from contracts import AgentRunFinished, ToolCalled
from contracts.pricebook import PriceBook
from services.agent_runtime import runs
from services.agent_runtime.errors import SandboxGone, SandboxNotFound
from services.agent_runtime.sandboxes import Sandboxes
from services.kit.db import Database
from services.kit.outbox import Outbox
from workflows.agent_run import AgentRunInput, LlmCall, LlmReply, RunEnd, StepNote, ToolCall, ToolResult

_tracer = trace.get_tracer("aicloud.agent_runtime")
MAX_TOOL_OUTPUT = 16_000
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "run_python",
            "description": "Run Python 3 code in the sandbox's /workspace; returns its output.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string"}},
                "required": ["code"],
            },
        },
    }
]


def sandbox_of(run_id: str) -> str:
    return f"ar-{run_id}"[:63]


class AgentActivities:
    def __init__(
        self,
        *,
        sandboxes: Sandboxes,
        db: Database,
        outbox: Outbox,
        router: httpx.AsyncClient,
        router_keys: Callable[[], dict[str, str]],
        prices: PriceBook,
        source: str,
    ) -> None:
        self._sandboxes, self._db, self._outbox = sandboxes, db, outbox
        self._router, self._keys, self._prices, self._source = router, router_keys, prices, source

    def all(self) -> list[Any]:
        return [self.prepare, self.llm_call, self.tool_call, self.note, self.finish]

    @activity.defn(name="agent_prepare")
    async def prepare(self, run: AgentRunInput) -> None:
        """The run's sandbox, with its input files."""
        await self._ensure_sandbox(run.run_id, run.team, run.template, files=run.files)

    @activity.defn(name="agent_llm_call")
    async def llm_call(self, call: LlmCall) -> LlmReply:
        key = self._keys().get(call.team)
        if key is None:
            raise RuntimeError(
                f"no inference router key for team {call.team}: add it to the router keys file"
            )
        started = time.perf_counter()
        with _tracer.start_as_current_span(f"chat {call.model}", kind=SpanKind.CLIENT) as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": call.model,
                    "aicloud.agent.run_id": call.run_id,
                    "aicloud.agent.step": call.step,
                }
            )
            response = await self._router.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": call.model, "messages": call.messages, "tools": TOOLS, "user": call.run_id},
            )
            if response.status_code >= 400:
                span.set_status(Status(StatusCode.ERROR, response.text[:200]))
                raise RuntimeError(f"the router answered {response.status_code}: {response.text[:300]}")
            body = response.json()
            usage = body.get("usage") or {}
            tokens_in, tokens_out = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
            span.set_attributes(
                {
                    "gen_ai.usage.input_tokens": tokens_in,
                    "gen_ai.usage.output_tokens": tokens_out,
                    "gen_ai.response.model": str(body.get("model", call.model)),
                    "gen_ai.response.finish_reasons": [
                        c.get("finish_reason") or "" for c in body.get("choices", [])
                    ],
                }
            )
        message = body["choices"][0]["message"]
        cost = self._prices.token_charge(
            call.model, tokens_in=tokens_in, tokens_out=tokens_out, when=datetime.now(UTC)
        ).usd
        names = [c["function"]["name"] for c in message.get("tool_calls") or []]
        await self._step(
            call.run_id,
            f"{call.step}:llm",
            "llm",
            call.model,
            duration_ms=(time.perf_counter() - started) * 1000,
            detail={
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "cost_usd": str(cost),
                "tool_calls": names,
                "content": (message.get("content") or "")[:500],
            },
        )
        return LlmReply(message=_clean(message), cost_usd=float(cost), tokens=tokens_in + tokens_out)

    @activity.defn(name="agent_tool_call")
    async def tool_call(self, call: ToolCall) -> ToolResult:
        started = time.perf_counter()
        with _tracer.start_as_current_span(f"execute_tool {call.name}", kind=SpanKind.INTERNAL) as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": call.name,
                    "gen_ai.tool.call.id": call.call_id,
                    "aicloud.agent.run_id": call.run_id,
                }
            )
            output, status, end = await self._run_tool(call)
            span.set_attribute("aicloud.tool.status", status)
            if status != "ok":
                span.set_status(Status(StatusCode.ERROR, status))
        duration = (time.perf_counter() - started) * 1000
        await self._step(
            call.run_id,
            f"{call.step}:tool:{call.call_id}",
            "tool",
            call.name,
            status=status,
            duration_ms=duration,
            detail={"exit_code": end.get("exit"), "limit": end.get("limit"), "output": output[:2000]},
        )
        async with self._db.transaction() as session:
            await self._outbox.add(
                session,
                ToolCalled(
                    source=self._source,
                    tenant=call.team,
                    correlation_id=call.run_id,
                    run_id=call.run_id,
                    tool=call.name,
                    sandbox_id=sandbox_of(call.run_id),
                    duration_ms=duration,
                    step=call.step,
                    agent=call.agent,
                    status=status,
                    exit_code=end.get("exit"),
                    limit=end.get("limit"),
                ),
            )
        return ToolResult(output=output, status=status)

    @activity.defn(name="agent_note")
    async def note(self, note: StepNote) -> None:
        await self._step(note.run_id, note.key, note.kind, note.name, detail=note.detail)

    @activity.defn(name="agent_finish")
    async def finish(self, end: RunEnd) -> None:
        run = end.run
        try:
            await self._sandboxes.delete(
                team=run.team, sandbox_id=sandbox_of(run.run_id), reason="run_finished"
            )
        except (SandboxGone, SandboxNotFound):
            pass
        async with self._db.transaction() as session:
            await runs.finish(
                session,
                run_id=run.run_id,
                status=end.status,
                reason=end.reason,
                steps=end.steps,
                cost_usd=end.cost_usd,
                answer=end.answer,
                at=datetime.now(UTC),
            )
            await runs.step(
                session,
                run_id=run.run_id,
                key="finish",
                kind="state",
                name=end.status,
                detail={"reason": end.reason, "steps": end.steps, "cost_usd": end.cost_usd},
            )
            await self._outbox.add(
                session,
                AgentRunFinished(
                    source=self._source,
                    tenant=run.team,
                    correlation_id=run.run_id,
                    run_id=run.run_id,
                    agent=run.agent,
                    status=end.status,
                    reason=end.reason,
                    steps=end.steps,
                    cost_usd=end.cost_usd,
                ),
            )

    async def _run_tool(self, call: ToolCall) -> tuple[str, str, dict[str, Any]]:
        if call.name != "run_python":
            return f"unknown tool {call.name!r}: the tools are run_python", "error", {}
        try:
            code = json.loads(call.arguments)["code"]
        except (ValueError, KeyError, TypeError):
            return "the arguments must be JSON with a `code` string", "error", {}
        box = await self._ensure_sandbox(call.run_id, call.team, call.template)
        interpreter = self._sandboxes.templates[call.template].template.interpreter
        chunks: list[str] = []
        end: dict[str, Any] = {}
        async for message in self._sandboxes.exec(
            team=call.team, sandbox_id=box, argv=[interpreter, "-c", code], timeout_s=call.timeout_s
        ):
            if "data" in message:
                chunks.append(base64.b64decode(message["data"]).decode(errors="replace"))
            elif "exit" in message:
                end = message
        output = "".join(chunks)[-MAX_TOOL_OUTPUT:]
        status = "ok" if end.get("exit") == 0 else "timeout" if end.get("limit") == "timeout" else "error"
        if end.get("limit"):
            output += f"\n[ended by the sandbox's {end['limit']} limit]"
        return output, status, end

    async def _ensure_sandbox(
        self, run_id: str, team: str, template: str, files: dict[str, str] | None = None
    ) -> str:
        """The run's sandbox; made again (empty) when a runtime crash took the old one."""
        sandbox_id = sandbox_of(run_id)
        try:
            await self._sandboxes.get(team=team, sandbox_id=sandbox_id)
            return sandbox_id
        except (SandboxGone, SandboxNotFound) as exc:
            recreated = isinstance(exc, SandboxGone)
        await self._sandboxes.create(team=team, template=template, sandbox_id=sandbox_id)
        if recreated:
            await self._step(
                run_id,
                f"sandbox:{time.time_ns()}",
                "state",
                "sandbox_recreated",
                detail={"sandbox_id": sandbox_id},
            )
        for path, content in (files or {}).items():
            await self._sandboxes.put_file(team=team, sandbox_id=sandbox_id, path=path, data=content.encode())
        return sandbox_id

    async def _step(
        self,
        run_id: str,
        key: str,
        kind: str,
        name: str,
        *,
        status: str = "ok",
        duration_ms: float | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        async with self._db.transaction() as session:
            await runs.step(
                session,
                run_id=run_id,
                key=key,
                kind=kind,
                name=name,
                status=status,
                duration_ms=duration_ms,
                detail=detail,
            )


def _clean(message: dict[str, Any]) -> dict[str, Any]:
    """The assistant message as it goes back into the conversation (no provider extras)."""
    kept = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        kept["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
            }
            for c in message["tool_calls"]
        ]
    return kept
