"""What a starting provisioner does about the replicas and notebooks a previous process left.

Their host-side handles died with that process, so every sandbox it left is killed (nothing
runs unaccounted), then each running endpoint workflow is told which of its replicas are
gone — it starts replacements and announces them — and each running notebook workflow is
stopped with that reason (its files are on the team's volume; the owner starts a new one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Container
from pathlib import Path
from typing import Any

import structlog
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from services.kit.sandbox import Sandbox
from services.provisioner.cluster import LIVE, status_of
from services.provisioner.endpoints.serving.replica import reap as reap_replicas
from services.provisioner.notebooks.jupyter import reap as reap_notebooks
from services.provisioner.signals import signal
from workflows.endpoint import EndpointWorkflow

log = structlog.get_logger(__name__)
LOST_NOTEBOOK = "provisioner_restarted"


async def reap(*, sandbox: Sandbox, serving_root: Path, notebook_root: Path) -> None:
    """Kill what a previous process left; before this process starts anything of its own."""
    replicas = await reap_replicas(sandbox, serving_root)
    notebooks = await reap_notebooks(sandbox, notebook_root)
    if replicas or notebooks:
        log.warning("provisioner.reaped", replicas=replicas, notebooks=notebooks)


async def report_lost(client: Client, *, task_queue: str, live: Container[str]) -> None:
    """Tell the running workflows what was reaped. Needs this process's worker polling: a
    query is answered by a worker, and the workflows' replacements are started by one.
    A workflow's replica that is ``live`` (started by this process: a start that was in flight
    when the last one died, retried here before the query was answered) is not lost."""
    running = f"ExecutionStatus = 'Running' AND TaskQueue = '{task_queue}'"
    try:
        query = f"WorkflowType = 'EndpointWorkflow' AND {running}"
        endpoints = [e.id async for e in client.list_workflows(query)]
        await asyncio.gather(*(_report_replicas(client, endpoint, live) for endpoint in endpoints))
        async for execution in client.list_workflows(f"WorkflowType = 'NotebookWorkflow' AND {running}"):
            await signal(client, execution.id, "stop", LOST_NOTEBOOK)
    except Exception:  # runs in the background: say so loudly, the next restart tries again
        log.exception("provisioner.recovery_failed")


async def _report_replicas(client: Client, endpoint: str, live: Container[str]) -> None:
    # The first query after a worker died waits out its sticky queue (seconds): all at once.
    state = await client.get_workflow_handle(endpoint).query(EndpointWorkflow.state)
    lost = [r.replica_id for r in state.replicas if r.replica_id not in live]
    if lost:
        log.warning("endpoint.replicas_lost", endpoint=endpoint, replicas=lost, why="provisioner restarted")
        await signal(client, endpoint, "replicas_lost", lost)


async def stop_orphaned_ray_jobs(client: Client, api: Any) -> list[str]:
    """Every live Ray job of the platform belongs to a running JobWorkflow, or is stopped: a job
    whose workflow ended (or never existed) would otherwise hold its GPUs unbilled. A workflow
    that still runs keeps its job: its retried ``run_job`` finds the attempt and waits on it."""
    stopped = []
    for job in await asyncio.to_thread(api.list_jobs):
        job_id = (job.metadata or {}).get("aicloud.job_id")
        if job_id is None or status_of(job) not in LIVE:
            continue
        if not await _workflow_running(client, job_id):
            await asyncio.to_thread(api.stop_job, job.submission_id)
            stopped.append(str(job.submission_id))
    if stopped:
        log.warning("ray.orphans_stopped", submissions=stopped)
    return stopped


async def _workflow_running(client: Client, workflow_id: str) -> bool:
    try:
        described = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if "not found" in str(exc).lower():
            return False
        raise
    return described.status == WorkflowExecutionStatus.RUNNING
