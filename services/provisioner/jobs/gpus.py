"""A running job's GPU samples: read through NVML on the node that runs it (``services.kit.gpu``),
kept to the job's own devices, and published by ``run_job`` as ``gpus.sampled`` every
``SAMPLE_EVERY_S`` while the job runs. On a Ray node the job's entrypoint samples and leaves the
latest reading in the shared workspace (``GPU_FILE``), for the provisioner to publish. No GPU,
no NVML, or devices Ray only declared (the local cluster's): no sample, never an invented one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import structlog
from pydantic import ValidationError

from contracts import DeviceSample
from services.kit.gpu import GpuSample

log = structlog.get_logger(__name__)
GPU_FILE = ".aicloud-gpu.json"
SAMPLE_EVERY_S = 10.0
FRESH_FOR_S = 3 * SAMPLE_EVERY_S


def job_devices(samples: list[GpuSample], *, visible: str | None = None) -> list[DeviceSample]:
    """The job's devices: those in its ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs), else those
    its processes hold memory on (the samples were read for its pids). A reading no GPU could
    give is dropped, said in the log."""
    wanted = [v.strip() for v in (visible or "").split(",") if v.strip()]
    devices = []
    for s in samples:
        mine = (str(s.index) in wanted or s.uuid in wanted) if wanted else any(
            p.memory_used_bytes for p in s.processes)
        if not mine:
            continue
        held = [p.memory_used_bytes for p in s.processes if p.memory_used_bytes is not None]
        try:
            devices.append(DeviceSample(
                index=s.index, uuid=s.uuid, name=s.name, memory_used_bytes=s.memory_used_bytes,
                memory_total_bytes=s.memory_total_bytes, utilisation_pct=s.utilisation_pct,
                power_w=s.power_w, energy_mj=s.energy_mj,
                process_memory_bytes=sum(held) if held else None))
        except ValidationError as exc:
            log.warning("gpu.sample_implausible", device=s.index, error=str(exc))
    return devices


def write_devices(workspace: Path, devices: list[DeviceSample]) -> None:
    """The latest reading, replaced at once (a reader never sees half of it)."""
    if not devices:
        return
    path = workspace / GPU_FILE
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps([d.model_dump(mode="json") for d in devices]))
    tmp.replace(path)


def read_devices(workspace: Path, *, fresh_for_s: float = FRESH_FOR_S) -> list[DeviceSample]:
    """The reading the node left, if recent; [] when there is none or it is not a valid one."""
    path = workspace / GPU_FILE
    try:
        if time.time() - path.stat().st_mtime > fresh_for_s:
            return []
        return [DeviceSample.model_validate(d) for d in json.loads(path.read_text())]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError) as exc:  # ValidationError is a ValueError
        log.warning("gpu.reading_unusable", path=str(path), error=str(exc)[:500])
        return []
