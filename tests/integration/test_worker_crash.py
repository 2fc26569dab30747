"""A provisioner killed mid-job: a new worker resumes the job from its last checkpoint."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from aicloud.local import servers
from contracts import JobRequested
from workflows.job import JobInput, JobWorkflow

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def spawn_provisioner(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "services.provisioner"], env={**os.environ, **env},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


async def until_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with httpx.AsyncClient() as client, asyncio.timeout(60):
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


async def test_killed_worker_job_resumes_from_its_checkpoint(
    service_env: dict[str, str], prefix: str, temporal_env: Any, tmp_path: Path
) -> None:
    queue, port = f"crash-{uuid.uuid4().hex[:8]}", servers.free_port()
    env = {f"AICLOUD_PROVISIONER_{k.upper()}": v for k, v in service_env.items()} | {
        "AICLOUD_PROVISIONER_DB_SCHEMA": f"{prefix}_prov",
        "AICLOUD_PROVISIONER_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "AICLOUD_PROVISIONER_TASK_QUEUE": queue,
        "AICLOUD_PROVISIONER_WORK_DIR": str(tmp_path / "jobs"),
        "AICLOUD_PROVISIONER_HTTP_PORT": str(port),
    }
    log = tmp_path / "provisioner.log"
    first = spawn_provisioner(env, log)
    await until_ready(port, first, log)
    request = JobRequested(
        tenant="legal", job_id="resume-me", product="fine-tune", gpus=1,
        dataset="projects/legal-rag/datasets/v2", params={"epochs": "40", "epoch_pause": "0.1"},
        command=["python3", str(ROOT / "examples" / "train.py")],
    )
    handle = await temporal_env.client.start_workflow(
        JobWorkflow.run, JobInput(request=request, heartbeat_timeout_s=2),
        id=f"resume-{prefix}", task_queue=queue,
    )
    checkpoint = tmp_path / "jobs" / "legal" / "resume-me" / "checkpoints" / "checkpoint.json"
    async with asyncio.timeout(60):
        while not checkpoint.exists() or json.loads(checkpoint.read_text())["epoch"] < 5:
            await asyncio.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the worker dies mid-job, without any clean-up
    first.wait(10)

    second = spawn_provisioner(env, log)
    try:
        outcome = await asyncio.wait_for(handle.result(), timeout=90)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(30)
    job_log = (tmp_path / "jobs" / "legal" / "resume-me" / "job.log").read_text()
    assert outcome.status == "completed", outcome.reason
    assert "resuming from checkpoint at epoch" in job_log
    resumed_at = int(job_log.split("resuming from checkpoint at epoch ")[1].split()[0])
    assert resumed_at >= 5  # not from scratch
    assert job_log.count("epoch 40/40") == 1
