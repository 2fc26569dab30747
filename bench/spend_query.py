"""Spend queries over 1,000,000 ledger lines: spend by team x kind x day for a month, the
dashboard's and `aicloud bill --by kind --step day`'s question. The lines are written through
the ledger's own append path (lines + hourly and daily rollups), as ingestion writes them.
Side by side in the same run: the same answer aggregated straight from the lines.
Goal: p95 <= 100 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import percentile, start_servers, stop_servers
from services.cost_ledger.domain import Line
from services.cost_ledger.repo import MIGRATIONS, append, spend
from services.cost_ledger.settings import CostLedgerSettings
from services.kit.runtime import Service

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
QUERIES = int(os.environ.get("BENCH_QUERIES", "200"))
TEAMS = [f"team-{i}" for i in range(20)]
KINDS = ["training", "inference", "notebook", "endpoint", "agent"]
MODELS = ["", "gpt-4o-mini", "claude-3-5-haiku-latest", "clause-risk", "embedder"]
START = datetime(2026, 9, 1, tzinfo=UTC)  # 90 days of history


def lines(rng: random.Random, n: int, offset: int) -> list[Line]:
    out = []
    for i in range(n):
        hour = START + timedelta(hours=(offset + i) * 2160 // ROWS)  # in time order, as ingested
        kind = rng.choice(KINDS)
        out.append(Line(uuid.uuid4(), 0, rng.choice(TEAMS), kind, hour,
                        Decimal(rng.randrange(1, 100_000)) / 10_000, Decimal(rng.randrange(1, 3600)),
                        "tokens" if kind == "inference" else "gpu_seconds",
                        project=f"p{rng.randrange(5)}", user=f"u{rng.randrange(200)}",
                        resource_id=f"r{rng.randrange(5000)}",
                        model=rng.choice(MODELS) if kind in ("inference", "endpoint") else "",
                        gpu_type="" if kind == "inference" else rng.choice(["h100-80gb", "a10-24gb"])))
    return out


async def run(database_url: str) -> dict[str, float]:
    prefix = "q" + uuid.uuid4().hex[:8]
    service = Service(CostLedgerSettings(nats_url="nats://unused:1", database_url=database_url,
                                         db_schema=prefix))
    await service.db.migrate(MIGRATIONS)
    rng = random.Random(5)
    started = time.perf_counter()
    for offset in range(0, ROWS, 10_000):
        async with service.db.transaction() as session:
            await append(session, lines(rng, min(10_000, ROWS - offset), offset))
    loaded = time.perf_counter() - started
    async with service.db.transaction() as session:
        await session.execute(text("ANALYZE"))
        count = (await session.execute(text("SELECT count(*) FROM ledger_entries"))).scalar_one()
        daily_rows = (await session.execute(text("SELECT count(*) FROM spend_daily"))).scalar_one()
    month = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))

    async def rollup() -> list[dict[str, object]]:
        async with service.db.transaction() as session:
            return await spend(session, start=month[0], end=month[1], by=["team", "kind"],
                               step="day", team=None)

    async def from_lines() -> list[dict[str, object]]:
        async with service.db.transaction() as session:
            rows = await session.execute(text(
                "SELECT team, kind, date_trunc('day', hour, 'UTC') AS bucket, sum(usd) AS usd"
                " FROM ledger_entries WHERE hour >= :s AND hour < :e GROUP BY 1, 2, 3"
                " ORDER BY bucket, usd DESC"), {"s": month[0], "e": month[1]})
            return [dict(r._mapping) for r in rows]

    results: dict[str, float] = {"rows": count, "daily_rollup_rows": daily_rows, "load_s": loaded}
    answers = {}
    for name, query, n in (("rollup", rollup, QUERIES), ("lines", from_lines, max(QUERIES // 10, 10))):
        await query()  # warm
        times = []
        for _ in range(n):
            t = time.perf_counter()
            answers[name] = await query()
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        results[f"{name}_p50_ms"] = statistics.median(times)
        results[f"{name}_p95_ms"] = percentile(times, 0.95)
    total = {name: sum(Decimal(str(r["usd"])) for r in rows) for name, rows in answers.items()}
    results["same_answer"] = float(total["rollup"] == total["lines"] and
                                   len(answers["rollup"]) == len(answers["lines"]))
    await service.db.drop_schema()
    await service.db.dispose()
    return results


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-spend-"))
    _, database_url, procs = start_servers(root, "postgres")
    try:
        r = asyncio.run(run(database_url))
    finally:
        stop_servers(procs)
    print(f"\nspend by team x kind x day for one month, {int(r['rows']):,} ledger lines "
          f"(loaded through the ledger's append path in {r['load_s']:.0f} s; daily rollup "
          f"{int(r['daily_rollup_rows']):,} rows), {os.cpu_count()} cores")
    print(f"{'source':22} {'p50 ms':>8} {'p95 ms':>8}")
    print(f"{'daily rollup (ledger)':22} {r['rollup_p50_ms']:8.1f} {r['rollup_p95_ms']:8.1f}")
    print(f"{'straight from lines':22} {r['lines_p50_ms']:8.1f} {r['lines_p95_ms']:8.1f}")
    print(f"same answer from both: {bool(r['same_answer'])}")
    print(json.dumps({"rows": int(r["rows"]), "p50_ms": round(r["rollup_p50_ms"], 2),
                      "p95_ms": round(r["rollup_p95_ms"], 2), "lines_p50_ms": round(r["lines_p50_ms"], 2),
                      "lines_p95_ms": round(r["lines_p95_ms"], 2), "same_answer": bool(r["same_answer"])}))


if __name__ == "__main__":
    main()
