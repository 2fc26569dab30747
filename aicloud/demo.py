"""``aicloud demo``: walk the golden path on a running local stack."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import typer

from aicloud import demo_agents, demo_endpoints, demo_router
from aicloud.client import ApiError, PlatformClient
from aicloud.jobs import placement_line
from aicloud.local.stack import Stack, default_home
from aicloud.output import console, fail

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _cluster(client: PlatformClient) -> None:
    """On the Ray engine: the cluster's GPUs by type, as quota admits against them."""
    view = client.request("GET", "/v1/cluster")
    pools = ", ".join(f"{p['gpu_type']} {p['free']}/{p['total']} free" for p in view["gpus"])
    console.print(f"   engine: Ray at {view['address']}, {len(view['nodes'])} nodes; GPUs {pools} "
                  "(aicloud cluster)")


def demo(team: str = typer.Option("legal", help="Team to run the demo as.")) -> None:
    """Submit a job, watch it finish, see a rejection with its reason and a dead letter."""
    stack = Stack(default_home())
    urls = {str(row["name"]): str(row["url"]) for row in stack.status() if row["healthy"]}
    if "catalog" not in urls:
        raise fail("the local platform is not running", hint="start it with `aicloud dev up --detach`")
    client = PlatformClient(team=team, base_url=urls["catalog"])
    name = f"demo-{int(time.time())}"

    console.rule("1. fine-tune on the team's dataset; the result is registered with its lineage")
    console.print("   aicloud create job --type fine-tune --gpus 1 \\")
    console.print("       --dataset projects/legal-rag/datasets/v2 --model-name clause-risk \\")
    console.print("       --param tracking=mlflow -- python3 examples/train.py")
    job = _submit(client, name, gpus=1, command=["python3", str(EXAMPLES / "train.py")],
                  dataset="projects/legal-rag/datasets/v2", model_name="clause-risk",
                  params={"epochs": "15", "tracking": "mlflow"})
    result = job["result"]
    console.print(f"   {name}: [bold]{job['status']}[/] -> model clause-risk v{result['model']['version']}")
    console.print(f"   metrics: {result.get('metrics')}")
    if tracked := result.get("tracking"):
        logged = ", ".join(f"{k}={v}" for k, v in sorted((result.get("logged_params") or {}).items()))
        console.print(f"   MLflow: params {logged}; run {tracked['run_id']} in "
                      f"experiment aicloud/{team} at {tracked['uri']}")
    if where := placement_line(client.request("GET", f"/v1/jobs/{name}")):
        console.print(f"   {where} (aicloud jobs get {name})")
    if "ray" in urls:
        _cluster(client)
    console.print(f"   trace: {client.trace_id} (grep it in the traces folder)")
    console.print(f"   workflow: {urls['temporal']}/namespaces/default/workflows/{name}")
    console.print("   lineage: aicloud models get clause-risk -o json")

    console.rule("2. a job that runs past its limit is stopped: SIGTERM, grace period, kill")
    job = _submit(client, f"{name}-slow", gpus=0, command=["sleep", "600"], max_runtime_s=3)
    console.print(f"   {job['job_id']}: [bold]{job['status']}[/] ({job['reason']}) after "
                  f"{job['result'].get('duration_s', 0):.1f}s")

    console.rule("3. guardrails as code: requests that break a Cedar policy are refused, with why")
    job = _submit(client, f"{name}-big", gpus=16, command=["true"])
    console.print(f"   16 GPUs -> [bold]{job['status']}[/]: {job['reason']}")
    research = PlatformClient(team="research", base_url=urls["catalog"])
    job = _submit(research, f"{name}-data", gpus=0, command=["true"],
                  dataset="projects/legal-rag/datasets/v2")
    console.print(f"   team research reads legal's dataset -> [bold]{job['status']}[/]: {job['reason']}")
    console.print("   try one offline: aicloud policy test --team legal --gpus 16")

    console.rule("4. an outside system publishes a malformed event: it is dead-lettered, not lost")
    dead = asyncio.run(_malformed(urls["nats"], stack.nats_login()))
    console.print(f"   aicloud.dlq.aicloud.jobs.requested.v1 <- reason={dead['reason']}")
    console.print(f"   error: {dead['error']}")

    console.rule("5. one gateway for every model: team keys, streaming, PII guard, fallback, canary, limits")
    demo_router.walk(stack, urls, team)

    console.rule("6. sandboxes for untrusted code, and an agent run that uses one, every step traced")
    demo_agents.walk(urls, team)

    console.rule("7. model endpoints (canary, scale to zero) and notebooks that stop themselves")

    def train(**params: str) -> int:
        trained = _submit(client, f"{name}-v2", gpus=0, command=["python3", str(EXAMPLES / "train.py")],
                          dataset="projects/legal-rag/datasets/v2", model_name="clause-risk",
                          params={"epochs": "3", **params})
        return int(trained["result"]["model"]["version"])

    keys = json.loads((stack.home / "router-keys.json").read_text())
    with httpx.Client(base_url=urls["inference-router"], timeout=60,
                      headers={"authorization": f"Bearer {keys[team]}"}) as router:
        demo_endpoints.walk(client, router, train=train, home=stack.home,
                            model_version=int(result["model"]["version"]))

    console.rule("8. the bill: every GPU-second and token above, priced, per team and kind")
    time.sleep(1.5)  # the last usage events are on their way to the ledger
    bill = client.request("GET", "/v1/bill", params=[("by", "kind")])
    for row in bill["rows"]:
        console.print(f"   {row['kind']:<10} ${float(row['usd']):,.4f}")
    console.print(f"   team {team} this month: [bold]${float(bill['total_usd']):,.4f}[/]  "
                  f"(aicloud bill --team {team} --by kind; live: {urls['cost-ledger']}/bill)")

    console.rule("where to look")
    console.print(f"   Temporal UI      {urls['temporal']}")
    console.print(f"   platform API     {urls['catalog']}/docs")
    console.print(f"   model router     {urls['inference-router']}/v1 (team keys: "
                  f"{stack.home / 'router-keys.json'})")
    console.print(f"   bill dashboard   {urls['cost-ledger']}/bill")
    console.print(f"   agent runtime    {urls['agent-runtime']}/docs (sandboxes, agent runs, state)")
    console.print("   endpoints        aicloud endpoints list; notebooks: aicloud notebooks list")
    console.print(f"   metrics          {urls['observability-collector']}/metrics")
    console.print(f"   observability    {urls['observability-collector']}/observability (this demo's "
                  "traffic: models, GPUs, drift, quality, SLOs, alerts; aicloud slo status)")
    if "prometheus" in urls:
        console.print(f"   Prometheus       {urls['prometheus']}/alerts (SLO burn-rate rules; "
                      f"Alertmanager {urls.get('alertmanager', '-')})")
    console.print(f"   traces           {stack.home / 'traces'}/*.jsonl")
    console.print("   stop everything  aicloud dev down")


def _submit(client: PlatformClient, name: str, *, gpus: int, command: list[str],
            **extra: object) -> dict[str, Any]:
    body = {"name": name, "gpus": gpus, "command": command, **extra}
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


async def _malformed(nats_url: str, login: dict[str, str]) -> dict[str, str]:
    nc = await nats.connect(nats_url, user=login.get("user"), password=login.get("password"))
    js = nc.jetstream()
    sub = await js.subscribe("aicloud.dlq.aicloud.jobs.requested.v1", ordered_consumer=True,
                             deliver_policy=nats.js.api.DeliverPolicy.NEW)
    await js.publish("aicloud.jobs.requested.v1", json.dumps({"tenant": "legal", "gpus": -1}).encode())
    message = await sub.next_msg(timeout=10)
    await nc.close()
    return dict(json.loads(message.data))
