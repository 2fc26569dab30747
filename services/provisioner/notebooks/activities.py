"""NotebookWorkflow's activities: a Jupyter server in a sandbox behind the platform's proxy,
saved to the team's volume and metered when it stops; its lifecycle events go out through
``publish``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from temporalio import activity

from contracts import NotebookRequested, UsageRecorded
from services.kit.bus import Bus
from services.kit.sandbox import Sandbox
from services.provisioner.heartbeat import heartbeating
from services.provisioner.notebooks.jupyter import Notebook, start_notebook
from services.provisioner.notebooks.proxy import NotebookProxy
from workflows.notebook import NotebookStop, ServerStarted

log = structlog.get_logger(__name__)
SOURCE = "provisioner"
NOTEBOOK_VCPUS, NOTEBOOK_MEMORY_GB = 1.0, 2.0


class NotebookActivities:
    def __init__(self, *, bus: Bus, sandbox: Sandbox, root: Path, volumes: Path, proxy: NotebookProxy,
                 notebooks: dict[str, Notebook]) -> None:
        self._bus = bus
        self._sandbox = sandbox
        self._root = root
        self._volumes = volumes
        self._proxy = proxy
        self.notebooks = notebooks

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        return [self.start_notebook, self.stop_notebook]

    def volume(self, team: str) -> Path:
        return self._volumes / team / "notebooks"

    @activity.defn(name="start_notebook")
    async def start_notebook(self, request: NotebookRequested) -> ServerStarted:
        notebook = self.notebooks.get(request.notebook_id)
        if notebook is None or not notebook.alive():
            if notebook is not None:
                await notebook.stop()
            notebook = await heartbeating(start_notebook(
                self._sandbox, notebook_id=request.notebook_id, team=request.tenant, root=self._root,
                volume=self.volume(request.tenant)))
            self.notebooks[request.notebook_id] = notebook
        self._proxy.register(request.notebook_id, request.tenant, notebook.socket_path)
        log.info("notebook.started", notebook_id=request.notebook_id, team=request.tenant,
                 isolation=str(self._sandbox.isolation))
        return ServerStarted(url=self._proxy.url_for(request.notebook_id), started_at_s=time.time())

    @activity.defn(name="stop_notebook")
    async def stop_notebook(self, stop: NotebookStop) -> list[str]:
        """Save the notebooks to the team's volume, stop the server, record its usage once."""
        request = stop.request
        self._proxy.unregister(request.notebook_id)
        notebook = self.notebooks.pop(request.notebook_id, None)
        saved: list[str] = []
        if notebook is not None:
            saved = await heartbeating(notebook.save(self.volume(request.tenant)))
            await notebook.stop()
        ended = time.time()
        started = min(stop.started_at_s or ended, ended)
        await self._bus.publish(UsageRecorded(
            kind="notebook", resource_id=request.notebook_id, gpus_requested=request.gpus,
            gpus_used=request.gpus, gpu_type=request.gpu_type if request.gpus else None,
            vcpus=NOTEBOOK_VCPUS, memory_gb=NOTEBOOK_MEMORY_GB,
            started_at=datetime.fromtimestamp(started, UTC), ended_at=datetime.fromtimestamp(ended, UTC),
            event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"aicloud:notebook-usage:{request.notebook_id}"),
            tenant=request.tenant, source=SOURCE, correlation_id=request.notebook_id))
        log.info("notebook.stopped", notebook_id=request.notebook_id, reason=stop.reason, saved=saved)
        return saved
