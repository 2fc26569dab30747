"""Experiment tracking with MLflow, for jobs that have no network.

Each job logs to an MLflow store of its own: a SQLite file in its workspace, which the job's
``MLFLOW_TRACKING_URI`` points at, so ``mlflow.log_param`` and ``mlflow.log_metric`` work unchanged
inside the sandbox. When the job completes, the platform reads that store: the params the job
logged and the last value of each metric go onto the model version. When the platform itself has
``MLFLOW_TRACKING_URI`` (the organisation's tracking server), the job's run is copied there, into
experiment ``aicloud/<team>`` and tagged with the job id, and the model version records where.

The reading and the copy run in a child process (``services.provisioner.jobs.mlflow_copy``): the store
is the job's file, so whatever is in it can cost a child process, never the provisioner, and
MLflow's per-database engine cache never grows in a long-lived service.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from contracts import JobRequested
from contracts.jobs import TrackingRun

log = structlog.get_logger(__name__)
JOB_STORE = "mlflow.db"
COPY_TIMEOUT_S = 120.0
ROOT = Path(__file__).resolve().parents[3]
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "GIT_PYTHON_REFRESH": "quiet"}


def job_env(workspace: str) -> dict[str, str]:
    """MLflow's settings as the job sees them: its own store, nothing phoning home."""
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{workspace}/{JOB_STORE}", **QUIET}


@dataclass
class Tracked:
    """What experiment tracking adds to a completed job's outputs."""

    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    run: TrackingRun | None = None


def track(*, request: JobRequested, workspace: Path, metrics: dict[str, float],
          digests: dict[str, str | None], server_uri: str | None) -> Tracked:
    """Read the job's MLflow store and, with ``server_uri``, copy its run there.

    Only a job that used MLflow has a run to copy (the child process costs about 3 s, mostly
    importing MLflow). ``metrics`` are those the job wrote to its metrics file: they go on the
    run too. Never raises: tracking that fails is logged and leaves the job's outcome alone.
    """
    path = workspace / JOB_STORE
    if path.is_symlink():  # the job made it: it must not point the platform at another file
        log.warning("job.tracking_store_refused", job_id=request.job_id, why="a symbolic link")
    store = path if path.is_file() and not path.is_symlink() else None
    if store is None:  # the job did not use MLflow: its metrics file is all there is
        return Tracked()
    job = {
        "job_id": request.job_id, "team": request.tenant, "user": request.requested_by,
        "product": request.product, "dataset": request.dataset, "command": request.command,
        "params": request.params, "metrics": metrics, **digests,
    }
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(QUIET)
    # a server that is down costs seconds, not MLflow's default of minutes of retries
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    if server_uri:
        env["MLFLOW_TRACKING_URI"] = server_uri  # credentials stay out of argv
    try:
        done = subprocess.run(
            [sys.executable, "-m", "services.provisioner.jobs.mlflow_copy", str(store)],
            input=json.dumps(job), capture_output=True, text=True, env=env, cwd=ROOT,
            timeout=COPY_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired:
        log.warning("job.tracking_timed_out", job_id=request.job_id, timeout_s=COPY_TIMEOUT_S)
        return Tracked()
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        log.warning("job.tracking_failed", job_id=request.job_id, exit_code=done.returncode,
                    stderr=done.stderr[-2000:])
        return Tracked()
    for warning in answer.get("warnings", []):
        log.warning("job.tracking_incomplete", job_id=request.job_id, problem=warning)
    return Tracked(
        params={str(k): str(v) for k, v in answer.get("params", {}).items()},
        metrics={str(k): float(v) for k, v in answer.get("metrics", {}).items()},
        run=TrackingRun.model_validate(answer["run"]) if answer.get("run") else None,
    )
