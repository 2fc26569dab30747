"""Jobs on the engines, side by side in one run (issue 17):

1. ``create job`` -> the job's process running: the local backend (gVisor) vs the Ray backend,
   each on its own local stack (``dev up`` / ``dev up --engine ray``), p50 and p90.
2. K one-second jobs submitted at once: completed per minute through aicloud (on its Ray
   cluster) vs the same K submitted straight to that cluster's Jobs API (the peer), measured
   before and after aicloud's burst, as every finished job makes the cluster's next ones dearer
   (its job list and the log files Ray's log monitor watches grow): the peer's figure is the
   mean of the two. Goal: aicloud >= 90 % of Ray alone; every reservation released at the end
   (reserved == 0).
3. Node loss: a worker node joins (a spare a100 node), a 2-GPU job runs on one of the two a100
   nodes, that node's processes are SIGKILLed; seconds from the kill to the job's process
   running again on the other node (its first output line there). Goal p50 <= 10 s.

BENCH_RUNS (default 20) jobs for 1, BENCH_JOBS (default 200) for 2, BENCH_LOSSES (default 3)
for 3. Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
from ray.job_submission import JobSubmissionClient

from aicloud.client import PlatformClient
from aicloud.local.components import database_url
from aicloud.local.ray_cluster import NodeSpec, RayCluster, crash, node_session
from aicloud.local.stack import Stack as LocalStack
from bench.common import seconds_summary as summary

RUNS = int(os.environ.get("BENCH_RUNS", "20"))
JOBS = int(os.environ.get("BENCH_JOBS", "200"))
LOSSES = int(os.environ.get("BENCH_LOSSES", "3"))
RUNS_FOREVER = ["python3", "-c", "import time\nprint('start', repr(time.time()), flush=True)\n"
                "while True:\n    time.sleep(1)"]
STAMP = ["python3", "-c", "import time; print(repr(time.time()), flush=True)"]
ONE_SECOND = ["python3", "-c", "import time; time.sleep(1)"]
TERMINAL = {"completed", "failed", "terminated", "rejected"}


class Stack:
    def __init__(self, home: Path, engine: str) -> None:
        self.home, self.engine = home, engine
        self.env = {**os.environ, "AICLOUD_HOME": str(home), "AICLOUD_TEAM": "legal"}

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aicloud", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def __enter__(self) -> Stack:
        up = self.cli("dev", "up", "--detach", "--free-ports", "--engine", self.engine)
        if up.returncode != 0:
            raise SystemExit(f"dev up --engine {self.engine} failed:\n{up.stdout}\n{up.stderr}")
        self.status = {row["name"]: row for row in json.loads(self.cli("dev", "status", "--json").stdout)}
        os.environ["AICLOUD_HOME"] = str(self.home)  # PlatformClient finds the API and keys there
        self.api = PlatformClient(team="legal")
        return self

    def __exit__(self, *_: object) -> None:
        self.cli("dev", "down")

    def submit(self, job_id: str, command: list[str], **fields: Any) -> None:
        self.api.request("POST", "/v1/jobs", json={"name": job_id, "command": command, **fields})

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.api.request("GET", f"/v1/jobs/{job_id}"))

    def log(self, job_id: str) -> Path:
        return self.home / "jobs" / "legal" / job_id / "job.log"

    async def reserved(self) -> tuple[int, int]:
        """Allocations quota still holds: (count, GPUs)."""
        files = LocalStack(self.home).files  # the stack's database wants its password
        conn = await asyncpg.connect(database_url(files, files.saved_ports()["postgres"]))
        try:
            row = await conn.fetchrow("SELECT count(*) AS n, coalesce(sum(gpus), 0) AS gpus "
                                      "FROM quota.allocations WHERE released_at IS NULL")
            return int(row["n"]), int(row["gpus"])
        finally:
            await conn.close()


def first_stamp(log: Path, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and (text := log.read_text().strip()):
            for line in text.splitlines():
                try:
                    return float(line)
                except ValueError:
                    continue
        time.sleep(0.01)
    raise SystemExit(f"no output in {log} after {timeout}s")


def start_latency(stack: Stack, prefix: str) -> list[float]:
    timings = []
    for i in range(RUNS):
        job_id = f"{prefix}-{i}"
        submitted = time.time()
        stack.submit(job_id, STAMP)
        timings.append(first_stamp(stack.log(job_id)) - submitted)
    return timings


def wait_all(stack: Stack, ids: list[str], timeout: float = 1800) -> dict[str, str]:
    deadline, states = time.monotonic() + timeout, {}
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        rows = stack.api.request("GET", "/v1/jobs", params={"limit": 500})
        for row in rows:
            if row["job_id"] in pending and row["status"] in TERMINAL:
                states[row["job_id"]] = row["status"]
                pending.discard(row["job_id"])
        time.sleep(0.5)
    return states


def throughput_aicloud(stack: Stack) -> tuple[float, dict[str, int]]:
    ids = [f"burst-{i}" for i in range(JOBS)]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda job_id: stack.submit(job_id, ONE_SECOND), ids))
    states = wait_all(stack, ids)
    took = time.monotonic() - started
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return len(states) / took * 60, counts


def throughput_ray(dashboard: str, prefix: str) -> tuple[float, dict[str, int]]:
    client = JobSubmissionClient(dashboard)
    ids: list[str] = []
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: client.submit_job(
            entrypoint="python3 -c 'import time; time.sleep(1)'", submission_id=f"{prefix}-{i}",
            entrypoint_num_cpus=0), range(JOBS)))
    states: dict[str, str] = {}
    while len(states) < len(ids) and time.monotonic() - started < 1800:
        for job in client.list_jobs():
            status = job.status.value
            if job.submission_id in ids and status in {"SUCCEEDED", "FAILED", "STOPPED"}:
                states[job.submission_id] = status
        time.sleep(0.5)
    took = time.monotonic() - started
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return len(states) / took * 60, counts


def starts(log: Path) -> list[float]:
    """When each run of the job started, from its ``start <time>`` lines."""
    found = []
    for line in (log.read_text(errors="replace") if log.exists() else "").splitlines():
        word, _, stamp = line.partition(" ")
        if word == "start":
            found.append(float(stamp))
    return found


def node_loss(stack: Stack) -> list[float]:
    """Seconds from SIGKILLing the node a job runs on to its process running on another."""
    gcs, dashboard = str(stack.status["ray"]["address"]), str(stack.status["ray"]["url"])
    spares = RayCluster(root=stack.home / "spares", nodes=(), gcs_port=int(gcs.rsplit(":", 1)[1]),
                        dashboard_port=int(dashboard.rsplit(":", 1)[1]))
    spare_ids: dict[str, str] = {}
    timings = []
    try:
        for i in range(LOSSES):
            name = f"a100-spare-{i}"  # a machine joins, so there is somewhere to go
            spare_ids[spares.add_node(NodeSpec(name, gpus=4, gpu_type="a100-80gb"))] = name
            time.sleep(3)  # quota hears of it (the provisioner reports every 2 s)
            job_id = f"lost-{i}"
            stack.submit(job_id, RUNS_FOREVER, gpus=2, gpu_type="a100-80gb", product="fine-tune")
            log = stack.log(job_id)
            deadline = time.monotonic() + 120
            while not starts(log) or stack.job(job_id)["status"] != "running":
                if time.monotonic() > deadline:
                    raise SystemExit(f"{job_id} did not start within 120 s")
                time.sleep(0.1)
            node = ((stack.job(job_id).get("result") or {}).get("placement") or {}).get("node_id")
            killed = time.time()
            if node in spare_ids:
                spares.kill_node(spare_ids.pop(node))
            else:
                crash(node_session(gcs, "a100-80gb", besides=spares))
            deadline = time.monotonic() + 120
            while True:  # the run on the other node starts
                later = [t for t in starts(log) if t > killed]
                if later:
                    timings.append(later[0] - killed)
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{job_id} did not run again within 120 s:\n{log.read_text()[-2000:]}")
                time.sleep(0.05)
            stack.api.request("POST", f"/v1/jobs/{job_id}/cancel")
            wait_all(stack, [job_id], timeout=120)
    finally:
        spares.stop()
    return timings


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    results: dict[str, Any] = {}
    with Stack(root / "local", "local") as local:
        results["create job -> running: local (gvisor)"] = summary(start_latency(local, "local"))
    with Stack(root / "ray", "ray") as ray:
        results["create job -> running: ray"] = summary(start_latency(ray, "ray"))
        # the peer before and after: each burst runs on a cluster with more jobs in its
        # history than the one before (every list_jobs answer carries them all, and Ray's log
        # monitor watches every worker's log files), so aicloud, in the middle, meets the mean
        ray_rate_before, ray_states = throughput_ray(str(ray.status["ray"]["url"]), "peer")
        print(f"{JOBS} one-second jobs straight to Ray: {ray_rate_before:.1f}/min {ray_states}", flush=True)
        aicloud_rate, aicloud_states = throughput_aicloud(ray)
        print(f"{JOBS} one-second jobs through aicloud: {aicloud_rate:.1f}/min {aicloud_states}", flush=True)
        reserved = asyncio.run(ray.reserved())
        ray_rate_after, ray_states_after = throughput_ray(str(ray.status["ray"]["url"]), "peer-after")
        print(f"{JOBS} one-second jobs straight to Ray again: {ray_rate_after:.1f}/min {ray_states_after}",
              flush=True)
        ray_rate = (ray_rate_before + ray_rate_after) / 2
        loss_error = None
        try:
            losses = node_loss(ray) if LOSSES else []
        except SystemExit as exc:  # the figures above still count; say what broke
            print(f"node loss not measured: {exc}", flush=True)
            loss_error = str(exc)[:500]
            losses = []
    ratio = aicloud_rate / ray_rate if ray_rate else 0.0
    print(f"engines — {platform.node()}, {os.cpu_count()} cores; {RUNS} starts, {JOBS} one-second jobs")
    print(f"{'create job -> running':40} {'p50 s':>7} {'p90 s':>7} {'max s':>7}")
    for name, row in results.items():
        print(f"{name:40} {row['p50_s']:>7} {row['p90_s']:>7} {row['max_s']:>7}")
    print(f"{JOBS} one-second jobs: aicloud {aicloud_rate:.1f}/min {aicloud_states}, Ray alone "
          f"{ray_rate:.1f}/min (before {ray_rate_before:.1f}, after {ray_rate_after:.1f}) {ray_states}, "
          f"ratio {ratio:.2f} (goal >= 0.90)")
    print(f"reservations left after the burst: {reserved[0]} ({reserved[1]} GPUs)")
    loss = summary(losses) if losses else None
    if loss:
        print(f"node lost -> job running on another node ({len(losses)}x): p50 {loss['p50_s']} s, "
              f"max {loss['max_s']} s (goal p50 <= 10 s)")
    print(json.dumps({
        "benchmark": "engine", "results": results,
        "burst": {"jobs": JOBS, "aicloud_per_min": round(aicloud_rate, 1), "ray_per_min": round(ray_rate, 1),
                  "ray_per_min_before": round(ray_rate_before, 1),
                  "ray_per_min_after": round(ray_rate_after, 1), "ray_states_after": ray_states_after,
                  "ratio": round(ratio, 3), "aicloud_states": aicloud_states, "ray_states": ray_states,
                  "reserved_after": reserved[0]},
        "node_loss": loss, "node_loss_error": loss_error,
        "goal_met": {"throughput_ratio": ratio >= 0.9, "reserved_zero": reserved[0] == 0,
                     "node_loss_p50_10s": loss is not None and loss["p50_s"] <= 10},
    }))


if __name__ == "__main__":
    main()
