"""The demo's agent part: a sandbox that contains what runs in it, and an agent run, traced."""

from __future__ import annotations

import time

from aicloud.output import console
from aicloud.sandboxes_client import SandboxClient

CSV = "region,revenue,units\nnorth,1200,30\nsouth,800,25\neast,1500,41\nwest,950,28\n"


def walk(urls: dict[str, str], team: str) -> None:
    client = SandboxClient(team=team, base_url=urls["agent-runtime"])
    try:
        _sandbox(client)
        _agent(client)
    finally:
        client.close()


def _sandbox(client: SandboxClient) -> None:
    started = time.perf_counter()
    with client.create("python") as box:
        ready = (time.perf_counter() - started) * 1000
        console.print(
            f"   aicloud sandboxes create -> {box.id} ({box.info['isolation']}, "
            f"{'from the warm pool' if box.info['pooled'] else 'cold'}, {ready:.0f} ms)"
        )
        for what, code in (
            ("an outbound connection", "import socket; socket.create_connection(('1.1.1.1', 443), 3)"),
            ("a fork bomb", "import os\nwhile True: os.fork()"),
            ("a write outside the workspace", "open('/usr/lib/x', 'w')"),
        ):
            result = box.exec(code=code)
            console.print(
                f"   {what:30} -> exit {result.exit_code}, stopped by the [bold]{result.limit}[/] limit"
            )
        ok = box.exec(command=["python3", "-c", "import numpy; print(numpy.arange(10).sum())"])
        console.print(f"   and the sandbox still works: numpy says {ok.stdout.strip()}")


def _agent(client: SandboxClient) -> None:
    run = client.request(
        "POST",
        "/v1/agents/runs",
        json={
            "agent": "analyst",
            "model": "gpt-4o-mini",
            "task": "Which region sells best? Use sales.csv.",
            "files": {"sales.csv": CSV},
            "approval_required": ["run_python"],
        },
    ).json()
    run_id = run["run_id"]
    console.print(
        f"   agent run {run_id}: writes Python, runs it in its own sandbox; the tool needs approval"
    )
    while True:
        trace = client.request("GET", f"/v1/agents/runs/{run_id}/trace").json()
        waiting = [s for s in trace["steps"] if s["kind"] == "approval"]
        decided = {s["detail"].get("call_id") for s in trace["steps"] if s["kind"] == "decision"}
        for step in waiting:
            if step["detail"]["call_id"] not in decided:
                client.request(
                    "POST", f"/v1/agents/runs/{run_id}/approve", json={"call_id": step["detail"]["call_id"]}
                )
                console.print(f"   aicloud agents approve {run_id} {step['detail']['call_id']}")
        if trace["run"]["status"] != "running":
            break
        time.sleep(0.3)
    for step in trace["steps"]:
        took = f"{step['duration_ms']:.0f} ms" if step["duration_ms"] is not None else ""
        console.print(f"     {step['kind']:9} {step['name']:18} {took}")
    run = trace["run"]
    console.print(
        f"   {run['status']} ({run['reason']}), ${run['cost_usd']:.6f}; "
        f"timeline: aicloud agents trace {run_id}"
    )
    for line in (run["answer"] or "").splitlines()[:6]:
        console.print(f"     {line}", markup=False)
