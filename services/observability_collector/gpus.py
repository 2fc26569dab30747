"""GPU gauges from ``gpus.sampled``, named like NVIDIA's DCGM exporter (``DCGM_FI_DEV_FB_USED``
in MiB, ``DCGM_FI_DEV_GPU_UTIL`` in %, ``DCGM_FI_DEV_POWER_USAGE`` in W, the energy counter in
mJ) with its device labels (``gpu``, ``UUID``, ``modelName``) plus the workload's (``job`` or
``endpoint``, ``team``), so DCGM dashboards read them unchanged. A workload's series go when it
ends; at most ``max_workloads`` are tracked at once (the rest counted, not shown)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from contracts import GpuSampled
from services.kit.gpu import (
    DCGM_FB_FREE,
    DCGM_FB_USED,
    DCGM_GPU_UTIL,
    DCGM_POWER_USAGE,
    DCGM_TOTAL_ENERGY,
    MIB,
)

LABELS = ("job", "endpoint", "team", "gpu", "UUID", "modelName")
HELP = {
    DCGM_FB_USED: "Framebuffer memory used (in MiB).",
    DCGM_FB_FREE: "Framebuffer memory free (in MiB).",
    DCGM_GPU_UTIL: "GPU utilization (in %).",
    DCGM_POWER_USAGE: "Power draw (in W).",
    DCGM_TOTAL_ENERGY: "Total energy consumption since boot (in mJ).",
}
PROCESS_MEMORY = "aicloud_workload_gpu_memory_used_bytes"

Workload = tuple[str, str]  # (job|endpoint|notebook, id)


class GpuGauges:
    def __init__(self, registry: CollectorRegistry, *, max_workloads: int = 2000) -> None:
        self._gauges = {name: Gauge(name, text, LABELS, registry=registry) for name, text in HELP.items()}
        self._process = Gauge(PROCESS_MEMORY, "GPU memory the workload's own processes hold.",
                              LABELS, registry=registry)
        self._dropped = Counter("aicloud_gpu_samples_dropped_total",
                                "GPU samples not shown: too many workloads at once.", registry=registry)
        self._series: dict[Workload, set[tuple[str, ...]]] = {}
        self._max = max_workloads

    def observe(self, event: GpuSampled) -> None:
        key = (event.workload, event.workload_id)
        if key not in self._series and len(self._series) >= self._max:
            self._dropped.inc()
            return
        held = self._series.setdefault(key, set())
        job = event.workload_id if event.workload == "job" else ""
        endpoint = event.workload_id if event.workload == "endpoint" else ""
        for device in event.devices:
            labels = (job, endpoint, event.tenant, str(device.index), device.uuid, device.name)
            values = {
                DCGM_FB_USED: device.memory_used_bytes // MIB,
                DCGM_FB_FREE: (device.memory_total_bytes - device.memory_used_bytes) // MIB,
                DCGM_GPU_UTIL: device.utilisation_pct,
                DCGM_POWER_USAGE: device.power_w,
                DCGM_TOTAL_ENERGY: device.energy_mj,
            }
            for name, value in values.items():
                if value is not None:  # not reported: left out, never shown as 0
                    self._gauges[name].labels(*labels).set(float(value))
            if device.process_memory_bytes is not None:
                self._process.labels(*labels).set(float(device.process_memory_bytes))
            held.add(labels)

    def forget(self, workload: str, workload_id: str) -> None:
        """The workload ended: its series go (a finished job shows no GPU)."""
        for labels in self._series.pop((workload, workload_id), set()):
            for gauge in (*self._gauges.values(), self._process):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    continue

    @property
    def workloads(self) -> int:
        return len(self._series)
