"""GPU samples read through NVML, named like NVIDIA's DCGM exporter, and the check that samples
arriving from elsewhere (heartbeats) carry numbers a GPU can report.

The standard library and ``pynvml`` (nvidia-ml-py) only, imported lazily: jobs and replicas run
this on machines that have torch and nvidia-ml-py and nothing else of aicloud's, and it must
import where there is neither NVML nor a GPU.
"""

from __future__ import annotations

import importlib
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MIB = 1 << 20
RETRY_INIT_AFTER_S = 60.0
MAX_POWER_W = 5000.0
MAX_MEMORY_BYTES = 1 << 44  # 16 TiB, ~100x today's largest board: anything above is corrupt
MAX_ENERGY_MJ = 1 << 63  # the NVML counter is a uint64; a signed sink cannot hold more


class GpuReadError(RuntimeError):
    """NVML answered at init but a device then failed to (e.g. it fell off the bus)."""


class ImplausibleSample(ValueError):
    """A sample carries numbers no GPU reports; the message names each bad field."""


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    memory_used_bytes: int | None  # None: NVML cannot attribute it (Windows WDDM, some vGPUs)


@dataclass(frozen=True)
class GpuSample:
    """One device as NVML saw it at one moment."""

    index: int
    uuid: str
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilisation_pct: float | None  # share of the last sample period a kernel ran; None: unsupported
    power_w: float | None
    energy_mj: int | None  # counter since the driver loaded; None where unsupported (pre-Volta)
    processes: tuple[ProcessMemory, ...] = ()  # only the pids asked for that use this device

    def memory_of(self, pid: int) -> int | None:
        return next((p.memory_used_bytes for p in self.processes if p.pid == pid), None)


class Sampler:
    """One NVML session per process: initialised on first use, not per call, because nvmlInit
    costs milliseconds; a failed init is retried at most once per ``retry_after_s``."""

    def __init__(self, nvml: Any = None, *, retry_after_s: float = RETRY_INIT_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._nvml = nvml
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._ready = False
        self._failed_at: float | None = None
        self.unavailable: str | None = None  # why NVML could not be used, once it could not

    def sample(self, pids: Collection[int] | None = None) -> list[GpuSample]:
        """Every device, read once; ``[]`` where there is no NVML, driver or GPU."""
        nvml = self._session()
        if nvml is None:
            return []
        count = _call(nvml, "device count", nvml.nvmlDeviceGetCount)
        wanted = frozenset(pids or ())
        return [_Device(nvml, index).read(wanted) for index in range(count)]

    def _session(self) -> Any:
        with self._lock:
            if self._ready:
                return self._nvml
            now = self._clock()
            if self._failed_at is not None and now - self._failed_at < self._retry_after_s:
                return None
            try:
                nvml = self._nvml if self._nvml is not None else importlib.import_module("pynvml")
            except ImportError as exc:
                return self._failed(now, f"pynvml is not installed: {exc}")
            try:
                nvml.nvmlInit()
            except nvml.NVMLError as exc:
                return self._failed(now, f"NVML did not initialise: {exc}")
            self._nvml, self._ready, self.unavailable = nvml, True, None
            return nvml

    def _failed(self, now: float, why: str) -> None:
        self._failed_at, self.unavailable = now, why


class _Device:
    def __init__(self, nvml: Any, index: int) -> None:
        self.nvml, self.index = nvml, index

    def call(self, what: str, fn: Callable[..., Any], *args: Any, optional: bool = False) -> Any:
        return _call(self.nvml, f"gpu {self.index}: {what}", fn, *args, optional=optional)

    def read(self, wanted: frozenset[int]) -> GpuSample:
        nvml = self.nvml
        handle = self.call("handle", nvml.nvmlDeviceGetHandleByIndex, self.index)
        memory = self.call("memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        util = self.call("utilisation", nvml.nvmlDeviceGetUtilizationRates, handle, optional=True)
        power_mw = self.call("power", nvml.nvmlDeviceGetPowerUsage, handle, optional=True)
        energy = self.call("energy", nvml.nvmlDeviceGetTotalEnergyConsumption, handle, optional=True)
        return GpuSample(
            index=self.index,
            uuid=_text(self.call("uuid", nvml.nvmlDeviceGetUUID, handle)),
            name=_text(self.call("name", nvml.nvmlDeviceGetName, handle)),
            memory_used_bytes=int(memory.used),
            memory_total_bytes=int(memory.total),
            utilisation_pct=None if util is None else float(util.gpu),
            power_w=None if power_mw is None else power_mw / 1000,  # NVML reports milliwatts
            energy_mj=None if energy is None else int(energy),
            processes=self._processes(handle, wanted) if wanted else (),
        )

    def _processes(self, handle: Any, wanted: frozenset[int]) -> tuple[ProcessMemory, ...]:
        listed = self.call("processes", self.nvml.nvmlDeviceGetComputeRunningProcesses, handle,
                           optional=True) or ()
        used: dict[int, int | None] = {}
        for proc in listed:
            if proc.pid in wanted:
                # a pid is listed once per MIG instance it runs on: the device holds the sum
                prior, more = used.get(proc.pid, 0), proc.usedGpuMemory
                used[proc.pid] = None if prior is None or more is None else prior + int(more)
        return tuple(ProcessMemory(pid, memory) for pid, memory in sorted(used.items()))


def _call(nvml: Any, what: str, fn: Callable[..., Any], *args: Any, optional: bool = False) -> Any:
    """``fn(*args)``; None where ``optional`` and the device does not support it (never an
    invented zero); any other NVML failure is raised, naming what was being read."""
    try:
        return fn(*args)
    except nvml.NVMLError as exc:
        if optional and getattr(exc, "value", None) == nvml.NVML_ERROR_NOT_SUPPORTED:
            return None
        raise GpuReadError(f"{what}: {exc}") from exc


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


_default: Sampler | None = None
_default_lock = threading.Lock()


def default_sampler() -> Sampler:
    """The process's one sampler, made on first use rather than at import."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Sampler()
        return _default


def sample(pids: Collection[int] | None = None) -> list[GpuSample]:
    """Every device, read once through the process's NVML session; ``[]`` without a GPU.
    ``pids``: report how much device memory each of these processes holds."""
    return default_sampler().sample(pids)


DCGM_FB_USED = "DCGM_FI_DEV_FB_USED"  # MiB
DCGM_FB_FREE = "DCGM_FI_DEV_FB_FREE"  # MiB
DCGM_GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"  # %
DCGM_POWER_USAGE = "DCGM_FI_DEV_POWER_USAGE"  # W
DCGM_TOTAL_ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"  # mJ, a counter


def dcgm_series(samples: Iterable[GpuSample],
                labels: Mapping[str, str]) -> list[tuple[str, dict[str, str], float]]:
    """``(name, labels, value)`` per sample and field, in the DCGM exporter's names, units and
    device labels (``gpu``, ``UUID``, ``modelName``) so its dashboards read ours unchanged.
    Fields the device does not report are left out, never sent as zero."""
    series: list[tuple[str, dict[str, str], float]] = []
    for s in samples:
        device = {"gpu": str(s.index), "UUID": s.uuid, "modelName": s.name}
        if clash := sorted(device.keys() & labels.keys()):
            raise ValueError(f"labels {clash} are the device's own; name them otherwise")
        values = {
            DCGM_FB_USED: s.memory_used_bytes // MIB,  # DCGM reports whole MiB
            DCGM_FB_FREE: (s.memory_total_bytes - s.memory_used_bytes) // MIB,
            DCGM_GPU_UTIL: s.utilisation_pct,
            DCGM_POWER_USAGE: s.power_w,
            DCGM_TOTAL_ENERGY: s.energy_mj,
        }
        series += [(name, {**labels, **device}, float(value))
                   for name, value in values.items() if value is not None]
    return series


def validate_sample(sample: GpuSample) -> GpuSample:
    """``sample`` unchanged if a GPU could have reported it; else ImplausibleSample naming every
    bad field. For samples that arrive from elsewhere: a bill or a dashboard must not carry them."""
    problems = [p for p in _problems(sample) if p]
    if problems:
        raise ImplausibleSample("implausible GPU sample: " + "; ".join(problems))
    return sample


def _problems(s: GpuSample) -> list[str | None]:
    found = [
        _bad_number("index", s.index, 0, 1023, integer=True),
        None if isinstance(s.uuid, str) and s.uuid else f"uuid: {s.uuid!r} is not a non-empty string",
        None if isinstance(s.name, str) else f"name: {s.name!r} is not a string",
        _bad_number("memory_total_bytes", s.memory_total_bytes, 1, MAX_MEMORY_BYTES, integer=True),
        _bad_number("memory_used_bytes", s.memory_used_bytes, 0, MAX_MEMORY_BYTES, integer=True),
        _bad_number("utilisation_pct", s.utilisation_pct, 0, 100, optional=True),
        _bad_number("power_w", s.power_w, 0, MAX_POWER_W, optional=True),
        _bad_number("energy_mj", s.energy_mj, 0, MAX_ENERGY_MJ, integer=True, optional=True),
    ]
    if not any(found[3:5]) and s.memory_used_bytes > s.memory_total_bytes:
        found.append(f"memory_used_bytes: {s.memory_used_bytes} is more than memory_total_bytes "
                     f"({s.memory_total_bytes})")
    for i, proc in enumerate(s.processes):
        found.append(_bad_number(f"processes[{i}].pid", proc.pid, 1, 1 << 32, integer=True))
        found.append(_bad_number(f"processes[{i}].memory_used_bytes", proc.memory_used_bytes, 0,
                                 s.memory_total_bytes, integer=True, optional=True))
    return found


def _bad_number(field: str, value: object, low: float, high: float, *, integer: bool = False,
                optional: bool = False) -> str | None:
    if value is None:
        return None if optional else f"{field}: missing"
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            integer and not isinstance(value, int)):
        return f"{field}: {value!r} is not {'an integer' if integer else 'a number'}"
    if not math.isfinite(value):
        return f"{field}: {value!r} is not a finite number"
    if value < low:
        return f"{field}: {value!r} is negative" if value < 0 else f"{field}: {value!r} is below {low}"
    if value > high:
        return f"{field}: {value!r} is above the plausible maximum {high}"
    return None
