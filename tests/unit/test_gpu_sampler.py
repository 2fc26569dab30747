"""The GPU sampler against a fake NVML (an outside library) that answers as pynvml does, its DCGM
names and units, and the check heartbeat samples must pass."""

from __future__ import annotations

import ast
import ctypes
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.kit import gpu
from services.kit.gpu import GpuReadError, GpuSample, ImplausibleSample, ProcessMemory, Sampler

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 12: "NVML Shared Library Not Found", 15: "GPU is lost"}[self.value]


class FakeNVML:
    """pynvml's calls, shapes and units: bytes, milliwatts, millijoules; str uuids, or bytes as
    older releases returned them; processes with ``usedGpuMemory`` None where not attributable."""

    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = 3

    def __init__(self, devices: list[dict[str, Any]], init_error: int | None = None) -> None:
        self.devices, self.init_error, self.inits = devices, init_error, 0

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.devices[index]

    def _answer(self, handle: dict[str, Any], key: str) -> Any:
        if isinstance(handle[key], FakeNVMLError):
            raise handle[key]
        return handle[key]

    def nvmlDeviceGetUUID(self, handle: dict[str, Any]) -> str | bytes:
        return self._answer(handle, "uuid")

    def nvmlDeviceGetName(self, handle: dict[str, Any]) -> str:
        return self._answer(handle, "name")

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> SimpleNamespace:
        used, total = self._answer(handle, "memory")
        return SimpleNamespace(total=total, free=total - used, used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._answer(handle, "util"), memory=0)

    def nvmlDeviceGetPowerUsage(self, handle: dict[str, Any]) -> int:
        return self._answer(handle, "power_mw")

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: dict[str, Any]) -> int:
        return self._answer(handle, "energy_mj")

    def nvmlDeviceGetComputeRunningProcesses(self, handle: dict[str, Any]) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in handle["processes"]]


def h200(**overrides: Any) -> dict[str, Any]:
    device = {"uuid": "GPU-5e1f0c2a-0000-4000-8000-000000000001", "name": "NVIDIA H200",
              "memory": (3 * GIB, 141 * GIB), "util": 87, "power_mw": 612_345,
              "energy_mj": 9_876_543_210, "processes": []}
    return {**device, **overrides}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def has_nvml() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(has_nvml(), reason="this machine has an NVIDIA driver")
def test_without_an_nvml_library_there_is_no_sample_rather_than_an_invented_one() -> None:
    assert gpu.sample() == []
    assert gpu.sample([1, 2]) == []
    assert gpu.default_sampler().unavailable


def test_without_pynvml_installed_the_sampler_returns_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    sampler = Sampler()
    assert sampler.sample() == []
    assert "pynvml is not installed" in (sampler.unavailable or "")


def test_two_devices_are_two_samples_in_watts_bytes_and_millijoules() -> None:
    nvml = FakeNVML([
        h200(processes=[(4242, 2 * GIB), (77, GIB), (4242, GIB)]),
        h200(uuid=b"GPU-5e1f0c2a-0000-4000-8000-000000000002", memory=(0, 141 * GIB), util=0,
             power_mw=75_000, energy_mj=FakeNVMLError(3), processes=[(5151, None)]),
    ])
    first, second = Sampler(nvml).sample(pids=[4242, 5151, 9999])
    assert first == GpuSample(index=0, uuid="GPU-5e1f0c2a-0000-4000-8000-000000000001",
                              name="NVIDIA H200", memory_used_bytes=3 * GIB,
                              memory_total_bytes=141 * GIB, utilisation_pct=87.0, power_w=612.345,
                              energy_mj=9_876_543_210, processes=(ProcessMemory(4242, 3 * GIB),))
    assert first.memory_of(4242) == 3 * GIB and first.memory_of(77) is None
    assert second.index == 1 and second.uuid.endswith("0002") and second.power_w == 75.0
    assert second.energy_mj is None  # not supported: absent, never zero
    assert second.processes == (ProcessMemory(5151, None),)


def test_processes_are_not_read_unless_pids_are_asked_for() -> None:
    nvml = FakeNVML([h200(processes=[(4242, GIB)])])
    assert Sampler(nvml).sample()[0].processes == ()


def test_nvml_is_initialised_once_for_many_samples() -> None:
    nvml = FakeNVML([h200()])
    sampler = Sampler(nvml)
    for _ in range(5):
        assert len(sampler.sample()) == 1
    assert nvml.inits == 1


def test_a_failed_init_gives_nothing_and_is_retried_once_a_minute_not_on_every_call() -> None:
    nvml, clock = FakeNVML([h200()], init_error=12), Clock()
    sampler = Sampler(nvml, clock=clock)
    for _ in range(10):
        assert sampler.sample() == []
        clock.now += 5
    assert nvml.inits == 1
    assert sampler.unavailable == "NVML did not initialise: NVML Shared Library Not Found"
    clock.now += 15
    nvml.init_error = None  # the driver came up
    assert len(sampler.sample()) == 1 and nvml.inits == 2 and sampler.unavailable is None


def test_a_driver_with_no_gpu_gives_nothing() -> None:
    assert Sampler(FakeNVML([])).sample() == []


def test_a_device_that_stops_answering_is_an_error_naming_it_not_a_silent_gap() -> None:
    nvml = FakeNVML([h200(), h200(memory=FakeNVMLError(15))])
    with pytest.raises(GpuReadError, match="gpu 1: memory: GPU is lost"):
        Sampler(nvml).sample()


def test_dcgm_series_use_the_exporters_names_units_and_device_labels() -> None:
    sample = GpuSample(index=3, uuid="GPU-abc", name="NVIDIA H200", memory_used_bytes=1536 * (1 << 20) + 7,
                       memory_total_bytes=4096 * (1 << 20), utilisation_pct=87.0, power_w=612.5,
                       energy_mj=123_456)
    series = gpu.dcgm_series([sample], {"job": "j-1", "team": "legal"})
    labels = {"job": "j-1", "team": "legal", "gpu": "3", "UUID": "GPU-abc", "modelName": "NVIDIA H200"}
    assert series == [
        ("DCGM_FI_DEV_FB_USED", labels, 1536.0),
        ("DCGM_FI_DEV_FB_FREE", labels, 2559.0),
        ("DCGM_FI_DEV_GPU_UTIL", labels, 87.0),
        ("DCGM_FI_DEV_POWER_USAGE", labels, 612.5),
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", labels, 123_456.0),
    ]


def test_dcgm_series_leave_out_what_the_device_does_not_report() -> None:
    sample = replace(good(), utilisation_pct=None, power_w=None, energy_mj=None)
    assert [name for name, _, _ in gpu.dcgm_series([sample], {})] == [
        "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"]


def test_dcgm_series_refuse_caller_labels_that_would_hide_the_device() -> None:
    with pytest.raises(ValueError, match="gpu"):
        gpu.dcgm_series([good()], {"gpu": "0", "job": "j-1"})


def good() -> GpuSample:
    return GpuSample(index=0, uuid="GPU-abc", name="NVIDIA H200", memory_used_bytes=3 * GIB,
                     memory_total_bytes=141 * GIB, utilisation_pct=87.0, power_w=612.3,
                     energy_mj=10**9, processes=(ProcessMemory(4242, GIB),))


def test_a_plausible_sample_passes_unchanged() -> None:
    assert gpu.validate_sample(good()) == good()
    assert gpu.validate_sample(replace(good(), utilisation_pct=None, power_w=None, energy_mj=None))


@pytest.mark.parametrize(("change", "field"), [
    ({"index": -1}, "index"),
    ({"uuid": ""}, "uuid"),
    ({"memory_used_bytes": -5}, "memory_used_bytes"),
    ({"memory_used_bytes": 142 * GIB}, "memory_used_bytes"),
    ({"memory_total_bytes": 0}, "memory_total_bytes"),
    ({"memory_total_bytes": 1 << 50, "memory_used_bytes": 0}, "memory_total_bytes"),
    ({"memory_used_bytes": 2.5e9}, "memory_used_bytes"),
    ({"utilisation_pct": 101.0}, "utilisation_pct"),
    ({"utilisation_pct": -0.1}, "utilisation_pct"),
    ({"utilisation_pct": math.nan}, "utilisation_pct"),
    ({"power_w": 5001.0}, "power_w"),
    ({"power_w": -1.0}, "power_w"),
    ({"power_w": math.inf}, "power_w"),
    ({"power_w": "600"}, "power_w"),
    ({"power_w": True}, "power_w"),
    ({"energy_mj": -1}, "energy_mj"),
    ({"processes": (ProcessMemory(0, GIB),)}, "processes[0].pid"),
    ({"processes": (ProcessMemory(4242, 200 * GIB),)}, "processes[0].memory_used_bytes"),
])
def test_an_absurd_sample_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ImplausibleSample) as info:
        gpu.validate_sample(replace(good(), **change))
    assert f"{field}: " in str(info.value)


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(ImplausibleSample) as info:
        gpu.validate_sample(replace(good(), power_w=math.nan, utilisation_pct=400.0))
    assert "power_w: nan is not a finite number" in str(info.value)
    assert "utilisation_pct: 400.0 is above" in str(info.value)


def test_the_sampler_imports_only_the_standard_library_and_pynvml() -> None:
    # jobs run it on machines with torch and nvidia-ml-py and nothing of ours; the packages it
    # sits in must not drag the rest of the kit in either
    tree = ast.parse((ROOT / "services/kit/gpu.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)
    assert '"pynvml"' in (ROOT / "services/kit/gpu.py").read_text()
    for init in ("services/__init__.py", "services/kit/__init__.py"):
        body = ast.parse((ROOT / init).read_text()).body
        assert not [n for n in body if isinstance(n, ast.Import | ast.ImportFrom)], init


@pytest.mark.skipif(has_nvml(), reason="with a driver, bench/gpu_check.py checks the GPU for real")
def test_the_gpu_check_without_a_gpu_says_so_and_does_not_pass() -> None:
    run = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2
    assert "no GPU here" in run.stdout
    assert run.stdout.strip().splitlines()[-1].startswith('{"benchmark": "gpu_check", "result": "no_gpu"')
