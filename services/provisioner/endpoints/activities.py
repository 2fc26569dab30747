"""EndpointWorkflow's activities: the security gate, model-server replicas in sandboxes, the
endpoint's events, usage of every replica, and the canary's numbers.

Replicas this process started are kept in a ``Fleet``; the watcher (``watch.py``) reads their
request counters and tells each endpoint's workflow about traffic. The endpoint's lifecycle
events go out through ``publish``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import structlog
from temporalio import activity

from contracts import EndpointRequested, EndpointScanned, Envelope, UsageRecorded
from contracts.endpoints import ServingKind
from services.kit.bus import Bus
from services.kit.sandbox import Sandbox
from services.provisioner.endpoints.canary import CanaryBook
from services.provisioner.endpoints.fleet import Fleet
from services.provisioner.endpoints.serving import hub
from services.provisioner.endpoints.serving.bert import is_bert_folder
from services.provisioner.endpoints.serving.replica import start_replica
from services.provisioner.endpoints.serving.scan import scan_model
from services.provisioner.heartbeat import heartbeating
from workflows.endpoint_model import (
    CanaryQuery,
    CanaryStats,
    Prepared,
    ReplicaRef,
    ReplicaStart,
    ReplicaStop,
)

log = structlog.get_logger(__name__)
SOURCE = "provisioner"
REPLICA_VCPUS, REPLICA_MEMORY_GB = 1.0, 1.0


def serving_kind(model_dir: Path) -> ServingKind:
    """What the model server will serve from this folder (it decides the same way)."""
    if is_bert_folder(model_dir):
        return "embeddings"
    if (model_dir / "model.json").is_file():
        return "predict"
    raise ValueError(f"{model_dir.name}: no servable model (a sentence-transformers folder or a "
                     "model.json from a training job)")


class EndpointActivities:
    def __init__(self, *, bus: Bus, sandbox: Sandbox, serving_root: Path, artifact_root: Path,
                 hf_mirror: Path | None, book: CanaryBook, fleet: Fleet) -> None:
        self._bus = bus
        self._sandbox = sandbox
        self._root = serving_root
        self._artifacts = artifact_root.resolve()
        self._mirror = hf_mirror
        self._book = book
        self.fleet = fleet

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        return [self.prepare_endpoint_version, self.start_endpoint_replica, self.stop_endpoint_replica,
                self.canary_stats]

    @activity.defn(name="prepare_endpoint_version")
    async def prepare_endpoint_version(self, request: EndpointRequested) -> Prepared:
        """Find the model's files offline and scan them before anything runs."""
        scanned = {"endpoint": request.endpoint, "model": request.model, "version": request.version}
        try:
            model_dir = self.model_dir(request)
            report = await heartbeating(asyncio.to_thread(scan_model, model_dir))
            kind = serving_kind(model_dir) if report.allowed else None
        except ValueError as exc:  # unknown model, malformed id, nothing servable
            reason = str(exc)
            await self._publish(EndpointScanned(
                allowed=False, format="unknown", size_bytes=0, findings=[reason], reason=reason,
                **scanned, **self._common(request.tenant, request.endpoint, "scan")))
            return Prepared(allowed=False, reason=reason)
        await self._publish(EndpointScanned(
            allowed=report.allowed, format=report.format, size_bytes=report.size_bytes,
            license=report.license, findings=report.findings, reason=report.reason,
            **scanned, **self._common(request.tenant, request.endpoint, "scan")))
        if not report.allowed or kind is None:
            return Prepared(allowed=False, reason=f"security scan refused the model: {report.reason}")
        return Prepared(allowed=True, model_dir=str(model_dir), kind=kind)

    def model_dir(self, request: EndpointRequested) -> Path:
        if request.model_source == "huggingface":
            return hub.resolve(request.model, mirror=self._mirror)
        parsed = urlparse(request.artifact_uri)
        if parsed.scheme != "file":
            raise ValueError(f"artifacts at {request.artifact_uri!r} are not on this backend's "
                             "artifact store (file://)")
        folder = Path(unquote(parsed.path)).resolve()
        if not folder.is_relative_to(self._artifacts) or not folder.is_dir():
            raise ValueError(f"model {request.model} version {request.version}: artifacts folder "
                             f"{folder} is missing or outside the artifact store")
        return folder

    @activity.defn(name="start_endpoint_replica")
    async def start_endpoint_replica(self, start: ReplicaStart) -> ReplicaRef:
        known = self.fleet.replicas.get(start.replica_id)
        if known is not None and known[1].alive():  # a retried attempt after a slow answer
            replica = known[1]
        else:
            replica = await heartbeating(start_replica(
                self._sandbox, replica_id=start.replica_id, model_dir=Path(start.model_dir),
                name=start.endpoint, root=self._root))
            replica.team = start.team
            self.fleet.replicas[start.replica_id] = (start.endpoint, replica)
        log.info("endpoint.replica_started", endpoint=start.endpoint, version=start.version,
                 replica=start.replica_id, isolation=str(self._sandbox.isolation))
        return ReplicaRef(replica_id=start.replica_id, version=start.version, url=replica.url,
                          started_at_s=time.time())

    @activity.defn(name="stop_endpoint_replica")
    async def stop_endpoint_replica(self, stop: ReplicaStop) -> None:
        """Stop the replica (if this process still has it) and meter its lifetime once."""
        entry = self.fleet.replicas.pop(stop.replica.replica_id, None)
        if entry is not None:
            await entry[1].stop()
        ended = time.time()
        started = min(stop.replica.started_at_s or ended, ended)
        await self._publish(UsageRecorded(
            kind="endpoint", resource_id=stop.endpoint, gpus_requested=stop.gpus, gpus_used=stop.gpus,
            gpu_type=stop.gpu_type if stop.gpus else None, vcpus=REPLICA_VCPUS, memory_gb=REPLICA_MEMORY_GB,
            started_at=datetime.fromtimestamp(started, UTC), ended_at=datetime.fromtimestamp(ended, UTC),
            event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"aicloud:replica-usage:{stop.replica.replica_id}"),
            tenant=stop.team, source=SOURCE, correlation_id=stop.endpoint))
        log.info("endpoint.replica_stopped", endpoint=stop.endpoint, replica=stop.replica.replica_id,
                 reason=stop.reason, seconds=round(ended - started, 3))

    @activity.defn(name="canary_stats")
    async def canary_stats(self, query: CanaryQuery) -> CanaryStats:
        return self._book.compare(query.endpoint, stable=query.stable, canary=query.canary,
                                  since_s=query.since_s)

    async def _publish(self, event: Envelope) -> None:
        await self._bus.publish(event)

    @staticmethod
    def _common(team: str, endpoint: str, what: str) -> dict[str, Any]:
        info = activity.info()
        event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"aicloud:{info.workflow_run_id}:{info.activity_id}:{what}")
        return {"event_id": event_id, "tenant": team, "source": SOURCE, "correlation_id": endpoint}

