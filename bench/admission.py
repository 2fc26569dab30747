"""Admission: 1,000 ``jobs.requested`` at a fixed rate into one quota process; time until each
``jobs.admitted`` / ``jobs.rejected`` arrives. Side by side: the Cedar evaluation alone, the
floor that the bus, the inbox and the decision log add to.
Goal: p50 <= 10 ms, p99 <= 50 ms, >= 500 decisions/s on one quota process.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import percentile, start_servers, stop_servers
from contracts import JobAdmitted, JobRejected, JobRequested
from services.quota.app import build, load_guardrails
from services.quota.settings import QuotaSettings

N = int(os.environ.get("BENCH_N", "1000"))
RATE = float(os.environ.get("BENCH_RATE", "600"))  # requests per second offered


def request(i: int) -> JobRequested:
    # Mostly admissible jobs, every tenth breaks a policy; teams spread the per-team locks.
    return JobRequested(tenant=f"team-{i % 20}", job_id=f"bench-{i}", command=["x"], product="fine-tune",
                        gpus=16 if i % 10 == 0 else 1)


async def admission(nats_url: str, database_url: str) -> dict[str, float]:
    prefix = "b" + uuid.uuid4().hex[:8]
    settings = QuotaSettings(nats_url=nats_url, database_url=database_url, subject_prefix=prefix,
                             db_schema=prefix, default_gpu_quota=10_000)
    service = build(settings)
    await service.start()
    nc = await nats.connect(nats_url)
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def on_decision(msg: nats.aio.msg.Msg) -> None:
        job_id = json.loads(msg.data)["job_id"]
        latencies.append((time.perf_counter() - sent[job_id]) * 1000)
        if len(latencies) == N:
            done.set()

    for subject in (JobAdmitted.SUBJECT, JobRejected.SUBJECT):
        await nc.subscribe(f"{prefix}.{subject}", cb=on_decision)
    js = nc.jetstream()
    started = time.perf_counter()
    for i in range(N):
        target = started + i / RATE
        await asyncio.sleep(max(0.0, target - time.perf_counter()))
        event = request(i)
        sent[event.job_id] = time.perf_counter()
        await js.publish(f"{prefix}.{event.SUBJECT}", event.model_dump_json().encode(),
                         headers={"Nats-Msg-Id": str(event.event_id)})
    await asyncio.wait_for(done.wait(), timeout=120)
    elapsed = time.perf_counter() - started
    await nc.close()
    await service.stop()
    latencies.sort()
    return {"p50_ms": round(statistics.median(latencies), 2), "p99_ms": round(percentile(latencies, 0.99), 2),
            "decisions_per_s": round(N / elapsed)}


def cedar_only(settings: QuotaSettings) -> dict[str, float]:
    rails = load_guardrails(settings)
    timings = []
    for i in range(N):
        event = request(i)
        t0 = time.perf_counter()
        rails.policies.evaluate_job(event, org=rails.org, product=rails.products.get(event.product))
        timings.append((time.perf_counter() - t0) * 1000)
    timings.sort()
    return {"p50_ms": round(statistics.median(timings), 3), "p99_ms": round(percentile(timings, 0.99), 3),
            "decisions_per_s": round(1000 / statistics.mean(timings))}


def main() -> None:
    nats_url, database_url, procs = start_servers(Path(tempfile.mkdtemp(prefix="bench-adm-")), "bench")
    try:
        results = {
            "quota service (bus + inbox + Cedar + quota + outbox)": asyncio.run(
                admission(nats_url, database_url)),
            "Cedar evaluation alone (in process)": cedar_only(
                QuotaSettings(nats_url=nats_url, database_url=database_url)),
        }
    finally:
        stop_servers(procs)
    print(f"admission — {platform.node()}, {os.cpu_count()} cores, {N} requests offered at {RATE:.0f}/s")
    print(f"{'path':54} {'p50 ms':>8} {'p99 ms':>8} {'decisions/s':>12}")
    for name, row in results.items():
        print(f"{name:54} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['decisions_per_s']:>12}")
    service = results["quota service (bus + inbox + Cedar + quota + outbox)"]
    print(json.dumps({"benchmark": "admission", "results": results,
                      "goal": {"p50_ms_max": 10, "p99_ms_max": 50, "decisions_per_s_min": 500},
                      "goal_met": service["p50_ms"] <= 10 and service["p99_ms"] <= 50
                      and service["decisions_per_s"] >= 500}))


if __name__ == "__main__":
    main()
