"""The Ray backend against a real Ray cluster (a head and two worker nodes on this machine with
simulated GPUs: 8 x h100-80gb and 4 x a100-80gb), jobs in the platform's sandbox on the nodes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from aicloud.local.ray_cluster import RayCluster
from contracts import JobRequested
from services.provisioner.backends import JobUnplaceable, NodeLost
from services.provisioner.backends.ray import RayBackend, RayJob, entry_spec, ray_jobs_client
from services.provisioner.backends.ray_entry import PLACEMENT, STOPPED_BEFORE_START, stop_file
from services.provisioner.backends.ray_entry import run as run_entry
from services.provisioner.recovery import stop_orphaned_ray_jobs

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT / "examples" / "datasets"
SHOW_GPUS = "import os; print('gpus', os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True)"


def backend(cluster: RayCluster, tmp_path: Path, *, placement_timeout_s: float = 120) -> RayBackend:
    return RayBackend(api=lambda: ray_jobs_client(cluster.dashboard), placement_timeout_s=placement_timeout_s,
                      work_dir=tmp_path / "jobs", memory_limit_mb=2048, dataset_root=DATASETS,
                      artifact_root=tmp_path / "artifacts")


def request(job_id: str, script: str, gpus: int = 0) -> JobRequested:
    return JobRequested(tenant="legal", job_id=job_id, command=["python3", "-c", script], gpus=gpus)


async def finish(job: RayJob, timeout_s: float = 90) -> int:
    async with asyncio.timeout(timeout_s):
        while (code := await job.wait()) is None:
            pass
    return code


async def node_of(job: RayJob) -> str:
    return str((await job.info()).driver_node_id)


def node_id(cluster: RayCluster, gpu_type: str) -> str:
    return next(str(n["nodeId"]) for n in cluster.alive_nodes()
                if any(gpu_type.lower() in str(k).lower() for k in n["resourcesTotal"]))  # type: ignore[union-attr]


async def test_two_four_gpu_jobs_on_one_node_get_disjoint_devices(
        ray_cluster: RayCluster, tmp_path: Path) -> None:
    ray = backend(ray_cluster, tmp_path)
    jobs = [await ray.start(request(f"split-{n}", SHOW_GPUS + "; import time; time.sleep(3)", gpus=4),
                            gpu_type="h100-80gb") for n in range(2)]
    placements = [await job.placement() for job in jobs]  # what `aicloud jobs get` shows
    assert [await finish(job) for job in jobs] == [0, 0]
    assert {p.node_id for p in placements} == {node_id(ray_cluster, "h100-80gb")}
    assert all(len(p.gpu_ids) == 4 for p in placements)
    assert not set(placements[0].gpu_ids) & set(placements[1].gpu_ids)
    seen = []
    for n in range(2):
        workspace = tmp_path / "jobs" / "legal" / f"split-{n}"
        line = (workspace / "job.log").read_text().split("gpus ")[-1].split()[0]
        seen.append(set(line.split(",")))
        placement = json.loads((workspace / PLACEMENT).read_text())
        assert set(placement["gpu_ids"]) == seen[-1]
    assert all(len(ids) == 4 for ids in seen) and not seen[0] & seen[1], seen
    assert {await node_of(job) for job in jobs} == {node_id(ray_cluster, "h100-80gb")}


async def test_a_job_lands_on_a_node_of_its_gpu_type(ray_cluster: RayCluster, tmp_path: Path) -> None:
    ray = backend(ray_cluster, tmp_path)
    job = await ray.start(request("typed", SHOW_GPUS, gpus=2), gpu_type="a100-80gb")
    assert await finish(job) == 0
    assert await node_of(job) == node_id(ray_cluster, "a100-80gb")


async def test_a_retried_start_finds_the_running_attempt_instead_of_starting_twice(
        ray_cluster: RayCluster, tmp_path: Path) -> None:
    ray = backend(ray_cluster, tmp_path)
    first = await ray.start(request("once", "import time; print('run', flush=True); time.sleep(4)"))
    again = await ray.start(request("once", "import time; print('run', flush=True); time.sleep(4)"))
    assert again.submission_id == first.submission_id == "once"
    assert await finish(again) == 0
    assert (tmp_path / "jobs" / "legal" / "once" / "job.log").read_text().count("run") == 1


async def test_stop_sends_sigterm_first_and_the_job_saves_its_checkpoint(
        ray_cluster: RayCluster, tmp_path: Path) -> None:
    script = ("import signal,sys,time; signal.signal(signal.SIGTERM, lambda *a: "
              "(print('saved checkpoint', flush=True), sys.exit(0))); print('ready', flush=True); "
              "time.sleep(100)")
    ray = backend(ray_cluster, tmp_path)
    job = await ray.start(request("graceful", script), grace_period_s=5)
    log = tmp_path / "jobs" / "legal" / "graceful" / "job.log"
    async with asyncio.timeout(60):
        while "ready" not in (log.read_text() if log.exists() else ""):
            await asyncio.sleep(0.1)
    await job.stop(grace_period_s=5)
    assert "saved checkpoint" in log.read_text()


async def test_a_job_no_node_can_take_fails_naming_what_it_waited_for(
        ray_cluster: RayCluster, tmp_path: Path) -> None:
    ray = backend(ray_cluster, tmp_path, placement_timeout_s=3)
    with pytest.raises(JobUnplaceable, match="no node with 16 free h100-80gb"):
        await ray.start(request("too-big", "print(1)", gpus=16), gpu_type="h100-80gb")
    # Ray was told to stop it; should it be placed anyway, its entrypoint will not run the job
    assert stop_file(tmp_path / "jobs" / "legal" / "too-big", "too-big").exists()


async def test_an_attempt_stopped_before_it_was_placed_never_runs_its_job(tmp_path: Path) -> None:
    workspace = tmp_path / "legal" / "late"
    workspace.mkdir(parents=True)
    stop_file(workspace, "late").touch()
    spec = entry_spec(request("late", "open('ran', 'w').write('yes')"), submission_id="late",
                      workspace=workspace, dataset=None, container_id="aicloud-legal-late-1",
                      memory_limit_mb=512, egress=False, isolation="auto", grace_period_s=5,
                      state_dir=str(tmp_path / "sandbox"))
    assert await run_entry(spec) == STOPPED_BEFORE_START
    assert not (workspace / "ran").exists()
    assert "stopped before it started" in (workspace / "job.log").read_text()


async def test_a_lost_node_ends_the_attempt_and_the_next_one_runs_again(
        ray_cluster: RayCluster, tmp_path: Path) -> None:
    ray = backend(ray_cluster, tmp_path)
    script = "import time; print('attempt', flush=True); time.sleep(60)"
    job = await ray.start(request("lost", script, gpus=1), gpu_type="a100-80gb")
    log = tmp_path / "jobs" / "legal" / "lost" / "job.log"
    async with asyncio.timeout(60):
        while "attempt" not in (log.read_text() if log.exists() else ""):
            await asyncio.sleep(0.1)
    ray_cluster.kill_node("a100-node")
    try:
        with pytest.raises(NodeLost):
            await finish(job, timeout_s=90)
    finally:
        ray_cluster.restart_node("a100-node")
    retry = await ray.start(request("lost", script, gpus=1), gpu_type="a100-80gb")
    assert retry.submission_id == "lost--a2"
    async with asyncio.timeout(90):
        while log.read_text().count("attempt") < 2:
            await asyncio.sleep(0.2)
    await retry.stop(grace_period_s=1)


async def test_a_ray_job_without_a_running_workflow_is_stopped_and_one_with_it_kept(
        ray_cluster: RayCluster, tmp_path: Path, temporal_env: WorkflowEnvironment) -> None:
    ray = backend(ray_cluster, tmp_path)
    script = "import time; time.sleep(120)"
    orphan = await ray.start(request("orphan-1", script))
    kept = await ray.start(request("kept-1", script))
    client = temporal_env.client
    workflow = await client.start_workflow("JobWorkflow", id="kept-1", task_queue="nobody-polls-this")
    try:
        stopped = await stop_orphaned_ray_jobs(client, ray.api)
        assert "orphan-1" in stopped and "kept-1" not in stopped
        async with asyncio.timeout(30):
            while (await orphan.info()).status.value != "STOPPED":
                await asyncio.sleep(0.2)
        assert (await kept.info()).status.value in {"PENDING", "RUNNING"}
    finally:
        await workflow.terminate("test over")
        await kept.stop(grace_period_s=1)


async def test_teardown_of_a_start_cancelled_while_waiting_for_gpus_leaves_nothing_to_run(
        ray_cluster: RayCluster, tmp_path: Path) -> None:
    ray = backend(ray_cluster, tmp_path, placement_timeout_s=300)
    waiting = request("waiting", "open('ran', 'w').write('yes')", gpus=16)
    starting = asyncio.create_task(ray.start(waiting, gpu_type="h100-80gb"))
    async with asyncio.timeout(60):
        while not (tmp_path / "jobs" / "legal" / "waiting").exists():
            await asyncio.sleep(0.1)
        while True:
            try:
                if (await asyncio.to_thread(ray.api.get_job_info, "waiting")).status.value == "PENDING":
                    break
            except RuntimeError:  # not submitted yet
                await asyncio.sleep(0.1)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    await ray.teardown(waiting)
    assert stop_file(tmp_path / "jobs" / "legal" / "waiting", "waiting").exists()


async def test_an_entrypoint_that_exits_at_once_or_cannot_start_ends_with_its_code_and_says_why(
        ray_cluster: RayCluster, tmp_path: Path) -> None:
    ray = backend(ray_cluster, tmp_path)
    quick = await ray.start(request("quick-exit", "import sys; sys.exit(3)"))
    assert await finish(quick, timeout_s=60) == 3
    missing = await ray.start(JobRequested(tenant="legal", job_id="no-such-cmd",
                                           command=["/nonexistent/train"], gpus=0))
    code = await finish(missing, timeout_s=60)
    assert code != 0
    log = (tmp_path / "jobs" / "legal" / "no-such-cmd" / "job.log").read_text(errors="replace")
    assert "/nonexistent/train" in log, log


async def test_a_job_printing_bytes_that_are_not_utf8_has_readable_logs(
        ray_cluster: RayCluster, tmp_path: Path) -> None:
    import httpx
    from fastapi import FastAPI

    from services.provisioner.jobs.api import build_router

    ray = backend(ray_cluster, tmp_path)
    script = "import sys; sys.stdout.buffer.write(b'loss \\xff\\xfe 0.5\\n'); sys.stdout.flush()"
    job = await ray.start(request("binary-log", script))
    assert await finish(job, timeout_s=60) == 0

    async def no_preempt(job_id: str, reason: str) -> bool:
        return False

    app = FastAPI()
    app.include_router(build_router(ray, no_preempt))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as client:
        chunk = (await client.get("/internal/jobs/legal/binary-log/logs")).json()
    assert "loss \ufffd\ufffd 0.5" in chunk["data"]


async def test_a_ray_job_the_cluster_deleted_is_a_lost_node_and_stopping_it_is_harmless(
        ray_cluster: RayCluster, tmp_path: Path) -> None:
    ray = backend(ray_cluster, tmp_path)
    job = await ray.start(request("deleted", "import time; time.sleep(60)"))
    await asyncio.to_thread(ray.api.stop_job, "deleted")
    async with asyncio.timeout(30):
        while (await job.info()).status.value not in {"STOPPED", "FAILED"}:
            await asyncio.sleep(0.2)
    assert await asyncio.to_thread(ray.api.delete_job, "deleted")  # type: ignore[attr-defined]
    await asyncio.sleep(1)  # the backend's shared view of its jobs is read again (JobStates)
    # Either the job is gone, or Ray's job monitor, outliving the delete, wrote it back as
    # "Job supervisor actor died" (entrypoint "Entrypoint not found."): a lost node both ways
    with pytest.raises(NodeLost, match=r"no longer exists on the cluster|its node was lost"):
        await job.wait()
    assert await job.stop(grace_period_s=1) == -15
