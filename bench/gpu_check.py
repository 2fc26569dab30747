"""Does the GPU sampler (services/kit/gpu.py) tell the truth? Checked against loads of known size.

Allocates device memory with torch in steps (1, 2, 4, 8 GiB cumulative) and checks that NVML's
used memory grows by each step within 2 % (steps, not totals: the CUDA context takes ~0.5 GiB)
and that this process's own memory grows by the whole; runs a bf16 matmul load and checks that
utilisation (>= 50 %) and power (>= 1.2x idle) rise and that the energy counter advances; checks
every sample read passes ``validate_sample``; times one ``sample()`` (median of 100).

Needs only torch and nvidia-ml-py: ``python3 bench/gpu_check.py`` from the repo root. Exit 0:
every check passed; 1: one failed (or the run broke); 2: no GPU here, which is not a pass.
The last line printed is one JSON object.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.kit import gpu

GIB = 1 << 30
STEPS_GIB = (1, 1, 2, 4)  # 1, 2, 4, 8 GiB held in all
TOLERANCE = 0.02
MATMUL_N = 8192
BATCH = 50  # matmuls queued between two samples: ~0.1 s on an H100/H200
LOAD_S = 6.0
SETTLE_S = 2.0  # NVML's power is a 1 s average and utilisation lags a sample period
MIN_UTIL_PCT = 50.0
MIN_POWER_RATIO = 1.2
DEADLINE_S = 100


@dataclass
class Check:
    name: str
    ok: bool
    measured: str
    expected: str
    figures: dict[str, Any]


def main() -> int:
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(DEADLINE_S)
    try:
        return run()
    except Exception as exc:
        traceback.print_exc()
        print(json.dumps({"benchmark": "gpu_check", "result": "error", "error": repr(exc)}))
        return 1


def _out_of_time(signum: int, frame: object) -> None:
    raise TimeoutError(f"gpu_check ran past {DEADLINE_S} s")


def run() -> int:
    samples = gpu.sample()
    if not samples:
        return no_gpu(gpu.default_sampler().unavailable or "NVML initialised but lists no device")
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # torch's order = NVML's order
    try:
        import torch
    except ImportError as exc:
        return no_gpu(f"torch is not installed: {exc}")
    if not torch.cuda.is_available():
        return no_gpu("NVML sees a GPU but torch sees no CUDA device")
    device = torch.device("cuda", 0)
    index = nvml_index(torch, samples)
    pid = os.getpid()
    idle = idle_baseline(index)
    torch.zeros(1, device=device)
    torch.cuda.synchronize()
    checks, blocks = memory_steps(torch, device, index, pid)
    checks += load(torch, device, index, idle)
    timing = time_sample(pid)
    del blocks
    return report(read(index), torch.__version__, idle, checks, timing)


def no_gpu(why: str) -> int:
    print(f"no GPU here: {why}. Nothing was checked; this is not a pass.")
    print(json.dumps({"benchmark": "gpu_check", "result": "no_gpu", "reason": why}))
    return 2


def read(index: int, pid: int | None = None) -> gpu.GpuSample:
    found = next(s for s in gpu.sample([pid] if pid else None) if s.index == index)
    gpu.validate_sample(found)  # real readings must pass the check heartbeats will get
    return found


def nvml_index(torch: Any, samples: list[gpu.GpuSample]) -> int:
    uuid = str(getattr(torch.cuda.get_device_properties(0), "uuid", ""))
    matches = [s.index for s in samples if uuid and uuid in s.uuid]
    if matches:
        return matches[0]
    if len(samples) == 1 or "CUDA_VISIBLE_DEVICES" not in os.environ:
        return samples[0].index  # PCI bus order on both sides
    raise RuntimeError(f"cannot tell which NVML device is torch's cuda:0 (uuid {uuid!r})")


def idle_baseline(index: int) -> dict[str, float]:
    readings = []
    for _ in range(6):
        readings.append(read(index))
        time.sleep(0.2)
    return {"power_w": statistics.median(s.power_w or 0.0 for s in readings),
            "util_pct": max(s.utilisation_pct or 0.0 for s in readings)}


def memory_steps(torch: Any, device: Any, index: int, pid: int) -> tuple[list[Check], list[Any]]:
    first = before = read(index, pid)
    free = first.memory_total_bytes - first.memory_used_bytes
    steps = [gib for i, gib in enumerate(STEPS_GIB) if sum(STEPS_GIB[: i + 1]) * GIB <= free // 2]
    checks, blocks, held = [], [], 0
    for gib in steps:
        blocks.append(torch.empty(gib * GIB, dtype=torch.uint8, device=device))
        torch.cuda.synchronize()
        held += gib
        after = read(index, pid)
        checks.append(within(f"device memory: step to {held} GiB", after.memory_used_bytes
                             - before.memory_used_bytes, gib * GIB))
        before = after
    if not steps:
        checks.append(Check("device memory steps", False, f"{free / GIB:.1f} GiB free",
                             f">= {2 * STEPS_GIB[0]} GiB free", {"free_bytes": free}))
    else:
        checks.append(own_memory(first, before, pid, held * GIB, index))
    return checks, blocks


def within(name: str, grew: int, expected: int) -> Check:
    error = (grew - expected) / expected
    return Check(name, abs(error) <= TOLERANCE, f"+{grew / GIB:.3f} GiB ({error:+.2%})",
                 f"+{expected / GIB:g} GiB ± {TOLERANCE:.0%}",
                 {"grew_bytes": grew, "expected_bytes": expected, "error": round(error, 5)})


def own_memory(first: gpu.GpuSample, last: gpu.GpuSample, pid: int, expected: int,
               index: int) -> Check:
    start, end = first.memory_of(pid), last.memory_of(pid)
    if start is None or end is None:
        listed = listed_pids(index)
        # in a container NVML lists host pids, which the job's own getpid() does not match
        return Check(f"pid {pid} memory", False, f"not listed; NVML lists pids {listed}",
                     "own pid listed", {"listed": listed})
    check = within(f"pid {pid} memory: {expected / GIB:g} GiB held", end - start, expected)
    check.figures["pid_bytes"] = end
    return check


def listed_pids(index: int) -> list[int]:
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    return sorted(p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle))


def load(torch: Any, device: Any, index: int, idle: dict[str, float]) -> list[Check]:
    a, b, c = (torch.randn(MATMUL_N, MATMUL_N, device=device, dtype=torch.bfloat16) for _ in range(3))
    torch.cuda.synchronize()
    start = read(index)
    t0 = time.monotonic()
    loaded: list[gpu.GpuSample] = []
    batches = 0
    while (elapsed := time.monotonic() - t0) < LOAD_S:
        batches += 1
        for _ in range(BATCH):
            torch.matmul(a, b, out=c)
        if elapsed >= SETTLE_S:
            loaded.append(read(index))  # while the batch runs
        torch.cuda.synchronize()
    end, seconds = read(index), time.monotonic() - t0
    tflops = 2 * MATMUL_N**3 * BATCH * batches / seconds / 1e12
    return [utilisation(loaded, idle, tflops), power(loaded, idle), energy(start, end, seconds)]


def utilisation(loaded: list[gpu.GpuSample], idle: dict[str, float], tflops: float) -> Check:
    util = statistics.median(s.utilisation_pct or 0.0 for s in loaded) if loaded else 0.0
    return Check("utilisation under bf16 matmul", util >= MIN_UTIL_PCT,
                 f"median {util:.0f} % over {len(loaded)} samples (idle {idle['util_pct']:.0f} %)",
                 f">= {MIN_UTIL_PCT:.0f} %", {"util_pct": util, "idle_util_pct": idle["util_pct"],
                                              "samples": len(loaded), "approx_tflops": round(tflops)})


def power(loaded: list[gpu.GpuSample], idle: dict[str, float]) -> Check:
    watts = statistics.median(s.power_w or 0.0 for s in loaded) if loaded else 0.0
    return Check("power under bf16 matmul", watts >= MIN_POWER_RATIO * idle["power_w"] > 0,
                 f"median {watts:.0f} W (idle {idle['power_w']:.0f} W)",
                 f">= {MIN_POWER_RATIO:g}x idle", {"power_w": watts, "idle_power_w": idle["power_w"]})


def energy(start: gpu.GpuSample, end: gpu.GpuSample, seconds: float) -> Check:
    if start.energy_mj is None or end.energy_mj is None:
        return Check("energy counter", False, "not supported by this device", "advances", {})
    joules = (end.energy_mj - start.energy_mj) / 1000
    return Check("energy counter", joules > 0, f"+{joules:.0f} J in {seconds:.1f} s "
                 f"(mean {joules / seconds:.0f} W)", "advances",
                 {"joules": joules, "seconds": round(seconds, 2), "mean_w": round(joules / seconds, 1)})


def time_sample(pid: int) -> dict[str, float]:
    timing = {}
    for label, pids in (("sample_ms_p50", None), ("sample_with_pid_ms_p50", [pid])):
        took = []
        for _ in range(100):
            t0 = time.perf_counter()
            gpu.sample(pids)
            took.append((time.perf_counter() - t0) * 1000)
        timing[label] = round(statistics.median(took), 3)
    return timing


def report(device: gpu.GpuSample, torch_version: str, idle: dict[str, float], checks: list[Check],
           timing: dict[str, float]) -> int:
    passed = all(c.ok for c in checks)
    print(f"\nGPU check: {device.name} ({device.uuid}), NVML index {device.index}, "
          f"{device.memory_total_bytes / GIB:.1f} GiB, torch {torch_version}")
    print(f"{'check':40} {'result':6}  {'measured':48} expected")
    for c in checks:
        print(f"{c.name:40} {'PASS' if c.ok else 'FAIL':6}  {c.measured:48} {c.expected}")
    print(f"one sample(): {timing['sample_ms_p50']:.3f} ms median of 100 "
          f"({timing['sample_with_pid_ms_p50']:.3f} ms asking for this pid's memory)")
    print("all checks passed" if passed else "SOME CHECKS FAILED")
    print(json.dumps({"benchmark": "gpu_check", "result": "pass" if passed else "fail",
                      "device": device.name, "uuid": device.uuid, "idle": idle, **timing,
                      "checks": [{"name": c.name, "ok": c.ok, **c.figures} for c in checks]}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
