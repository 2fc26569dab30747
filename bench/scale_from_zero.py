"""Request to a scaled-to-zero embedding endpoint until its first response, on the local
backend, against starting the same replica by hand (the floor: sandbox + model load + health).

A fresh local stack deploys all-MiniLM-L6-v2 with a 2 s idle timeout. Each round waits until
the endpoint has scaled to zero, then times one embeddings request through the router (which
holds it, publishes WakeEndpoint, waits for endpoints.ready and forwards). Also reported: how
long after its idle limit scale-to-zero fired. Goal: p50 <= 3 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import percentile
from bench.workloads import EMBEDDER, deploy, endpoint, local_stack, router_key
from services.kit.sandbox import Sandbox, choose
from services.provisioner.endpoints.serving import hub, start_replica

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
IDLE_S = 2


async def replica_floor(rounds: int) -> list[float]:
    """Seconds to start a MiniLM replica and see it healthy, without the platform around it."""
    model = hub.resolve(EMBEDDER, mirror=None)
    times = []
    with tempfile.TemporaryDirectory(prefix="aicloud-floor-", dir="/var/tmp") as tmp:
        sandbox = Sandbox(choose("auto"), state_dir=Path(tmp) / "state")
        for i in range(rounds):
            started = time.perf_counter()
            replica = await start_replica(
                sandbox, replica_id=f"floor-{i}", model_dir=model, name="floor", root=Path(tmp)
            )
            times.append(time.perf_counter() - started)
            await replica.stop()
    return times


def wait_for_zero(home: Path, since: int) -> float:
    """Seconds past the idle limit at which the endpoint scaled to zero."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        history = endpoint(home, "embedder")["history"]
        zero = [e for e in history[since:] if e["event"] == "scaled to zero"]
        if zero:
            return float(zero[-1]["detail"].split()[2]) - IDLE_S  # "idle for N s"
        time.sleep(0.3)
    raise SystemExit("the endpoint never scaled to zero")


def main() -> None:
    floor = asyncio.run(replica_floor(ROUNDS))
    colds, lateness = [], []
    with local_stack() as (home, urls):
        deploy(home, "embedder", "--hf-model", EMBEDDER, "--idle-timeout", str(IDLE_S))
        with httpx.Client(
            base_url=urls["inference-router"],
            timeout=60,
            headers={"authorization": f"Bearer {router_key(home)}"},
        ) as http:
            for _ in range(ROUNDS):
                since = len(endpoint(home, "embedder")["history"])
                lateness.append(wait_for_zero(home, since - 1))
                started = time.perf_counter()
                answer = http.post("/v1/embeddings", json={"model": "embedder", "input": "wake up"})
                colds.append(time.perf_counter() - started)
                answer.raise_for_status()
        isolation = _isolation(home)
    colds.sort()
    floor.sort()
    print(f"\nscale from zero, {ROUNDS} rounds, {isolation} ({os.cpu_count()} CPUs)")
    print(f"{'':28} {'p50 s':>7} {'p95 s':>7} {'max s':>7}")
    for label, values in (("request to first response", colds), ("replica start alone (floor)", floor)):
        p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
        print(f"{label:28} {p50:>7.2f} {p95:>7.2f} {max(values):>7.2f}")
    p50 = percentile(colds, 0.5)
    print(f"scale-to-zero fired {min(lateness):.2f}-{max(lateness):.2f} s after the {IDLE_S} s idle limit")
    print(f"goal: p50 <= 3 s -> {'met' if p50 <= 3 else 'NOT met'} ({p50:.2f} s)")
    print(
        json.dumps(
            {
                "bench": "scale_from_zero",
                "goal_p50_s": 3,
                "p50_s": round(p50, 3),
                "p95_s": round(percentile(colds, 0.95), 3),
                "floor_p50_s": round(percentile(floor, 0.5), 3),
                "zero_late_max_s": round(max(lateness), 3),
                "rounds": ROUNDS,
                "isolation": isolation,
                "at": datetime.now().isoformat(timespec="seconds"),
            }
        )
    )


def _isolation(home: Path) -> str:
    for line in (home / "logs" / "provisioner.log").read_text().splitlines():
        if '"endpoint.replica_started"' in line:
            return str(json.loads(line).get("isolation", "unknown"))
    return "unknown"


if __name__ == "__main__":
    main()
