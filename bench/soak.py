"""Soak (issue 19): the inference router at a fixed request rate for BENCH_SOAK_S seconds
(default 600) on a local stack of its own, against the stack's fake OpenAI upstream, with every
request's usage flowing over NATS to the cost ledger and the observability collector.

Open loop: request k is sent at ``start + k / BENCH_RPS`` (default 20/s) whether or not earlier
ones have answered, so a router that slows down shows up as latency, not as a lower rate. One in
three is streamed; two teams. The peer, side by side in the same run: the same upstream called
directly at 2/s, so that a p99 that moves with the machine (2 cores, shared) is told apart from
one that moves with the router.

Every 10 s: the RSS of the router, the ledger and the collector (each process with its children).
Per minute: p50/p99 through the router and direct, errors.

Goals: the last minute's RSS of each within 10 % of the second minute's (the first minute is
warm-up); the last minute's p99 within 1.5x the second minute's (plus 5 ms, a scheduler tick on
this machine); zero errors; the ledger's inference lines == the requests answered 200.
Prints the table; the last line is one JSON object.
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
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aicloud.local.components import database_url
from aicloud.local.state import StackFiles
from bench.common import percentile
from tests.e2e.test_local_stack import aicloud, processes_under

SOAK_S = float(os.environ.get("BENCH_SOAK_S", "600"))
RPS = float(os.environ.get("BENCH_RPS", "20"))
PEER_RPS = 2.0
SAMPLE_S = 10.0
WATCHED = ("inference-router", "cost-ledger", "observability-collector")


class Minute:
    def __init__(self) -> None:
        self.router: list[float] = []
        self.direct: list[float] = []
        self.errors: list[str] = []


def rss_mb(pid: int) -> float:
    with suppress(psutil.Error):
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    return 0.0


async def inference_lines(dsn: str) -> int:
    db = await asyncpg.connect(dsn)
    try:
        return int(await db.fetchval("SELECT count(DISTINCT event_id) FROM cost_ledger.ledger_entries"
                                     " WHERE kind = 'inference'"))
    finally:
        await db.close()


async def soak(home: Path, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    router = str(rows["inference-router"]["url"]) + "/v1/chat/completions"
    upstream = str(rows["fake-llm"]["url"]) + "/v1/chat/completions"
    upstream_key = (home / "run" / "fake-llm-key").read_text().strip()
    keys = {}
    for team in ("legal", "research"):
        made = aicloud(home, "router", "keys", "create", "--team", team, "--name", "soak",
                       "--rpm", "1000000", "--tpm", "1000000000", "-o", "json")
        assert made.returncode == 0, made.stderr
        keys[team] = json.loads(made.stdout)["key"]
    pids = {name: int(rows[name]["pid"]) for name in WATCHED}
    minutes = [Minute() for _ in range(int(SOAK_S // 60) + 2)]
    rss: dict[str, list[tuple[float, float]]] = {name: [] for name in WATCHED}
    answered = {"router_200": 0, "direct_200": 0}
    inflight: set[asyncio.Task[None]] = set()
    started = time.monotonic()

    async def one(session: aiohttp.ClientSession, n: int, *, direct: bool) -> None:
        minute = minutes[int((time.monotonic() - started) // 60)]
        stream = n % 3 == 0
        body: dict[str, Any] = {"model": "gpt-4o-mini", "user": f"u{n % 11}",
                                "messages": [{"role": "user", "content": f"soak question {n}"}]}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        url, key = (upstream, upstream_key) if direct else (router, keys[("legal", "research")[n % 2]])
        t0 = time.perf_counter()
        try:
            async with session.post(url, json=body, headers={"authorization": f"Bearer {key}"}) as answer:
                payload = await answer.read()
                if answer.status != 200:
                    minute.errors.append(f"{'direct' if direct else 'router'} {answer.status} "
                                         f"{payload[:200]!r}")
                    return
                if stream and b"[DONE]" not in payload:
                    minute.errors.append(f"{'direct' if direct else 'router'}: a stream did not finish")
                    return
        except (TimeoutError, aiohttp.ClientError) as exc:
            minute.errors.append(f"{'direct' if direct else 'router'}: {type(exc).__name__} {exc}")
            return
        elapsed = (time.perf_counter() - t0) * 1000
        (minute.direct if direct else minute.router).append(elapsed)
        answered["direct_200" if direct else "router_200"] += 1

    async def paced(session: aiohttp.ClientSession, rate: float, *, direct: bool) -> int:
        n = 0
        while (due := n / rate) < SOAK_S:
            await asyncio.sleep(max(0.0, started + due - time.monotonic()))
            task = asyncio.create_task(one(session, n, direct=direct))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            n += 1
        return n

    async def sampler() -> None:
        while (now := time.monotonic() - started) < SOAK_S:
            for name, pid in pids.items():
                rss[name].append((now, rss_mb(pid)))
            await asyncio.sleep(SAMPLE_S)

    async def progress() -> None:
        while (now := time.monotonic() - started) < SOAK_S:
            await asyncio.sleep(60)
            done = minutes[int(now // 60)]
            print(f"  {int(now // 60) + 1} min: {answered['router_200']} answered through the router, "
                  f"{len(inflight)} in flight, "
                  + ", ".join(f"{n} {rss[n][-1][1]:.0f} MB" for n in WATCHED if rss[n])
                  + (f", {len(done.errors)} errors this minute" if done.errors else ""), flush=True)

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        sent, peer_sent, *_ = await asyncio.gather(
            paced(session, RPS, direct=False), paced(session, PEER_RPS, direct=True), sampler(), progress())
        if inflight:
            await asyncio.wait(set(inflight), timeout=90)
    return {"minutes": minutes, "rss": rss, "sent": sent, "peer_sent": peer_sent, **answered}


def window(samples: list[tuple[float, float]], lo: float, hi: float) -> float:
    values = [mb for at, mb in samples if lo <= at < hi]
    return statistics.median(values) if values else 0.0


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="aicloud-soak-"))
    print(f"bringing a local stack up under {home} ...", flush=True)
    up = aicloud(home, "dev", "up", "--detach", "--free-ports", timeout=300)
    if up.returncode != 0:
        print(up.stdout + up.stderr)
        return 1
    try:
        rows = {row["name"]: row for row in json.loads(aicloud(home, "dev", "status", "--json").stdout)}
        dsn = database_url(StackFiles(home), StackFiles(home).saved_ports()["postgres"])
        before = asyncio.run(inference_lines(dsn))
        print(f"soaking: {RPS:g} req/s through the router, {PEER_RPS:g} req/s direct, for {SOAK_S:g} s",
              flush=True)
        done = asyncio.run(soak(home, rows))
        deadline = time.monotonic() + 120  # the ledger catches up with the bus
        while (lines := asyncio.run(inference_lines(dsn)) - before) < done["router_200"] \
                and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(3)
        lines = asyncio.run(inference_lines(dsn)) - before
    finally:
        aicloud(home, "dev", "down", timeout=300)
        for proc in processes_under(home):
            proc.kill()

    minutes: list[Minute] = [m for m in done["minutes"] if m.router or m.errors]
    print("\nminute  router n   p50 ms   p99 ms   direct n  p50 ms   p99 ms  errors")
    for i, m in enumerate(minutes, 1):
        r, d = sorted(m.router), sorted(m.direct)
        print(f"{i:>6} {len(r):>9} {percentile(r, .5) if r else 0:8.1f} {percentile(r, .99) if r else 0:8.1f}"
              f" {len(d):>10} {percentile(d, .5) if d else 0:7.1f} {percentile(d, .99) if d else 0:8.1f}"
              f" {len(m.errors):>7}")
    full = [m for m in minutes if len(m.router) >= RPS * 50]  # whole minutes only
    second, last = (full[1], full[-1]) if len(full) >= 3 else (full[0], full[-1])
    first_p99, last_p99 = percentile(sorted(second.router), .99), percentile(sorted(last.router), .99)
    p99 = {"second_min_ms": round(first_p99, 2), "last_min_ms": round(last_p99, 2),
           "peer_second_min_ms": round(percentile(sorted(second.direct), .99), 2) if second.direct else None,
           "peer_last_min_ms": round(percentile(sorted(last.direct), .99), 2) if last.direct else None}
    p99_ok = last_p99 <= 1.5 * first_p99 + 5
    span = 60.0 * len(full)
    print("\nprocess                   2nd min MB  last min MB   growth   max MB")
    memory: dict[str, dict[str, float]] = {}
    for name, samples in done["rss"].items():
        a, b = window(samples, 60, 120), window(samples, span - 60, span)
        growth = (b - a) / a * 100 if a else 0.0
        memory[name] = {"second_min_mb": round(a, 1), "last_min_mb": round(b, 1),
                        "growth_pct": round(growth, 1), "max_mb": round(max(mb for _, mb in samples), 1)}
        print(f"{name:<25} {a:>10.1f} {b:>12.1f} {growth:>7.1f}% {memory[name]['max_mb']:>8.1f}")
    errors = [e for m in minutes for e in m.errors]
    rss_ok = all(abs(v["growth_pct"]) <= 10 for v in memory.values())
    ledger_ok = lines == done["router_200"]
    print(f"\nrequests sent {done['sent']} (router), {done['peer_sent']} (direct); answered 200: "
          f"{done['router_200']} / {done['direct_200']}; errors {len(errors)}"
          + (f" (first: {errors[0]})" if errors else ""))
    print(f"ledger inference lines {lines} == router requests answered {done['router_200']}: {ledger_ok}")
    print(f"p99 stable (last minute <= 1.5x second + 5 ms): {p99_ok}; RSS within 10 %: {rss_ok}")
    print(f"machine: {platform.node()}, {os.cpu_count()} cores")
    ok = p99_ok and rss_ok and ledger_ok and not errors
    print(json.dumps({"soak_s": SOAK_S, "rps": RPS, "requests": done["sent"], "answered": done["router_200"],
                      "errors": len(errors), "ledger_lines": lines, "ledger_matches": ledger_ok,
                      "p99": p99, "p99_stable": p99_ok, "rss": memory, "rss_within_10pct": rss_ok,
                      "peer": {"direct_requests": done["peer_sent"], "direct_answered": done["direct_200"]},
                      "cores": os.cpu_count(), "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
