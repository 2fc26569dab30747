"""What the provisioner does when it starts and stops, in order.

Start: connect to Temporal, seed the model mirror, kill what a previous process left, open the
notebook proxy, run the worker, then tell running workflows what was lost (in the background:
a query waits out a dead worker's queue) and start the watchers. Stop: the reverse, and no
replica or notebook this process started is left running.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from services.kit.temporal import BackgroundWorker
from services.provisioner import recovery
from services.provisioner.backends.ray import RayBackend
from services.provisioner.bootstrap import Ports
from services.provisioner.capacity import CapacityWatcher
from services.provisioner.endpoints.gpus import ReplicaGpuWatcher
from services.provisioner.endpoints.serving import hub
from services.provisioner.endpoints.watch import EndpointWatcher
from services.provisioner.notebooks.watch import NotebookWatcher
from services.provisioner.signals import signal
from services.provisioner.watch import Watcher
from services.provisioner.worker import provisioner_worker

log = structlog.get_logger(__name__)


class Lifecycle:
    def __init__(self, ports: Ports) -> None:
        self.ports = ports
        self._worker: BackgroundWorker | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._watchers: list[Watcher] = [EndpointWatcher(ports.fleet, self._signal),
                                         NotebookWatcher(ports.notebooks, self._signal),
                                         ReplicaGpuWatcher(ports.fleet, ports.bus.publish)]
        if isinstance(ports.backend, RayBackend):  # quota admits against the engine's GPUs
            self._watchers.append(CapacityWatcher(ports.backend.nodes, ports.bus.publish))

    async def _signal(self, workflow_id: str, name: str, arg: Any) -> None:
        await signal(self.ports.temporal.client, workflow_id, name, arg)

    async def start(self) -> None:
        p, s = self.ports, self.ports.settings
        client = await p.temporal.connect()
        if s.hf_mirror is not None:
            seeded = await asyncio.to_thread(hub.seed_mirror, s.hf_mirror)
            log.info("hf_mirror.seeded", mirror=str(s.hf_mirror), models=seeded)
        await recovery.reap(sandbox=p.backend.sandbox, serving_root=s.serving_root,
                            notebook_root=s.notebook_root)
        await p.proxy.start()
        self._worker = provisioner_worker(client, task_queue=s.task_queue, activities=p.activities())
        self._worker.start()
        self._recovery = asyncio.create_task(self._recover(client))
        for watcher in self._watchers:
            watcher.start()

    async def _recover(self, client: Any) -> None:
        """In the background: the first query to each workflow waits out the dead worker's queue."""
        p, backend = self.ports, self.ports.backend
        await recovery.report_lost(client, task_queue=p.settings.task_queue, live=p.fleet.replicas)
        if isinstance(backend, RayBackend):
            try:
                await recovery.stop_orphaned_ray_jobs(client, await asyncio.to_thread(lambda: backend.api))
            except Exception:  # an unreachable cluster: its readiness check says so
                log.exception("ray.orphan_check_failed")

    async def stop(self) -> None:
        p = self.ports
        if self._recovery is not None:
            self._recovery.cancel()
        for watcher in self._watchers:
            await watcher.stop()
        if self._worker is not None:
            await self._worker.stop()
        for replica_id, (_, replica) in list(p.fleet.replicas.items()):
            await replica.stop()  # a stopped provisioner leaves no replica running
            p.fleet.replicas.pop(replica_id, None)
        for notebook in list(p.notebooks.values()):
            await notebook.stop()
        await p.proxy.stop()
        await p.keys.aclose()
