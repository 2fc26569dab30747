"""Embeddings/s through the inference router to one local replica, against calling the same
replica directly on its Unix socket, side by side in one run.

A fresh local stack deploys all-MiniLM-L6-v2 (one replica, no scale to zero). Clients send a
short sentence each, keep-alive, for ``BENCH_LOAD_S`` seconds per arm, at 1, 8 and 32
concurrent clients; the router arm uses the team's router key (auth, limits, usage events,
tracing all on). Goal: the router costs <= 5 % of throughput.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aicloud.local.stack import Stack
from bench.workloads import EMBEDDER, deploy, local_stack, router_key

LOAD_S = float(os.environ.get("BENCH_LOAD_S", "8"))
CONCURRENCY = (1, 8, 32)
BODY = {"model": "embedder", "input": "The supplier shall indemnify the buyer against all claims."}


async def load(session: aiohttp.ClientSession, url: str, clients: int, headers: dict[str, str]) -> float:
    """Completed requests per second over LOAD_S with ``clients`` concurrent clients."""
    done, errors = 0, 0
    stop = time.monotonic() + LOAD_S

    async def client() -> None:
        nonlocal done, errors
        while time.monotonic() < stop:
            async with session.post(url, json=BODY, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    done += 1
                else:
                    errors += 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    if errors:
        raise SystemExit(f"{errors} requests failed against {url}")
    return done / (time.monotonic() - started)


async def measure(router: str, key: str, socket: str) -> dict[int, tuple[float, float]]:
    results = {}
    limit = aiohttp.TCPConnector(limit=64)
    direct = aiohttp.UnixConnector(path=socket, limit=64)
    async with aiohttp.ClientSession(connector=limit) as via, aiohttp.ClientSession(connector=direct) as to:
        for clients in CONCURRENCY:
            # warm both paths, then alternate so drift hits both arms alike
            await load(to, "http://replica/v1/embeddings", clients, {})
            straight = await load(to, "http://replica/v1/embeddings", clients, {})
            routed = await load(via, f"{router}/v1/embeddings", clients, {"authorization": f"Bearer {key}"})
            results[clients] = (straight, routed)
    return results


def main() -> None:
    with local_stack() as (home, urls):
        endpoint = deploy(home, "embedder", "--hf-model", EMBEDDER, "--no-scale-to-zero")
        socket = _replica_socket(home)
        results = asyncio.run(measure(urls["inference-router"], router_key(home), socket))
    print(
        f"\nembeddings/s, one replica ({os.cpu_count()} CPUs, {LOAD_S:.0f} s per arm; "
        f"deploy took {endpoint['deploy_s']:.1f} s)"
    )
    print(f"{'clients':>8} {'direct':>10} {'router':>10} {'router cost':>12}")
    figures = {}
    for clients, (straight, routed) in results.items():
        cost = (1 - routed / straight) * 100
        print(f"{clients:>8} {straight:>10.1f} {routed:>10.1f} {cost:>11.1f}%")
        figures[f"c{clients}"] = {
            "direct_per_s": round(straight, 1),
            "router_per_s": round(routed, 1),
            "router_cost_pct": round(cost, 2),
        }
    worst = max(f["router_cost_pct"] for f in figures.values())
    print(f"goal: router costs <= 5 % -> {'met' if worst <= 5 else 'NOT met'} (worst {worst:.1f} %)")
    print(
        json.dumps(
            {"bench": "endpoint_throughput", "goal_router_cost_pct": 5, "worst_cost_pct": worst, **figures}
        )
    )


def _replica_socket(home: Path) -> str:
    """The running replica's socket: the same one the router was told about."""
    serving = Stack(home).scratch_dir("serving")
    sockets = sorted(serving.glob("embedder-*/model.sock"))
    if not sockets:
        raise SystemExit(f"no replica socket under {serving}")
    return str(sockets[-1])


if __name__ == "__main__":
    main()
