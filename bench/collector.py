"""Observability collector ingestion: events/s into ``PlatformMetrics.on_events`` with all of it
on (GenAI histograms, label caps, GPU gauges, job-start latency, input drift, volume counters;
not the quality judge, which needs a router and takes ``inference.sampled``, not in the mix),
and the process's RSS after 1,000,000 events naming 10,000 distinct models.

Events are built before the clock starts and handed over in fetches of 1,000, as the bus does:
decoding is the bus's cost, so it has its own row, through the reader the collector's wildcard
consumers use (``json_reader(catalogue_decoder)``: ``json.loads``, then the subject's contract).
The mix: 92 % ``inference.completed`` (20 teams; 40 % of requests to ten popular models, the rest
over 9,990 fine-tunes, each owned by one team, half served by the platform's own endpoints; 3 %
errors, 60 % streamed), 4 % ``gpus.sampled`` (two devices), 2 % each ``jobs.requested`` and
``jobs.started``. 25,000 distinct events are replayed; every model is named in the first pass.

Peer, in the same run: prometheus_client alone, the same metric families, buckets, label values
and calls per event (their totals match the collector's; the caps' overflow counts and the
drift gauges are the collector's own), from plain tuples with every label and value worked out
beforehand: no pydantic, no caps, no dispatch.

Every measurement is a fresh process (this script with ``--child``). Events/s: BENCH_RUNS
(default 3) runs per path, interleaved, of BENCH_RATE_EVENTS (default 50,000) events timed after
one untimed pass over the distinct events, so every series exists (the collector's steady state);
medians. RSS: one process per side from an empty registry through BENCH_EVENTS (default
1,000,000) events, read at 200,000 and at the end; the two run side by side (RSS does not depend
on sharing the cores; their rates are not reported). aicloud's process also imports the collector
service's modules, as the running service would, and holds its 25,000 pre-built events.

Goal: >= 20,000 events/s on one process; <= 200 MB RSS after 1,000,000 events.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EVENTS = int(os.environ.get("BENCH_EVENTS", "1000000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
RATE_EVENTS = int(os.environ.get("BENCH_RATE_EVENTS", "50000"))
FETCH = 1000  # the collector's fetch
POOL = 25_000
CHECKPOINT = min(200_000, EVENTS // 5 // FETCH * FETCH or FETCH)
MODELS = 10_000
TEAMS = [f"team-{i:02d}" for i in range(20)]
POPULAR = {"gpt-4o": "openai/gpt-4o", "gpt-4o-mini": "openai/gpt-4o-mini", "o3": "openai/o3",
           "claude-sonnet-4": "anthropic/claude-sonnet-4", "claude-haiku": "anthropic/claude-3-5-haiku",
           "gemini-2.5-pro": "google/gemini-2.5-pro", "llama-3-70b": "platform/llama-3-70b",
           "llama-3-8b": "platform/llama-3-8b", "mistral-7b": "platform/mistral-7b",
           "qwen-2.5-32b": "platform/qwen-2-5-32b"}
SUBJECTS = {"inference": "aicloud.inference.completed.v1", "requested": "aicloud.jobs.requested.v1",
            "started": "aicloud.jobs.started.v1", "gpu": "aicloud.gpus.sampled.v1"}
START = datetime(2026, 11, 2, tzinfo=UTC)
# as services/observability_collector/genai.py and handlers.py (the aicloud child checks)
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))
DURATION_BUCKETS = tuple(round(0.01 * 2**i, 2) for i in range(14))
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                     0.4, 0.5, 0.75, 1.0, 2.5)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
JOB_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
DCGM = ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
SIDES = ("aicloud", "decode", "peer")
RATE_ROWS = (("aicloud on_events (events pre-built)", "aicloud"),
             ("aicloud on_events + the bus's decode", "decode"),
             ("prometheus_client alone (no pydantic, no caps)", "peer"))
RSS_ROWS = (("aicloud (pre-built events)", "aicloud"), ("prometheus_client alone", "peer"))
Handle = Callable[[list[Any]], Awaitable[Any]]


def inference(rng: random.Random, i: int, tail: int | None) -> dict[str, Any]:
    """One router request; ``tail`` picks a fine-tune (owned by one team), None a popular model."""
    if tail is None:
        model = rng.choice(list(POPULAR))
        target, team = POPULAR[model], rng.choice(TEAMS)
    else:
        model = f"ft-{tail % (MODELS - len(POPULAR)):04d}"
        target, team = f"{'platform' if tail % 2 else 'openai'}/{model}", TEAMS[tail % len(TEAMS)]
    ok = rng.random() >= 0.03
    embeddings = rng.random() < 0.05
    tokens_in, tokens_out = rng.randint(20, 4000), rng.randint(1, 1000) if ok and not embeddings else 0
    latency = round(rng.uniform(80, 6000), 1)
    stream = ok and not embeddings and rng.random() < 0.6
    return {"tenant": team, "request_id": f"req-{i}", "key_id": f"key-{team}", "model": model,
            "target": target, "tokens_in": tokens_in, "tokens_out": tokens_out, "latency_ms": latency,
            "ttft_ms": round(latency * rng.uniform(0.05, 0.3), 1) if stream else None,
            "status": "ok" if ok else "error", "stream": stream,
            "operation": "embeddings" if embeddings else "chat",
            "cost_usd": Decimal(f"{(tokens_in * 2.5 + tokens_out * 10) / 1e6:.6f}") if ok else None}


def gpu_sample(rng: random.Random, job: str, team: str) -> dict[str, Any]:
    devices = [{"index": d, "uuid": f"GPU-{job}-{d}", "name": "NVIDIA H100 80GB HBM3",
                "memory_used_bytes": rng.randint(1, 70) << 30, "memory_total_bytes": 80 << 30,
                "utilisation_pct": rng.uniform(0, 100), "power_w": rng.uniform(80, 700),
                "energy_mj": rng.randint(0, 10**12), "process_memory_bytes": rng.randint(1, 60) << 30}
               for d in range(2)]
    return {"tenant": team, "workload": "job", "workload_id": job, "devices": devices}


def pool() -> Iterator[tuple[str, dict[str, Any]]]:
    """The same events for both sides, as (kind, contract fields): in each 50, a job is
    requested and started 25 events later, sampled twice, and the rest are requests."""
    rng = random.Random(42)
    tail = 0
    for i in range(POOL):
        slot, job, team = i % 50, f"job-{i // 50 % 500}", TEAMS[i // 50 % len(TEAMS)]
        requested = START + timedelta(seconds=i)
        if slot == 0:
            yield "requested", {"tenant": team, "job_id": job, "command": ["python", "train.py"],
                                "gpus": 2, "occurred_at": requested}
        elif slot == 25:
            yield "started", {"tenant": team, "job_id": job, "backend": "local",
                              "occurred_at": requested + timedelta(seconds=rng.uniform(1, 40))}
        elif slot in (10, 35):
            yield "gpu", gpu_sample(rng, job, team)
        elif rng.random() < 0.4:
            yield "inference", inference(rng, i, None)
        else:
            yield "inference", inference(rng, i, tail)
            tail += 1


def peer_row(kind: str, f: dict[str, Any], requested: dict[str, datetime]) -> tuple[Any, ...]:
    """Everything the peer needs, worked out: labels as strings, values as floats."""
    if kind == "inference":
        provider, _, response = f["target"].partition("/")
        ok, ttft = f["status"] == "ok", f["ttft_ms"]
        per_token = (max(f["latency_ms"] - ttft, 0) / 1000 / (f["tokens_out"] - 1)
                     if ttft is not None and f["tokens_out"] > 1 and ok else None)
        return (kind, f["tenant"], f["model"], f["operation"], provider, response,
                "" if ok else f["status"], f["tokens_in"], f["tokens_out"], f["latency_ms"] / 1000,
                None if ttft is None else ttft / 1000, float(f["cost_usd"] or 0), provider == "platform",
                per_token)
    if kind == "gpu":
        devices = [((f["workload_id"], "", f["tenant"], str(d["index"]), d["uuid"], d["name"]),
                    (d["memory_used_bytes"] >> 20, (d["memory_total_bytes"] - d["memory_used_bytes"]) >> 20,
                     d["utilisation_pct"], d["power_w"], d["energy_mj"]), d["process_memory_bytes"])
                   for d in f["devices"]]
        return (kind, f["tenant"], devices)
    if kind == "requested":
        requested[f["job_id"]] = f["occurred_at"]
        return (kind, f["tenant"])
    return (kind, f["tenant"], (f["occurred_at"] - requested[f["job_id"]]).total_seconds())


def observations(row: tuple[Any, ...]) -> int:
    """Prometheus calls per event: the collector's, as the peer makes them."""
    if row[0] == "inference":
        platform_calls = (1 + (row[10] is not None) + (row[13] is not None)) if row[12] else 0
        return 1 + 2 * bool(row[7] or row[8]) + bool(row[11]) + platform_calls + 2 + 1 + 1
    if row[0] == "gpu":
        return 1 + len(row[2]) * 6
    return 2 if row[0] == "started" else 1


class Peer:
    """prometheus_client alone: the collector's families, labels and calls, nothing else."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        counter, gauge = partial(Counter, registry=self.registry), partial(Gauge, registry=self.registry)
        histogram = partial(Histogram, registry=self.registry)
        client = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                  "gen_ai_response_model", "team"]
        server = ["gen_ai_operation_name", "gen_ai_request_model", "gen_ai_response_model", "team"]
        self.g_tokens = histogram("gen_ai_client_token_usage", "", ["gen_ai_token_type", *client],
                                  buckets=TOKEN_BUCKETS)
        self.g_duration = histogram("gen_ai_client_operation_duration_seconds", "", [*client, "error_type"],
                                    buckets=DURATION_BUCKETS)
        self.g_server = histogram("gen_ai_server_request_duration_seconds", "", [*server, "error_type"],
                                  buckets=DURATION_BUCKETS)
        self.g_ttft = histogram("gen_ai_server_time_to_first_token_seconds", "", server,
                                buckets=DURATION_BUCKETS)
        self.g_per_token = histogram("gen_ai_server_time_per_output_token_seconds", "", server,
                                     buckets=PER_TOKEN_BUCKETS)
        self.g_cost = counter("aicloud_gen_ai_cost_usd_total", "", ["team", "gen_ai_request_model"])
        self.tokens = counter("aicloud_inference_tokens_total", "", ["tenant", "model", "direction"])
        self.latency = histogram("aicloud_inference_latency_seconds", "", ["model"], buckets=LATENCY_BUCKETS)
        self.events = counter("aicloud_platform_events_total", "", ["subject", "tenant"])
        self.job_start = histogram("aicloud_job_start_seconds", "", ["queued", "backend"],
                                   buckets=JOB_BUCKETS)
        gpu = ("job", "endpoint", "team", "gpu", "UUID", "modelName")
        self.gauges = [gauge(name, "", gpu) for name in DCGM]
        self.process = gauge("aicloud_workload_gpu_memory_used_bytes", "", gpu)

    async def on_events(self, rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            kind = row[0]
            if kind == "inference":
                self.inference(*row[1:])
            elif kind == "gpu":
                for labels, values, process in row[2]:
                    for gauge, value in zip(self.gauges, values, strict=True):
                        gauge.labels(*labels).set(value)
                    self.process.labels(*labels).set(process)
            elif kind == "started":
                self.job_start.labels("false", "local").observe(row[2])
            self.events.labels(SUBJECTS[kind], row[1]).inc()

    def inference(self, team: str, model: str, op: str, provider: str, response: str, error: str,
                  tokens_in: int, tokens_out: int, latency: float, ttft: float | None, cost: float,
                  on_platform: bool, per_token: float | None) -> None:
        self.g_duration.labels(op, provider, model, response, team, error).observe(latency)
        if tokens_in or tokens_out:
            self.g_tokens.labels("input", op, provider, model, response, team).observe(tokens_in)
            self.g_tokens.labels("output", op, provider, model, response, team).observe(tokens_out)
        if cost:
            self.g_cost.labels(team, model).inc(cost)
        if on_platform:
            self.g_server.labels(op, model, response, team, error).observe(latency)
            if ttft is not None:
                self.g_ttft.labels(op, model, response, team).observe(ttft)
            if per_token is not None:
                self.g_per_token.labels(op, model, response, team).observe(per_token)
        self.tokens.labels(team, model, "in").inc(tokens_in)
        self.tokens.labels(team, model, "out").inc(tokens_out)
        self.latency.labels(model).observe(latency)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kb / 1024


def series(registry: Any) -> int:
    """Label sets held (children of labelled metrics). Private attributes: collecting the
    exposition instead takes seconds per 100,000 series."""
    return sum(len(getattr(metric, "_metrics", ())) for metric in registry._collector_to_names)


async def feed(handle: Handle, fetches: list[list[Any]], total: int) -> dict[str, float]:
    """``total`` events, replaying ``fetches``; RSS before, at CHECKPOINT and after."""
    result = {"rss_start_mb": rss_mb()}
    done, spent, cpu = 0, 0.0, 0.0
    while done < total:
        batch = fetches[done // FETCH % len(fetches)][:total - done]
        started, cpu_started = time.perf_counter(), time.process_time()
        await handle(batch)
        spent += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        done += len(batch)
        if done == CHECKPOINT:
            result["rss_checkpoint_mb"] = rss_mb()
    result["rss_end_mb"] = rss_mb()
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**result, "events": done, "seconds": spent, "events_per_s": done / spent,
            "cpu_events_per_s": done / cpu}


def measure(handle: Handle, items: list[Any], mode: str, timed: Callable[[], None] = lambda: None,
            ) -> dict[str, float]:
    """``rss``: EVENTS events from a fresh registry. ``rate``: RATE_EVENTS events, timed after
    one pass over every distinct event, so the rate is the steady one (every series made)."""
    fetches = [items[i:i + FETCH] for i in range(0, len(items), FETCH)]

    async def go() -> dict[str, float]:
        if mode == "rate":
            for batch in fetches:
                await handle(batch)
            timed()
        return await feed(handle, fetches, EVENTS if mode == "rss" else RATE_EVENTS)

    return asyncio.run(go())


def aicloud(side: str, mode: str) -> dict[str, float]:
    from prometheus_client import CollectorRegistry

    import services.observability_collector.app  # noqa: F401  (the running service's code, in its RSS)
    from contracts import BY_SUBJECT
    from services.kit.decode import catalogue_decoder, json_reader
    from services.observability_collector import genai
    from services.observability_collector.handlers import PlatformMetrics

    assert (genai.TOKEN_BUCKETS, genai.DURATION_BUCKETS, genai.PER_TOKEN_BUCKETS) == (
        TOKEN_BUCKETS, DURATION_BUCKETS, PER_TOKEN_BUCKETS), "the peer's buckets drifted"
    imports = rss_mb()
    events = (BY_SUBJECT[SUBJECTS[kind]](**fields) for kind, fields in pool())
    registry = CollectorRegistry()
    metrics = PlatformMetrics(registry)
    if side == "aicloud":
        result = measure(metrics.on_events, list(events), mode)
        return {**result, "rss_imports_mb": imports, "series": series(registry)}
    wire = [(event.SUBJECT, event.model_dump_json().encode()) for event in events]  # one at a time
    read, decoding = json_reader(catalogue_decoder), [0.0]

    async def decode_then_handle(batch: list[tuple[str, bytes]]) -> None:
        started = time.perf_counter()
        decoded = [read(subject, data) for subject, data in batch]
        decoding[0] += time.perf_counter() - started
        await metrics.on_events(decoded)

    result = measure(decode_then_handle, wire, mode, timed=lambda: decoding.__setitem__(0, 0.0))
    return {**result, "rss_imports_mb": imports, "decode_per_s": result["events"] / decoding[0],
            "series": series(registry)}


def peer(mode: str) -> dict[str, float]:
    import prometheus_client  # noqa: F401

    imports = rss_mb()
    requested: dict[str, datetime] = {}
    rows = [peer_row(kind, fields, requested) for kind, fields in pool()]
    metrics = Peer()
    result = measure(metrics.on_events, rows, mode)
    return {**result, "rss_imports_mb": imports, "series": series(metrics.registry),
            "observations_per_event": sum(map(observations, rows)) / len(rows)}


def start(side: str, mode: str) -> subprocess.Popen[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", side, mode]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{proc.args!r} failed: {err[-2000:]}")
    return json.loads(out.splitlines()[-1])


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def report(rates: dict[str, dict[str, float]], runs: dict[str, list[dict[str, float]]],
           rss: dict[str, dict[str, float]]) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    print(f"\nobservability collector on {os.cpu_count()} cores ({cpu}), fetches of {FETCH:,}, "
          f"{MODELS:,} distinct models, {rates['peer']['observations_per_event']:.2f} prometheus "
          "calls per event on both sides")
    print(f"\nevents/s: median of {RUNS} fresh processes, {RATE_EVENTS:,} events each, timed after one "
          f"pass over the {POOL:,} distinct events (every series made)")
    print(f"{'path':50} {'events/s':>9} {'per CPU s':>10} {'runs':>24}")
    for label, side in RATE_ROWS:
        each = " ".join(f"{r['events_per_s'] / 1000:.1f}k" for r in runs[side])
        print(f"{label:50} {rates[side]['events_per_s']:>9,.0f} {rates[side]['cpu_events_per_s']:>10,.0f} "
              f"{each:>24}")
    print(f"{'bus decode alone (json.loads + the contract)':50} {rates['decode']['decode_per_s']:>9,.0f}")
    print(f"\nRSS: one fresh process per side, {EVENTS:,} events from an empty registry (the two run "
          "side by side, so their rates are no throughput figure)")
    print(f"{'side':34} {'imports':>8} {'+inputs':>8} {f'@{CHECKPOINT // 1000:,}k':>8} "
          f"{f'@{EVENTS // 1000:,}k':>8} {'growth':>7} {'peak':>6} {'series':>8}")
    for label, side in RSS_ROWS:
        r = rss[side]
        print(f"{label:34} {r['rss_imports_mb']:>6.1f}MB {r['rss_start_mb']:>6.1f}MB "
              f"{r['rss_checkpoint_mb']:>6.1f}MB {r['rss_end_mb']:>6.1f}MB "
              f"{r['rss_end_mb'] - r['rss_checkpoint_mb']:>+5.1f}MB {r['peak_mb']:>4.0f}MB "
              f"{r['series']:>8,.0f}")
    print(f"imports: the process before its inputs (aicloud's: the collector service's modules); +inputs: "
          f"with its {POOL:,} distinct events built (aicloud: pydantic); growth: from "
          f"{CHECKPOINT:,} events to the end")
    goals = summary(rates, rss)
    print(f"goal >= 20,000 events/s on one process: {verdict(goals['goal_events_per_s_met'])} "
          f"({rates['decode']['events_per_s']:,.0f}/s with the bus's decode); goal <= 200 MB after "
          f"{EVENTS:,} events: {verdict(goals['goal_rss_met'])}")


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def summary(rates: dict[str, dict[str, float]], rss: dict[str, dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"events": EVENTS, "rate_events": RATE_EVENTS, "runs": RUNS, "fetch": FETCH,
                           "distinct_models": MODELS, "rss_checkpoint_events": CHECKPOINT,
                           "observations_per_event": round(rates["peer"]["observations_per_event"], 2),
                           "decode_alone_events_per_s": round(rates["decode"]["decode_per_s"])}
    for name, side in (("aicloud", "aicloud"), ("aicloud_with_decode", "decode"), ("peer", "peer")):
        out[f"{name}_events_per_s"] = round(rates[side]["events_per_s"])
        out[f"{name}_cpu_events_per_s"] = round(rates[side]["cpu_events_per_s"])
    for side, r in rss.items():
        out |= {f"{side}_rss_mb": round(r["rss_end_mb"], 1),
                f"{side}_rss_inputs_mb": round(r["rss_start_mb"] - r["rss_imports_mb"], 1),
                f"{side}_rss_growth_mb": round(r["rss_end_mb"] - r["rss_checkpoint_mb"], 1),
                f"{side}_series": r["series"]}
    return {**out, "goal_events_per_s_met": rates["aicloud"]["events_per_s"] >= 20_000,
            "goal_rss_met": rss["aicloud"]["rss_end_mb"] <= 200}


def main() -> None:
    print(f"RSS runs: aicloud and the peer, {EVENTS:,} events each ...", flush=True)
    procs = {side: start(side, "rss") for side in ("aicloud", "peer")}
    rss = {side: result(proc) for side, proc in procs.items()}
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    for n in range(RUNS):
        for side in SIDES:  # interleaved, so a noisy moment does not fall on one side only
            runs[side].append(result(start(side, "rate")))
            print(f"run {n + 1}/{RUNS} {side:8} {runs[side][-1]['events_per_s']:>9,.0f} events/s", flush=True)
    rates = {side: medians(each) for side, each in runs.items()}
    report(rates, runs, rss)
    print(json.dumps(summary(rates, rss)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, str(ROOT))
        side, mode = sys.argv[2], sys.argv[3]
        print(json.dumps(peer(mode) if side == "peer" else aicloud(side, mode)))
    else:
        main()
