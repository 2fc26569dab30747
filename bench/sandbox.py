"""Sandboxes: create + exec ``python3 -c "print(1)"`` through the agent runtime's HTTP API, warm
(a pooled sandbox is handed over) and cold (no pool: the sandbox starts on request), for each
isolation this machine has; then sandboxes per second sustained (create, exec, delete in a
loop, two at a time). Side by side, the bare primitives: ``runsc do true`` and ``bwrap true``.

The runtime and the catalog run as their own processes on real NATS and PostgreSQL, as in
production. Goals (gVisor): warm p50 <= 50 ms, cold p50 <= 150 ms.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aicloud.local import servers
from bench.common import percentile, start_servers, stop_servers
from services.kit.sandbox import Isolation, available

RUNS = int(os.environ.get("BENCH_RUNS", "30"))
SUSTAIN_S = float(os.environ.get("BENCH_SUSTAIN_S", "10"))
TEMPLATES = """
templates:
  python:
    interpreter: /usr/bin/python3
    limits: {memory_mb: 512, cpu_s: 10, pids: 64, disk_mb: 64, wall_s: 30}
    pool: 2
"""
PRINT_ONE = {"command": ["python3", "-c", "print(1)"]}


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **env},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} not ready:\n{log.read_text()[-3000:]}")


def round_trip(client: httpx.Client) -> tuple[float, float]:
    """(create + exec, of which create) in ms; the delete after it is not counted."""
    started = time.perf_counter()
    box = client.post("/v1/sandboxes", json={"template": "python"}).json()["sandbox_id"]
    created = time.perf_counter()
    lines = client.post(f"/v1/sandboxes/{box}/exec", json=PRINT_ONE).text.splitlines()
    done = time.perf_counter()
    assert json.loads(lines[0]) == {"stdout": "1\n"}, lines
    client.delete(f"/v1/sandboxes/{box}")
    return (done - started) * 1000, (created - started) * 1000


def pool_ready(client: httpx.Client, want: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if client.get("/v1/sandboxes/templates").json()[0]["pool_ready"] >= want:
            return
        time.sleep(0.02)
    raise SystemExit("the warm pool did not refill in 60 s")


def sustained(client: httpx.Client) -> float:
    done, deadline = 0, time.monotonic() + SUSTAIN_S
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        while time.monotonic() < deadline:
            done += len(list(pool.map(lambda _: round_trip(client), range(2))))
    return done / (time.monotonic() - started)


def measure(isolation: Isolation, root: Path, nats: str, database: str, catalog: str,
            key: str) -> dict[str, float]:
    results: dict[str, float] = {}
    for mode in ("warm", "cold"):
        port = servers.free_port()
        env = {f"AICLOUD_AGENT_RUNTIME_{k}": v for k, v in {
            "NATS_URL": nats, "DATABASE_URL": database, "HTTP_PORT": str(port), "CATALOG_URL": catalog,
            "DB_SCHEMA": f"bench_{isolation.value}_{mode}", "ISOLATION": isolation.value,
            "SANDBOX_DIR": f"/var/tmp/aicloud-bench-{os.getpid()}", "TEMPLATES": str(root / "templates.yaml"),
            "POOLS": str(mode == "warm").lower(), "MAX_SANDBOXES_PER_TEAM": "100",
            "LOG_LEVEL": "warning"}.items()}
        log = root / f"runtime-{isolation.value}-{mode}.log"
        proc = spawn("services.agent_runtime", env, log)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc, log)
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
                round_trip(client)  # first request: connections, caches
                timings, creates = [], []
                for _ in range(RUNS):
                    if mode == "warm":
                        pool_ready(client, 2)
                    total, create = round_trip(client)
                    timings.append(total)
                    creates.append(create)
                ordered = sorted(timings)
                results[f"{mode}_p50_ms"] = round(statistics.median(ordered), 1)
                results[f"{mode}_create_p50_ms"] = round(statistics.median(creates), 1)
                results[f"{mode}_p99_ms"] = round(percentile(ordered, 0.99), 1)
                if mode == "cold":
                    results["per_s"] = round(sustained(client), 2)
        finally:
            proc.terminate()
            proc.wait(60)
    return results


def bare(argv: list[str]) -> float:
    timings = []
    for _ in range(10):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        timings.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(timings), 1)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    (root / "templates.yaml").write_text(TEMPLATES)
    nats, database, infra = start_servers(root, "postgres")
    catalog_port = servers.free_port()
    catalog_log = root / "catalog.log"
    catalog = spawn("services.catalog", {
        "AICLOUD_CATALOG_NATS_URL": nats, "AICLOUD_CATALOG_DATABASE_URL": database,
        "AICLOUD_CATALOG_HTTP_PORT": str(catalog_port),
        "AICLOUD_CATALOG_DEMO_KEYS_FILE": str(root / "keys.json"),
        "AICLOUD_CATALOG_LOG_LEVEL": "warning"}, catalog_log)
    results: dict[str, dict[str, float]] = {}
    try:
        catalog_url = f"http://127.0.0.1:{catalog_port}"
        wait_ready(catalog_url, catalog, catalog_log)
        key = json.loads((root / "keys.json").read_text())["legal"]
        for isolation in (i for i in available() if i is not Isolation.RLIMITS):
            results[isolation.value] = measure(isolation, root, nats, database, catalog_url, key)
    finally:
        catalog.terminate()
        catalog.wait(30)
        stop_servers(infra)
        shutil.rmtree(f"/var/tmp/aicloud-bench-{os.getpid()}", ignore_errors=True)
    peers = {}
    if shutil.which("runsc") and os.geteuid() == 0:
        peers["runsc do true"] = bare(["runsc", "--network=none", "--ignore-cgroups", "do", "true"])
    if shutil.which("bwrap"):
        peers["bwrap true"] = bare(["bwrap", "--ro-bind", "/", "/", "--unshare-all", "true"])
    report(results, peers)


def report(results: dict[str, dict[str, float]], peers: dict[str, float]) -> None:
    print(f"\nsandbox create + exec `python3 -c 'print(1)'` through the API; {RUNS} runs each, "
          f"{os.cpu_count()} cores, {platform.machine()}")
    print(f"{'isolation':12} {'warm p50':>9} {'(create)':>9} {'warm p99':>9} {'cold p50':>9} {'(create)':>9}"
          f" {'cold p99':>9} {'per s':>7}")
    for name, r in results.items():
        print(f"{name:12} {r['warm_p50_ms']:>9} {r['warm_create_p50_ms']:>9} {r['warm_p99_ms']:>9} "
              f"{r['cold_p50_ms']:>9} {r['cold_create_p50_ms']:>9} {r['cold_p99_ms']:>9} {r['per_s']:>7}")
    for name, ms in peers.items():
        print(f"peer: {name:22} {ms:>7} ms (start + exit, nothing else)")
    print("goals (gVisor): warm p50 <= 50 ms, cold p50 <= 150 ms")
    headline = results.get("gvisor") or next(iter(results.values()), {})
    print(json.dumps({"warm_p50_ms": headline.get("warm_p50_ms"), "cold_p50_ms": headline.get("cold_p50_ms"),
                      "per_s": headline.get("per_s"), "by_isolation": results, "peers_ms": peers}))


if __name__ == "__main__":
    main()
