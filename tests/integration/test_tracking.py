"""Experiment tracking: a sandboxed job logs with MLflow, its params and metrics reach the model
version, and its run is copied once to the organisation's MLflow store (a real SQLite-backed
MLflow store, the one ``mlflow server --backend-store-uri`` serves)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from aicloud.local import servers
from contracts import JobCompleted, JobRequested
from services.kit.bus import Bus
from services.provisioner.backends.local import LocalBackend
from services.provisioner.jobs.activities import JobActivities
from services.provisioner.jobs.mlflow_copy import public_uri
from services.provisioner.jobs.outputs import collect
from services.provisioner.publish import Publisher
from services.provisioner.worker import provisioner_worker
from workflows.job import JobInput, JobWorkflow

pytestmark = pytest.mark.integration

JOB = """
import json, os
import mlflow
with mlflow.start_run():
    mlflow.log_param("optimizer", "sgd")
    for step in range(3):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
with open(os.environ["AICLOUD_METRICS_FILE"], "a") as f:
    f.write(json.dumps({"accuracy": 0.9}) + "\\n")
"""


@pytest.fixture
async def activities(nats_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[JobActivities]:
    bus = Bus(nats_url=nats_url, service="provisioner-test", prefix=prefix)
    await bus.connect()
    backend = LocalBackend(work_dir=tmp_path / "jobs", memory_limit_mb=2048,
                           artifact_root=tmp_path / "artifacts")
    yield JobActivities(bus=bus, backend=backend, tracking_uri=f"sqlite:///{tmp_path}/org.db")
    await bus.stop()


async def run(client: Client, acts: JobActivities, job_id: str, script: str) -> JobCompleted:
    queue = f"jobs-{uuid.uuid4().hex[:8]}"
    worker = provisioner_worker(client, task_queue=queue,
                                activities=[*acts.all(), *Publisher(bus=acts.bus).all()])
    worker.start()
    try:
        request = JobRequested(tenant="legal", job_id=job_id, command=["python3", "-c", script],
                               params={"epochs": "3"}, requested_by="alice")
        outcome = await client.execute_workflow(JobWorkflow.run, JobInput(request=request),
                                                id=f"{job_id}-{uuid.uuid4().hex[:6]}", task_queue=queue)
    finally:
        await worker.stop()
    assert outcome.status == "completed", outcome
    outputs = await acts.collect_outputs(request)  # what the activity reported, asked again
    return JobCompleted(tenant="legal", source="test", job_id=job_id, duration_s=0,
                        metrics=outputs.metrics, logged_params=outputs.logged_params,
                        tracking=outputs.tracking)


async def test_a_job_logging_with_mlflow_gets_its_run_copied_once(
    temporal_env: WorkflowEnvironment, activities: JobActivities, tmp_path: Path
) -> None:
    completed = await run(temporal_env.client, activities, "mlflow-job", JOB)
    assert completed.logged_params == {"optimizer": "sgd"}
    assert completed.metrics == {"loss": pytest.approx(1 / 3), "accuracy": 0.9}
    assert completed.tracking is not None and completed.tracking.uri == f"sqlite:///{tmp_path}/org.db"

    org = MlflowClient(f"sqlite:///{tmp_path}/org.db")
    experiment = org.get_experiment_by_name("aicloud/legal")
    assert experiment is not None
    runs = org.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [completed.tracking.run_id]  # collected twice, copied once
    copied = runs[0]
    assert copied.info.status == "FINISHED" and copied.info.run_name == "mlflow-job"
    assert copied.data.params == {"epochs": "3", "optimizer": "sgd"}
    assert copied.data.tags["aicloud.job_id"] == "mlflow-job" and copied.data.tags["mlflow.user"] == "alice"
    history = org.get_metric_history(copied.info.run_id, "loss")
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 1.0), (1, 0.5), (2, 0.333)]
    assert copied.data.metrics["accuracy"] == 0.9  # from the metrics file


async def test_an_unreadable_mlflow_store_leaves_the_job_completed(
    temporal_env: WorkflowEnvironment, activities: JobActivities
) -> None:
    script = ("import json, os; open('mlflow.db', 'wb').write(b'not a database' * 100); "
              "open(os.environ['AICLOUD_METRICS_FILE'], 'a').write(json.dumps({'f1': 0.5}) + '\\n')")
    completed = await run(temporal_env.client, activities, "garbage-store", script)
    assert completed.metrics == {"f1": 0.5} and completed.logged_params == {}
    assert completed.tracking is not None  # the metrics file's values were still copied


async def test_an_unreachable_server_leaves_the_job_completed(
    temporal_env: WorkflowEnvironment, activities: JobActivities, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    activities._tracking_uri = "http://user:secret@127.0.0.1:9/"  # nothing listens on port 9
    completed = await run(temporal_env.client, activities, "no-server", JOB)
    assert completed.tracking is None
    assert completed.logged_params == {"optimizer": "sgd"}  # read from the job's own store all the same


def test_a_server_address_is_shown_without_credentials() -> None:
    assert public_uri("https://bob:hunter2@mlflow.example.com:5000/x?token=abc") == \
        "https://mlflow.example.com:5000/x"
    assert public_uri("sqlite:////var/lib/mlflow.db") == "sqlite:////var/lib/mlflow.db"
    assert public_uri("databricks") == "databricks"


@pytest.mark.skipif(not os.environ.get("AICLOUD_TEST_MLFLOW_BIN"), reason=(
    "needs a real MLflow server: set AICLOUD_TEST_MLFLOW_BIN to the `mlflow` of a full `pip install "
    "mlflow` (the platform ships mlflow-skinny, which has no server)"))
async def test_the_run_is_copied_to_an_mlflow_server_over_http(
    temporal_env: WorkflowEnvironment, activities: JobActivities, tmp_path: Path
) -> None:
    port = servers.free_port()
    log = (tmp_path / "mlflow-server.log").open("wb")
    server = await asyncio.create_subprocess_exec(
        os.environ["AICLOUD_TEST_MLFLOW_BIN"], "server", "--backend-store-uri", f"sqlite:///{tmp_path}/srv.db",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1", stdout=log, stderr=log)
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(120):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                        break
                await asyncio.sleep(0.5)
        activities._tracking_uri = f"http://127.0.0.1:{port}"
        completed = await run(temporal_env.client, activities, "http-copy", JOB)
        assert completed.tracking is not None and completed.tracking.uri == f"http://127.0.0.1:{port}"
        copied = MlflowClient(f"http://127.0.0.1:{port}").get_run(completed.tracking.run_id)
        assert copied.data.params == {"epochs": "3", "optimizer": "sgd"}
        assert copied.data.metrics == {"loss": pytest.approx(1 / 3), "accuracy": 0.9}
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), timeout=30)


def test_a_job_cannot_point_the_platform_at_another_store_or_file(tmp_path: Path) -> None:
    other = MlflowClient(f"sqlite:///{tmp_path}/other-team.db")  # e.g. another team's runs
    run = other.create_run(other.create_experiment("aicloud/research"))
    other.log_param(run.info.run_id, "secret", "research-only")
    (tmp_path / "numbers.txt").write_text('{"leaked": 42}\n')
    workspace = tmp_path / "jobs" / "legal" / "sneaky"
    workspace.mkdir(parents=True)
    (workspace / "mlflow.db").symlink_to(tmp_path / "other-team.db")
    (workspace / "metrics.jsonl").symlink_to(tmp_path / "numbers.txt")
    request = JobRequested(tenant="legal", job_id="sneaky", command=["true"])
    outputs = collect(request=request, workspace=workspace, dataset_dir=None,
                      artifact_root=tmp_path / "artifacts")
    assert outputs.logged_params == {} and outputs.metrics == {}
