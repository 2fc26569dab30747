"""Agent runs on the real stack parts: Temporal (dev server), the inference router in front of the
fake OpenAI upstream (tool calls in the real wire format), sandboxes under bubblewrap, NATS and
PostgreSQL. The runs are the example agent's: analyse a CSV by writing Python and running it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from services.kit.sandbox import Isolation
from tests.integration.sandbox_fixtures import Runtime

pytestmark = pytest.mark.integration
CSV = "price,qty\n10,1\n20,3\n30,5\n"


@pytest.fixture
async def agents(make_runtime: Callable[..., Any], make_router: Callable[..., Any], temporal_env: Any,
                 prefix: str, tmp_path: Path) -> Callable[..., Any]:
    router = await make_router()
    keys = tmp_path / "router-keys.json"
    keys.write_text(json.dumps({"legal": await router.key(name="agents")}))

    async def make() -> Runtime:
        runtime: Runtime = await make_runtime(
            Isolation.BUBBLEWRAP, temporal_address=temporal_env.client.service_client.config.target_host,
            task_queue=f"agents-{prefix}", router_url=router.url, router_keys_file=keys)
        return runtime

    return make


async def run_until(runtime: Runtime, run_id: str, *, done: Callable[[dict[str, Any]], bool],
                    timeout: float = 60) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            r = await runtime.client.get(f"/v1/agents/runs/{run_id}/trace", headers=runtime.headers())
            if r.status_code == 200 and done(r.json()):
                return dict(r.json())
            await asyncio.sleep(0.2)


def finished(trace: dict[str, Any]) -> bool:
    return bool(trace["run"]["status"] != "running")


async def start(runtime: Runtime, **body: Any) -> str:
    r = await runtime.client.post("/v1/agents/runs", headers=runtime.headers(),
                                  json={"agent": "analyst", "model": "gpt", "task": "Summarise data.csv",
                                        "files": {"data.csv": CSV}, **body})
    assert r.status_code == 202, r.text
    return str(r.json()["run_id"])


async def test_an_agent_analyses_data_in_its_sandbox_and_every_step_is_traced(
        agents: Callable[..., Any], tracing: Path) -> None:
    runtime = await agents()
    run_id = await start(runtime, run_id="analyse-1")
    trace = await run_until(runtime, run_id, done=finished)
    run = trace["run"]
    assert (run["status"], run["reason"], run["steps"]) == ("succeeded", "answered", 2)
    assert "price: mean 20.00, min 10, max 30" in run["answer"]  # computed in the sandbox
    assert run["cost_usd"] > 0
    kinds = [(s["kind"], s["name"]) for s in trace["steps"]]
    assert kinds == [("state", "started"), ("llm", "gpt"), ("tool", "run_python"), ("llm", "gpt"),
                     ("state", "succeeded")], kinds
    tool = trace["steps"][2]
    assert tool["detail"]["exit_code"] == 0 and "qty: mean 3.00" in tool["detail"]["output"]
    # The run's sandbox is gone with the run.
    gone = await runtime.client.get(f"/v1/sandboxes/ar-{run_id}", headers=runtime.headers())
    assert gone.status_code == 410 and "run_finished" in gone.json()["detail"]
    # Events: the tool call and the run's start and end, through the outbox.
    async with runtime.service.db.transaction() as session:
        subjects = [r[0] for r in await session.execute(text("SELECT subject FROM outbox ORDER BY id"))]
    for subject in ("aicloud.agents.run_started.v1", "aicloud.agents.tool_called.v1",
                    "aicloud.agents.run_finished.v1"):
        assert any(s.endswith(subject) for s in subjects), subjects
    # Spans: the LLM calls with GenAI attributes, the tool call as execute_tool.
    spans = [json.loads(line) for line in tracing.read_text().splitlines()]
    ours = [s for s in spans if s.get("attributes", {}).get("aicloud.agent.run_id") == run_id]
    names = [s["name"] for s in ours]
    assert names.count("chat gpt") == 2 and "execute_tool run_python" in names, names
    chat = next(s for s in ours if s["name"] == "chat gpt")
    assert chat["attributes"]["gen_ai.usage.input_tokens"] > 0


async def test_limits_end_a_run_with_the_reason(agents: Callable[..., Any]) -> None:
    runtime = await agents()
    steps = await start(runtime, run_id="few-steps", max_steps=1)
    cost = await start(runtime, run_id="no-money", max_cost_usd=0)
    for run_id, reason in ((steps, "max_steps"), (cost, "max_cost")):
        run = (await run_until(runtime, run_id, done=finished))["run"]
        assert (run["status"], run["reason"]) == ("stopped", reason)
    body = {"agent": "analyst", "model": "gpt", "task": "x", "template": "cobol"}
    bad = await runtime.client.post("/v1/agents/runs", headers=runtime.headers(), json=body)
    assert bad.status_code == 422 and "unknown template" in bad.json()["detail"]
    # a model the router does not serve the team is refused at the start, naming the ones it does,
    # not accepted to fail at the first step; a model name with a control character never gets there
    unknown = await runtime.client.post("/v1/agents/runs", headers=runtime.headers(), json={
        "agent": "analyst", "model": "gpt-99-turbo", "task": "x", "run_id": "unknown-model"})
    assert unknown.status_code == 422, unknown.text
    said = unknown.json()["detail"]
    assert said.startswith("unknown model 'gpt-99-turbo': the inference router serves team legal ")
    assert "gpt" in said.rsplit(" legal ", 1)[1].split(", ")
    missing = await runtime.client.get("/v1/agents/runs/unknown-model", headers=runtime.headers())
    assert missing.status_code == 404
    control = await runtime.client.post("/v1/agents/runs", headers=runtime.headers(), json={
        "agent": "analyst", "model": "gpt\nX-Injected: 1", "task": "x"})
    assert control.status_code == 422
    again = await runtime.client.post("/v1/agents/runs", headers=runtime.headers(),
                                      json={"agent": "analyst", "model": "gpt", "task": "x", "run_id": steps})
    assert again.status_code == 409


async def test_an_approval_gates_the_tool_and_the_run_survives_a_runtime_restart(
        agents: Callable[..., Any]) -> None:
    first = await agents()
    run_id = await start(first, run_id="gated-1", approval_required=["run_python"])

    def waiting(trace: dict[str, Any]) -> bool:
        return any(s["kind"] == "approval" for s in trace["steps"])

    trace = await run_until(first, run_id, done=waiting)
    call_id = next(s for s in trace["steps"] if s["kind"] == "approval")["detail"]["call_id"]
    state = (await first.client.get(f"/v1/agents/runs/{run_id}", headers=first.headers())).json()["state"]
    assert "waiting for approval" in state
    await first.stop()  # the runtime goes away (its sandboxes with it) while the run waits

    second = await agents()
    r = await second.client.post(f"/v1/agents/runs/{run_id}/approve", headers=second.headers(),
                                 json={"call_id": call_id, "approved": True})
    assert r.status_code == 200, r.text
    trace = await run_until(second, run_id, done=finished)
    assert (trace["run"]["status"], trace["run"]["reason"]) == ("succeeded", "answered")
    order = [(s["kind"], s["name"]) for s in trace["steps"]]
    assert order.index(("state", "sandbox_recreated")) < order.index(("tool", "run_python")), order
    decision = next(s for s in trace["steps"] if s["kind"] == "decision")
    assert decision["detail"]["approved"] is True and decision["detail"]["by"] == "legal"
