"""Bus round trip: publish -> validated consume -> ack, one consumer process.

Compares, in one run on one NATS server, the kit's bus (with and without the Postgres inbox
that makes consumption exactly-once) against FastStream 0.7 and raw nats-py.
Latency: one event at a time, publish to handler done. Throughput: a backlog of N events
drained by one consumer. Goal (kit, no inbox): p50 <= 1 ms and >= 5,000 events/s.
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
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import start_servers, stop_servers
from contracts import JobRequested
from services.kit.bus import Bus, typed_decoder
from services.kit.db import Database
from services.kit.inbox import Inbox
from services.kit.outbox import Outbox

LATENCY_N = int(os.environ.get("BENCH_LATENCY_N", "1000"))
THROUGHPUT_N = int(os.environ.get("BENCH_THROUGHPUT_N", "20000"))
Stop = Callable[[], Awaitable[None]]
Starter = Callable[[str, "Counter"], Awaitable[Stop]]


def payload(i: int) -> bytes:
    return JobRequested(tenant="legal", job_id=f"job-{i}", command=["python", "train.py"],
                        gpus=1).model_dump_json().encode()


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = asyncio.Event()

    async def hit(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()

    def expect(self, n: int) -> None:
        self.count, self.target = 0, n
        self.done.clear()


async def measure(url: str, start: Starter) -> dict[str, float]:
    """Run the latency and throughput phases against one consumer implementation."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    stream = "B" + uuid.uuid4().hex[:8].upper()
    prefix = stream.lower()
    subject = f"{prefix}.{JobRequested.SUBJECT}"
    counter = Counter()
    stop = await start(prefix, counter)
    latencies = []
    for i in range(LATENCY_N):
        counter.expect(1)
        t0 = time.perf_counter()
        await js.publish(subject, payload(i), headers={"Nats-Msg-Id": f"l{i}"})
        await counter.done.wait()
        latencies.append((time.perf_counter() - t0) * 1000)
    await stop()
    counter.expect(THROUGHPUT_N)
    for chunk in range(0, THROUGHPUT_N, 500):
        await asyncio.gather(*(js.publish(subject, payload(i), headers={"Nats-Msg-Id": f"t{i}"})
                               for i in range(chunk, min(chunk + 500, THROUGHPUT_N))))
    t0 = time.perf_counter()
    stop = await start(prefix, counter)
    await asyncio.wait_for(counter.done.wait(), timeout=300)
    elapsed = time.perf_counter() - t0
    await stop()
    await nc.close()
    latencies.sort()
    return {
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 3),
        "events_per_s": round(THROUGHPUT_N / elapsed),
    }


def kit(url: str, db: Database | None = None) -> Starter:
    async def start(prefix: str, counter: Counter) -> Stop:
        bus = Bus(nats_url=url, service="bench", prefix=prefix)
        await bus.connect()

        async def handle(event: JobRequested, *_: object) -> None:
            await counter.hit()

        if db is None:
            process = handle
        else:
            process = Inbox(db, Outbox(db, bus)).wrap(handle)  # type: ignore[arg-type]
        bus.subscribe(JobRequested.SUBJECT, process, decode=typed_decoder(JobRequested),
                      durable="bench")
        await bus.start()
        return bus.stop

    return start


def faststream(url: str) -> Starter:
    from faststream import AckPolicy
    from faststream.nats import JStream, NatsBroker, PullSub

    async def start(prefix: str, counter: Counter) -> Stop:
        broker = NatsBroker(url, logger=None)
        stream = JStream(name=f"{prefix.upper()}_FS", subjects=[f"{prefix}.aicloud.jobs.>"])

        @broker.subscriber(f"{prefix}.{JobRequested.SUBJECT}", stream=stream, durable="bench",
                           pull_sub=PullSub(batch_size=128, timeout=1.0), ack_policy=AckPolicy.ACK)
        async def handle(event: JobRequested) -> None:
            await counter.hit()

        await broker.start()
        return broker.stop

    return start


def raw_nats(url: str) -> Starter:
    async def start(prefix: str, counter: Counter) -> Stop:
        nc = await nats.connect(url)
        js = nc.jetstream()
        try:
            await js.add_stream(name=f"{prefix.upper()}_RAW", subjects=[f"{prefix}.aicloud.jobs.>"])
        except nats.js.errors.BadRequestError:
            pass
        sub = await js.pull_subscribe(f"{prefix}.{JobRequested.SUBJECT}", durable="bench")
        running = True

        async def loop() -> None:
            while running:
                try:
                    messages = await sub.fetch(128, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                for msg in messages:
                    json.loads(msg.data)
                    await msg.ack()
                    await counter.hit()

        task = asyncio.create_task(loop())

        async def stop() -> None:
            nonlocal running
            running = False
            await task
            await nc.close()

        return stop

    return start


async def run_all(url: str, database_url: str) -> dict[str, dict[str, float]]:
    db = Database(url=database_url, schema="bench")
    await db.migrate()
    peers = {
        "kit (validate + ack)": kit(url),
        "kit + Postgres inbox (exactly-once)": kit(url, db),
        "faststream 0.7 (validate + ack)": faststream(url),
        "raw nats-py (json.loads + ack)": raw_nats(url),
    }
    results = {name: await measure(url, start) for name, start in peers.items()}
    await db.dispose()
    return results


def main() -> None:
    url, database_url, procs = start_servers(Path(tempfile.mkdtemp(prefix="bench-bus-")), "bench")
    try:
        results = asyncio.run(run_all(url, database_url))
    finally:
        stop_servers(procs)
    print(f"bus round trip — {platform.node()}, {os.cpu_count()} cores, "
          f"latency n={LATENCY_N}, throughput n={THROUGHPUT_N}")
    print(f"{'consumer':40} {'p50 ms':>8} {'p99 ms':>8} {'events/s':>10}")
    for name, row in results.items():
        print(f"{name:40} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['events_per_s']:>10}")
    kit_row = results["kit (validate + ack)"]
    summary = {
        "benchmark": "bus_roundtrip",
        "results": results,
        "goal": {"p50_ms_max": 1.0, "events_per_s_min": 5000},
        "goal_met": kit_row["p50_ms"] <= 1.0 and kit_row["events_per_s"] >= 5000,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
