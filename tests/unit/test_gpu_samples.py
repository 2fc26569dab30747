"""GPU samples of running jobs: kept to the job's devices, carried in ``gpus.sampled`` (absurd
numbers refused by the contract), shown by the collector in DCGM's names and gone when the job
ends. No GPU here: the samples are NVML readings as ``services.kit.gpu`` returns them."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from contracts import DeviceSample, GpuSampled, JobCompleted
from services.kit.gpu import GpuSample, ProcessMemory
from services.observability_collector.handlers import PlatformMetrics
from services.provisioner.jobs.activities import JobActivities
from services.provisioner.jobs.gpus import GPU_FILE, job_devices, read_devices, write_devices

pytestmark = pytest.mark.unit
GIB = 1 << 30


def reading(index: int, used_gib: int = 10, *, pid_gib: int | None = None, util: float | None = 97.0,
            **extra: Any) -> GpuSample:
    procs = (ProcessMemory(pid=4242, memory_used_bytes=pid_gib * GIB),) if pid_gib is not None else ()
    values: dict[str, Any] = dict(index=index, uuid=f"GPU-{index:04d}", name="NVIDIA H200",
                                  memory_used_bytes=used_gib * GIB, memory_total_bytes=141 * GIB,
                                  utilisation_pct=util, power_w=690.0, energy_mj=4_121_000,
                                  processes=procs)
    values.update(extra)
    return GpuSample(**values)


def test_a_job_reports_the_devices_it_was_given_or_those_its_processes_use() -> None:
    node = [reading(0), reading(1), reading(2, pid_gib=3)]
    assert [d.index for d in job_devices(node, visible="0,1")] == [0, 1]
    assert [d.index for d in job_devices(node, visible="GPU-0001")] == [1]
    mine = job_devices(node)  # no CUDA_VISIBLE_DEVICES: where its processes hold memory
    assert [(d.index, d.process_memory_bytes) for d in mine] == [(2, 3 * GIB)]
    assert job_devices([]) == []  # no GPU: no sample


def test_a_reading_no_gpu_could_give_is_dropped_not_reported() -> None:
    node = [reading(0, power_w=1e9), reading(1, used_gib=500)]  # 1 GW; more used than the board has
    assert job_devices(node, visible="0,1") == []


@pytest.mark.parametrize(("field", "value"), [
    ("utilisation_pct", 250.0), ("power_w", -3.0), ("memory_used_bytes", 1 << 50),
    ("utilisation_pct", float("nan")), ("index", -1)])
def test_gpu_samples_with_absurd_numbers_are_refused_naming_the_field(field: str, value: object) -> None:
    device = {"index": 0, "uuid": "GPU-0", "memory_used_bytes": GIB, "memory_total_bytes": 80 * GIB,
              field: value}
    with pytest.raises(ValidationError, match=field):
        GpuSampled(tenant="legal", workload="job", workload_id="j-1", devices=[device])  # type: ignore[list-item]


def test_used_memory_above_the_total_is_refused() -> None:
    with pytest.raises(ValidationError, match="more than memory_total_bytes"):
        DeviceSample(index=0, uuid="GPU-0", memory_used_bytes=81 * GIB, memory_total_bytes=80 * GIB)


def test_the_nodes_latest_reading_is_read_while_fresh_and_never_when_stale_or_broken(tmp_path: Path) -> None:
    devices = job_devices([reading(0)], visible="0")
    write_devices(tmp_path, devices)
    assert read_devices(tmp_path) == devices
    old = time.time() - 120
    os.utime(tmp_path / GPU_FILE, (old, old))
    assert read_devices(tmp_path) == []  # the job's node stopped reporting: nothing invented
    (tmp_path / GPU_FILE).write_text(json.dumps([{"index": 0, "uuid": "x", "memory_used_bytes": -1}]))
    assert read_devices(tmp_path) == []
    assert read_devices(tmp_path / "nowhere") == []


def sampled(job_id: str, devices: list[DeviceSample]) -> GpuSampled:
    return GpuSampled(tenant="legal", workload="job", workload_id=job_id, devices=devices)


async def test_the_collector_shows_dcgm_series_per_job_and_drops_them_when_the_job_ends() -> None:
    registry = CollectorRegistry()
    metrics = PlatformMetrics(registry)
    devices = job_devices([reading(0, pid_gib=10), reading(1, util=None)], visible="0,1")
    await metrics.on_events([sampled("train-1", devices)])
    labels = {"job": "train-1", "endpoint": "", "team": "legal", "gpu": "0", "UUID": "GPU-0000",
              "modelName": "NVIDIA H200"}
    assert registry.get_sample_value("DCGM_FI_DEV_FB_USED", labels) == 10 * 1024
    assert registry.get_sample_value("DCGM_FI_DEV_FB_FREE", labels) == 131 * 1024
    assert registry.get_sample_value("DCGM_FI_DEV_GPU_UTIL", labels) == 97.0
    assert registry.get_sample_value("DCGM_FI_DEV_POWER_USAGE", labels) == 690.0
    assert registry.get_sample_value("aicloud_workload_gpu_memory_used_bytes", labels) == 10 * GIB
    # a device that does not report utilisation shows none, never 0
    second = {**labels, "gpu": "1", "UUID": "GPU-0001"}
    assert registry.get_sample_value("DCGM_FI_DEV_GPU_UTIL", second) is None
    await metrics.on_events([JobCompleted(tenant="legal", job_id="train-1", duration_s=5)])
    assert registry.get_sample_value("DCGM_FI_DEV_FB_USED", labels) is None
    assert metrics.gpus.workloads == 0


class FakeBus:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def publish(self, event: Any) -> None:
        self.sent.append(event)


class FakeJob:
    def __init__(self, devices: list[DeviceSample]) -> None:
        self.devices = devices

    async def gpu_samples(self) -> list[DeviceSample]:
        return self.devices


async def test_a_running_job_publishes_its_gpus_and_a_job_without_gpus_publishes_nothing() -> None:
    from contracts import JobRequested

    bus = FakeBus()
    activities = JobActivities(bus=bus, backend=None)  # type: ignore[arg-type]
    request = JobRequested(tenant="legal", job_id="train-2", command=["x"], gpus=1)
    await activities._report_gpus(request, FakeJob(job_devices([reading(0)], visible="0")))  # type: ignore[arg-type]
    await activities._report_gpus(request, FakeJob([]))  # type: ignore[arg-type]
    [event] = bus.sent
    assert isinstance(event, GpuSampled) and event.workload_id == "train-2" and event.devices[0].index == 0


class FakeReplica:
    def __init__(self, pid: int, team: str, *, alive: bool = True) -> None:
        self.pid, self.team, self._alive = pid, team, alive

    def alive(self) -> bool:
        return self._alive


async def test_an_endpoints_replicas_report_the_devices_they_hold_and_a_cpu_endpoint_reports_none() -> None:
    from contracts import EndpointDeleted
    from services.provisioner.endpoints.fleet import Fleet
    from services.provisioner.endpoints.gpus import ReplicaGpuWatcher

    cpu_server = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        fleet = Fleet(replicas={
            "r1": ("chat", FakeReplica(os.getpid(), "legal")),  # type: ignore[dict-item]
            "r2": ("chat", FakeReplica(os.getpid(), "legal")),  # type: ignore[dict-item]
            "r3": ("embed", FakeReplica(cpu_server.pid, "search")),  # type: ignore[dict-item]
            "r4": ("gone", FakeReplica(999_999_999, "legal", alive=False)),  # type: ignore[dict-item]
        })
        asked: list[set[int]] = []

        def read(pids: Any) -> list[GpuSample]:
            asked.append(set(pids))
            return [reading(0, 20, processes=(ProcessMemory(pid=os.getpid(), memory_used_bytes=12 * GIB),)),
                    reading(1, 3, pid_gib=None),
                    reading(2, 5, processes=(ProcessMemory(pid=1, memory_used_bytes=GIB),))]

        bus = FakeBus()
        await ReplicaGpuWatcher(fleet, bus.publish, read=read).poll()
        # one NVML read for every live replica's processes; the dead replica is not asked about
        assert len(asked) == 1 and {os.getpid(), cpu_server.pid} <= asked[0]
        [event] = bus.sent  # the CPU endpoint holds nothing on any device: no sample
        assert (event.workload, event.workload_id, event.tenant) == ("endpoint", "chat", "legal")
        assert [(d.index, d.process_memory_bytes) for d in event.devices] == [(0, 12 * GIB)]

        registry = CollectorRegistry()
        metrics = PlatformMetrics(registry)
        await metrics.on_events([event])
        labels = {"job": "", "endpoint": "chat", "team": "legal", "gpu": "0", "UUID": "GPU-0000",
                  "modelName": "NVIDIA H200"}
        assert registry.get_sample_value("DCGM_FI_DEV_FB_USED", labels) == 20 * 1024
        await metrics.on_events([EndpointDeleted(tenant="legal", endpoint="chat")])
        assert registry.get_sample_value("DCGM_FI_DEV_FB_USED", labels) is None
    finally:
        cpu_server.kill()
        await cpu_server.wait()


async def test_no_gpu_on_the_node_means_no_endpoint_sample() -> None:
    from services.provisioner.endpoints.fleet import Fleet
    from services.provisioner.endpoints.gpus import ReplicaGpuWatcher

    fleet = Fleet(replicas={"r1": ("chat", FakeReplica(os.getpid(), "legal"))})  # type: ignore[dict-item]
    bus = FakeBus()
    await ReplicaGpuWatcher(fleet, bus.publish, read=lambda pids: []).poll()
    await ReplicaGpuWatcher(Fleet(), bus.publish, read=lambda pids: [reading(0, pid_gib=1)]).poll()
    assert bus.sent == []
