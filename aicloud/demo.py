"""``aicloud demo``: walk the golden path on a running local stack."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import nats
import typer

from aicloud.client import ApiError, PlatformClient
from aicloud.local.stack import Stack, default_home
from aicloud.output import console, fail

TRAIN = (
    "import json, os, random\n"
    "random.seed(int(os.environ.get('AICLOUD_PARAM_SEED', '0')))\n"
    "xs = [random.random() for _ in range(1000)]\n"
    "w = sum(x * 2.0 for x in xs) / sum(x * x for x in xs)\n"
    "print(json.dumps({'weight': round(w, 4), 'epochs': 1}))\n"
)


def demo(team: str = typer.Option("legal", help="Team to run the demo as.")) -> None:
    """Submit a job, watch it finish, see a rejection with its reason and a dead letter."""
    stack = Stack(default_home())
    urls = {row["name"]: str(row["url"]) for row in stack.status() if row["healthy"]}
    if "catalog" not in urls:
        raise fail("the local platform is not running", hint="start it with `aicloud dev up --detach`")
    client = PlatformClient(team=team, base_url=urls["catalog"])
    name = f"demo-{int(time.time())}"

    console.rule("1. a training job, through catalog -> quota -> provisioner -> Temporal")
    job = _submit(client, name, gpus=1, command=[sys.executable, "-c", TRAIN])
    exit_code = job["result"].get("exit_code")  # type: ignore[attr-defined]
    console.print(f"   {job['job_id']}: [bold]{job['status']}[/] (exit code {exit_code})")
    console.print(f"   trace: {client.trace_id} (grep it in the traces folder)")
    log = stack.home / "jobs" / team / name / "job.log"
    console.print(f"   output: {log.read_text().strip() if log.exists() else '(no log)'}")
    console.print(f"   workflow: {urls['temporal']}/namespaces/default/workflows/{name}")

    console.rule("2. guardrails as code: requests that break a Cedar policy are refused, with why")
    job = _submit(client, f"{name}-big", gpus=16, command=["true"])
    console.print(f"   16 GPUs -> [bold]{job['status']}[/]: {job['reason']}")
    research = PlatformClient(team="research", base_url=urls["catalog"])
    job = _submit(research, f"{name}-data", gpus=0, command=["true"],
                  dataset="projects/legal-rag/datasets/v2")
    console.print(f"   team research reads legal's dataset -> [bold]{job['status']}[/]: {job['reason']}")
    console.print("   try one offline: aicloud policy test --team legal --gpus 16")

    console.rule("3. an outside system publishes a malformed event: it is dead-lettered, not lost")
    dead = asyncio.run(_malformed(urls["nats"]))
    console.print(f"   aicloud.dlq.aicloud.jobs.requested.v1 <- reason={dead['reason']}")
    console.print(f"   error: {dead['error']}")

    console.rule("where to look")
    console.print(f"   Temporal UI      {urls['temporal']}")
    console.print(f"   platform API     {urls['catalog']}/docs")
    console.print(f"   metrics          {urls['observability-collector']}/metrics")
    console.print(f"   traces           {stack.home / 'traces'}/*.jsonl")
    console.print("   stop everything  aicloud dev down")


def _submit(client: PlatformClient, name: str, *, gpus: int, command: list[str],
            dataset: str | None = None) -> dict[str, object]:
    body = {"name": name, "gpus": gpus, "command": command, "dataset": dataset}
    try:
        client.request("POST", "/v1/jobs", json=body)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = client.request("GET", f"/v1/jobs/{name}")
            if job["status"] in {"completed", "failed", "terminated", "rejected"}:
                return dict(job)
            time.sleep(0.2)
    except ApiError as exc:
        raise fail(str(exc), hint=exc.hint) from None
    raise fail(f"{name} did not finish within 60 s", hint="`aicloud dev logs provisioner`")


async def _malformed(nats_url: str) -> dict[str, str]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sub = await js.subscribe("aicloud.dlq.aicloud.jobs.requested.v1", ordered_consumer=True,
                             deliver_policy=nats.js.api.DeliverPolicy.NEW)
    await js.publish("aicloud.jobs.requested.v1", json.dumps({"tenant": "legal", "gpus": -1}).encode())
    message = await sub.next_msg(timeout=10)
    await nc.close()
    return dict(json.loads(message.data))
