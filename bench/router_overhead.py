"""What the inference router adds to a model call, against calling the upstream directly and
against LiteLLM's proxy, measured side by side in one run on this machine.

A fake OpenAI upstream on loopback answers a fixed completion (and a streamed one with usage).
The same route goes direct, through aicloud's router (key auth, RPM/TPM limits, usage events to
NATS, tracing to a file, all on) and through LiteLLM's proxy (``litellm[proxy]`` in its own
venv under bench/.venvs, made on first run; ``LITELLM_LOCAL_MODEL_COST_MAP=True``, a random
master key). Added latency is the proxy's percentile minus the direct one, sequentially;
throughput is requests/s completed by 8 and 32 concurrent clients.

Goals: added p50 <= 1.5 ms and p99 <= 5 ms; >= 10x LiteLLM's req/s at concurrency 8;
<= 150 MB RSS per router process under load.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aicloud.local import servers
from bench.common import percentile, start_servers, stop_servers

ROOT = Path(__file__).resolve().parents[1]
LITELLM_VENV = ROOT / "bench" / ".venvs" / "litellm"
SEQUENTIAL = int(os.environ.get("BENCH_SEQUENTIAL", "1500"))
STREAMS = int(os.environ.get("BENCH_STREAMS", "300"))
LOAD_S = float(os.environ.get("BENCH_LOAD_S", "5"))
BODY = {"model": "bench-gpt", "messages": [{"role": "user", "content": "Say something short."}],
        "max_tokens": 32}


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env={**os.environ, **env}, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited: {log.read_text()[-2000:]}")
        with suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not up after {timeout}s: {log.read_text()[-2000:]}")


def ensure_litellm() -> Path | None:
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return binary
    print("installing litellm[proxy] into bench/.venvs/litellm (first run only) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    done = subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"litellm could not be installed: {done.stderr[-500:]}")
        return None
    return binary


class Target:
    def __init__(self, name: str, url: str, key: str, proc: subprocess.Popen[bytes] | None) -> None:
        self.name, self.url, self.key, self.proc = name, url, key, proc
        self.rss_mb = 0.0

    def sample_rss(self) -> None:
        if self.proc is None:
            return
        with suppress(psutil.Error):
            root = psutil.Process(self.proc.pid)
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            self.rss_mb = max(self.rss_mb, rss / 2**20)


async def call(session: aiohttp.ClientSession, target: Target, *, stream: bool) -> float:
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}} if stream else BODY
    started = time.perf_counter()
    async with session.post(f"{target.url}/v1/chat/completions", json=body,
                            headers={"authorization": f"Bearer {target.key}"}) as response:
        payload = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{target.name}: {response.status} {payload[:300]!r}")
        if stream and b"[DONE]" not in payload:
            raise RuntimeError(f"{target.name}: stream did not finish")
    return (time.perf_counter() - started) * 1000


async def sequential(session: aiohttp.ClientSession, target: Target, n: int, *, stream: bool) -> list[float]:
    for _ in range(50):
        await call(session, target, stream=stream)
    return sorted([await call(session, target, stream=stream) for _ in range(n)])


async def load(session: aiohttp.ClientSession, target: Target, concurrency: int) -> float:
    done = 0
    until = time.perf_counter() + LOAD_S

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < until:
            await call(session, target, stream=False)
            done += 1

    async def sampler() -> None:
        while time.perf_counter() < until:
            target.sample_rss()
            await asyncio.sleep(0.2)

    started = time.perf_counter()
    await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def measure(targets: list[Target]) -> dict[str, dict[str, float]]:
    connector = aiohttp.TCPConnector(limit=0)
    results: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession(connector=connector) as session:
        for target in targets:
            print(f"measuring {target.name} ...", flush=True)
            plain = await sequential(session, target, SEQUENTIAL, stream=False)
            streamed = await sequential(session, target, STREAMS, stream=True)
            results[target.name] = {
                "p50": percentile(plain, 0.5), "p99": percentile(plain, 0.99),
                "stream_p50": percentile(streamed, 0.5),
                "rps_c8": await load(session, target, 8), "rps_c32": await load(session, target, 32),
                "rss_mb": target.rss_mb}
    return results


def start_router(root: Path, upstream: str, nats_url: str, database_url: str) -> Target:
    routes = root / "routes.yaml"
    routes.write_text(f"providers:\n  up: {{kind: openai, base_url: '{upstream}/v1', "
                      "api_key_env: BENCH_UPSTREAM_KEY}\nmodels:\n  bench-gpt:\n"
                      "    targets: [{provider: up, model: fake-gpt}]\n    pii: allow\n")
    port, admin = servers.free_port(), secrets.token_urlsafe(16)
    prefix = "AICLOUD_INFERENCE_ROUTER_"
    log = root / "router.log"
    proc = spawn([sys.executable, "-m", "services.inference_router"], {
        f"{prefix}NATS_URL": nats_url, f"{prefix}DATABASE_URL": database_url,
        f"{prefix}HTTP_PORT": str(port), f"{prefix}ADMIN_TOKEN": admin,
        f"{prefix}TRACE_FILE": str(root / "router-spans.jsonl"), f"{prefix}LOG_LEVEL": "warning",
        f"{prefix}USAGE_SPOOL": str(root / "spool.jsonl"), "AICLOUD_ROUTER_CONFIG": str(routes)},
        log)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/readyz", proc, log)
    import httpx

    created = httpx.post(f"{url}/admin/keys", headers={"authorization": f"Bearer {admin}"}, json={
        "team": "bench", "rpm": 10_000_000, "tpm": 10_000_000_000}).json()
    return Target("aicloud", url, created["key"], proc)


def start_litellm(root: Path, upstream: str) -> Target | None:
    binary = ensure_litellm()
    if binary is None:
        return None
    config = root / "litellm.yaml"
    config.write_text("model_list:\n  - model_name: bench-gpt\n    litellm_params:\n"
                      f"      model: openai/fake-gpt\n      api_base: {upstream}/v1\n"
                      "      api_key: os.environ/BENCH_UPSTREAM_KEY\n"
                      "litellm_settings:\n  telemetry: false\n  set_verbose: false\n")
    port, master = servers.free_port(), "sk-" + secrets.token_urlsafe(16)
    log = root / "litellm.log"
    proc = spawn([str(binary), "--config", str(config), "--port", str(port), "--host", "127.0.0.1"],
                 {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": master,
                  "LITELLM_LOG": "ERROR"}, log)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, log, timeout=180)
    return Target("litellm", f"http://127.0.0.1:{port}", master, proc)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(20)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-router-"))
    nats_url, database_url, infra = start_servers(root, "postgres")
    upstream_key = "sk-bench-" + secrets.token_urlsafe(8)
    os.environ["BENCH_UPSTREAM_KEY"] = upstream_key
    port = servers.free_port()
    log = root / "upstream.log"
    upstream_proc = spawn([sys.executable, "-m", "aicloud.local.fake_llm", "--port", str(port)],
                          {"AICLOUD_FAKE_LLM_API_KEY": upstream_key}, log)
    upstream = f"http://127.0.0.1:{port}"
    wait_http(f"{upstream}/healthz", upstream_proc, log)
    targets = [Target("direct", upstream, upstream_key, None)]
    procs: list[subprocess.Popen[bytes] | None] = [upstream_proc]
    try:
        router = start_router(root, upstream, nats_url, database_url)
        procs.append(router.proc)
        targets.append(router)
        litellm = start_litellm(root, upstream)
        if litellm is not None:
            procs.append(litellm.proc)
            targets.append(litellm)
        results = asyncio.run(measure(targets))
    finally:
        for proc in reversed(procs):
            stop(proc)
        stop_servers(infra)
    report(results)


def report(results: dict[str, dict[str, float]]) -> None:
    direct = results["direct"]
    figures: dict[str, dict[str, Any]] = {}
    print(f"\nrouter overhead on {os.cpu_count()} cores; {SEQUENTIAL} sequential calls, {STREAMS} streams, "
          f"{LOAD_S:g} s per load level (added = percentile minus direct's)")
    print(f"{'':10} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} {'stream +p50':>12}"
          f" {'req/s c8':>9} {'req/s c32':>10} {'RSS MB':>7}")
    for name in ("direct", "aicloud", "litellm"):
        r = results.get(name)
        if r is None:
            figures[name] = {"unavailable": True}
            print(f"{name:10} unavailable")
            continue
        added = name != "direct"
        row = {"p50_ms": round(r["p50"] - direct["p50"], 3) if added else round(r["p50"], 3),
               "p99_ms": round(r["p99"] - direct["p99"], 3) if added else round(r["p99"], 3),
               "stream_p50_ms": round(r["stream_p50"] - direct["stream_p50"], 3) if added
               else round(r["stream_p50"], 3),
               "rps_c8": round(r["rps_c8"], 1), "rps_c32": round(r["rps_c32"], 1)}
        if added:
            row["rss_mb"] = round(r["rss_mb"], 1)
        figures[name] = row
        print(f"{name:10} {r['p50']:8.2f} {r['p99']:8.2f} {row['p50_ms'] if added else '-':>10} "
              f"{row['p99_ms'] if added else '-':>10} {row['stream_p50_ms'] if added else '-':>12} "
              f"{r['rps_c8']:9.0f} {r['rps_c32']:10.0f} {row.get('rss_mb', '-'):>7}")
    if "litellm" in results and "aicloud" in results:
        ratio = results["aicloud"]["rps_c8"] / results["litellm"]["rps_c8"]
        print(f"aicloud serves {ratio:.1f}x LiteLLM's req/s at concurrency 8 (goal >= 10x)")
    print("(for direct, p50/p99/stream are absolute; the proxies' are added on top of direct)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
