"""``aicloud agents``: start an agent run, follow it, read its timeline, approve its tools."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from aicloud.admin import AdminEndpoint, admin_call
from aicloud.jobs import Output, Team
from aicloud.output import Format, console, emit, fail
from aicloud.sandboxes import _with_client

app = typer.Typer(
    help="Agent runs: durable, sandboxed, cost-capped, every step traced.", no_args_is_help=True
)
TERMINAL = {"succeeded", "failed", "stopped"}
RUNTIME = AdminEndpoint("agent-runtime", "AICLOUD_SANDBOXES_URL", "AICLOUD_AGENT_RUNTIME_ADMIN_TOKEN",
                        "agent-runtime-admin-token")


@app.command("run")
def run(
    task: Annotated[str, typer.Argument(help="What the agent should do.")],
    agent: Annotated[str, typer.Option(help="The agent's name (it groups runs and state).")] = "analyst",
    model: Annotated[str, typer.Option(help="A model alias of the inference router.")] = "gpt-4o-mini",
    file: Annotated[list[Path] | None, typer.Option(help="A local file put in the sandbox (repeat).")] = None,
    approve: Annotated[
        list[str] | None,
        typer.Option("--require-approval", help="A tool that waits for `aicloud agents approve` (repeat)."),
    ] = None,
    max_steps: Annotated[int, typer.Option(help="Stop after this many LLM calls.")] = 8,
    max_cost: Annotated[float, typer.Option(help="Stop once the run has cost this many USD.")] = 1.0,
    max_wall: Annotated[int, typer.Option(help="Stop after this many seconds.")] = 600,
    wait: Annotated[bool, typer.Option(help="Wait for the end and print the answer.")] = True,
    team: Team = None,
    output: Output = Format.table,
) -> None:
    """Start an agent run; with --wait (the default) follow it to the end."""
    files = {}
    for path in file or []:
        if not path.is_file():
            raise fail(f"{path} is not a file", code=2)
        files[path.name] = path.read_text()
    body = {
        "agent": agent,
        "model": model,
        "task": task,
        "files": files,
        "approval_required": approve or [],
        "max_steps": max_steps,
        "max_cost_usd": max_cost,
        "max_wall_s": max_wall,
    }
    started = _with_client(team, lambda c: c.request("POST", "/v1/agents/runs", json=body).json())
    run_id = started["run_id"]
    if not wait:
        emit(started, fmt=output, columns=("run_id", "status"))
        return
    if output is Format.table:
        console.print(f"run [bold]{run_id}[/] started; following it (Ctrl-C stops following, not the run)")
    found = _follow(team, run_id, quiet=output is Format.json)
    if output is Format.json:
        emit(found, fmt=output, columns=())
    else:
        console.print(
            f"{found['status']} ({found['reason']}) after {found['steps']} step(s), ${found['cost_usd']:.6f}"
        )
        if found.get("answer"):
            console.print(found["answer"], markup=False)
    if found["status"] != "succeeded":
        raise typer.Exit(1)


def _follow(team: str | None, run_id: str, *, quiet: bool) -> dict[str, Any]:
    last = None
    while True:
        found = _with_client(team, lambda c: c.request("GET", f"/v1/agents/runs/{run_id}").json())
        if not quiet and found.get("state") and found["state"] != last:
            last = found["state"]
            console.print(f"  {last}", markup=False)
        if found["status"] in TERMINAL:
            return dict(found)
        time.sleep(0.3)


@app.command("get")
def get(run_id: str, team: Team = None, output: Output = Format.table) -> None:
    """Where a run is: status, reason, steps, cost."""
    found = _with_client(team, lambda c: c.request("GET", f"/v1/agents/runs/{run_id}").json())
    emit(
        found,
        fmt=output,
        columns=("run_id", "agent", "model", "status", "reason", "steps", "cost_usd", "state"),
    )


@app.command("trace")
def trace(run_id: str, team: Team = None, output: Output = Format.table) -> None:
    """The run as a timeline: each LLM call, tool call, approval and state change, in order."""
    found = _with_client(team, lambda c: c.request("GET", f"/v1/agents/runs/{run_id}/trace").json())
    if output is Format.json:
        emit(found, fmt=output, columns=())
        return
    rows = [
        {
            "at": s["at"][11:23],
            "kind": s["kind"],
            "name": s["name"],
            "status": s["status"],
            "ms": f"{s['duration_ms']:.0f}" if s["duration_ms"] is not None else "",
            "detail": _summary(s["kind"], s["detail"]),
        }
        for s in found["steps"]
    ]
    emit(rows, fmt=Format.table, columns=("at", "kind", "name", "status", "ms", "detail"))
    run_ = found["run"]
    console.print(
        f"{run_['run_id']}: {run_['status']} ({run_['reason'] or 'running'}), "
        f"{run_['steps']} step(s), ${run_['cost_usd']:.6f}"
    )


@app.command("approve")
def approve_(
    run_id: str,
    call_id: str,
    deny: Annotated[bool, typer.Option(help="Deny instead.")] = False,
    team: Team = None,
) -> None:
    """Let a waiting tool call go ahead (or --deny it)."""
    body = {"call_id": call_id, "approved": not deny}
    _with_client(team, lambda c: c.request("POST", f"/v1/agents/runs/{run_id}/approve", json=body))
    console.print(f"{'denied' if deny else 'approved'} {call_id} of {run_id}")


@app.command("rotate-keys")
def rotate_keys() -> None:
    """Platform engineers: re-wrap every team's agent-state data key with the active master key
    (set the new key active first, keep the old one until this succeeds). No data is re-encrypted."""
    done = admin_call(RUNTIME, "POST", "/admin/state/rotate-keys")
    console.print(f"re-wrapped {done['rewrapped']} data key(s) with master key {done['active_key']}")


def _summary(kind: str, detail: dict[str, Any]) -> str:
    if kind == "llm":
        calls = ", ".join(detail.get("tool_calls") or []) or "answer"
        tokens = f"{detail.get('tokens_in')}+{detail.get('tokens_out')} tokens"
        return f"{tokens}, ${detail.get('cost_usd')} -> {calls}"
    if kind == "tool":
        out = (detail.get("output") or "").strip().splitlines()
        limit = f" limit={detail['limit']}" if detail.get("limit") else ""
        return f"exit {detail.get('exit_code')}{limit}: {out[0][:60] if out else ''}"
    return json.dumps(detail)[:80]
