"""Endpoints' GPU samples: every ``SAMPLE_EVERY_S``, the devices each endpoint's replicas hold
memory on, read once through NVML for all replicas' process trees, published as one
``gpus.sampled`` (workload ``endpoint``) per endpoint. Replicas of one endpoint on one device
are one device in the sample, holding what they hold together. No GPU, no NVML, or replicas
that hold nothing on a device (a CPU model server): no sample, never an invented one."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable, Collection

import psutil
import structlog

from contracts import GpuSampled
from services.kit import gpu
from services.kit.gpu import GpuSample
from services.provisioner.endpoints.fleet import Fleet
from services.provisioner.jobs.gpus import SAMPLE_EVERY_S, job_devices
from services.provisioner.watch import Watcher

log = structlog.get_logger(__name__)
SOURCE = "provisioner"

Publish = Callable[[GpuSampled], Awaitable[None]]
Read = Callable[[Collection[int]], list[GpuSample]]


class ReplicaGpuWatcher(Watcher):
    NAME = "replica-gpu-watcher"
    POLL_S = SAMPLE_EVERY_S

    def __init__(self, fleet: Fleet, publish: Publish, *, read: Read = gpu.sample) -> None:
        super().__init__()
        self._fleet = fleet
        self._publish = publish
        self._read = read

    async def poll(self) -> None:
        trees: dict[str, tuple[str, set[int]]] = {}  # endpoint -> (team, its replicas' pids)
        for endpoint, replica in list(self._fleet.replicas.values()):
            if replica.alive():
                team, pids = trees.setdefault(endpoint, (replica.team, set()))
                pids.update(process_tree(replica.pid))
        if not trees:
            return
        every_pid = set().union(*(pids for _, pids in trees.values()))
        samples = await asyncio.to_thread(self._read, every_pid)
        for endpoint, (team, pids) in trees.items():
            devices = job_devices([_only(s, pids) for s in samples])
            if not devices:
                continue
            try:
                await self._publish(GpuSampled(
                    tenant=team, source=SOURCE, correlation_id=endpoint, workload="endpoint",
                    workload_id=endpoint, node=os.uname().nodename, devices=devices))
            except Exception as exc:  # a lost sample is logged; the next one comes in 10 s
                log.warning("endpoint.gpu_sample_failed", endpoint=endpoint, error=str(exc)[:500])


def process_tree(pid: int) -> list[int]:
    """The pid and its descendants; [] once it is gone."""
    try:
        return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return []


def _only(sample: GpuSample, pids: set[int]) -> GpuSample:
    return dataclasses.replace(sample, processes=tuple(p for p in sample.processes if p.pid in pids))

