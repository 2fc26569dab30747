"""Temporal client and worker for the provisioner, with tracing and the pydantic converter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from workflows.endpoint import EndpointWorkflow
from workflows.job import JobWorkflow
from workflows.notebook import NotebookWorkflow

WORKFLOWS = [JobWorkflow, EndpointWorkflow, NotebookWorkflow]


async def connect(address: str, namespace: str) -> Client:
    return await Client.connect(
        address,
        namespace=namespace,
        data_converter=pydantic_data_converter,
        interceptors=[TracingInterceptor()],
    )


class JobWorker:
    """Runs the Temporal worker in the background of the service process."""

    def __init__(self, client: Client, *, task_queue: str, activities: Sequence[Any]) -> None:
        self.worker = Worker(
            client, task_queue=task_queue, workflows=WORKFLOWS, activities=list(activities),
            # Cancellation reaches an activity only with a heartbeat; the default throttle
            # (0.8 x heartbeat timeout) would let a job overrun its limit by ~24 s.
            max_heartbeat_throttle_interval=timedelta(seconds=1),
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.worker.run(), name="temporal-worker")

    async def stop(self) -> None:
        if self._task is not None:
            await self.worker.shutdown()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
