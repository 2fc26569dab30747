"""The provisioner's one Temporal worker: every workflow it runs and every activity they call."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client

from services.kit.temporal import BackgroundWorker
from workflows.endpoint import EndpointWorkflow
from workflows.job import JobWorkflow
from workflows.notebook import NotebookWorkflow

WORKFLOWS = [JobWorkflow, EndpointWorkflow, NotebookWorkflow]


def provisioner_worker(client: Client, *, task_queue: str, activities: Sequence[Any]) -> BackgroundWorker:
    return BackgroundWorker(
        client, task_queue=task_queue, workflows=WORKFLOWS, activities=activities,
        # Cancellation reaches an activity only with a heartbeat; the default throttle
        # (0.8 x heartbeat timeout) would let a job overrun its limit by ~24 s.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
    )
