"""Job start: ``aicloud create job`` (the CLI process, API, bus, quota, Temporal, sandbox) to the
job's own process running, on a local stack. Side by side: starting the sandbox alone, for
each isolation this machine has. Goal: p50 <= 1.5 s (local backend, gVisor).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import seconds_summary as summary
from contracts import JobRequested
from services.kit.sandbox import available
from services.provisioner.backends.local import LocalBackend

RUNS = int(os.environ.get("BENCH_RUNS", "10"))
STAMP = ["python3", "-c", "import time; print(repr(time.time()), flush=True)"]


def first_stamp(log: Path, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and (text := log.read_text().strip()):
            return float(text.splitlines()[0])
        time.sleep(0.005)
    raise SystemExit(f"no output in {log} after {timeout}s")


def through_the_platform(home: Path) -> list[float]:
    env = {**os.environ, "AICLOUD_HOME": str(home), "AICLOUD_TEAM": "legal"}
    subprocess.run([sys.executable, "-m", "aicloud", "dev", "up", "--detach", "--free-ports"],
                   env=env, check=True, capture_output=True, timeout=300)
    timings = []
    try:
        for i in range(RUNS):
            job_id = f"start-{i}"
            submitted = time.time()
            subprocess.run([sys.executable, "-m", "aicloud", "create", "job", "--name", job_id, "--",
                            *STAMP], env=env, check=True, capture_output=True, timeout=60)
            timings.append(first_stamp(home / "jobs" / "legal" / job_id / "job.log") - submitted)
    finally:
        subprocess.run([sys.executable, "-m", "aicloud", "dev", "down"], env=env, capture_output=True,
                       timeout=120)
    return timings


async def sandbox_alone(kind: str, root: Path) -> list[float]:
    backend = LocalBackend(work_dir=root / kind / "jobs", memory_limit_mb=1024, isolation=kind)
    timings = []
    for i in range(RUNS):
        request = JobRequested(tenant="legal", job_id=f"s-{i}", command=STAMP)
        started = time.time()
        job = await backend.start(request)
        while await job.wait() is None:
            pass
        timings.append(first_stamp(backend.workspace(request) / "job.log") - started)
        await backend.teardown(request)
    return timings


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-start-"))
    strongest = available()[0]
    results = {f"aicloud create job -> job running (local/{strongest})":
               summary(through_the_platform(root / "home"))}
    for kind in available():
        results[f"sandbox start alone: {kind}"] = summary(asyncio.run(sandbox_alone(kind, root)))
    print(f"job start — {platform.node()}, {os.cpu_count()} cores, {RUNS} runs each")
    print(f"{'path':60} {'p50 s':>7} {'p90 s':>7} {'max s':>7}")
    for name, row in results.items():
        print(f"{name:60} {row['p50_s']:>7} {row['p90_s']:>7} {row['max_s']:>7}")
    platform_row = next(iter(results.values()))
    print(json.dumps({"benchmark": "job_start", "results": results, "goal": {"p50_s_max": 1.5},
                      "goal_met": platform_row["p50_s"] <= 1.5}))


if __name__ == "__main__":
    main()
