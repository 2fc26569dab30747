"""Tells quota what GPUs the compute engine has: reads the engine's nodes every few seconds and
publishes ``cluster.capacity_changed`` when its GPUs by type change (a node joined or left), and
at least every ``REFRESH_S`` (so a quota that lost its copy, or a new one, soon has it).

An engine that stops answering is reported once (``reachable: false``, with the last pools):
quota then queues new jobs until a report says it answers again; jobs admitted before wait for
the cluster in ``RayBackend.start``, up to the placement timeout."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

from contracts.cluster import PLATFORM_TENANT, ClusterCapacityChanged, GpuPoolCapacity
from services.provisioner.cluster import ClusterView, capacity_pools
from services.provisioner.watch import Watcher

log = structlog.get_logger(__name__)
REFRESH_S = 60.0
SOURCE = "provisioner"


class CapacityWatcher(Watcher):
    NAME = "capacity"
    POLL_S = 2.0  # a lost node is noticed by Ray within seconds; quota hears it this much later

    def __init__(self, view: Callable[[], Awaitable[ClusterView]],
                 publish: Callable[[ClusterCapacityChanged], Awaitable[None]], *,
                 refresh_s: float = REFRESH_S) -> None:
        super().__init__()
        self._view, self._publish, self._refresh_s = view, publish, refresh_s
        self._last: list[GpuPoolCapacity] | None = None
        self._last_at = 0.0
        self._reachable = True
        self._engine, self._address = "unknown", ""

    async def poll(self) -> None:
        try:
            view = await self._view()
        except Exception as exc:
            await self._unreachable(exc)
            raise
        pools = capacity_pools(view.nodes)
        if (pools == self._last and self._reachable
                and time.monotonic() - self._last_at < self._refresh_s):
            return
        await self._publish(ClusterCapacityChanged(
            tenant=PLATFORM_TENANT, source=SOURCE, engine=view.engine, address=view.address,
            observed_at=datetime.now(UTC), pools=pools))
        if pools != self._last or not self._reachable:
            log.info("cluster.capacity_changed", engine=view.engine,
                     pools={p.gpu_type: f"{p.total} up, {p.nodes_alive} node(s)" for p in pools})
        self._last, self._last_at, self._reachable = pools, time.monotonic(), True
        self._engine, self._address = view.engine, view.address

    async def _unreachable(self, exc: Exception) -> None:
        """Once per outage: quota queues new jobs (the last pools kept) until the engine answers."""
        if not self._reachable or self._last is None:
            return
        await self._publish(ClusterCapacityChanged(
            tenant=PLATFORM_TENANT, source=SOURCE, engine=self._engine, address=self._address,
            observed_at=datetime.now(UTC), pools=self._last, reachable=False))
        log.warning("cluster.unreachable", engine=self._engine, address=self._address, error=str(exc))
        self._reachable = False
