"""JobWorkflow on Temporal's time-skipping server with the real activities and local backend."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from contracts import JobCompleted, JobRequested, JobStarted, JobTerminated, Placement, UsageRecorded
from services.kit.bus import Bus
from services.provisioner.backends import NodeLost, RunningJob
from services.provisioner.backends.local import LocalBackend
from services.provisioner.jobs.activities import JobActivities
from services.provisioner.publish import Publisher
from services.provisioner.worker import provisioner_worker
from workflows.job import MAX_PREEMPTIONS, JobInput, JobWorkflow

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT / "examples" / "datasets"


@pytest.fixture
async def bus(nats_url: str, prefix: str) -> AsyncIterator[Bus]:
    bus = Bus(nats_url=nats_url, service="provisioner-test", prefix=prefix)
    await bus.connect()
    yield bus
    await bus.stop()


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
async def worker(client: Client, bus: Bus, tmp_path: Path) -> AsyncIterator[str]:
    queue = f"jobs-{uuid.uuid4().hex[:8]}"
    backend = LocalBackend(work_dir=tmp_path, memory_limit_mb=1024, dataset_root=DATASETS,
                           artifact_root=tmp_path / "artifacts")
    acts = JobActivities(bus=bus, backend=backend)
    job_worker = provisioner_worker(client, task_queue=queue,
                                    activities=[*acts.all(), *Publisher(bus=bus).all()])
    job_worker.start()
    yield queue
    await job_worker.stop()


async def collect(nats_url: str, prefix: str, subject: str) -> list[bytes]:
    nc = await nats.connect(nats_url)
    sub = await nc.jetstream().subscribe(f"{prefix}.{subject}", ordered_consumer=True)
    out = []
    try:
        while True:
            out.append((await sub.next_msg(timeout=0.5)).data)
    except nats.errors.TimeoutError:
        pass
    await nc.close()
    return out


def request(job_id: str, *command: str) -> JobRequested:
    return JobRequested(tenant="legal", job_id=job_id, command=list(command), gpus=2)


async def test_job_completes_and_emits_usage_and_terminal_events(
    client: Client, worker: str, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    job = JobInput(request=request("wf-ok", "python3", "-c", "print('hello from job')"))
    outcome = await client.execute_workflow(JobWorkflow.run, job, id=f"wf-ok-{prefix}",
                                            task_queue=worker)
    assert outcome.status == "completed" and outcome.exit_code == 0
    assert (tmp_path / "legal" / "wf-ok" / "job.log").read_text().strip() == "hello from job"
    completed = [JobCompleted.model_validate_json(d)
                 for d in await collect(nats_url, prefix, JobCompleted.SUBJECT)]
    assert [e.job_id for e in completed] == ["wf-ok"]
    usage = [UsageRecorded.model_validate_json(d)
             for d in await collect(nats_url, prefix, UsageRecorded.SUBJECT)]
    assert len(usage) == 1 and usage[0].gpus_requested == 2 and usage[0].resource_id == "wf-ok"


async def test_max_runtime_stops_a_job_that_never_ends(
    client: Client, worker: str, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    job = JobInput(request=request("wf-forever", "sleep", "100000"), max_runtime_s=2,
                   grace_period_s=1)
    outcome = await asyncio.wait_for(
        client.execute_workflow(JobWorkflow.run, job, id=f"wf-forever-{prefix}", task_queue=worker),
        timeout=30,
    )
    assert outcome.status == "terminated" and outcome.reason == "max_runtime"
    terminated = [JobTerminated.model_validate_json(d)
                  for d in await collect(nats_url, prefix, JobTerminated.SUBJECT)]
    assert [(e.job_id, e.reason) for e in terminated] == [("wf-forever", "max_runtime")]
    assert 2 <= terminated[0].duration_s < 10


async def test_cancel_signal_stops_the_job_gracefully(
    client: Client, worker: str, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    script = (
        "import signal,sys,time; signal.signal(signal.SIGTERM, lambda *a: "
        "(print('saved checkpoint', flush=True), sys.exit(0))); print('ready', flush=True); "
        "time.sleep(100)"
    )
    job = JobInput(request=request("wf-cancel", "python3", "-c", script), grace_period_s=5)
    handle = await client.start_workflow(JobWorkflow.run, job, id=f"wf-cancel-{prefix}",
                                         task_queue=worker)
    log = tmp_path / "legal" / "wf-cancel" / "job.log"
    async with asyncio.timeout(30):  # the handler is installed once it says so
        while "ready" not in (log.read_text() if log.exists() else ""):
            await asyncio.sleep(0.05)
    await handle.signal(JobWorkflow.cancel, "cancelled")
    outcome = await asyncio.wait_for(handle.result(), timeout=30)
    assert outcome.status == "terminated" and outcome.reason == "cancelled"
    assert "saved checkpoint" in log.read_text()  # SIGTERM first, the job got to clean up


async def test_same_job_id_cannot_start_twice(client: Client, worker: str, prefix: str) -> None:
    from temporalio.exceptions import WorkflowAlreadyStartedError

    job = JobInput(request=request("wf-once", "true"))
    await client.execute_workflow(JobWorkflow.run, job, id=f"wf-once-{prefix}", task_queue=worker)
    from temporalio.common import WorkflowIDReusePolicy

    with pytest.raises(WorkflowAlreadyStartedError):
        await client.start_workflow(JobWorkflow.run, job, id=f"wf-once-{prefix}", task_queue=worker,
                                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)


async def test_training_job_reports_artifacts_metrics_and_lineage_digests(
    client: Client, worker: str, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    job = JobInput(request=JobRequested(
        tenant="legal", job_id="wf-train", gpus=1, product="fine-tune",
        dataset="projects/legal-rag/datasets/v2", params={"epochs": "3"},
        command=["python3", str(ROOT / "examples" / "train.py")]))
    outcome = await client.execute_workflow(JobWorkflow.run, job, id=f"wf-train-{prefix}",
                                            task_queue=worker)
    assert outcome.status == "completed", outcome.reason
    [completed] = [JobCompleted.model_validate_json(d)
                   for d in await collect(nats_url, prefix, JobCompleted.SUBJECT)]
    assert [a.name for a in completed.stored_artifacts] == ["model.json"]
    assert (tmp_path / "artifacts" / "legal" / "wf-train" / "model.json").exists()
    assert set(completed.metrics) == {"loss", "accuracy"} and completed.metrics["accuracy"] > 0.6
    assert completed.dataset_digest and completed.code_digest
    assert "epoch 3/3" in (tmp_path / "legal" / "wf-train" / "job.log").read_text()


async def test_missing_dataset_fails_fast_with_the_reason(client: Client, worker: str, prefix: str) -> None:
    job = JobInput(request=JobRequested(tenant="legal", job_id="wf-nodata", command=["true"],
                                        dataset="projects/legal-rag/datasets/v9"))
    outcome = await asyncio.wait_for(
        client.execute_workflow(JobWorkflow.run, job, id=f"wf-nodata-{prefix}", task_queue=worker),
        timeout=30,
    )
    assert outcome.status == "failed"
    assert "dataset 'projects/legal-rag/datasets/v9' does not exist" in outcome.reason


async def wait_for_log(log: Path, text: str, count: int = 1) -> None:
    async with asyncio.timeout(60):
        while (log.read_text() if log.exists() else "").count(text) < count:
            await asyncio.sleep(0.05)


async def test_a_preempted_job_resumes_from_its_checkpoint_and_each_run_is_billed(
    client: Client, worker: str, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    job = JobInput(request=JobRequested(
        tenant="legal", job_id="wf-spot", gpus=1, product="fine-tune",
        dataset="projects/legal-rag/datasets/v2", params={"epochs": "30", "epoch_pause": "0.1"},
        command=["python3", str(ROOT / "examples" / "train.py")]), grace_period_s=2)
    handle = await client.start_workflow(JobWorkflow.run, job, id=f"wf-spot-{prefix}",
                                         task_queue=worker)
    checkpoint = tmp_path / "legal" / "wf-spot" / "checkpoints" / "checkpoint.json"
    async with asyncio.timeout(60):
        while not checkpoint.exists() or json.loads(checkpoint.read_text())["epoch"] < 3:
            await asyncio.sleep(0.05)
    await handle.signal(JobWorkflow.preempt, "spot capacity reclaimed (test)")
    outcome = await asyncio.wait_for(handle.result(), timeout=90)
    assert outcome.status == "completed", outcome.reason
    job_log = (tmp_path / "legal" / "wf-spot" / "job.log").read_text()
    resumed_at = int(job_log.split("resuming from checkpoint at epoch ")[1].split()[0])
    assert resumed_at >= 3 and job_log.count("epoch 30/30") == 1  # not from scratch
    usage = sorted((UsageRecorded.model_validate_json(d)
                    for d in await collect(nats_url, prefix, UsageRecorded.SUBJECT)),
                   key=lambda u: u.started_at)
    assert len(usage) == 2  # each run billed once, the gap between them not at all
    assert usage[0].ended_at <= usage[1].started_at
    started = await collect(nats_url, prefix, JobStarted.SUBJECT)
    assert len(started) == 2  # "running" announced by each run, once its process started


async def test_the_fourth_preemption_ends_the_job(
    client: Client, worker: str, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    script = "import time; print('ready', flush=True); time.sleep(1000)"
    job = JobInput(request=request("wf-evicted", "python3", "-c", script), grace_period_s=1)
    handle = await client.start_workflow(JobWorkflow.run, job, id=f"wf-evicted-{prefix}",
                                         task_queue=worker)
    log = tmp_path / "legal" / "wf-evicted" / "job.log"
    for run in range(1, MAX_PREEMPTIONS + 2):
        await wait_for_log(log, "ready", run)
        await handle.signal(JobWorkflow.preempt, f"reclaimed #{run}")
    outcome = await asyncio.wait_for(handle.result(), timeout=60)
    assert (outcome.status, outcome.reason) == ("terminated", "preempted")
    assert log.read_text().count("ready") == MAX_PREEMPTIONS + 1
    terminated = [JobTerminated.model_validate_json(d)
                  for d in await collect(nats_url, prefix, JobTerminated.SUBJECT)]
    assert [(e.job_id, e.reason) for e in terminated] == [("wf-evicted", "preempted")]
    usage = await collect(nats_url, prefix, UsageRecorded.SUBJECT)
    assert len(usage) == MAX_PREEMPTIONS + 1


class LostAfterCheckpoint:
    """The first run of a job whose node goes away once the job checkpointed epoch 3: its
    process dies with the node, and the engine says the node was lost."""

    def __init__(self, job: RunningJob, checkpoint: Path) -> None:
        self._job, self._checkpoint = job, checkpoint

    async def wait(self) -> int | None:
        if self._checkpoint.exists() and json.loads(self._checkpoint.read_text())["epoch"] >= 3:
            await self._job.stop(grace_period_s=0)
            raise NodeLost("Ray job wf-lost: its node was lost (test)")
        return await self._job.wait()

    async def stop(self, *, grace_period_s: float) -> int:
        return await self._job.stop(grace_period_s=grace_period_s)

    async def placement(self) -> Placement | None:
        return await self._job.placement()


class NodeLosingBackend(LocalBackend):
    async def start(self, request: JobRequested, **kwargs: Any) -> RunningJob:
        job = await super().start(request, **kwargs)
        self.starts = getattr(self, "starts", 0) + 1
        if self.starts > 1:
            return job
        return LostAfterCheckpoint(job, self.workspace(request) / "checkpoints" / "checkpoint.json")


async def test_a_lost_node_is_a_billed_preemption_and_the_job_resumes_from_its_checkpoint(
    client: Client, bus: Bus, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    queue = f"lost-{uuid.uuid4().hex[:8]}"
    backend = NodeLosingBackend(work_dir=tmp_path, memory_limit_mb=1024, dataset_root=DATASETS,
                                artifact_root=tmp_path / "artifacts")
    acts = JobActivities(bus=bus, backend=backend)
    job = JobInput(request=JobRequested(
        tenant="legal", job_id="wf-lost", gpus=1, product="fine-tune",
        dataset="projects/legal-rag/datasets/v2", params={"epochs": "12", "epoch_pause": "0.1"},
        command=["python3", str(ROOT / "examples" / "train.py")]), grace_period_s=2)
    job_worker = provisioner_worker(client, task_queue=queue,
                                    activities=[*acts.all(), *Publisher(bus=bus).all()])
    job_worker.start()
    try:
        outcome = await client.execute_workflow(JobWorkflow.run, job, id=f"wf-lost-{prefix}",
                                                task_queue=queue, execution_timeout=timedelta(minutes=2))
    finally:
        await job_worker.stop()
    assert outcome.status == "completed", outcome.reason
    assert backend.starts == 2  # not retried as a failure: run again, as a preemption
    job_log = (tmp_path / "legal" / "wf-lost" / "job.log").read_text()
    assert int(job_log.split("resuming from checkpoint at epoch ")[1].split()[0]) >= 3
    usage = await collect(nats_url, prefix, UsageRecorded.SUBJECT)
    assert len(usage) == 2  # the lost run is billed too, up to when the loss was noticed


async def test_a_worker_dying_in_collect_or_teardown_is_noticed_within_the_heartbeat_timeout(
    client: Client, bus: Bus, tmp_path: Path, prefix: str
) -> None:
    """A provisioner killed while it collects a job's outputs or tears the job down (found by
    the fault suite): the attempt that neither finishes nor heartbeats is run again after the
    job's heartbeat timeout, not after the activity's 5-10 minute start-to-close timeout."""
    backend = LocalBackend(work_dir=tmp_path, memory_limit_mb=1024, dataset_root=DATASETS,
                           artifact_root=tmp_path / "artifacts")
    acts = JobActivities(bus=bus, backend=backend)
    hung: list[str] = []

    def dies_on_its_first_attempt(real: Any, name: str) -> Any:
        @activity.defn(name=name)
        async def attempt(request: JobRequested) -> Any:
            if activity.info().attempt == 1:
                hung.append(name)
                await asyncio.Event().wait()  # like a dead worker: no result, no heartbeat
            return await real(request)
        return attempt

    real = [a for a in acts.all() if a not in (acts.collect_outputs, acts.teardown_job)]
    queue = f"jobs-{uuid.uuid4().hex[:8]}"
    job_worker = provisioner_worker(client, task_queue=queue, activities=[
        *real, dies_on_its_first_attempt(acts.collect_outputs, "collect_outputs"),
        dies_on_its_first_attempt(acts.teardown_job, "teardown_job"), *Publisher(bus=bus).all()])
    job_worker.start()
    try:
        job = JobInput(request=request("wf-dies", "python3", "-c", "print('done')"), heartbeat_timeout_s=2)
        outcome = await asyncio.wait_for(
            client.execute_workflow(JobWorkflow.run, job, id=f"wf-dies-{prefix}", task_queue=queue),
            timeout=60)
    finally:
        await job_worker.stop()
    assert outcome.status == "completed", outcome.reason
    assert hung == ["collect_outputs", "teardown_job"]
