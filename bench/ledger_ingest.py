"""Ledger ingestion: 100,000 usage events (plus 5 % duplicates under new message ids, so only
the ledger's idempotency can stop them), in time order as a live stream arrives, pre-loaded
into JetStream, then drained by one
cost-ledger process. Side by side in the same run: the same ledger writing one transaction per
event (how the kit's per-message inbox path would do it), on a 5,000-event sample.

Exactly-once is proved, not assumed: the ledger's total equals a reference computed here from
the unique events with the price book's rates, and the line count equals the hour slices.
Goal: >= 20,000 events/s sustained, totals exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import nats
import yaml
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import start_servers, stop_servers
from contracts import UsageRecorded
from contracts.pricebook import load_price_book
from services.cost_ledger.domain import usage_lines
from services.cost_ledger.repo import MIGRATIONS, append
from services.cost_ledger.settings import CostLedgerSettings
from services.kit.runtime import Service

ROOT = Path(__file__).resolve().parents[1]
N = int(os.environ.get("BENCH_N", "100000"))
SAMPLE = int(os.environ.get("BENCH_SAMPLE", "5000"))
BOOK = yaml.safe_load((ROOT / "policies" / "pricebook.yaml").read_text())["versions"][0]["compute"]


def event(rng: random.Random) -> UsageRecorded:
    start = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(0, 20 * 86400))
    return UsageRecorded(
        tenant=rng.choice(["legal", "research"]), kind=rng.choice(["training", "notebook", "endpoint"]),
        resource_id=f"job-{rng.randrange(2000)}", gpu_type=rng.choice(["h100-80gb", "a100-80gb"]),
        price_class=rng.choice(["on-demand", "spot"]), gpus_requested=rng.choice([0.5, 1, 2]),
        gpus_used=rng.choice([0, 1, 3]), vcpus=4, memory_gb=16, started_at=start,
        ended_at=start + timedelta(seconds=rng.randrange(1, 1800)))


def reference(events: list[UsageRecorded]) -> Decimal:
    total = Decimal(0)
    for e in events:
        hours = Decimal(str((e.ended_at - e.started_at).total_seconds())) / 3600
        gpus = Decimal(str(max(e.gpus_requested, e.gpus_used)))
        rate = gpus * Decimal(str(BOOK["gpu_hour"][e.gpu_type][e.price_class])) \
            + 4 * Decimal(str(BOOK["vcpu_hour"])) + 16 * Decimal(str(BOOK["gb_ram_hour"]))
        total += hours * rate
    return total


async def preload(nats_url: str, prefix: str, events: list[UsageRecorded]) -> int:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sent = 0
    batch: list[asyncio.Future[object]] = []
    for i, e in enumerate(events):
        data = e.model_dump_json().encode()
        batch.append(asyncio.ensure_future(js.publish(f"{prefix}.{e.SUBJECT}", data,
                                                      headers={"Nats-Msg-Id": str(e.event_id)})))
        if i % 20 == 0:  # 5 % duplicates
            batch.append(asyncio.ensure_future(js.publish(f"{prefix}.{e.SUBJECT}", data,
                                                          headers={"Nats-Msg-Id": f"dup-{i}"})))
        if len(batch) >= 500:
            sent += len(await asyncio.gather(*batch))
            batch = []
    sent += len(await asyncio.gather(*batch))
    await nc.close()
    return sent


async def count(service: Service) -> tuple[int, Decimal, int]:
    async with service.db.transaction() as session:
        row = (await session.execute(text(
            "SELECT count(*) FILTER (WHERE line = 0), coalesce(sum(usd), 0), count(*)"
            " FROM ledger_entries"))).one()
    return int(row[0]), Decimal(row[1]), int(row[2])


async def batched(nats_url: str, database_url: str, events: list[UsageRecorded],
                  processes: int = 1) -> dict[str, float]:
    prefix = "b" + uuid.uuid4().hex[:8]
    env = {**os.environ, "AICLOUD_COST_LEDGER_NATS_URL": nats_url,
           "AICLOUD_COST_LEDGER_DATABASE_URL": database_url, "AICLOUD_COST_LEDGER_SUBJECT_PREFIX": prefix,
           "AICLOUD_COST_LEDGER_DB_SCHEMA": prefix, "AICLOUD_COST_LEDGER_HTTP_PORT": "0",
           "AICLOUD_COST_LEDGER_LOG_LEVEL": "warning"}
    checker = Service(CostLedgerSettings(nats_url=nats_url, database_url=database_url,
                                         subject_prefix=prefix, db_schema=prefix))
    await checker.bus.connect()
    await checker.db.migrate(MIGRATIONS)
    published = await preload(nats_url, prefix, events)
    print(f"pre-loaded {published:,} messages ({published - len(events):,} duplicates)", flush=True)
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cost_ledger", env=env,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(processes)]  # replicas share the durable consumers: the work splits
    first = last = None
    first_done = 0
    try:
        while True:
            done, total, lines = await count(checker)
            now = time.perf_counter()
            if done and first is None:  # count only what is charged after the first sighting
                first, first_done = now, done
            if done >= len(events):
                last = now
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # let duplicates still in flight arrive: they must change nothing
        done, total, lines = await count(checker)
    finally:
        for proc in procs:
            proc.terminate()
            await proc.wait()
        await checker.db.drop_schema()
        await checker.db.dispose()
        await checker.bus.stop()
    assert first is not None and last is not None
    expected_lines = sum(len(usage_lines(e, PRICES, teams=TEAMS)) for e in events)
    return {"events_per_s": (len(events) - first_done) / (last - first), "seconds": last - first,
            "total_usd": float(total), "reference_usd": float(reference(events)),
            "exact_to_the_cent": total.quantize(CENT) == reference(events).quantize(CENT),
            "lines": lines, "expected_lines": expected_lines, "events": done}


async def per_event(database_url: str, events: list[UsageRecorded]) -> dict[str, float]:
    """The same lines, one transaction per event (the per-message path), for comparison."""
    prefix = "p" + uuid.uuid4().hex[:8]
    service = Service(CostLedgerSettings(nats_url="nats://unused:1", database_url=database_url,
                                         db_schema=prefix))
    await service.db.migrate(MIGRATIONS)
    started = time.perf_counter()
    for e in events:
        async with service.db.transaction() as session:
            await append(session, usage_lines(e, PRICES, teams=TEAMS))
    elapsed = time.perf_counter() - started
    await service.db.drop_schema()
    await service.db.dispose()
    return {"events_per_s": len(events) / elapsed}


CENT = Decimal("0.01")
PRICES = load_price_book(ROOT / "policies" / "pricebook.yaml")
TEAMS = frozenset({"legal", "research"})


def main() -> None:
    rng = random.Random(42)
    # in time order, as a live stream arrives (a fetch covers a few hours, not the whole month)
    events = sorted((event(rng) for _ in range(N)), key=lambda e: e.started_at)
    root = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    nats_url, database_url, procs = start_servers(root, "postgres")
    try:
        batch = asyncio.run(batched(nats_url, database_url, events))
        two = asyncio.run(batched(nats_url, database_url, events, processes=2))
        single = asyncio.run(per_event(database_url, events[:SAMPLE]))
    finally:
        stop_servers(procs)
    print(f"\nledger ingestion on {os.cpu_count()} cores ({platform.processor() or platform.machine()})")
    print(f"{'path':38} {'events/s':>10}")
    print(f"{'batched, one ledger process':38} {batch['events_per_s']:>10,.0f}")
    print(f"{'batched, two ledger processes':38} {two['events_per_s']:>10,.0f}  "
          f"({'exact' if two['exact_to_the_cent'] else 'MISMATCH'}, {two['lines']:,} lines)")
    print(f"{'one transaction per event':38} {single['events_per_s']:>10,.0f}")
    print(f"{N:,} events + 5 % duplicates drained in {batch['seconds']:.2f} s; ledger total "
          f"${batch['total_usd']:,.2f} vs reference ${batch['reference_usd']:,.2f} "
          f"({'exact to the cent' if batch['exact_to_the_cent'] else 'MISMATCH'}); "
          f"{batch['lines']:,} lines for {batch['expected_lines']:,} hour slices")
    print(json.dumps({"batched_events_per_s": round(batch["events_per_s"]),
                      "two_processes_events_per_s": round(two["events_per_s"]),
                      "two_processes_exact": two["exact_to_the_cent"],
                      "per_event_events_per_s": round(single["events_per_s"]),
                      "events": N, "exact_to_the_cent": batch["exact_to_the_cent"],
                      "lines": batch["lines"], "expected_lines": batch["expected_lines"],
                      "total_usd": round(batch["total_usd"], 2),
                      "reference_usd": round(batch["reference_usd"], 2)}))


if __name__ == "__main__":
    main()
