"""Admission: 1,000 ``jobs.requested`` at a fixed rate into one quota process; time until each
``jobs.admitted`` / ``jobs.rejected`` arrives. The quota service runs as its own process
(``python -m services.quota``, as the stack runs it), so the load generator does not share its
event loop. Side by side: the Cedar evaluation alone, the floor that the bus, the inbox and the
decision log add to.
Goal: p50 <= 10 ms, p99 <= 50 ms, >= 500 decisions/s on one quota process.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aicloud.local.servers import free_port
from bench.common import percentile, start_servers, stop_servers
from contracts import JobAdmitted, JobRejected, JobRequested
from services.quota.app import load_guardrails
from services.quota.settings import QuotaSettings

N = int(os.environ.get("BENCH_N", "1000"))
RATES = (500.0, 600.0)  # requests per second offered: the goal's rate, and more


def request(i: int) -> JobRequested:
    # Mostly admissible jobs, every tenth breaks a policy; teams spread the per-team locks.
    return JobRequested(tenant=f"team-{i % 20}", job_id=f"bench-{i}", command=["x"], product="fine-tune",
                        gpus=16 if i % 10 == 0 else 1)


async def admission(nats_url: str, database_url: str, rate: float | None) -> dict[str, float]:
    """``rate`` requests/s (None: all at once, to measure capacity) into a fresh quota process."""
    prefix = "b" + uuid.uuid4().hex[:8]
    port = free_port()
    env = {**os.environ, "AICLOUD_QUOTA_NATS_URL": nats_url, "AICLOUD_QUOTA_DATABASE_URL": database_url,
           "AICLOUD_QUOTA_SUBJECT_PREFIX": prefix, "AICLOUD_QUOTA_DB_SCHEMA": prefix,
           "AICLOUD_QUOTA_HTTP_PORT": str(port), "AICLOUD_QUOTA_DEFAULT_GPU_QUOTA": "10000",
           "AICLOUD_QUOTA_LOG_LEVEL": "warning"}
    quota = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.quota", env=env,
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nc = await nats.connect(nats_url)
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def on_decision(msg: nats.aio.msg.Msg) -> None:
        job_id = json.loads(msg.data)["job_id"]
        latencies.append((time.perf_counter() - sent[job_id]) * 1000)
        if len(latencies) == N:
            done.set()

    try:
        await wait_ready(port)
        for subject in (JobAdmitted.SUBJECT, JobRejected.SUBJECT):
            await nc.subscribe(f"{prefix}.{subject}", cb=on_decision)
        js = nc.jetstream()
        acks = []
        started = time.perf_counter()
        for i in range(N):
            if rate is not None:
                await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            event = request(i)
            sent[event.job_id] = time.perf_counter()
            acks.append(asyncio.ensure_future(js.publish(
                f"{prefix}.{event.SUBJECT}", event.model_dump_json().encode(),
                headers={"Nats-Msg-Id": str(event.event_id)})))
        offered = N / max(time.perf_counter() - started, 1e-9)
        await asyncio.gather(*acks)
        await asyncio.wait_for(done.wait(), timeout=120)
        elapsed = time.perf_counter() - started
    finally:
        await nc.close()
        quota.terminate()
        await quota.wait()
    latencies.sort()
    return {"p50_ms": round(statistics.median(latencies), 2), "p99_ms": round(percentile(latencies, 0.99), 2),
            "decisions_per_s": round(N / elapsed), "offered_per_s": round(offered)}


async def wait_ready(port: int) -> None:
    """Until the quota process answers /readyz (its consumers exist)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
            status = (await reader.readline()).decode()
            writer.close()
            if " 200 " in status:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the quota process did not become ready within 60 s")


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
    service = "quota service (bus + inbox + Cedar + quota + outbox)"
    try:
        results = {f"{service}, {rate:.0f}/s": asyncio.run(admission(nats_url, database_url, rate))
                   for rate in RATES}
        results[f"{service}, all {N} at once"] = asyncio.run(admission(nats_url, database_url, None))
        results["Cedar evaluation alone (in process)"] = cedar_only(
            QuotaSettings(nats_url=nats_url, database_url=database_url))
    finally:
        stop_servers(procs)
    print(f"admission — {platform.node()}, {os.cpu_count()} cores, {N} requests per row, one quota "
          "process; offered rates are the generator's own, in its own process")
    print(f"{'path':66} {'p50 ms':>8} {'p99 ms':>8} {'decisions/s':>12}")
    for name, row in results.items():
        print(f"{name:66} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['decisions_per_s']:>12}")
    at_goal = results[f"{service}, 500/s"]
    capacity = results[f"{service}, all {N} at once"]["decisions_per_s"]
    print(f"goal: at 500/s p50 <= 10 ms and p99 <= 50 ms; capacity >= 500 decisions/s ({capacity})")
    print(json.dumps({"benchmark": "admission", "results": results,
                      "goal": {"p50_ms_max": 10, "p99_ms_max": 50, "decisions_per_s_min": 500},
                      "goal_met": at_goal["p50_ms"] <= 10 and at_goal["p99_ms"] <= 50
                      and capacity >= 500}))


if __name__ == "__main__":
    main()
