"""Reads a job's own MLflow store and copies its run to the organisation's tracking server.

The provisioner runs this as a child process (see ``tracking``). Input: the store's path as
the argument, the job as JSON on stdin, the server (if any) in
``MLFLOW_TRACKING_URI``. Output: one JSON line with the params the job logged, the last value of
each metric it logged, its run on the server, and every problem met on the way.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

MAX_RUNS = 20
MAX_POINTS = 100_000
MAX_PARAM_VALUE = 6000  # MLflow's own limit
JOB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
T = TypeVar("T")


def read_store(path: Path) -> tuple[dict[str, str], dict[str, float], list[Metric]]:
    """Params, last metric values and every metric point of the store's runs, oldest run first."""
    client = MlflowClient(tracking_uri=f"sqlite:///{path.resolve()}")
    experiments = [e.experiment_id for e in client.search_experiments(max_results=100)]
    runs = client.search_runs(experiments, max_results=MAX_RUNS,
                              order_by=["attributes.start_time ASC"]) if experiments else []
    params: dict[str, str] = {}
    latest: dict[str, float] = {}
    history: list[Metric] = []
    for run in runs:
        params.update(run.data.params)
        latest.update(run.data.metrics)
        for key in run.data.metrics:
            points = client.get_metric_history(run.info.run_id, key)
            history.extend(points[: max(MAX_POINTS - len(history), 0)])
    return params, latest, history


def copy_run(client: MlflowClient, job: dict[str, Any], *, params: dict[str, str],
             latest: dict[str, float], history: list[Metric]) -> dict[str, str]:
    """The job's run on the server: made once per job, however often this is retried."""
    job_id = str(job["job_id"])
    if not JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    experiment_id = experiment(client, f"aicloud/{job['team']}")
    for run in client.search_runs([experiment_id], f"tags.`aicloud.job_id` = '{job_id}'", max_results=10):
        if run.info.status == "FINISHED":
            return {"experiment_id": experiment_id, "run_id": run.info.run_id}
        client.delete_run(run.info.run_id)  # a copy that a crash cut short: made again below
    tags = {
        "aicloud.job_id": job_id, "aicloud.team": job["team"], "aicloud.product": job.get("product"),
        "aicloud.dataset": job.get("dataset"), "aicloud.dataset_sha256": job.get("dataset_digest"),
        "aicloud.code_sha256": job.get("code_digest"), "mlflow.user": job.get("user"),
        "mlflow.source.name": " ".join(job.get("command", []))[:MAX_PARAM_VALUE],
    }
    run = client.create_run(experiment_id, run_name=job_id,
                            tags={k: str(v) for k, v in tags.items() if v})
    run_id = run.info.run_id
    every_param = {**job.get("params", {}), **params}
    for chunk in batched((Param(k, str(v)[:MAX_PARAM_VALUE]) for k, v in every_param.items()), 100):
        client.log_batch(run_id, params=chunk)
    now = int(time.time() * 1000)
    points = [Metric(m.key, m.value, m.timestamp, m.step) for m in history]
    points += [Metric(k, float(v), now, 0) for k, v in job.get("metrics", {}).items() if k not in latest]
    for metrics in batched(points, 1000):
        client.log_batch(run_id, metrics=metrics)
    client.log_batch(run_id, tags=[RunTag("aicloud.copied_at_ms", str(now))])
    client.set_terminated(run_id, "FINISHED")
    return {"experiment_id": experiment_id, "run_id": run_id}


def experiment(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except MlflowException:  # another job's copy made it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return str(found.experiment_id)


def public_uri(uri: str) -> str:
    """The server's address as it may be shown: no user, password or query (tokens)."""
    parts = urlsplit(uri)
    bare = uri.split("?", 1)[0]
    return bare.replace(parts.netloc, parts.netloc.rsplit("@", 1)[-1], 1) if parts.netloc else bare


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def main() -> None:
    store = Path(sys.argv[1])
    job = json.loads(sys.stdin.read())
    answer: dict[str, Any] = {"params": {}, "metrics": {}, "run": None, "warnings": []}
    params: dict[str, str] = {}
    latest: dict[str, float] = {}
    history: list[Metric] = []
    if store.is_file():
        try:
            params, latest, history = read_store(store)
            answer.update(params=params, metrics=latest)
        except Exception as exc:  # the job wrote this file: anything may be in it
            answer["warnings"].append(f"the job's MLflow store {store} could not be read: {exc}"[:1000])
    if server := os.environ.get("MLFLOW_TRACKING_URI"):
        shown = public_uri(server)
        try:
            run = copy_run(MlflowClient(server), job, params=params, latest=latest, history=history)
            answer["run"] = {"uri": shown, **run}
        except Exception as exc:
            problem = str(exc).replace(server, shown)
            answer["warnings"].append(f"the run was not copied to {shown}: {problem}"[:1000])
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
