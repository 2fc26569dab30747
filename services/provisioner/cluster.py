"""What the compute engine has: its nodes and their GPUs by type (total, in use, free), read
from the engine itself. ``aicloud cluster`` shows it (through the catalog's ``/v1/cluster``)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from pydantic import BaseModel, Field

from contracts.cluster import GpuPoolCapacity

GPU_TYPE_PREFIX = "accelerator_type:"
LIVE = {"PENDING", "RUNNING"}
"""A Ray job in these states holds, or waits for, a node's GPUs."""


def status_of(job: Any) -> str:
    """A Ray job's status as a string (the client gives an enum, the HTTP API a string)."""
    return str(getattr(job.status, "value", job.status))


class NodeView(BaseModel):
    node_id: str
    state: str = Field(description="ALIVE or DEAD, as the engine says.")
    gpu_type: str | None = None
    gpus: int = 0
    gpus_in_use: int = 0
    simulated: bool = Field(default=False, description="Logical GPUs with no device behind them.")


class GpuPool(BaseModel):
    gpu_type: str
    total: int
    in_use: int
    free: int


class ClusterView(BaseModel):
    engine: str
    address: str = ""
    nodes: list[NodeView] = Field(default_factory=list)
    gpus: list[GpuPool] = Field(default_factory=list)
    note: str = ""


def local_view() -> ClusterView:
    return ClusterView(engine="local", note=(
        "jobs run as sandboxed processes on the provisioner's machine; GPU capacity is quota's "
        "configured node_gpus (start the stack with `aicloud dev up --engine ray` for a cluster)"))


async def ray_view(address: str, jobs: list[Any] | None = None) -> ClusterView:
    """The Ray cluster's nodes from its dashboard; GPUs in use from the jobs placed on each
    (none without ``jobs``)."""
    async with httpx.AsyncClient(timeout=5) as client:
        answer = (await client.get(f"{address}/nodes", params={"view": "summary"})).json()
    in_use: dict[str, int] = {}
    for job in jobs or ():
        if status_of(job) in LIVE and job.driver_node_id:
            in_use[job.driver_node_id] = in_use.get(job.driver_node_id, 0) + int(job.entrypoint_num_gpus or 0)
    nodes = [_node(entry, in_use) for entry in answer["data"]["summary"]]
    return ClusterView(engine="ray", address=address, nodes=nodes, gpus=pools(nodes))


def _node(entry: dict[str, Any], in_use: dict[str, int]) -> NodeView:
    raylet = entry.get("raylet", {})
    node_id = str(raylet.get("nodeId", ""))
    # The dashboard camel-cases resource names (accelerator_type:h100-80gb -> acceleratorType:H100-80Gb)
    # in the summary; the node's own label keeps the type as declared.
    totals = raylet.get("resourcesTotal", {})
    gpu_type = next((str(k).split(":", 1)[1].lower() for k in totals
                     if str(k).lower().startswith(("accelerator_type:", "acceleratortype:"))), None)
    gpus = int(totals.get("GPU", 0))
    return NodeView(node_id=node_id, state=str(raylet.get("state", "UNKNOWN")), gpu_type=gpu_type,
                    gpus=gpus, gpus_in_use=min(in_use.get(node_id, 0), gpus),
                    simulated=gpus > 0 and not entry.get("gpus"))


def pools(nodes: list[NodeView]) -> list[GpuPool]:
    """GPUs by type over the live nodes."""
    totals: dict[str, list[int]] = {}
    for node in nodes:
        if node.state == "ALIVE" and node.gpus and node.gpu_type:
            pool = totals.setdefault(node.gpu_type, [0, 0])
            pool[0] += node.gpus
            pool[1] += node.gpus_in_use
    return [GpuPool(gpu_type=t, total=total, in_use=used, free=total - used)
            for t, (total, used) in sorted(totals.items())]


def capacity_pools(nodes: list[NodeView]) -> list[GpuPoolCapacity]:
    """What quota admits against: GPUs by type on the nodes alive, and the biggest node of each
    type alive or not (a type whose nodes are all down is waited for, not refused)."""
    pools: dict[str, dict[str, Any]] = {}
    for node in nodes:
        if not node.gpus or not node.gpu_type:
            continue
        pool = pools.setdefault(node.gpu_type, {"total": 0, "largest_node": 0, "nodes_alive": 0,
                                                "simulated": False})
        pool["largest_node"] = max(pool["largest_node"], node.gpus)
        pool["simulated"] = pool["simulated"] or node.simulated
        if node.state == "ALIVE":
            pool["total"] += node.gpus
            pool["nodes_alive"] += 1
    return [GpuPoolCapacity(gpu_type=t, **pool) for t, pool in sorted(pools.items())]


async def list_ray_jobs(api: Any) -> list[Any]:
    return list(await asyncio.to_thread(api.list_jobs))
