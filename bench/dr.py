"""Disaster recovery of the local stack: RTO and RPO of ``aicloud admin backup`` / ``restore``.

Each run (BENCH_RUNS, default 3) starts a stack of its own and a workload on it: jobs through
the platform API and requests through the router, each tagged and timed when accepted (202 /
200). ``aicloud admin backup`` runs while the workload does; when the backup returns, the
workload stops and the stack is lost (``dev down``, the home deleted), and ``aicloud admin
restore`` brings it back into a new home.

- RTO: restore start to all components ready (the command returns once each one is ready).
- RPO: the events accepted after the backup started that the restored platform lacks (a job
  the platform API does not know; a request neither on the restored bus nor in the ledger),
  and the time they span: from the newest accepted event with nothing lost up to it (the
  restore's recovery point) to the end of the backup. A backup taken every N minutes loses
  at most N minutes plus this.

Prints a row per run and the medians; the last line is one JSON object. Run with ``python -u``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aicloud.local.components import database_url
from aicloud.local.stack import Stack
from tests.e2e.test_local_stack import aicloud, processes_under

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
WARM_S = 6.0  # workload before the backup starts
TEAMS = ("legal", "research")
TERMINAL = {"completed", "failed", "terminated", "rejected"}
IN_FLIGHT = {"provisioning", "running"}  # Temporal retries their activities once they time out
GOAL_RTO_S = 60.0


def status(home: Path) -> list[dict[str, Any]]:
    return list(json.loads(aicloud(home, "dev", "status", "--json").stdout))


def urls(home: Path) -> dict[str, str]:
    return {str(row["name"]): str(row["url"]) for row in status(home)}


class Traffic:
    """Jobs (every 0.5 s) and router requests (every 0.1 s), each accepted one kept with the
    wall-clock time of its answer: ``jobs`` (job id -> t) and ``requests`` (user tag -> t)."""

    def __init__(self, home: Path, run: int) -> None:
        found = urls(home)
        self.api, self.router = found["catalog"] + "/v1", found["inference-router"] + "/v1"
        self.keys = json.loads((home / "keys.json").read_text())
        self.router_keys = json.loads((home / "router-keys.json").read_text())
        self.tag = f"dr{run}"
        self.jobs: dict[str, float] = {}
        self.requests: dict[str, float] = {}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._jobs, daemon=True),
                        threading.Thread(target=self._requests, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _jobs(self) -> None:
        n = 0
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                team, name = TEAMS[n % 2], f"{self.tag}-job-{n}"
                answer = client.post(f"{self.api}/jobs", json={"name": name, "command": ["true"]},
                                     headers={"authorization": f"Bearer {self.keys[team]}"})
                if answer.status_code == 202:
                    self.jobs[name] = time.time()
                n += 1
                self.stop.wait(0.5)

    def _requests(self) -> None:
        n = 0
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                team, user = TEAMS[n % 2], f"{self.tag}-req-{n}"
                answer = client.post(f"{self.router}/chat/completions", json={
                    "model": "gpt-4o-mini", "user": user, "messages": [{"role": "user", "content": f"q{n}"}]},
                    headers={"authorization": f"Bearer {self.router_keys[team]}"})
                if answer.status_code == 200:
                    self.requests[user] = time.time()
                n += 1
                self.stop.wait(0.1)

    def halt(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def restored_jobs(home: Path) -> dict[str, str]:
    """Every job the restored platform knows, with its status."""
    api, keys = urls(home)["catalog"] + "/v1", json.loads((home / "keys.json").read_text())
    found: dict[str, str] = {}
    for team in TEAMS:
        answer = httpx.get(f"{api}/jobs", params={"limit": 500}, timeout=30,
                           headers={"authorization": f"Bearer {keys[team]}"})
        found |= {job["job_id"]: job["status"] for job in answer.json()}
    return found


def finished_jobs(home: Path, *, within_s: float = 90) -> dict[str, str]:
    """The jobs once every one has ended (or ``within_s`` has passed): a job accepted before the
    backup must run to its end on the restored platform, not stay where the backup found it. One
    whose activity was in flight at the backup ends after that activity's timeout (teardown's is
    5 min): Temporal retries it then, as after a worker crash."""
    deadline = time.monotonic() + within_s
    while True:
        found = restored_jobs(home)
        if all(status in TERMINAL for status in found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(2)


async def bus_users(home: Path) -> set[str]:
    """The ``user`` of every inference event on the restored bus."""
    stack = Stack(home)
    nc = await nats.connect(urls(home)["nats"], **stack.nats_login())
    users: set[str] = set()
    try:
        sub = await nc.jetstream().subscribe("aicloud.inference.completed.v1", stream="AICLOUD_INFERENCE",
                                             ordered_consumer=True)
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                return users
            users.add(json.loads(msg.data).get("user") or "")
    finally:
        await nc.close()


async def billed_users(home: Path) -> set[str]:
    files = Stack(home).files
    db = await asyncpg.connect(database_url(files, files.saved_ports()["postgres"]))
    try:
        rows = await db.fetch("SELECT DISTINCT user_id FROM cost_ledger.ledger_entries"
                              " WHERE kind = 'inference'")
        return {row["user_id"] for row in rows}
    finally:
        await db.close()


def settled_billed(home: Path) -> set[str]:
    """The ledger once it has taken in what the restored bus still delivers (two reads agree)."""
    last = asyncio.run(billed_users(home))
    for _ in range(15):
        time.sleep(2)
        now = asyncio.run(billed_users(home))
        if now == last:
            return now
        last = now
    return last


def recovery_point(accepted: dict[str, float], kept: set[str], end: float) -> float:
    """Seconds from the restore's recovery point (the newest accepted event with nothing lost up
    to it) to ``end``."""
    ordered = sorted((at, name) for name, at in accepted.items() if at <= end)
    point = ordered[0][0] if ordered else end
    for at, name in ordered:
        if name not in kept:
            break
        point = at
    return end - point


def checked(done: Any, what: str) -> Any:
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout) if done.stdout.lstrip().startswith("{") else None


def one_run(run: int, root: Path) -> dict[str, Any]:
    lost_home, new_home, archive = root / f"lost-{run}", root / f"restored-{run}", root / f"dr-{run}.tar.gz"
    try:
        checked(aicloud(lost_home, "dev", "up", "--detach", "--free-ports", timeout=300), "dev up")
        traffic = Traffic(lost_home, run)
        time.sleep(WARM_S)
        backup_start = time.time()
        backed = aicloud(lost_home, "admin", "backup", "--to", str(archive), "-o", "json", timeout=300)
        backup_end = time.time()
        traffic.halt()
        archive_bytes = checked(backed, "backup")["bytes"]
        aicloud(lost_home, "dev", "down", timeout=300)  # the disaster: the stack and its home are gone
        shutil.rmtree(lost_home)

        restore_start = time.monotonic()
        back = aicloud(new_home, "admin", "restore", "--from", str(archive), "--free-ports", "-o", "json",
                       timeout=600)
        rto = time.monotonic() - restore_start
        checked(back, "restore")
        moved = re.search(r"(\d+) consumer\(s\) moved back", back.stderr)
        healthy = all(row["healthy"] for row in status(new_home))
        jobs = finished_jobs(new_home)
        kept = set(jobs), asyncio.run(bus_users(new_home)), settled_billed(new_home)
        return {"run": run, "rto_s": round(rto, 2), "healthy": healthy, "archive_bytes": archive_bytes,
                "backup_s": round(backup_end - backup_start, 2),
                "consumers_moved_back": int(moved.group(1)) if moved else None,
                "stalled_jobs": sum(1 for status in jobs.values() if status not in TERMINAL | IN_FLIGHT),
                "in_flight_jobs": sum(1 for status in jobs.values() if status in IN_FLIGHT),
                **figures(traffic, backup_start, backup_end, *kept)}
    finally:
        for home in (lost_home, new_home):
            if home.exists():
                aicloud(home, "dev", "down", timeout=300)
            for proc in processes_under(home):
                proc.kill()
            shutil.rmtree(home, ignore_errors=True)


def figures(traffic: Traffic, start: float, end: float, jobs: set[str], on_bus: set[str],
            billed: set[str]) -> dict[str, Any]:
    def window(accepted: dict[str, float]) -> set[str]:
        return {name for name, at in accepted.items() if start <= at <= end}

    def before(accepted: dict[str, float]) -> set[str]:
        return {name for name, at in accepted.items() if at < start}

    kept = jobs | on_bus | billed
    accepted = {**traffic.jobs, **traffic.requests}
    return {
        "accepted_in_backup": len(window(traffic.jobs)) + len(window(traffic.requests)),
        "lost_jobs": len(window(traffic.jobs) - jobs),
        "lost_requests": len(window(traffic.requests) - (on_bus | billed)),
        "lost_requests_bus": len(window(traffic.requests) - on_bus),
        "lost_requests_bill": len(window(traffic.requests) - billed),
        "lost_before_backup": len(before(traffic.jobs) - jobs) + len(before(traffic.requests) - kept),
        "rpo_s": round(recovery_point(accepted, kept, end), 2),
    }


COLUMNS = ("run", "rto_s", "backup_s", "accepted_in_backup", "lost_jobs", "lost_requests",
           "lost_requests_bus", "lost_requests_bill", "lost_before_backup", "rpo_s", "consumers_moved_back",
           "stalled_jobs", "in_flight_jobs", "healthy")


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="bench-dr-"))
    print(f"disaster recovery — {platform.node()}, {os.cpu_count()} cores, {RUNS} run(s)")
    print(" ".join(f"{c:>{len(c)}}" for c in COLUMNS))
    runs = []
    for run in range(1, RUNS + 1):
        runs.append(one_run(run, root))
        print(" ".join(f"{runs[-1][c]!s:>{len(c)}}" for c in COLUMNS))
    shutil.rmtree(root, ignore_errors=True)
    median = {key: round(statistics.median(r[key] for r in runs), 2) for key in (
        "rto_s", "rpo_s", "backup_s", "lost_jobs", "lost_requests", "accepted_in_backup")}
    print(f"\nmedian RTO {median['rto_s']} s (restore start to all components ready; goal <= "
          f"{GOAL_RTO_S:.0f} s); median RPO {median['rpo_s']} s, {median['lost_jobs']} job(s) and "
          f"{median['lost_requests']} request(s) of {median['accepted_in_backup']} accepted during the "
          f"backup lost; the backup took {median['backup_s']} s")
    whole = all(r["healthy"] and not r["stalled_jobs"] and not r["lost_before_backup"] for r in runs)
    print(json.dumps({"runs": RUNS, "median": median, "per_run": runs, "goal_rto_s": GOAL_RTO_S,
                      "goal_met": median["rto_s"] <= GOAL_RTO_S and whole,
                      "cores": os.cpu_count(), "machine": platform.node()}))
    return 0 if whole else 1


if __name__ == "__main__":
    raise SystemExit(main())
