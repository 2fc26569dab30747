"""Temporal for the services that run workflows (provisioner, agent runtime): one way to
connect — tracing and the pydantic converter — and a worker run in the background of the
service's own process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker


async def connect(address: str, namespace: str) -> Client:
    return await Client.connect(address, namespace=namespace, data_converter=pydantic_data_converter,
                                interceptors=[TracingInterceptor()])


class Temporal:
    """A service's Temporal client, connected when the service starts (handlers built before
    that ask for ``client`` only once messages flow)."""

    def __init__(self, address: str, namespace: str) -> None:
        self.address, self.namespace = address, namespace
        self._client: Client | None = None

    async def connect(self) -> Client:
        self._client = await connect(self.address, self.namespace)
        return self._client

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError(f"not connected to Temporal at {self.address} yet")
        return self._client

    async def check(self) -> None:
        """The readiness check: the frontend answers."""
        await self.client.service_client.check_health()


class BackgroundWorker:
    """A Temporal worker as a task of the service's event loop, stopped with the service."""

    def __init__(self, client: Client, *, task_queue: str, workflows: Sequence[type],
                 activities: Sequence[Any], name: str = "temporal-worker", **options: Any) -> None:
        self.worker = Worker(client, task_queue=task_queue, workflows=list(workflows),
                             activities=list(activities), **options)
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.worker.run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            await self.worker.shutdown()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
